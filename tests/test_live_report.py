"""The partial report: ``report.html`` rewritten while a sweep runs (kd_ray.orchestration.live_report).

Fast: the callback is driven by hand, as Tune's loop would, with a fake clock, on a small
results directory of hand-made rows. The end-to-end check (a partial report written during a
real sweep) belongs to a shared sweep of the end-to-end tests.
"""

from __future__ import annotations

import logging
import os
import pickle
import time
from pathlib import Path

import pytest
import yaml
from _analysis_fixtures import sweep, write_results

import kd_ray.orchestration.live_report as live_report
import kd_ray.storage
from kd_ray.config import SweepConfig, dump_config, parse_config
from kd_ray.errors import ConfigError, ResultsError
from kd_ray.orchestration.live_report import LiveReport
from kd_ray.overrides import apply_overrides
from kd_ray.report import write_report

PLANNED = 16  # the fixture grid: 8 permutations × {kd, zscore_kd}
EVERY_MINUTES = 30.0


class FakeClock:
    """Monotonic seconds that move only when a test says so."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now

    def advance(self, minutes: float) -> None:
        self.now += minutes * 60


@pytest.fixture
def half_done(tmp_path: Path) -> Path:
    """A sweep's directory with 6 of its 16 trials finished (rows of the first 6)."""
    return write_results(tmp_path / "half", sweep()[:6])


def _live(sweep_dir: Path | str, clock: FakeClock, **kwargs) -> LiveReport:
    """A callback that writes in the calling thread, so a test sees each write at once (the
    thread a sweep writes in is tested on its own below)."""
    return LiveReport(
        str(sweep_dir),
        planned_trials=PLANNED,
        every_minutes=EVERY_MINUTES,
        clock=clock,
        **{"in_background": False, **kwargs},
    )


def _result(cb: LiveReport) -> None:
    cb.on_trial_result(0, [], trial=None, result={"epoch": 1})


def test_no_write_before_the_interval(half_done: Path) -> None:
    clock = FakeClock()
    cb = _live(half_done, clock)
    clock.advance(EVERY_MINUTES - 0.1)
    _result(cb)
    cb.on_trial_complete(0, [], trial=None)
    assert not (half_done / "report.html").exists()


def test_a_write_after_the_interval_is_marked_partial(
    half_done: Path, caplog: pytest.LogCaptureFixture
) -> None:
    clock = FakeClock()
    cb = _live(half_done, clock)
    clock.advance(EVERY_MINUTES)
    with caplog.at_level(logging.INFO, logger=live_report.__name__):
        _result(cb)
    page = (half_done / "report.html").read_text(encoding="utf-8")
    assert '<p class="partial" id="partial">partial: 6 of 16 trials finished' in page
    assert "<title>kd_ray report · half · partial: 6 of 16 trials finished</title>" in page
    assert 'id="claims"' in page  # the claims check ran on the 6 trials there are
    lines = [r.getMessage() for r in caplog.records if r.name == live_report.__name__]
    assert lines == [f"partial report: {half_done / 'report.html'} (6 of 16 trials)"]
    # The next write waits another interval.
    os.remove(half_done / "report.html")
    clock.advance(EVERY_MINUTES / 2)
    _result(cb)
    assert not (half_done / "report.html").exists()


def test_the_report_is_replaced_whole(half_done: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A reader sees the old page until the new one is complete: written aside, then renamed."""
    target = half_done / "report.html"
    target.write_text("the previous partial report")
    renames: list[tuple[str, str]] = []
    real_replace = os.replace

    def watched_replace(src: str, dst: str) -> None:
        if Path(dst) == target:
            assert target.read_text() == "the previous partial report"
            assert Path(src).read_text(encoding="utf-8").rstrip().endswith("</html>")
            renames.append((src, dst))
        real_replace(src, dst)

    monkeypatch.setattr(kd_ray.storage.os, "replace", watched_replace)
    clock = FakeClock()
    cb = _live(half_done, clock)
    clock.advance(EVERY_MINUTES)
    cb.on_trial_complete(0, [], trial=None)
    [(src, _)] = renames
    assert Path(src).parent == half_done and Path(src).name.startswith(".report.html.")
    assert "partial: 6 of 16" in target.read_text(encoding="utf-8")
    assert not [p.name for p in half_done.iterdir() if p.name.startswith(".")]  # no temp left


def test_a_report_error_is_one_warning_and_the_sweep_goes_on(
    half_done: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    calls = []

    def broken(*args, **kwargs):
        calls.append(args)
        raise ResultsError("cannot write report.html: disk full\nsecond line")

    monkeypatch.setattr(live_report, "write_report", broken)
    clock = FakeClock()
    cb = _live(half_done, clock)
    clock.advance(EVERY_MINUTES)
    with caplog.at_level(logging.INFO, logger=live_report.__name__):
        _result(cb)  # no exception
        _result(cb)  # and no retry at every result: the next interval tries again
    warnings = [r for r in caplog.records if r.levelno >= logging.WARNING]
    assert [r.getMessage() for r in warnings] == [
        "partial report not written (cannot write report.html: disk full); the sweep goes on"
    ]
    assert len(calls) == 1
    clock.advance(EVERY_MINUTES)
    _result(cb)
    assert len(calls) == 2


def test_nothing_for_results_not_on_this_machine(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(live_report, "write_report", pytest.fail)
    clock = FakeClock()
    cb = _live("s3://bucket/kd-ray/demo?region=us-east-1", clock)
    assert cb.sweep_dir is None and not cb.active
    clock.advance(10 * EVERY_MINUTES)
    _result(cb)
    cb.on_trial_complete(0, [], trial=None)


def test_nothing_before_the_first_trial_finishes(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(live_report, "write_report", pytest.fail)
    clock = FakeClock()
    cb = _live(tmp_path / "fresh", clock)
    clock.advance(EVERY_MINUTES)
    _result(cb)  # no rows yet: nothing to report, no warning


def test_off_when_every_minutes_is_null(half_done: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(live_report, "write_report", pytest.fail)
    clock = FakeClock()
    cb = LiveReport(str(half_done), planned_trials=PLANNED, every_minutes=None, clock=clock)
    clock.advance(10 * EVERY_MINUTES)
    _result(cb)


def test_nothing_once_the_stage_is_over(half_done: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The CLI writes the final report next: a partial one then would be wasted, or wrong."""
    monkeypatch.setattr(live_report, "write_report", pytest.fail)
    clock = FakeClock()
    # The last of the stage's Tune runs ended (Tune says how many there are at setup).
    cb = _live(half_done, clock)
    cb.setup(total_num_samples=2)
    cb.on_trial_complete(0, [], trial=None)
    clock.advance(EVERY_MINUTES)
    cb.on_trial_error(0, [], trial=None)
    _result(cb)
    # Or Tune's experiment ended.
    cb = _live(half_done, clock)
    cb.on_experiment_end([])
    clock.advance(EVERY_MINUTES)
    _result(cb)


def test_tune_can_pickle_it_without_its_clock(half_done: Path) -> None:
    cb = _live(half_done, FakeClock())  # a fake clock need not pickle; Tune's copy uses the real one
    cb.__dict__["_clock"] = lambda: 0.0  # a lambda does not pickle
    copy = pickle.loads(pickle.dumps(cb))
    assert copy._clock is time.monotonic and copy.sweep_dir == str(half_done) and copy.active


def test_the_final_report_has_no_partial_mark(half_done: Path) -> None:
    page = write_report(half_done).read_text(encoding="utf-8")
    assert "partial:" not in page and 'class="partial"' not in page
    assert "<title>kd_ray report · half</title>" in page


# -- the report: section of the config -----------------------------------------------------------


def _cfg(**report) -> SweepConfig:
    data = {"name": "s", "datasets": [{"name": "digits"}]}
    return parse_config({**data, "report": report} if report else data)


def test_every_30_minutes_by_default_and_null_turns_it_off() -> None:
    assert _cfg().report.every_minutes == 30
    assert _cfg(every_minutes=0.5).report.every_minutes == 0.5
    assert _cfg(every_minutes=None).report.every_minutes is None
    with pytest.raises(ConfigError, match=r"report\.every_minutes: must be greater than 0 .*null turns"):
        _cfg(every_minutes=0)
    with pytest.raises(ConfigError, match=r"report\.every_mins: unknown key"):
        _cfg(every_mins=5)


def test_set_reaches_it_and_the_default_is_not_saved() -> None:
    """A sweep saved before the section existed has no `report:`; it must still compare equal."""
    plain = _cfg()
    assert "report" not in yaml.safe_load(dump_config(plain))
    changed = apply_overrides(plain, ["report.every_minutes=5"])
    assert changed.report.every_minutes == 5
    assert yaml.safe_load(dump_config(changed))["report"] == {"every_minutes": 5.0}
    assert parse_config(yaml.safe_load(dump_config(changed))) == changed
    assert apply_overrides(plain, ["report.every_minutes=null"]).report.every_minutes is None
    with pytest.raises(ConfigError, match=r"--set report\.every_minutes=-1"):
        apply_overrides(plain, ["report.every_minutes=-1"])


def test_in_a_sweep_the_report_is_built_off_tunes_loop_and_the_stage_end_waits_for_it(
    half_done: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Tune's loop must not wait for a report (a held-up loop deadlocks Ray's Tune function at
    # the end of a run; see the module docstring), and the final report must not be overwritten
    # by a partial one still being written when the stage ends.
    import threading

    started, release = threading.Event(), threading.Event()
    real = live_report.write_report

    def slow_write_report(*args, **kwargs):
        started.set()
        assert release.wait(30)
        return real(*args, **kwargs)

    monkeypatch.setattr(live_report, "write_report", slow_write_report)
    clock = FakeClock()
    cb = _live(half_done, clock, in_background=True)
    clock.advance(EVERY_MINUTES)
    _result(cb)  # returns while the report is being built
    assert started.wait(30) and not (half_done / "report.html").exists()
    clock.advance(EVERY_MINUTES)
    _result(cb)  # one write at a time: this one starts none
    assert pickle.loads(pickle.dumps(cb))._writer is None  # Tune pickles callbacks mid-write
    ender = threading.Thread(target=cb.on_experiment_end, args=([],))
    ender.start()
    ender.join(0.5)
    assert ender.is_alive()  # the stage's end waits for the write in progress
    release.set()
    ender.join(30)
    assert not ender.is_alive()
    assert "partial: 6 of 16 trials finished" in (half_done / "report.html").read_text(encoding="utf-8")
