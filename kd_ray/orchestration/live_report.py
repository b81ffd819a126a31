"""A report that is there during the sweep: ``report.html`` rewritten as trials finish.

A paper-scale sweep runs for days; its verdicts form long before it ends. This driver-side
``ray.tune.Callback`` of the student stage rewrites ``RESULTS/NAME/report.html`` at most every
``report.every_minutes`` (README.md#how-a-sweep-runs), marked "partial: N of M trials
finished" (:func:`kd_ray.report.write_report`), so a browser shows where the claims stand.

It checks the clock after each result and each finished trial, never on a timer of its own:
between them nothing that the report shows has changed. It runs after the
:class:`~kd_ray.orchestration.collector.ResultsCollector` in the same callbacks list, so a
finished trial's row is on disk when it looks.

The report is built in a thread of the driver, one at a time, never in Tune's loop. Building
it takes seconds (the claims check, the figures), and a Tune loop held up that long at the end
of a run deadlocks Ray 2.60's Tune function: when the Train run ends while the controller's last
report still waits in the queue between them, the function's own final report fills the result
queue, and the thread that would forward the waiting report blocks on that full queue forever
(seen in tests/test_resume.py). The stage's end waits for a write in progress, so a partial
report never lands after the final one.

What it never does:

- fail the sweep: the Parquet tables are the record, the report only a view of them, so an
  error writing it is one warning and the next interval tries again;
- show half a page: :meth:`kd_ray.storage.Storage.write_bytes` writes a temporary file and
  renames it over the old report;
- write once the stage is over: Tune's last trial ending (or the experiment ending) stops it,
  since the final report, without the mark, follows from the CLI at once;
- write for results that are not on this machine (``s3://...``): the final report of such a
  sweep is ``kd-ray report s3://...``, written where its reader is, and rewriting a few-MB
  object in the bucket every interval is not worth its cost or its credentials in Tune's
  pickled state (only a local path is kept).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import Any

from kd_ray.orchestration.driver_callback import DriverCallback
from kd_ray.report import write_report
from kd_ray.storage import Storage

log = logging.getLogger(__name__)

Clock = Callable[[], float]


class LiveReport(DriverCallback):
    """Rewrites the sweep's ``report.html`` every ``every_minutes`` while the student stage runs.

    Args:
        sweep_uri: the sweep's results directory, ``RESULTS/NAME`` (a path or URI); anything
            not on this machine turns the callback off.
        planned_trials: the student trials the sweep plans (M of "N of M").
        every_minutes: the least time between two writes, counted from construction;
            ``None``: off (``report.every_minutes: null``).
        clock: monotonic seconds; tests pass a fake one.
        in_background: build the report in a thread (see the module docstring); tests of the
            timing pass ``False`` to see the write at once.
    """

    # The clock (a test's may not pickle), the writer thread and the live counters.
    DRIVER_ONLY = {"_clock": None, "_runs_ended": 0, "_stage_over": False, "_writer": None}

    def __init__(
        self,
        sweep_uri: str,
        *,
        planned_trials: int,
        every_minutes: float | None,
        clock: Clock = time.monotonic,
        in_background: bool = True,
    ) -> None:
        storage = Storage.open(sweep_uri)
        # Only a local path is kept: Tune pickles callbacks, and a URI may carry credentials.
        self.sweep_dir: str | None = storage.root if storage.is_local else None
        self.planned_trials = planned_trials
        self.every_s = None if every_minutes is None else every_minutes * 60.0
        self._clock = clock
        self._last_write = clock()
        self._runs_total: int | None = None  # Tune trials (stream groups) of the stage
        self._runs_ended = 0
        self._stage_over = False
        self.in_background = in_background
        self._writer: threading.Thread | None = None

    @property
    def active(self) -> bool:
        """Whether it may still write: on, local results, and the stage not over."""
        return self.sweep_dir is not None and self.every_s is not None and not self._stage_over

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._clock = time.monotonic
        self._last_write = self._clock()

    def setup(
        self, stop: Any = None, num_samples: Any = None, total_num_samples: Any = None, **info: Any
    ) -> None:
        if isinstance(total_num_samples, int) and total_num_samples > 0:
            self._runs_total = total_num_samples

    def on_trial_result(self, iteration: int, trials: list, trial: Any, result: dict, **info: Any) -> None:
        self._maybe_write()

    def on_trial_complete(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self._run_ended()
        self._maybe_write()

    def on_trial_error(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self._run_ended()
        self._maybe_write()

    def on_experiment_end(self, trials: list, **info: Any) -> None:
        self._stage_over = True
        self.wait()

    def wait(self) -> None:
        """Return once a write in progress (if any) has ended."""
        writer = self._writer
        if writer is not None:
            writer.join()

    def _run_ended(self) -> None:
        self._runs_ended += 1
        if self._runs_total is not None and self._runs_ended >= self._runs_total:
            self._stage_over = True  # the last run ended: the final report comes next
            self.wait()

    def _maybe_write(self) -> None:
        if not self.active or self._clock() - self._last_write < self.every_s:
            return
        if self._writer is not None and self._writer.is_alive():  # one write at a time
            return
        finished = self._finished_trials()
        if not finished:  # nothing to report yet; look again at the next result
            return
        self._last_write = self._clock()
        if self.in_background:
            self._writer = threading.Thread(
                target=self._write, args=(finished,), name="kd-ray partial report", daemon=True
            )
            self._writer.start()
        else:
            self._write(finished)

    def _write(self, finished: int) -> None:
        try:
            path = write_report(self.sweep_dir, planned_trials=self.planned_trials)
        except Exception as err:  # a report must never stop the sweep (see the module docstring)
            reason = (str(err).strip().splitlines() or [""])[0] or type(err).__name__
            log.warning("partial report not written (%s); the sweep goes on", reason)
            log.debug("partial report failed", exc_info=True)
            return
        # The CLI's log format adds the "kd-ray: " prefix.
        log.info("partial report: %s (%d of %d trials)", path, finished, self.planned_trials)

    def _finished_trials(self) -> int:
        """The ``trials`` rows present: one file per trial (docs/results.md), so a listing counts
        them without reading the tables twice (the report reads them)."""
        try:
            names = Storage.open(self.sweep_dir).listdir("trials.parquet")
        except Exception:  # unreadable now: the next result looks again
            log.debug("cannot list the trials of %s", self.sweep_dir, exc_info=True)
            return 0
        return sum(1 for name in names if name.endswith(".parquet"))
