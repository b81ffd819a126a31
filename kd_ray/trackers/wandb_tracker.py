"""Weights & Biases: one run per student trial and per teacher, in one project (default: the
sweep's name).

A run is named by its trial or teacher id, its W&B group is the stream group (``teachers`` for
teachers) and its job type the role, it is tagged with the sweep's name, and its config holds
the grid point. Metrics are ``{split}/{metric}``, ``lr`` and ``seconds`` logged with
``step=epoch`` (and an ``epoch`` value). The run id is derived from the sweep's tracker id and the
run's key, and runs are started with ``resume="allow"``: a resumed sweep continues the same
runs. Online, W&B knows the steps a run holds and those are not logged again; an offline run
continued by a later driver is a second local directory of the same run id (``wandb sync``
uploads both).

W&B's login is W&B's: ``wandb login`` or ``WANDB_API_KEY`` before the sweep, or ``mode:
offline``. Runs are started with ``reinit="create_new"`` (W&B ≥ 0.19.10), since the students of
several stream groups run at once.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from typing import Any

from kd_ray.trackers.base import TAG_SWEEP, TAG_SWEEP_ID, RunInfo


def wandb_run_id(run: RunInfo) -> str:
    """A stable W&B run id for ``run`` in its sweep (letters and digits only)."""
    digest = hashlib.sha256(f"{run.tags[TAG_SWEEP_ID]}/{run.key}".encode()).hexdigest()
    return digest[:24]


class WandbBackend:
    name = "wandb"

    def __init__(self, *, project: str, entity: str | None, mode: str | None, dir: str | None) -> None:
        self.project = project
        self.entity = entity
        self.mode = mode
        self.dir = dir
        self._runs: dict[str, Any] = {}

    def open(self, run: RunInfo) -> int:
        import wandb

        if self.dir is not None:
            import os

            os.makedirs(self.dir, exist_ok=True)
        handle = wandb.init(
            project=self.project,
            entity=self.entity,
            dir=self.dir,
            mode=self.mode,
            id=wandb_run_id(run),
            name=run.name,
            group=run.group,
            job_type=run.role,
            tags=[run.tags[TAG_SWEEP]],
            config={**run.params, "sweep": run.tags[TAG_SWEEP], "role": run.role},
            resume="allow",
            reinit="create_new",
            settings=wandb.Settings(silent=True, console="off", save_code=False),
        )
        if getattr(handle, "disabled", False):
            raise RuntimeError("W&B disabled the run (no login?); run `wandb login` or use mode: offline")
        self._runs[run.key] = handle
        # Online, a resumed run starts after the last step it holds.
        start = int(getattr(handle, "starting_step", 0) or 0) if getattr(handle, "resumed", False) else 0
        return max(0, start - 1)

    def log(self, run: RunInfo, epoch: int, metrics: Mapping[str, float]) -> None:
        self._runs[run.key].log({**metrics, "epoch": epoch}, step=epoch)

    def finish(self, run: RunInfo, status: str, error: str | None) -> None:
        handle = self._runs.pop(run.key)
        handle.summary["kd_ray.status"] = status
        if error:
            handle.summary["kd_ray.error"] = error
        handle.finish(exit_code=0 if status == "ok" else 1)

    def close(self) -> None:
        runs, self._runs = list(self._runs.values()), {}
        for handle in runs:
            handle.finish(exit_code=1)
