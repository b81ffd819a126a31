"""TensorBoard: a run directory per student trial and per teacher, written with torch's
``SummaryWriter`` (which needs the ``tensorboard`` package).

Layout under the log directory (default ``RESULTS/NAME/tensorboard``)::

    students/<trial_id>/events.out.tfevents...
    teachers/<teacher_id>/events.out.tfevents...

Scalars are ``{split}/{metric}``, ``lr`` and ``seconds`` with the epoch as the step. Each run
writes its grid point, sweep and stream group as hparams (the HParams dashboard compares
permutations, losses and views) and as a ``kd_ray/run`` text; ``kd_ray/status`` says how it
ended. A run that a resumed sweep continues writes into the same directory with
``purge_step`` at the first epoch it logs again, so TensorBoard shows each epoch once.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

from kd_ray.trackers.base import RunInfo

# Scalars the HParams dashboard shows beside the hyper-parameters.
_HPARAM_METRICS = ("val/acc", "train/acc", "val/ece", "train/agreement")


def run_dir(logdir: str, run: RunInfo) -> str:
    return os.path.join(logdir, f"{run.role}s", run.name)


class TensorBoardBackend:
    name = "tensorboard"

    def __init__(self, logdir: str) -> None:
        self.logdir = logdir
        self._writers: dict[str, Any] = {}
        self._existed: dict[str, bool] = {}

    def open(self, run: RunInfo) -> int:
        import torch.utils.tensorboard  # noqa: F401 - fail here, at the first run, if it cannot load

        path = run_dir(self.logdir, run)
        self._existed[run.key] = os.path.isdir(path) and any(
            n.startswith("events.") for n in os.listdir(path)
        )
        # What an earlier driver wrote cannot be read back cheaply: the epochs this driver logs
        # replace it from the first one on (purge_step), so report nothing logged.
        return 0

    def _writer(self, run: RunInfo, first_step: int | None) -> Any:
        writer = self._writers.get(run.key)
        if writer is None:
            from torch.utils.tensorboard import SummaryWriter
            from torch.utils.tensorboard.summary import hparams

            purge = first_step if self._existed.get(run.key) else None
            writer = SummaryWriter(run_dir(self.logdir, run), purge_step=purge)
            values = {k: v for k, v in run.params.items() if isinstance(v, int | float | str | bool)}
            values.update({"sweep": run.tags.get("kd_ray.sweep", ""), "role": run.role})
            for summary in hparams(values, dict.fromkeys(_HPARAM_METRICS, 0.0)):
                writer.file_writer.add_summary(summary)
            described = "\n".join(f"- {k}: {v}" for k, v in {**run.tags, **run.params}.items())
            writer.add_text("kd_ray/run", described, global_step=first_step or 0)
            self._writers[run.key] = writer
        return writer

    def log(self, run: RunInfo, epoch: int, metrics: Mapping[str, float]) -> None:
        writer = self._writer(run, epoch)
        for key, value in metrics.items():
            writer.add_scalar(key, value, global_step=epoch)
        writer.flush()

    def finish(self, run: RunInfo, status: str, error: str | None) -> None:
        writer = self._writer(run, None)
        writer.add_text("kd_ray/status", status + (f": {error}" if error else ""))
        writer.close()
        self._writers.pop(run.key, None)
        self._existed.pop(run.key, None)

    def close(self) -> None:
        for writer in self._writers.values():
            writer.close()
        self._writers.clear()
