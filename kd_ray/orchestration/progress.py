"""Progress a person can read, on the driver: Tune trials named by what they run, a table of
runs with their epoch and mean validation accuracy, and ``-q``'s single progress line.

Tune's own table names a trial ``group_trial_dec1e_00000`` and shows its grid parameter, a
whole stream group as a truncated dict (``...0-46669466be')}]}``), and the first four keys of a
report (one per student and metric). So the sweep runs Tune silently (legacy output engine,
``verbose=0``: the new engine prints its experiment box even then) and prints its own progress
from a Tune callback, from what each report carries (``epoch``; ``val/acc`` of a teacher,
``{trial_id}::val/acc`` of each student of a group):

- :class:`ProgressTable` (the default): one line per finished or failed run, and a table of
  runs (``synthetic S_w seed 0 (2 students)  running  3/4  0.281``) at the start, every
  :data:`HEARTBEAT_S` seconds and at the end of each stage;
- :class:`ProgressBar` (``-q``): one line, ``runs done / total`` with elapsed time and ETA,
  rewritten in place with ``\\r`` on a terminal and printed now and then otherwise (a log file).

:class:`TrialNamer` gives Tune the same names (``trial_name_creator``), so Ray's own messages
about a trial name it too; :func:`trial_dirname` keeps Tune's trial directories short and safe
(they are Tune's bookkeeping under ``_ray/<stage>-N/``; the Train run directories that resume
uses, ``_ray/<group_id>``, are named by :mod:`kd_ray.orchestration.trials` and do not change).

Both find the run a Tune trial trains in the stage's :class:`~kd_ray.orchestration.runbook.RunBook`
(written by the capacity gate before Tune creates the trial), never in Tune's trial config.
"""

from __future__ import annotations

import math
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TextIO

from kd_ray.orchestration.driver_callback import DriverCallback
from kd_ray.orchestration.runbook import RunBook
from kd_ray.orchestration.trials import STATUS_KEY
from kd_ray.results.rows import report_field
from kd_ray.status import format_duration

# Seconds between two progress tables while runs train (Tune's own heartbeat is 30 s), and
# while nothing changes (a long epoch), so a days-long log stays readable.
HEARTBEAT_S = 30.0
IDLE_HEARTBEAT_S = 600.0
# Rows of a progress table; beyond it the table shows running and failed runs first.
MAX_ROWS = 20
# Without a terminal, -q prints a line when a run ends and at least this often.
PLAIN_EVERY_S = 300.0
# On a terminal, -q redraws its line at most this often.
REDRAW_S = 1.0

_STATUS = {
    "PENDING": "pending",
    "RUNNING": "running",
    "PAUSED": "paused",
    "TERMINATED": "done",
    "ERROR": "failed",
}
_ORDER = ("running", "failed", "paused", "pending", "done")
_STAGE_TITLE = {"teacher": "teachers", "group": "student runs"}


# --- names ----------------------------------------------------------------------------------


def run_key(stage: str, item: dict[str, Any]) -> str:
    """The id of a run of ``stage``: its teacher pack id or stream-group id."""
    return str(item["pack_id"] if stage == "teacher" else item["group_id"])


def _trial_run_key(stage: str, runs: RunBook, trial: Any) -> str:
    """The id of the run Tune trial ``trial`` trains; Tune's trial id if it is not one of ours."""
    item = runs.item(trial)
    return run_key(stage, item) if item is not None else str(trial.trial_id)


def run_label(stage: str, item: dict[str, Any]) -> str:
    """What a run trains, in words: ``teacher T1s digits seed 0``, ``teachers T1w T1s (digits
    seed 0), T2w (digits seed 1)`` for a pack, ``digits S_s seed 0 (8 students)``, or a lone
    student's trial id (which names its whole grid point, swept τ, α or lr included)."""
    if stage == "teacher":
        teachers = item["teachers"]
        if len(teachers) == 1:
            t = teachers[0]
            return f"teacher {t['name']} {t['dataset']} seed {t['seed']}"
        where: dict[str, list[str]] = {}
        for t in teachers:
            where.setdefault(f"{t['dataset']} seed {t['seed']}", []).append(t["name"])
        return "teachers " + ", ".join(f"{' '.join(names)} ({w})" for w, names in where.items())
    members = item["trials"]
    first = members[0]
    if len(members) == 1:
        return str(first["trial_id"])
    return f"{first['dataset']} S_{first['student_aug']} seed {first['seed']} ({len(members)} students)"


def run_labels(stage: str, items: list[dict[str, Any]]) -> dict[str, str]:
    """Run id -> label for the items of one stage, unique: a stream cut into several runs
    (``resources.trials_per_run``) gets ``part i/n`` on each."""
    keys = [run_key(stage, item) for item in items]
    labels = [run_label(stage, item) for item in items]
    counts = {label: labels.count(label) for label in labels}
    seen: dict[str, int] = {}
    out = {}
    for key, label in zip(keys, labels, strict=True):
        if counts[label] > 1:
            seen[label] = seen.get(label, 0) + 1
            label = f"{label} part {seen[label]}/{counts[label]}"
        out[key] = label
    return out


class TrialNamer:
    """Tune's ``trial_name_creator``: a trial is named by the run it trains, looked up in
    ``runs`` (a plain class, so Tune can pickle it with the experiment)."""

    def __init__(self, stage: str, items: list[dict[str, Any]], runs: RunBook) -> None:
        self.stage = stage
        self.labels = run_labels(stage, items)
        self.runs = runs

    def __call__(self, trial: Any) -> str:
        key = _trial_run_key(self.stage, self.runs, trial)
        return self.labels.get(key) or key


def trial_dirname(trial: Any) -> str:
    """Tune's ``trial_dirname_creator``: ``group_trial_dec1e_00000``, unique within an
    experiment (Tune's trial id) and safe on any filesystem, where Tune's default would start
    with the trial's name (spaces, parentheses)."""
    return f"{trial.trainable_name}_{trial.trial_id}"


# --- what a report says -------------------------------------------------------------------------


def mean_val_acc(result: dict[str, Any]) -> float | None:
    """The mean validation accuracy in a report: a teacher's ``val/acc``, or the mean of every
    student's ``{trial_id}::val/acc`` in a stream group's report; None if it has none."""
    values = [
        float(v) for k, v in result.items() if report_field(k) == "val/acc" and isinstance(v, (int, float))
    ]
    values = [v for v in values if not math.isnan(v)]
    return sum(values) / len(values) if values else None


def failed_members(result: dict[str, Any]) -> int:
    """How many students (or the teacher) a run's final report says failed."""
    return sum(1 for k, v in result.items() if report_field(k) == STATUS_KEY and v != "ok")


@dataclass
class _Run:
    """What the driver knows of one run (a teacher pack, or a stream group of students)."""

    label: str
    size: int  # students or teachers it trains
    epochs: int  # epochs it trains: a group's students together, a pack's teachers in turn
    per_epoch: int  # members that one of its epochs trains: a group's size, a pack's 1
    epoch: int = 0  # epochs trained so far (of every teacher of a pack before it, too)
    val_acc: float | None = None
    status: str = "pending"
    failed: int = 0  # members (students or teachers) that its final report says failed


class _Progress(DriverCallback):
    """Keeps each run's epoch, accuracy and status from Tune's callbacks (driver side); ``book``
    says which run each Tune trial trains."""

    DRIVER_ONLY = {"stream": None}  # an open stream does not pickle

    def __init__(
        self,
        stage: str,
        items: list[dict[str, Any]],
        epochs: int,
        book: RunBook,
        *,
        stream: TextIO | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.stage = stage
        self.epochs = epochs
        self.book = book
        self.stream = stream
        self.clock = clock
        labels = run_labels(stage, items)
        self.runs = {key: self._new_run(labels[key], item) for key, item in zip(labels, items, strict=True)}
        self.started: float | None = None
        self.changes = 0  # bumped by every update of a run, so a display knows what is new

    @property
    def out(self) -> TextIO:
        return self.stream or sys.stdout

    def _new_run(self, label: str, item: dict[str, Any]) -> _Run:
        if self.stage == "teacher":
            n = len(item["teachers"])
            return _Run(label, n, epochs=n * self.epochs, per_epoch=1)
        n = len(item["trials"])
        return _Run(label, n, epochs=self.epochs, per_epoch=n)

    def _run(self, trial: Any) -> _Run:
        key = _trial_run_key(self.stage, self.book, trial)
        if key not in self.runs:  # not one of the items: keep it visible anyway
            self.runs[key] = _Run(key, 1, epochs=self.epochs, per_epoch=1)
        return self.runs[key]

    def _elapsed(self) -> float:
        now = self.clock()
        if self.started is None:
            self.started = now
        return now - self.started

    def setup(self, **info: Any) -> None:
        self._elapsed()

    def on_trial_start(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self._run(trial).status = "running"
        self.changes += 1

    def on_trial_recover(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self._run(trial).status = "pending"  # Tune runs it again (failure.trial_max_failures)
        self.changes += 1

    def on_trial_result(self, iteration: int, trials: list, trial: Any, result: dict, **info: Any) -> None:
        run = self._run(trial)
        run.status = "running"
        self.changes += 1
        if isinstance(result.get("epoch"), (int, float)):
            # A pack's teachers train in turn: the epochs of those before this one count too.
            run.epoch = int(result["epoch"]) + int(result.get("teacher_index", 0)) * self.epochs
            run.val_acc = mean_val_acc(result)
        elif any(report_field(k) == STATUS_KEY for k in result):
            run.failed = failed_members(result)

    def on_trial_complete(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        run = self._run(trial)
        run.status = "failed" if run.failed >= run.size else "done"
        self.changes += 1

    def on_trial_error(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        run = self._run(trial)
        run.status, run.failed = "failed", run.size
        self.changes += 1

    # -- shared pieces of the two displays

    def counts(self) -> dict[str, int]:
        out = dict.fromkeys(_ORDER, 0)
        for run in self.runs.values():
            out[run.status] = out.get(run.status, 0) + 1
        return out

    def fraction_done(self) -> float:
        """The share of the stage's work done: member-epochs trained (a group's epoch trains
        all its students, a pack's one teacher)."""
        total = sum(run.per_epoch * run.epochs for run in self.runs.values())
        done = sum(
            run.per_epoch * (run.epochs if run.status in ("done", "failed") else min(run.epoch, run.epochs))
            for run in self.runs.values()
        )
        return done / total if total else 1.0

    def eta(self, elapsed: float) -> float | None:
        """Seconds left at the pace so far, None before any epoch is done."""
        done = self.fraction_done()
        if done <= 0:
            return None
        return elapsed * (1 - done) / done


class ProgressTable(_Progress):
    """The default display: a line per run that ends, and a table of runs at the start, every
    :data:`HEARTBEAT_S` seconds while something changes (every :data:`IDLE_HEARTBEAT_S` while
    nothing does) and at the end."""

    def __init__(
        self,
        *args: Any,
        heartbeat_s: float = HEARTBEAT_S,
        idle_heartbeat_s: float = IDLE_HEARTBEAT_S,
        **kwargs: Any,
    ) -> None:
        super().__init__(*args, **kwargs)
        self.heartbeat_s = heartbeat_s
        self.idle_heartbeat_s = idle_heartbeat_s
        self._last_table: float | None = None
        self._changes_shown = -1

    def table(self) -> str:
        """The progress table as text (a header line, then one row per run)."""
        elapsed = self._elapsed()
        counts = self.counts()
        summary = ", ".join(f"{counts[s]} {s}" for s in _ORDER if counts.get(s))
        lines = [
            f"kd-ray: {_STAGE_TITLE.get(self.stage, self.stage)} after "
            f"{format_duration(elapsed)}: {summary} (of {len(self.runs)})"
        ]
        runs = sorted(self.runs.values(), key=lambda r: _ORDER.index(r.status) if r.status in _ORDER else 0)
        shown = runs if len(runs) <= MAX_ROWS else runs[:MAX_ROWS]
        width = max([len("run")] + [len(r.label) for r in shown])
        lines.append(f"  {'run':<{width}}  {'status':<10} {'epoch':>7}  {'mean val acc':>12}")
        for run in shown:
            status = run.status
            if run.failed and status == "done":
                status = f"done, {run.failed} failed"
            epoch = f"{run.epoch}/{run.epochs}" if run.epoch else "-"
            acc = f"{run.val_acc:.3f}" if run.val_acc is not None else "-"
            lines.append(f"  {run.label:<{width}}  {status:<10} {epoch:>7}  {acc:>12}")
        if len(runs) > len(shown):
            rest = [r.status for r in runs[len(shown) :]]
            more = ", ".join(f"{rest.count(s)} {s}" for s in _ORDER if rest.count(s))
            lines.append(f"  ... and {len(rest)} more ({more})")
        return "\n".join(lines)

    def _print_table(self) -> None:
        print(self.table(), file=self.out, flush=True)
        self._last_table, self._changes_shown = self.clock(), self.changes

    def on_step_end(self, iteration: int, trials: list, **info: Any) -> None:
        if self._last_table is None:
            self._print_table()
            return
        since = self.clock() - self._last_table
        changed = self.changes != self._changes_shown
        if since >= (self.heartbeat_s if changed else self.idle_heartbeat_s):
            self._print_table()

    def _ended(self, trial: Any) -> None:
        run = self._run(trial)
        acc = f", mean val acc {run.val_acc:.3f}" if run.val_acc is not None else ""
        failed = f" ({run.failed} of {run.size} failed)" if run.failed and run.status == "done" else ""
        print(
            f"kd-ray: {run.status}: {run.label}, epoch {run.epoch}/{run.epochs}{acc}{failed}",
            file=self.out,
            flush=True,
        )

    def on_trial_complete(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        super().on_trial_complete(iteration, trials, trial, **info)
        self._ended(trial)

    def on_trial_error(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        super().on_trial_error(iteration, trials, trial, **info)
        self._ended(trial)

    def on_experiment_end(self, trials: list, **info: Any) -> None:
        self._print_table()


class ProgressBar(_Progress):
    """``-q``: one line for the stage, ``[#####-----] 3/8 trials done | 1:10 | ETA 1:05``.

    On a terminal it is rewritten in place (``\\r``); otherwise (a log file, a pipe) a plain
    line is printed when a run ends and at least every :data:`PLAIN_EVERY_S` seconds, so a log
    stays short. Counts are trials (students) in the student stage and teachers in the teacher
    stage; the ETA extrapolates the epochs trained so far.
    """

    WIDTH = 24

    def __init__(self, *args: Any, plain_every_s: float = PLAIN_EVERY_S, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.plain_every_s = plain_every_s
        self._last_drawn: float | None = None
        self._drawn_width = 0
        self._last_done = -1

    @property
    def out(self) -> TextIO:
        return self.stream or sys.stderr

    def _tty(self) -> bool:
        isatty = getattr(self.out, "isatty", None)
        return bool(isatty and isatty())

    def line(self) -> str:
        """The progress line as text (no ``\\r``, no newline)."""
        elapsed = self._elapsed()
        noun = "teachers" if self.stage == "teacher" else "trials"
        total = sum(run.size for run in self.runs.values())
        done = sum(run.size for run in self.runs.values() if run.status in ("done", "failed"))
        failed = sum(run.failed for run in self.runs.values())
        filled = int(self.WIDTH * self.fraction_done())
        bar = "#" * filled + "-" * (self.WIDTH - filled)
        eta = self.eta(elapsed)
        parts = [f"kd-ray: {noun} [{bar}] {done}/{total} done"]
        if failed:
            parts[0] += f" ({failed} failed)"
        parts.append(f"{format_duration(elapsed)} elapsed")
        if done < total:
            parts.append(f"ETA {format_duration(eta)}" if eta is not None else "ETA -")
        return " | ".join(parts)

    def _draw(self, *, final: bool = False) -> None:
        now = self.clock()
        tty = self._tty()
        done = sum(1 for run in self.runs.values() if run.status in ("done", "failed"))
        if final and not tty and done == self._last_done:
            return  # the line of the last run's end says it all
        if not final:
            if tty and self._last_drawn is not None and now - self._last_drawn < REDRAW_S:
                return
            if (
                not tty
                and done == self._last_done
                and (self._last_drawn is not None and now - self._last_drawn < self.plain_every_s)
            ):
                return
        text = self.line()
        if tty:
            pad = " " * max(0, self._drawn_width - len(text))
            self.out.write(f"\r{text}{pad}" + ("\n" if final else ""))
            self._drawn_width = 0 if final else len(text)
        else:
            self.out.write(text + "\n")
        self.out.flush()
        self._last_drawn, self._last_done = now, done

    def on_step_end(self, iteration: int, trials: list, **info: Any) -> None:
        if self._tty():  # the elapsed time and ETA tick; a log file gets lines on events only
            self._draw()

    def on_trial_result(self, iteration: int, trials: list, trial: Any, result: dict, **info: Any) -> None:
        super().on_trial_result(iteration, trials, trial, result, **info)
        self._draw()

    def on_trial_complete(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        super().on_trial_complete(iteration, trials, trial, **info)
        self._draw()

    def on_trial_error(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        super().on_trial_error(iteration, trials, trial, **info)
        self._draw()

    def on_experiment_end(self, trials: list, **info: Any) -> None:
        self._draw(final=True)


def progress_callback(
    stage: str, items: list[dict[str, Any]], epochs: int, runs: RunBook, *, quiet: bool
) -> _Progress:
    """The progress display of one stage: the bar with ``-q``, the table without."""
    return (ProgressBar if quiet else ProgressTable)(stage, items, epochs, runs)
