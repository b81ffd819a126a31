"""What a tracker run is, and the protocol every tracker backend follows (no Ray, no tracker
package imported here).

A run is a student trial or a teacher. Its identity is :attr:`RunInfo.key` (``student/<trial
id>`` or ``teacher/<teacher id>``), unique within a sweep; a backend finds an earlier driver's
run of the same key again through the sweep's tracker id (:attr:`RunInfo.tags`
``kd_ray.sweep_id``), so a resumed sweep continues its runs instead of starting new ones.

Metrics are logged per epoch, with the epoch as the step, under the report keys of the workers
and the columns of ``epochs.parquet``: ``{split}/{metric}`` (``val/acc``, ``train/kl``,
``val_aug/acc_t2``), plus ``lr`` and ``seconds``. NaN, which the tables use for an undefined
metric (``iou_teachers`` of one teacher, ``acc_t3`` of two), is not logged.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

from kd_ray.metrics.names import SPLITS, report_key
from kd_ray.plan import StudentTrial, TeacherSpec

# What the runs are tagged with (MLflow tags; W&B config; TensorBoard hparams and text).
TAG_SWEEP = "kd_ray.sweep"
TAG_SWEEP_ID = "kd_ray.sweep_id"
TAG_GROUP = "kd_ray.group"
TAG_ROLE = "kd_ray.role"
TAG_KEY = "kd_ray.run_key"
TAG_STATUS = "kd_ray.status"
TAG_ERROR = "kd_ray.error"
TEACHERS_GROUP = "teachers"

# Per-epoch values of an epochs row that are not split metrics: the same for every split.
_EPOCH_VALUES = ("lr", "seconds")
_ROW_IDS = frozenset({"trial_id", "epoch", "split", *_EPOCH_VALUES})


@dataclass(frozen=True)
class RunInfo:
    """One tracker run: a student trial or a teacher."""

    key: str  # unique in the sweep: student/<trial_id> or teacher/<teacher_id>
    name: str  # the run's display name: the trial or teacher id
    role: str  # student or teacher
    group: str  # a student's stream group id; "teachers" for teachers
    params: dict[str, Any] = field(default_factory=dict)  # the grid point (str, int, float, bool)
    tags: dict[str, str] = field(default_factory=dict)


def student_run(
    trial: StudentTrial, *, group: str, sweep: str, sweep_id: str, teacher_arch: str, student_arch: str
) -> RunInfo:
    """The run of a student trial: its grid point as parameters, tagged with sweep and group."""
    params: dict[str, Any] = {
        "trial_id": trial.trial_id,
        "dataset": trial.dataset,
        "perm": trial.perm,
        "k": trial.n_teachers,
        "teacher_augs": trial.teacher_augs,
        "student_aug": trial.student_aug,
        "loss": trial.loss,
        "view": trial.view,
        "seed": trial.seed,
        "teacher_arch": teacher_arch,
        "student_arch": student_arch,
        "temperature": trial.temperature,
        "alpha": trial.alpha,
        "lr": trial.lr,
        "teacher_ids": ",".join(trial.teacher_ids),
        "group": group,
    }
    key = f"student/{trial.trial_id}"
    return RunInfo(
        key, trial.trial_id, "student", group, params, _tags(key, "student", group, sweep, sweep_id)
    )


def teacher_run(spec: TeacherSpec, *, sweep: str, sweep_id: str) -> RunInfo:
    """The run of a teacher: its spec as parameters."""
    # Imported here: results.rows pulls in torch (its metrics), which `kd_ray sweep`'s
    # preflight check of the trackers should not wait for.
    from kd_ray.results.rows import teacher_fields

    params: dict[str, Any] = {**teacher_fields(spec), "pretrained": str(spec.pretrained)}
    key = f"teacher/{spec.teacher_id}"
    return RunInfo(
        key,
        spec.teacher_id,
        "teacher",
        TEACHERS_GROUP,
        params,
        _tags(key, "teacher", TEACHERS_GROUP, sweep, sweep_id),
    )


def _tags(key: str, role: str, group: str, sweep: str, sweep_id: str) -> dict[str, str]:
    return {TAG_SWEEP: sweep, TAG_SWEEP_ID: sweep_id, TAG_GROUP: group, TAG_ROLE: role, TAG_KEY: key}


def _loggable(value: Any) -> float | None:
    """``value`` as a float to log, or None for what is not logged (missing, NaN)."""
    if value is None:
        return None
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return None if math.isnan(number) else number


def epochs_from_rows(rows: Iterable[Mapping[str, Any]], after: int = 0) -> dict[int, dict[str, float]]:
    """``epochs.parquet`` rows (of one trial) -> ``{epoch: {"val/acc": ..., "lr": ...}}``.

    Epochs up to ``after`` are left out (already logged).
    """
    out: dict[int, dict[str, float]] = {}
    for row in rows:
        epoch = int(row["epoch"])
        if epoch <= after:
            continue
        values = out.setdefault(epoch, {})
        for name in _EPOCH_VALUES:
            number = _loggable(row.get(name))
            if number is not None:
                values.setdefault(name, number)
        split = str(row["split"])
        for metric, value in row.items():
            if metric in _ROW_IDS:
                continue
            number = _loggable(value)
            if number is not None:
                values[report_key(split, metric)] = number
    return dict(sorted(out.items()))


def report_metrics(report: Mapping[str, Any]) -> dict[str, float]:
    """The loggable values of one epoch's report of a teacher (``train/acc``, ``lr``, ...)."""
    out: dict[str, float] = {}
    for key, value in report.items():
        split = key.partition("/")[0]
        if (split in SPLITS and "/" in key) or key in _EPOCH_VALUES:
            number = _loggable(value)
            if number is not None:
                out[key] = number
    return out


class Backend(Protocol):
    """One tracker (MLflow, TensorBoard, W&B). Called from the driver only, one call at a time.

    Any exception a method raises switches the backend off for the rest of the sweep
    (:class:`kd_ray.trackers.Trackers` logs one warning); the Parquet tables are unaffected.
    """

    name: str

    def open(self, run: RunInfo) -> int:
        """Start the run, or continue the one an earlier driver started for ``run.key``.

        Returns the last epoch that run already holds (0 for a new run): epochs up to it are
        not logged again.
        """
        ...

    def log(self, run: RunInfo, epoch: int, metrics: Mapping[str, float]) -> None:
        """Log one epoch's values with the epoch as the step."""
        ...

    def finish(self, run: RunInfo, status: str, error: str | None) -> None:
        """End the run: ``status`` is ``ok``, ``failed`` or ``interrupted``."""
        ...

    def close(self) -> None:
        """Release what the backend holds (clients, writers, processes)."""
        ...
