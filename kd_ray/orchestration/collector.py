"""The driver-side results collector: Tune results → the Parquet tables of docs/results.md.

A ``ray.tune.Callback`` runs in the driver process, so only the driver writes results (never
every rank). A Tune trial trains a stream group of student trials; its reports carry each
student's values under ``{trial_id}::`` keys, which the collector splits back into per-trial
rows. Each report rewrites each student's ``epochs`` file atomically; when a student ends its
final-epoch ``calibration`` bins and then its ``trials`` row are written: the ``trials`` row is the
"finished" marker, so it comes last, and a kill before it leaves the trial unfinished (resume
runs it again) rather than finished with rows missing. Rows are keyed, so a trial that resumes
and re-reports an epoch replaces rows rather than adding them; a trial seen for the first time
in this driver (after a resume) starts from the rows already on disk, and a report of epoch e
drops stored rows of later epochs (a restart from an earlier checkpoint, or from scratch,
recomputes them). Once every student of a group has its rows, the group's Train run directory
(its training checkpoints) is deleted; each finished student's final weights stay on their own,
in ``students/<trial_id>.pt`` (written by the worker), with a JSON sidecar the collector writes
when the trial finishes ok: its grid point, final metrics and fingerprint digest
(docs/results.md#students).

Experiment trackers (:class:`kd_ray.trackers.Trackers`, docs/trackers.md) are fed from the same
per-student rows, after the tables are written: one run per student trial, tagged with the
sweep and the stream group. A tracker that fails is switched off with one warning; the tables
never depend on it.

:class:`TeacherOutcomes` keeps the reason each teacher run failed, as the worker gave it, and
logs each teacher's epochs to the trackers.
"""

from __future__ import annotations

import json
import logging
import math
import time
from dataclasses import dataclass, field
from typing import Any

from kd_ray.orchestration._ray_compat import trial_error_text
from kd_ray.orchestration.driver_callback import DriverCallback
from kd_ray.orchestration.runbook import RunBook
from kd_ray.orchestration.trials import ERROR_KEY, STATUS_KEY, delete_run, short_error
from kd_ray.plan import StudentTrial, TeacherSpec
from kd_ray.results.rows import calibration_rows, epoch_rows, trial_report, trial_row
from kd_ray.results.store import ResultTables
from kd_ray.storage import Storage
from kd_ray.trackers import Trackers

log = logging.getLogger(__name__)


@dataclass
class _TrialState:
    trial: StudentTrial
    group: str = ""  # the stream group (Tune trial) that trains it
    started: float = field(default_factory=time.monotonic)
    epochs: dict[tuple[int, str], dict[str, Any]] = field(default_factory=dict)
    last: dict[str, Any] | None = None
    status: str | None = None
    error: str | None = None
    # The digest of the trial's fingerprint, as its exported weights hold it; None when its
    # group exports no weights (no students location in its config).
    digest: str | None = None


# Columns of the trials row that say which grid point a student is; the sidecar's "grid".
GRID_COLUMNS = (
    "dataset",
    "n_teachers",
    "perm",
    "teacher_augs",
    "student_aug",
    "loss",
    "view",
    "seed",
    "temperature",
    "alpha",
    "lr",
    "teacher_arch",
    "student_arch",
    "teacher_ids",
)
# Columns that are neither grid point nor metric (an exported student finished ok).
_OUTCOME_COLUMNS = ("trial_id", "status", "error", "wall_s")


class ResultsCollector(DriverCallback):
    """Writes every student trial's epochs, final row and calibration as they arrive.

    ``runs`` says which stream group each Tune trial trains (filled as the runs start);
    ``ray_storage`` is where the groups' Train runs keep their checkpoints, deleted once a
    group's rows are written (None: kept).
    """

    DRIVER_ONLY = {"_states": {}, "_tables": None, "trackers": None}

    def __init__(
        self,
        sweep_uri: str,
        runs: RunBook,
        *,
        teacher_arch: str,
        student_arch: str,
        ece_bins: int,
        ray_storage: str | None = None,
        trackers: Trackers | None = None,
    ) -> None:
        self.sweep_uri = sweep_uri
        self.runs = runs
        self.ray_storage = ray_storage
        self.teacher_arch = teacher_arch
        self.student_arch = student_arch
        self.ece_bins = ece_bins
        self.trackers = trackers or Trackers([], sweep="")
        self._states: dict[str, _TrialState] = {}
        self._tables: ResultTables | None = None

    @property
    def tables(self) -> ResultTables:
        if self._tables is None:
            self._tables = ResultTables(Storage.open(self.sweep_uri))
        return self._tables

    def _states_of(self, trial: Any) -> list[_TrialState]:
        """The states of a Tune trial's students, loading rows a previous driver wrote."""
        states = []
        group = self.runs.item(trial)
        for spec in (StudentTrial.from_dict(d) for d in group["trials"]):
            state = self._states.get(spec.trial_id)
            if state is None:
                # The digest the driver computed as the worker does (workers.student_fingerprints),
                # so the sidecar matches its .pt.
                state = _TrialState(
                    spec, str(group["group_id"]), digest=group.get("digests", {}).get(spec.trial_id)
                )
                previous = self.tables.read_owner("epochs", spec.trial_id)
                for row in previous.to_dict("records"):
                    state.epochs[(int(row["epoch"]), row["split"])] = row
                self._states[spec.trial_id] = state
            states.append(state)
        return states

    def on_trial_start(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        for state in self._states_of(trial):
            state.started = time.monotonic()

    def on_trial_result(self, iteration: int, trials: list, trial: Any, result: dict, **info: Any) -> None:
        for state in self._states_of(trial):
            own = trial_report(result, state.trial.trial_id)
            if STATUS_KEY in own:
                state.status, state.error = own[STATUS_KEY], own.get(ERROR_KEY) or None
                continue
            if "epoch" not in own:  # not in this report: it stopped earlier (diverged)
                continue
            epoch = int(own["epoch"])
            # Reports of one attempt come in epoch order: rows of later epochs are from an
            # earlier attempt that this one (restarted from an older checkpoint) recomputes.
            state.epochs = {key: row for key, row in state.epochs.items() if key[0] <= epoch}
            for row in epoch_rows(state.trial.trial_id, own):
                state.epochs[(row["epoch"], row["split"])] = row
            state.last = own
            rows = sorted(state.epochs.values(), key=_epoch_order)
            self.tables.write("epochs", state.trial.trial_id, rows)
            # After the table: rows a previous driver wrote that a tracker lacks go too.
            self.trackers.student_epochs(state.trial, state.group, rows)

    def on_trial_complete(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        for state in self._states_of(trial):
            self._finish(state)
        # Every student of the group has its rows: its training checkpoints are no longer needed
        # (a failed one is run again from scratch by --resume). Kept when the trial errored.
        if self.ray_storage:
            delete_run(self.ray_storage, self.runs.item(trial)["group_id"])

    def on_trial_error(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        error = _trial_error(trial)
        for state in self._states_of(trial):
            state.status, state.error = "failed", error
            self._finish(state)

    def _finish(self, state: _TrialState) -> None:
        status = state.status or "failed"
        if status == "ok" and state.last is None and not state.epochs:
            status, state.error = "failed", "the trial reported no epoch"
        trial_id = state.trial.trial_id
        last = state.last
        if last is None and state.epochs:  # resumed after its last epoch: rebuild from disk rows
            last = _report_from_rows(state.epochs)
        if state.last is not None:
            self.tables.write("calibration", trial_id, calibration_rows(trial_id, state.last, self.ece_bins))
        row = trial_row(
            state.trial,
            teacher_arch=self.teacher_arch,
            student_arch=self.student_arch,
            report=last,
            status=status,
            error=state.error,
            wall_s=time.monotonic() - state.started,
        )
        if status == "ok" and state.digest is not None:
            # Before the trials row, not after: --resume never revisits a trial with that row, so
            # a kill between the two would lose a later sidecar for good. Written first, a kill
            # leaves a sidecar beside an unfinished trial, which the resume runs again (from its
            # group's last checkpoint, still there) and whose weights and sidecar it rewrites.
            self._write_sidecar(row, state.digest)
        # Last: the trials row marks the trial finished (see the module docstring).
        self.tables.write("trials", trial_id, [row])
        log.info("trial %s: %s%s", trial_id, status, f" ({state.error})" if state.error else "")
        rows = sorted(state.epochs.values(), key=_epoch_order)
        self.trackers.student_done(state.trial, state.group, status, state.error, rows)
        self._states.pop(trial_id, None)

    def _write_sidecar(self, row: dict[str, Any], digest: str) -> None:
        """``students/<trial_id>.json`` beside the weights the worker exported (atomically)."""
        students = self.tables.storage.child("students")
        trial_id = row["trial_id"]
        if not students.exists(f"{trial_id}.pt"):  # the worker stores them before it returns ok
            log.warning("trial %s: finished ok but its weights are not in %s", trial_id, students.uri)
            return
        text = json.dumps(student_sidecar(row, digest), indent=1, sort_keys=True, allow_nan=False)
        students.write_bytes(f"{trial_id}.json", text.encode())


def student_sidecar(row: dict[str, Any], digest: str) -> dict[str, Any]:
    """What the sidecar of an exported student says, from its ``trials`` row: the grid point and
    the final metrics under the row's column names (NaN, undefined, as null), and the digest of
    the fingerprint its ``.pt`` holds, so the two files can be matched."""
    metrics = {k: v for k, v in row.items() if k not in GRID_COLUMNS and k not in _OUTCOME_COLUMNS}
    return {
        "trial_id": row["trial_id"],
        "weights": f"{row['trial_id']}.pt",
        "fingerprint": digest,
        "grid": {k: row[k] for k in GRID_COLUMNS},
        "metrics": {k: None if isinstance(v, float) and math.isnan(v) else v for k, v in metrics.items()},
    }


def _epoch_order(row: dict[str, Any]) -> tuple[int, str]:
    return int(row["epoch"]), str(row["split"])


def _report_from_rows(rows: dict[tuple[int, str], dict[str, Any]]) -> dict[str, Any]:
    epoch = max(e for e, _ in rows)
    report: dict[str, Any] = {"epoch": epoch}
    for (e, split), row in rows.items():
        if e == epoch:
            report.update(
                {f"{split}/{k}": v for k, v in row.items() if k not in ("trial_id", "epoch", "split")}
            )
    return report


def _trial_error(trial: Any) -> str:
    """The one-line reason of a trial in ERROR, from the error text Tune saved for it."""
    text = trial_error_text(trial)
    return short_error(text) if text else "the trial failed without an error message"


class TeacherOutcomes(DriverCallback):
    """How each teacher of the teacher stage failed, in the worker's words (driver side); each
    reported epoch goes to the trackers (the run ends with the teacher's row, in the sweep).
    ``runs`` says which teacher pack each Tune trial trains; a report names its teacher."""

    DRIVER_ONLY = {"errors": {}, "trackers": None}

    def __init__(self, runs: RunBook, trackers: Trackers | None = None) -> None:
        self.runs = runs
        self.errors: dict[str, str] = {}
        self.trackers = trackers or Trackers([], sweep="")

    def _specs(self, trial: Any) -> dict[str, TeacherSpec]:
        item = self.runs.item(trial) or {"teachers": []}
        return {d["teacher_id"]: TeacherSpec(**d) for d in item["teachers"]}

    def on_trial_result(self, iteration: int, trials: list, trial: Any, result: dict, **info: Any) -> None:
        specs = self._specs(trial)
        if "epoch" in result and result.get("teacher") in specs:
            self.trackers.teacher_epoch(specs[result["teacher"]], result)
        for tid in specs:
            own = trial_report(result, tid)
            status = own.get(STATUS_KEY)
            if status is not None and status != "ok":
                self.errors[tid] = own.get(ERROR_KEY) or "the teacher run returned no reason"

    def on_trial_error(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        # The whole pack's run failed; teachers it had stored before are ok (the sweep asks the
        # store), so this reason only shows for the others.
        for tid in self._specs(trial):
            self.errors[tid] = _trial_error(trial)
