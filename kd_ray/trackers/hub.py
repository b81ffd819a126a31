"""The driver's trackers: every configured backend, fed from the collector's rows.

:class:`Trackers` is what the results collector and the teacher stage call. It turns a student
trial's ``epochs`` rows and a teacher's reports into tracker runs (one per student trial, one
per teacher of the sweep), logs each epoch once per run, and keeps going when a tracker fails:
the first exception of a backend logs one warning and switches that backend off for the rest
of the sweep. The Parquet tables are written before any tracker is called and never depend on
one.

Resume: a run is found again by its key and the sweep's tracker id (``RESULTS/NAME/trackers.json``,
made on first use), so a resumed trial continues its run (MLflow: the same run; TensorBoard: the
same directory, events from the resumed epoch on replaced; W&B: the same run id), and the epochs
an earlier driver logged are not logged twice. Epochs the Parquet tables hold but a tracker
missed (a driver killed between the two) are logged when the trial is next seen.
"""

from __future__ import annotations

import importlib.util
import json
import logging
import os
import uuid
from collections.abc import Iterable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

from kd_ray.errors import ConfigError
from kd_ray.trackers.base import (
    Backend,
    RunInfo,
    epochs_from_rows,
    report_metrics,
    student_run,
    teacher_run,
)

if TYPE_CHECKING:
    from kd_ray.config import SweepConfig
    from kd_ray.plan import StudentTrial, TeacherSpec
    from kd_ray.storage import Storage

log = logging.getLogger(__name__)

SWEEP_ID_FILE = "trackers.json"

# Tracker -> (the module its backend imports, the kd_ray extra that installs it). TensorBoard's
# writer is torch's (torch.utils.tensorboard), which needs the tensorboard package.
PACKAGES: dict[str, tuple[str, str]] = {
    "mlflow": ("mlflow", "mlflow"),
    "tensorboard": ("tensorboard", "tensorboard"),
    "wandb": ("wandb", "wandb"),
}
# Trackers that write under the results directory unless told where.
_LOCAL_DEFAULTS: dict[str, str] = {"mlflow": "uri", "tensorboard": "logdir"}


def _installed(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):  # a parent that fails to import; a module set to None
        return False


def check_trackers(cfg: SweepConfig, results: str) -> None:
    """Check, before anything runs, that each configured tracker can be used.

    Raises:
        ConfigError: a tracker's package is not installed (naming the extra that installs it),
            or a tracker that defaults to a directory under the results has no location of its
            own while the results are not on a local filesystem.
    """
    if cfg.trackers is None:
        return
    from kd_ray.storage import Storage

    local = None
    for name in cfg.trackers.enabled:
        module, extra = PACKAGES[name]
        if not _installed(module):
            raise ConfigError(
                f"trackers.{name}: the {module} package is not installed; install it with "
                f"pip install 'kd_ray[{extra}]'"
            )
        field = _LOCAL_DEFAULTS.get(name)
        if field and getattr(getattr(cfg.trackers, name), field) is None:
            if local is None:
                local = Storage.open(results).is_local
            if not local:
                raise ConfigError(
                    f"trackers.{name}.{field}: the results are not on a local filesystem, so there is no "
                    f"default; set trackers.{name}.{field} (e.g. --set trackers.{name}.{field}=...)"
                )


def build_backends(cfg: SweepConfig, sweep_dir: str | None) -> list[Backend]:
    """The backends of ``cfg.trackers``; ``sweep_dir`` is the sweep's local directory, if any.

    Nothing is imported or contacted here: each backend starts on its first run.
    """
    trackers = cfg.trackers
    if trackers is None:
        return []
    backends: list[Backend] = []
    if trackers.mlflow is not None:
        from kd_ray.trackers.mlflow_tracker import MlflowBackend

        uri = trackers.mlflow.uri or _under(sweep_dir, "mlruns", "trackers.mlflow.uri")
        backends.append(MlflowBackend(uri, trackers.mlflow.experiment or cfg.name))
    if trackers.tensorboard is not None:
        from kd_ray.trackers.tensorboard_tracker import TensorBoardBackend

        logdir = trackers.tensorboard.logdir or _under(
            sweep_dir, "tensorboard", "trackers.tensorboard.logdir"
        )
        backends.append(TensorBoardBackend(logdir))
    if trackers.wandb is not None:
        from kd_ray.trackers.wandb_tracker import WandbBackend

        w = trackers.wandb
        backends.append(
            WandbBackend(project=w.project or cfg.name, entity=w.entity, mode=w.mode, dir=w.dir or sweep_dir)
        )
    return backends


def _under(sweep_dir: str | None, name: str, field: str) -> str:
    if sweep_dir is None:  # check_trackers refuses this before the sweep starts
        raise ConfigError(f"{field}: the results are not on a local filesystem; set {field}")
    return os.path.join(sweep_dir, name)


class Trackers:
    """The configured trackers of one sweep, called from the driver (see the module docstring).

    ``Trackers([])`` does nothing: callers need not check whether any tracker is on.
    """

    def __init__(
        self,
        backends: Sequence[Backend],
        *,
        sweep: str,
        sweep_dir: Storage | None = None,
        sweep_id: str | None = None,
        teacher_arch: str = "",
        student_arch: str = "",
    ) -> None:
        self.active: list[Backend] = list(backends)
        self.sweep = sweep
        self.teacher_arch = teacher_arch
        self.student_arch = student_arch
        self._sweep_dir = sweep_dir
        self._sweep_id = sweep_id
        self._last: dict[tuple[str, str], int] = {}  # (backend, run key) -> last epoch it holds
        self._open: dict[tuple[str, str], RunInfo] = {}

    @classmethod
    def from_config(cls, cfg: SweepConfig, sweep_dir: Storage) -> Trackers:
        """The trackers of ``cfg`` for the sweep stored at ``sweep_dir`` (none if it sets none)."""
        backends = build_backends(cfg, sweep_dir.root if sweep_dir.is_local else None)
        return cls(
            backends,
            sweep=cfg.name,
            sweep_dir=sweep_dir,
            teacher_arch=cfg.teacher.arch,
            student_arch=cfg.student.arch,
        )

    @property
    def sweep_id(self) -> str:
        """The sweep's tracker id: a random id made once per sweep and kept beside its results,
        so a rerun of a deleted sweep of the same name never continues the old runs."""
        if self._sweep_id is None:
            if self._sweep_dir is None:
                self._sweep_id = uuid.uuid4().hex[:16]
            elif self._sweep_dir.exists(SWEEP_ID_FILE):
                self._sweep_id = str(json.loads(self._sweep_dir.read_bytes(SWEEP_ID_FILE))["sweep_id"])
            else:
                self._sweep_id = uuid.uuid4().hex[:16]
                self._sweep_dir.write_bytes(SWEEP_ID_FILE, json.dumps({"sweep_id": self._sweep_id}).encode())
        return self._sweep_id

    # -- what the collector and the teacher stage call ------------------------------------

    def student_epochs(self, trial: StudentTrial, group: str, rows: Iterable[Mapping[str, Any]]) -> None:
        """Log the epochs of ``rows`` (a trial's ``epochs`` rows so far) that its runs lack."""
        if self.active:
            run = self._run(lambda: self._student(trial, group))
            if run is not None:
                self.log_rows(run, rows)

    def student_done(
        self,
        trial: StudentTrial,
        group: str,
        status: str,
        error: str | None,
        rows: Iterable[Mapping[str, Any]] = (),
    ) -> None:
        """End a student trial's runs, logging any epoch of ``rows`` they lack first."""
        if self.active:
            run = self._run(lambda: self._student(trial, group))
            if run is not None:
                self.log_rows(run, rows)
                self.finish(run, status, error)

    def teacher_epoch(self, spec: TeacherSpec, report: Mapping[str, Any]) -> None:
        """Log one epoch's report of a teacher trained by this sweep."""
        if self.active and "epoch" in report:
            run = self._run(lambda: teacher_run(spec, sweep=self.sweep, sweep_id=self.sweep_id))
            if run is not None:
                self.log_epoch(run, int(report["epoch"]), report_metrics(report))

    def teacher_done(self, spec: TeacherSpec, row: Mapping[str, Any]) -> None:
        """End a teacher's runs from its ``teachers`` row.

        A teacher this sweep did not train (found in the teacher store) gets a run too, whose
        one point is its final accuracy at its last epoch.
        """
        if not self.active:
            return
        run = self._run(lambda: teacher_run(spec, sweep=self.sweep, sweep_id=self.sweep_id))
        if run is None:
            return
        if row.get("status") == "ok" and row.get("epochs"):
            final = {"train/acc": row.get("train_acc"), "val/acc": row.get("val_acc")}
            self.log_epoch(run, int(row["epochs"]), report_metrics(final))
        self.finish(run, str(row.get("status") or "failed"), row.get("error"))

    # -- generic -------------------------------------------------------------------------

    def log_rows(self, run: RunInfo, rows: Iterable[Mapping[str, Any]]) -> None:
        rows = list(rows)
        for backend in list(self.active):
            try:
                last = self._opened(backend, run)
                for epoch, metrics in epochs_from_rows(rows, after=last).items():
                    backend.log(run, epoch, metrics)
                    self._last[(backend.name, run.key)] = epoch
            except Exception as err:
                self._switch_off(backend, err)

    def log_epoch(self, run: RunInfo, epoch: int, metrics: Mapping[str, float]) -> None:
        for backend in list(self.active):
            try:
                if epoch > self._opened(backend, run):
                    backend.log(run, epoch, metrics)
                    self._last[(backend.name, run.key)] = epoch
            except Exception as err:
                self._switch_off(backend, err)

    def finish(self, run: RunInfo, status: str, error: str | None = None) -> None:
        for backend in list(self.active):
            try:
                self._opened(backend, run)
                backend.finish(run, status, error)
            except Exception as err:
                self._switch_off(backend, err)
            self._last.pop((backend.name, run.key), None)
            self._open.pop((backend.name, run.key), None)

    def close(self) -> None:
        """End the runs still open (the sweep stopped under them) and close every backend."""
        for (name, _), run in list(self._open.items()):
            backend = next((b for b in self.active if b.name == name), None)
            if backend is not None:
                try:
                    backend.finish(run, "interrupted", None)
                except Exception as err:
                    self._switch_off(backend, err)
        self._open.clear()
        self._last.clear()
        for backend in self.active:
            try:
                backend.close()
            except Exception as err:  # closing must not hide the sweep's own outcome
                log.warning("tracker %s: could not close (%s)", backend.name, _reason(err))
        self.active = []

    # -- internals -----------------------------------------------------------------------

    def _student(self, trial: StudentTrial, group: str) -> RunInfo:
        return student_run(
            trial,
            group=group,
            sweep=self.sweep,
            sweep_id=self.sweep_id,
            teacher_arch=self.teacher_arch,
            student_arch=self.student_arch,
        )

    def _run(self, make) -> RunInfo | None:
        """A run description; None (every tracker off) when even that fails (the sweep id file)."""
        try:
            return make()
        except Exception as err:
            for backend in list(self.active):
                self._switch_off(backend, err)
            return None

    def _opened(self, backend: Backend, run: RunInfo) -> int:
        key = (backend.name, run.key)
        if key not in self._last:
            self._last[key] = int(backend.open(run))
            self._open[key] = run
        return self._last[key]

    def _switch_off(self, backend: Backend, err: BaseException) -> None:
        if backend not in self.active:
            return
        self.active.remove(backend)
        where = f" under {self._sweep_dir.uri}" if self._sweep_dir is not None else ""
        log.warning(
            "tracker %s failed (%s); it is off for the rest of this sweep. Every result is still in "
            "the Parquet tables%s",
            backend.name,
            _reason(err),
            where,
        )
        log.debug("tracker %s failure", backend.name, exc_info=err)
        try:
            backend.close()
        except Exception:  # it has failed already; closing is best effort
            log.debug("tracker %s: close after failure", backend.name, exc_info=True)
        for key in [k for k in self._last if k[0] == backend.name]:
            self._last.pop(key, None)
            self._open.pop(key, None)


def _reason(err: BaseException) -> str:
    from kd_ray.storage import redact

    text = " ".join(str(err).split())[:300]
    return redact(f"{type(err).__name__}: {text}" if text else type(err).__name__)
