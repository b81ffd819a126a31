"""Progress a person can read (issue 12, item 3): Tune trials named by what they run, a table of
runs with their epoch and mean val accuracy, ``-q``'s single progress line, and Ray Train's State
API noise dropped in the workers.

Units feed the Tune callbacks fake trials and a fake clock. End to end: the shared reference
sweep runs with ``-q`` and no terminal (its reference.log shows the plain progress lines), and
one sweep here runs without ``-q`` (its teachers reused from the reference) to show the table as
a user sees it; it also saves and resumes a config given with ``--set`` (issue 11, item 2).
"""

from __future__ import annotations

import copy
import importlib.util
import io
import logging
import re
import shutil
from pathlib import Path
from types import SimpleNamespace

import pytest
import yaml
from _sweep_helpers import (
    TINY,
    feature_sweep,
    run_cli,
    table,
    uninterrupted_run,
)

from kd_ray.config import parse_config
from kd_ray.orchestration.cluster import kd_ray_log_level
from kd_ray.orchestration.progress import (
    ProgressBar,
    ProgressTable,
    TrialNamer,
    failed_members,
    mean_val_acc,
    run_labels,
    trial_dirname,
)
from kd_ray.orchestration.runbook import RunBook
from kd_ray.orchestration.worker_setup import (
    CLEANER_LOGGER,
    LOG_LEVEL_ENV,
    REPORT_LOGGER_MODULE,
    REPORT_NOISE,
    STATE_API_NOISE,
    follow_driver_log_level,
    quiet_report_dump,
    quiet_state_api_noise,
    report_logger_name,
)
from kd_ray.plan import TeacherSpec, group_id, pack_id, plan_sweep, stream_groups


def _items(stage: str, trials_per_run: int | None = None, **grid) -> list[dict]:
    plan = plan_sweep(parse_config({**TINY, "grid": {**TINY["grid"], **grid}}), check_names=False)
    if stage == "teacher":  # one teacher per run, as on a cluster with a slot for each
        return [{"pack_id": pack_id((t,)), "teachers": [t.__dict__]} for t in plan.teachers]
    return [
        {"group_id": group_id(g), "trials": [t.__dict__ for t in g]}
        for g in stream_groups(plan.trials, trials_per_run)
    ]


def _trial(stage: str, item: dict, n: int = 0) -> SimpleNamespace:
    """A Tune trial of ``stage`` training ``item``, written in the stage's book as the capacity
    gate writes it. It has no config: the display finds its run in the book only."""
    name = "teacher_trial" if stage == "teacher" else "group_trial"
    trial = SimpleNamespace(trainable_name=name, trial_id=f"c15e4_{n:05d}")
    _BOOKS[stage].record(trial.trial_id, item)
    return trial


_BOOKS = {"teacher": RunBook("teacher"), "group": RunBook("group")}


class _Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def _report(item: dict, epoch: int, accs: list[float]) -> dict:
    result = {"epoch": epoch, "training_iteration": epoch}
    for trial, acc in zip(item["trials"], accs, strict=True):
        result[f"{trial['trial_id']}::val/acc"] = acc
        result[f"{trial['trial_id']}::train/acc"] = 0.99  # not a val accuracy
    return result


# --- names ------------------------------------------------------------------------------------


def test_runs_are_named_by_what_they_train():
    teachers = run_labels("teacher", _items("teacher"))
    assert sorted(teachers.values()) == ["teacher T1s synthetic seed 0", "teacher T1w synthetic seed 0"]
    groups = _items("group")
    assert list(run_labels("group", groups).values()) == [
        "synthetic S_w seed 0 (2 students)",
        "synthetic S_s seed 0 (2 students)",
    ]
    # One student per run: the run is named by the student's trial id, its whole grid point.
    alone = run_labels("group", _items("group", trials_per_run=1, seeds=[3], temperatures=[4, 10]))
    assert "synthetic-T1s_Sw-kd-full-tau4-s3" in alone.values() and len(set(alone.values())) == 8


def test_a_stream_cut_into_several_runs_gets_unique_names():
    items = _items("group", trials_per_run=2, losses=["kd", "zscore_kd"])  # 4 students per stream
    labels = list(run_labels("group", items).values())
    assert len(labels) == 4 and len(set(labels)) == 4
    assert labels[:2] == [
        "synthetic S_w seed 0 (2 students) part 1/2",
        "synthetic S_w seed 0 (2 students) part 2/2",
    ]


def test_tune_gets_the_names_and_short_safe_directories():
    items = _items("group")
    namer = TrialNamer("group", items, _BOOKS["group"])
    assert namer(_trial("group", items[1], 1)) == "synthetic S_s seed 0 (2 students)"
    # Tune deep-copies its experiment spec, namer included, for every trial: the copy still
    # finds the runs handed out after it was made.
    copied = copy.deepcopy(namer)
    assert copied(_trial("group", items[0], 2)) == "synthetic S_w seed 0 (2 students)"
    assert namer(SimpleNamespace(trial_id="not_ours")) == "not_ours"
    # Tune's default directory would start with that name (spaces, parentheses); ours is its id.
    assert trial_dirname(_trial("group", items[1], 1)) == "group_trial_c15e4_00001"
    teachers = _items("teacher")
    namer = TrialNamer("teacher", teachers, _BOOKS["teacher"])
    assert namer(_trial("teacher", teachers[0])) == "teacher T1w synthetic seed 0"


def test_reports_give_the_mean_val_accuracy_and_the_failures():
    item = _items("group")[0]
    assert mean_val_acc(_report(item, 2, [0.5, 0.25])) == pytest.approx(0.375)
    assert mean_val_acc({"val/acc": 0.75, "train/acc": 1.0, "epoch": 3}) == 0.75  # a teacher
    assert mean_val_acc({"epoch": 1}) is None
    ids = [t["trial_id"] for t in item["trials"]]
    assert failed_members({f"{ids[0]}::kd_status": "ok", f"{ids[1]}::kd_status": "failed"}) == 1
    assert failed_members({"kd_status": "failed", "kd_error": "x"}) == 1


# --- the table ----------------------------------------------------------------------------------


def test_the_table_shows_each_run_with_its_epoch_and_mean_val_accuracy():
    items = _items("group")
    out, clock = io.StringIO(), _Clock()
    progress = ProgressTable("group", items, 4, _BOOKS["group"], stream=out, clock=clock)
    progress.setup()
    trials = [_trial("group", item, i) for i, item in enumerate(items)]
    progress.on_step_end(0, trials)  # the first table, everything pending
    assert "synthetic S_w seed 0 (2 students)  pending" in out.getvalue()
    progress.on_trial_start(1, trials, trials[0])
    progress.on_trial_result(2, trials, trials[0], _report(items[0], 3, [0.5, 0.25]))
    clock.now += 10
    progress.on_step_end(3, trials)  # within the heartbeat: no table
    assert out.getvalue().count("kd-ray: student runs") == 1
    clock.now += 25
    progress.on_step_end(4, trials)
    text = out.getvalue()
    assert "kd-ray: student runs after 0:35: 1 running, 1 pending (of 2)" in text
    assert re.search(r"synthetic S_w seed 0 \(2 students\)\s+running\s+3/4\s+0\.375", text), text
    # A run ends: one line, and its final status report does not hide its last epoch.
    ids = [t["trial_id"] for t in items[0]["trials"]]
    progress.on_trial_result(
        5, trials, trials[0], {f"{ids[0]}::kd_status": "ok", f"{ids[1]}::kd_status": "ok"}
    )
    progress.on_trial_complete(6, trials, trials[0])
    assert "kd-ray: done: synthetic S_w seed 0 (2 students), epoch 3/4, mean val acc 0.375" in out.getvalue()
    progress.on_trial_error(7, trials, trials[1])
    assert "kd-ray: failed: synthetic S_s seed 0 (2 students), epoch 0/4" in out.getvalue()
    progress.on_experiment_end(trials)
    final = out.getvalue().split("kd-ray: student runs after")[-1]
    assert "1 failed, 1 done (of 2)" in final
    assert final.index("S_s seed 0") < final.index("S_w seed 0")  # failed runs are listed first


def test_an_idle_table_waits_longer_and_a_long_one_is_cut():
    items = _items("group", trials_per_run=1, seeds=list(range(6)))  # 24 runs of one student
    out, clock = io.StringIO(), _Clock()
    progress = ProgressTable(
        "group", items, 4, _BOOKS["group"], stream=out, clock=clock, heartbeat_s=30, idle_heartbeat_s=600
    )
    trials = [_trial("group", item, i) for i, item in enumerate(items)]
    progress.on_step_end(0, trials)
    clock.now += 60
    progress.on_step_end(1, trials)  # nothing changed: no new table yet
    assert out.getvalue().count("kd-ray: student runs") == 1
    clock.now += 600
    progress.on_step_end(2, trials)
    text = out.getvalue().split("kd-ray: student runs")[-1]
    # The header, 20 rows, and the rest in one line.
    assert text.count("pending") == 1 + 20 + 1 and "... and 4 more (4 pending)" in text


# --- the -q line --------------------------------------------------------------------------------


def test_the_quiet_line_counts_trials_and_extrapolates_the_eta():
    items = _items("group")
    out, clock = io.StringIO(), _Clock()
    bar = ProgressBar("group", items, 4, _BOOKS["group"], stream=out, clock=clock)
    bar.setup()
    trials = [_trial("group", item, i) for i, item in enumerate(items)]
    bar.on_trial_start(0, trials, trials[0])
    clock.now += 20
    bar.on_trial_result(1, trials, trials[0], _report(items[0], 2, [0.5, 0.5]))
    # A quarter of the student-epochs in 20 s: 60 s to go.
    assert bar.line() == "kd-ray: trials [######------------------] 0/4 done | 0:20 elapsed | ETA 1:00"
    clock.now += 20
    bar.on_trial_result(2, trials, trials[0], _report(items[0], 4, [0.5, 0.5]))
    bar.on_trial_complete(3, trials, trials[0])
    clock.now += 20
    bar.on_trial_complete(4, trials, trials[1])
    bar.on_experiment_end(trials)
    lines = out.getvalue().splitlines()
    # No terminal: a plain line when a run ends (and now and then), none per epoch, no repeat at the end.
    assert lines == [
        "kd-ray: trials [######------------------] 0/4 done | 0:20 elapsed | ETA 1:00",
        "kd-ray: trials [############------------] 2/4 done | 0:40 elapsed | ETA 0:40",
        "kd-ray: trials [########################] 4/4 done | 1:00 elapsed",
    ], lines


def test_on_a_terminal_the_quiet_line_is_rewritten_in_place():
    items = _items("teacher")
    out, clock = _Terminal(), _Clock()
    bar = ProgressBar("teacher", items, 1, _BOOKS["teacher"], stream=out, clock=clock)
    trials = [_trial("teacher", item, i) for i, item in enumerate(items)]
    bar.on_step_end(0, trials)
    clock.now += 0.5
    bar.on_step_end(1, trials)  # redrawn at most once a second
    clock.now += 5
    bar.on_trial_result(2, trials, trials[0], {"epoch": 1, "val/acc": 0.5})
    bar.on_trial_complete(3, trials, trials[0])  # within the second: drawn with the next event
    clock.now += 5
    bar.on_trial_error(4, trials, trials[1])
    bar.on_experiment_end(trials)
    text = out.getvalue()
    assert "\n" not in text[:-1] and text.endswith("\n") and text.count("\r") == 4, repr(text)
    assert text.rstrip("\n").split("\r")[-1].rstrip() == (
        "kd-ray: teachers [########################] 2/2 done (1 failed) | 0:10 elapsed"
    )


def test_a_teacher_pack_is_named_by_its_teachers_and_counts_their_epochs_in_turn():
    # Two teachers of seed 0 and two of seed 1 in one run (a pack: kd_ray.cohort.teacher_packs).
    teachers = [item["teachers"][0] for item in _items("teacher", seeds=[0, 1])]
    pack = {"pack_id": pack_id([TeacherSpec(**t) for t in teachers]), "teachers": teachers}
    assert run_labels("teacher", [pack]) == {
        pack["pack_id"]: "teachers T1w T1s (synthetic seed 0), T1w T1s (synthetic seed 1)"
    }
    out, clock = io.StringIO(), _Clock()
    progress = ProgressTable("teacher", [pack], 3, _BOOKS["teacher"], stream=out, clock=clock)
    trials = [_trial("teacher", pack)]
    progress.on_trial_start(0, trials, trials[0])
    # The third teacher's second epoch: two teachers of 3 epochs before it.
    result = {"epoch": 2, "val/acc": 0.5, "teacher": teachers[2]["teacher_id"], "teacher_index": 2}
    progress.on_trial_result(1, trials, trials[0], result)
    assert progress.fraction_done() == pytest.approx(8 / 12)
    assert re.search(r"running\s+8/12\s+0\.500", progress.table()), progress.table()


def test_callbacks_pickle_without_their_stream():
    # Tune pickles callbacks into its experiment state; a terminal stream cannot be pickled.
    import pickle

    bar = ProgressBar("teacher", _items("teacher"), 1, _BOOKS["teacher"], stream=_Terminal())
    assert pickle.loads(pickle.dumps(bar)).stream is None


# --- State API noise ------------------------------------------------------------------------------


def test_the_worker_hook_drops_the_state_api_warning_only(caplog):
    quiet_state_api_noise()
    quiet_state_api_noise()  # idempotent: Ray may run the hook's module twice
    logger = logging.getLogger(CLEANER_LOGGER)
    assert len(logger.filters) == 1
    with caplog.at_level(logging.WARNING, CLEANER_LOGGER):
        logger.warning(
            "Failed to query Ray Train Controller actor state. State API may be temporarily "
            "unavailable. Continuing to monitor."
        )
        logger.warning("Controller actor died but placement group is still alive; removing it.")
    assert [r.getMessage()[:19] for r in caplog.records] == ["Controller actor di"]


def test_the_noise_is_still_where_the_hook_looks_in_this_ray():
    # The filter names Ray's logger by its module: an upgrade that moves the message must fail here.
    spec = importlib.util.find_spec(CLEANER_LOGGER)
    assert spec is not None and spec.origin, CLEANER_LOGGER
    source = Path(spec.origin).read_text()
    assert "logger = logging.getLogger(__name__)" in source and STATE_API_NOISE in source


def test_the_report_dump_is_where_the_hook_looks_in_this_ray():
    # Ray Train's per-report logger is named by its file's path: an upgrade that renames the
    # file or the logger must fail here rather than let the dump back into every sweep's output.
    import importlib

    module = importlib.import_module(REPORT_LOGGER_MODULE)
    assert module.logger.name == report_logger_name()
    assert REPORT_NOISE in Path(module.__file__).read_text()
    quiet_report_dump()
    assert not module.logger.isEnabledFor(logging.INFO) and module.logger.isEnabledFor(logging.WARNING)


# --- kd_ray's own lines in the workers --------------------------------------------------------------


@pytest.mark.parametrize("driver", [logging.WARNING, logging.INFO, logging.DEBUG])
def test_workers_log_at_the_drivers_kd_ray_level(monkeypatch, driver):
    kd_ray_logger = logging.getLogger("kd_ray")
    monkeypatch.setattr(kd_ray_logger, "level", driver)
    sent = kd_ray_log_level()  # what the driver puts in the sweep's environment
    assert sent == logging.getLevelName(driver)
    monkeypatch.setattr(kd_ray_logger, "level", logging.NOTSET)  # a fresh worker process
    monkeypatch.setenv(LOG_LEVEL_ENV, sent)
    follow_driver_log_level()
    assert kd_ray_logger.level == driver


@pytest.mark.parametrize("value", [None, "", "LOUD", "Level 7"])
def test_a_worker_without_a_known_driver_level_keeps_its_own(monkeypatch, value):
    kd_ray_logger = logging.getLogger("kd_ray")
    monkeypatch.setattr(kd_ray_logger, "level", logging.ERROR)
    if value is None:
        monkeypatch.delenv(LOG_LEVEL_ENV, raising=False)
    else:
        monkeypatch.setenv(LOG_LEVEL_ENV, value)
    follow_driver_log_level()
    assert kd_ray_logger.level == logging.ERROR


# --- end to end ---------------------------------------------------------------------------------


@pytest.mark.slow
def test_quiet_sweep_prints_plain_progress_lines():
    # The shared reference sweep ran with -q and its output captured (no terminal).
    log = (uninterrupted_run().parent / "reference.log").read_text()
    assert re.search(r"^kd-ray: teachers \[#+\] 2/2 done \| \d+:\d\d elapsed$", log, re.M), log[-3000:]
    assert re.search(r"^kd-ray: trials \[#+\] 4/4 done \| \d+:\d\d elapsed$", log, re.M), log[-3000:]
    assert "\r" not in log
    assert REPORT_NOISE not in log  # the worker hook keeps Ray Train's report dump out
    # Neither Tune's output nor kd-ray's per-trial info lines.
    assert "Configuration for experiment" not in log and "Trial status:" not in log
    assert not re.search(r"^kd-ray: trial \S+: ok$", log, re.M)
    # Nor the workers' info lines, nor Ray's and Tune's driver-side ones.
    assert "synthetic: 4 classes" not in log and "Wrote the latest version" not in log


@pytest.mark.slow
def test_sweep_shows_readable_runs_and_saves_and_resumes_its_overrides(tmp_path):
    # The shared feature sweep, in its default (not quiet) output: one stream group of two
    # students (τ = 4 and 10), for 2 epochs at lr 0.04 given by --set.
    config, results, done, overrides = feature_sweep()
    output = done.stdout + done.stderr
    assert done.returncode == 0, output[-4000:]
    # The table names the run by what it trains and shows its epoch and mean val accuracy.
    assert re.search(r"^  run\s+status\s+epoch\s+mean val acc$", done.stdout, re.M), done.stdout
    row = re.search(r"^  synthetic S_w seed 0 \(2 students\)\s+done\s+2/2\s+(\d\.\d{3})$", done.stdout, re.M)
    assert row, done.stdout[-3000:]
    final = table(results / "tiny", "epochs").query("epoch == 2 and split == 'val'")["acc"].mean()
    assert float(row.group(1)) == pytest.approx(final, abs=5e-4 + 1e-9)  # printed to 3 decimals
    assert "kd-ray: done: synthetic S_w seed 0 (2 students), epoch 2/2, mean val acc" in done.stdout
    # None of Tune's own table: no trainable_xxx names, no truncated dicts, no experiment box.
    assert not re.search(r"group_trial_[0-9a-f]{5}_\d{5}", output), output[-3000:]
    assert "')}]}" not in output and "Configuration for experiment" not in output
    assert "State API may be temporarily unavailable" not in output
    assert "synthetic: 4 classes" in output  # without -q the workers' info lines stay
    # The effective config is what the sweep saved and trained.
    saved = yaml.safe_load((results / "tiny" / "config.yaml").read_text())
    assert (saved["student"]["train"]["epochs"], saved["student"]["train"]["lr"]) == (2, 0.04)
    assert set(table(results / "tiny", "epochs")["epoch"]) == {1, 2}

    # --resume compares the saved config with the effective one: with the same --set, the finished
    # sweep is kept (nothing left to run, so Ray does not start). On a copy: the sweep is shared.
    results = tmp_path / "results"
    shutil.copytree(feature_sweep()[1], results)
    again = run_cli("sweep", str(config), *overrides, "--results", str(results), "--resume", "--no-report")
    assert again.returncode == 0, (again.stdout + again.stderr)[-3000:]
    assert "2 trial(s) ok, 0 failed (2 already finished)" in again.stdout, again.stdout
