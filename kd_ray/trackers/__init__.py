"""Experiment trackers (MLflow, TensorBoard, W&B) fed by the driver (docs/trackers.md).

The driver's results collector and teacher stage call :class:`Trackers`; each backend is one
module (``mlflow_tracker``, ``tensorboard_tracker``, ``wandb_tracker``) behind the small
:class:`~kd_ray.trackers.base.Backend` protocol, imported only when its tracker is configured.
No Ray here: the backends are plain Python and are tested without a cluster.
"""

from kd_ray.trackers.base import Backend, RunInfo, epochs_from_rows, student_run, teacher_run
from kd_ray.trackers.hub import PACKAGES, SWEEP_ID_FILE, Trackers, build_backends, check_trackers

__all__ = [
    "PACKAGES",
    "SWEEP_ID_FILE",
    "Backend",
    "RunInfo",
    "Trackers",
    "build_backends",
    "check_trackers",
    "epochs_from_rows",
    "student_run",
    "teacher_run",
]
