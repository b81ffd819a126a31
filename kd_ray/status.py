"""``kd-ray status RESULTS/NAME``: where a sweep stands, read from its results store alone.

No Ray and no training code: the status is what the store holds, so it works from a laptop on
a sweep that runs on a cluster (``s3://...``) as well as on a local directory, during the
sweep and after it. What it reads (docs/results.md):

- ``config.yaml``, the sweep's resolved config: the planned trials (:func:`kd_ray.plan.plan_sweep`)
  and their epochs;
- ``trials.parquet``: a trial with a row has ended, ``ok`` or ``failed`` (its ``error``);
- ``epochs.parquet``: the last epoch each trial reported and its ``val`` accuracy, and each
  epoch's ``seconds``, the wall time of its run's epoch, for the ETA;
- ``RESULTS/_teachers/<teacher_id>.json``: the teachers stored so far;
- ``RESULTS/NAME.lease``: whether a live driver runs the sweep now, which tells a trial that
  is training (``running``) from one a stopped driver left behind (``interrupted``).

The ETA extrapolates the epochs left: the stream groups of the unfinished trials
(:func:`kd_ray.plan.stream_groups`, one run each) times the mean ``seconds`` of a run's epoch so
far, divided by the runs that train at once (those in progress now, else
``resources.max_concurrent_trials``, else one). It leaves out run start-up and any teacher
still to train, and says so.
"""

from __future__ import annotations

from dataclasses import dataclass

import pandas as pd
import yaml

from kd_ray.config import SweepConfig, parse_config
from kd_ray.errors import ResultsError
from kd_ray.plan import StudentTrial, plan_sweep, stream_groups, stream_key
from kd_ray.results.store import ResultTables
from kd_ray.storage import Storage

# Trial states, in the order the summary lists them.
STATES = ("ok", "failed", "running", "interrupted", "pending", "not started")


@dataclass(frozen=True)
class TrialProgress:
    trial_id: str
    status: str  # one of STATES
    epoch: int | None  # the last epoch it reported
    val_acc: float | None  # its val accuracy at that epoch
    error: str | None


@dataclass(frozen=True)
class Eta:
    seconds: float
    run_epochs_left: int
    seconds_per_run_epoch: float
    runs_at_once: int


@dataclass(frozen=True)
class SweepStatus:
    name: str
    uri: str
    epochs: int  # planned epochs of a student
    trials: tuple[TrialProgress, ...]
    teachers_stored: int
    teachers_planned: int
    driver: str | None  # who runs the sweep now, None if no live driver holds it
    eta: Eta | None

    def count(self, status: str) -> int:
        return sum(t.status == status for t in self.trials)

    @property
    def finished(self) -> bool:
        return all(t.status in ("ok", "failed") for t in self.trials)


def _read_config(sweep: Storage) -> SweepConfig:
    if not sweep.exists("config.yaml"):
        what = "does not exist" if not sweep.exists() else "holds no config.yaml"
        raise ResultsError(
            f"{sweep.uri}: not a kd_ray sweep ({what}); give the directory a sweep writes, RESULTS/NAME"
        )
    try:
        data = yaml.safe_load(sweep.read_bytes("config.yaml").decode("utf-8"))
    except (UnicodeDecodeError, yaml.YAMLError) as err:
        reason = "not UTF-8 text" if isinstance(err, UnicodeDecodeError) else "malformed YAML"
        raise ResultsError(f"{sweep.uri}/config.yaml: unreadable ({reason})") from None
    return parse_config(data, source=f"{sweep.uri}/config.yaml")


def _driver(sweep: Storage) -> str | None:
    """Who runs the sweep now (its lease's live holder), or None."""
    from kd_ray.orchestration.lease import LEASE_SUFFIX, read_lease  # plain Python, no Ray

    holder = read_lease(sweep.parent(), sweep.name + LEASE_SUFFIX)
    if holder is None or holder.expired() is not None:
        return None
    return holder.describe(what=False)


def _last_epochs(epochs: pd.DataFrame) -> dict[str, tuple[int, float | None]]:
    """Trial id -> (last epoch with a ``val`` row, its val accuracy)."""
    val = epochs[epochs["split"] == "val"]
    out: dict[str, tuple[int, float | None]] = {}
    for tid, rows in val.groupby("trial_id"):
        last = rows.loc[rows["epoch"].idxmax()]
        acc = float(last["acc"]) if pd.notna(last["acc"]) else None
        out[str(tid)] = (int(last["epoch"]), acc)
    return out


def _eta(
    cfg: SweepConfig,
    planned_trials: tuple[StudentTrial, ...],
    unfinished: list[StudentTrial],
    last: dict[str, tuple[int, float | None]],
    epochs: pd.DataFrame,
    live: bool,
) -> Eta | None:
    """Time left for ``unfinished`` at the pace of the epochs so far (module docstring)."""
    planned = cfg.student.train.epochs
    val = epochs[(epochs["split"] == "val") & epochs["seconds"].notna()]
    if not unfinished or val.empty:
        return None
    stream = {t.trial_id: stream_key(t) for t in planned_trials}
    # The students of one run share its epoch's seconds: count each run-epoch once.
    run_epochs = val.assign(stream=val["trial_id"].map(lambda tid: stream.get(tid, tid)))
    per_run_epoch = float(run_epochs.drop_duplicates(["stream", "epoch"])["seconds"].mean())
    left = in_progress = 0
    for group in stream_groups(unfinished, cfg.resources.trials_per_run):
        done = min(last.get(t.trial_id, (0, None))[0] for t in group)
        left += planned - min(done, planned)
        in_progress += 0 < done < planned
    # Runs in progress now show what the cluster fits; with none, the config's limit or one.
    at_once = in_progress if live and in_progress else (cfg.resources.max_concurrent_trials or 1)
    return Eta(left * per_run_epoch / at_once, left, per_run_epoch, at_once)


def sweep_status(location: str) -> SweepStatus:
    """The status of the sweep whose results are at ``location`` (RESULTS/NAME, path or URI).

    Raises:
        ResultsError: ``location`` is not a sweep's results directory, or the store failed.
        ConfigError: its saved config does not validate.
    """
    sweep = Storage.open(location)
    cfg = _read_config(sweep)
    plan = plan_sweep(cfg, check_names=False)
    tables = ResultTables(sweep)
    ended = tables.read("trials").set_index("trial_id")
    epochs = tables.read("epochs")
    last = _last_epochs(epochs)
    driver = _driver(sweep)
    live = driver is not None

    trials, unfinished = [], []
    for trial in plan.trials:
        tid = trial.trial_id
        epoch, acc = last.get(tid, (None, None))
        error = None
        if tid in ended.index:
            row = ended.loc[tid]
            status = "ok" if row["status"] == "ok" else "failed"
            error = row["error"] if status == "failed" and pd.notna(row["error"]) else None
            if acc is None and pd.notna(row["val_acc"]):
                acc = float(row["val_acc"])
        else:
            unfinished.append(trial)
            if epoch is not None:
                status = "running" if live else "interrupted"
            else:
                status = "pending" if live else "not started"
        trials.append(TrialProgress(tid, status, epoch, acc, error))

    stored = set(sweep.parent().child("_teachers").listdir())
    teachers_stored = sum(f"{t.teacher_id}.json" in stored for t in plan.teachers)
    return SweepStatus(
        name=cfg.name,
        uri=sweep.uri,
        epochs=cfg.student.train.epochs,
        trials=tuple(trials),
        teachers_stored=teachers_stored,
        teachers_planned=len(plan.teachers),
        driver=driver,
        eta=_eta(cfg, plan.trials, unfinished, last, epochs, live),
    )


def format_duration(seconds: float) -> str:
    """``0:07``, ``12:05``, ``3:02:10`` (also the progress display's, kd_ray.orchestration.progress)."""
    seconds = max(0, int(round(seconds)))
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}" if hours else f"{minutes}:{secs:02d}"


def format_status(status: SweepStatus) -> str:
    """The status as the command prints it: a summary, one row per trial, failures, ETA."""
    counts = ", ".join(f"{status.count(s)} {s}" for s in STATES if status.count(s))
    lines = [f"sweep {status.name!r} ({status.uri}): {len(status.trials)} trials: {counts}"]
    lines.append(f"driver: {status.driver}" if status.driver else "driver: none runs it now")
    lines.append(f"teachers: {status.teachers_stored} of {status.teachers_planned} trained")
    width = max([len("trial")] + [len(t.trial_id) for t in status.trials])
    lines.append("")
    lines.append(f"  {'trial':<{width}}  {'status':<12} {'epoch':>7}  {'val acc':>7}")
    for t in status.trials:
        epoch = f"{t.epoch}/{status.epochs}" if t.epoch is not None else "-"
        acc = f"{t.val_acc:.3f}" if t.val_acc is not None else "-"
        lines.append(f"  {t.trial_id:<{width}}  {t.status:<12} {epoch:>7}  {acc:>7}")
    failed = [t for t in status.trials if t.status == "failed"]
    if failed:
        lines.append("")
        lines.append(f"failed ({len(failed)}):")
        lines += [f"  {t.trial_id}: {t.error or 'no reason recorded'}" for t in failed]
    lines.append("")
    lines.append(_eta_line(status))
    return "\n".join(lines)


def _eta_line(status: SweepStatus) -> str:
    if status.finished:
        return "finished"
    eta = status.eta
    label = "ETA" if status.driver else "ETA if resumed"
    if eta is None:
        return f"{label}: unknown until a student epoch is done"
    teachers = status.teachers_planned - status.teachers_stored
    after = f"; plus {teachers} teacher(s) to train first" if teachers else ""
    runs = "1 run" if eta.runs_at_once == 1 else f"{eta.runs_at_once} runs"
    return (
        f"{label}: about {format_duration(eta.seconds)} ({eta.run_epochs_left} run-epoch(s) left at "
        f"{eta.seconds_per_run_epoch:.1f} s each, {runs} at a time; run start-up not counted{after})"
    )
