"""Resume after the driver is killed (SIGKILL of its whole process tree, local Ray included).

The resumed sweep must skip finished trials, continue unfinished ones from their last epoch
checkpoint, not retrain teachers, leave one row per key, and end with the same metrics as an
uninterrupted run of the same config (CPU, fixed seeds: exactly, or to 1e-9).
"""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import pytest
from _sweep_helpers import (
    assert_no_processes_under,
    assert_same_results,
    copy_teachers,
    kill_tree,
    owner_files,
    ray_tmpdir,
    run_cli,
    start_cli,
    table,
    uninterrupted_run,
    wait_for,
    write_config,
)

pytestmark = pytest.mark.slow


def _finished(sweep: Path) -> set[str]:
    folder = sweep / "trials.parquet"
    return {p.stem for p in folder.glob("*.parquet")} if folder.exists() else set()


def _started(sweep: Path) -> set[str]:
    folder = sweep / "epochs.parquet"
    return {p.stem for p in folder.glob("*.parquet")} if folder.exists() else set()


def _stream(trial_id: str) -> str:
    """The student augmentation of a trial id like ``synthetic-T1w_Sw-kd-full-s0``."""
    return trial_id.split("-")[1].rsplit("_", 1)[1]


def _one_group_done_another_running(sweep: Path) -> bool:
    # A stream group's rows are written one trial after another: a group counts as done only
    # when a trial of a *different* stream has started, i.e. the next run is under way.
    finished = _finished(sweep)
    done = {_stream(t) for t in finished}
    return bool(finished) and any(_stream(t) not in done for t in _started(sweep) - finished)


def test_resume_after_driver_sigkill_matches_uninterrupted_run(tmp_path):
    reference = uninterrupted_run() / "tiny"
    # One run at a time, so one stream group has finished while the other is mid-way.
    config = write_config(tmp_path, {"resources": {"max_concurrent_trials": 1}})
    results = tmp_path / "results"
    copy_teachers(reference.parent, results)  # trained teachers in the store: resume must keep them
    sweep = results / "tiny"
    ray_tmp = ray_tmpdir()
    proc = start_cli(
        "sweep",
        str(config),
        "--results",
        str(results),
        "--no-report",
        "-q",
        log=tmp_path / "first.log",
        ray_tmp=ray_tmp,
    )
    try:
        # Kill once a trial has finished while another is mid-way (it has reported an epoch,
        # so its checkpoint is registered).
        wait_for(
            lambda: _one_group_done_another_running(sweep),
            timeout=400,
            what="one finished and one running trial",
            proc=proc,
        )
    finally:
        kill_tree(proc, ray_tmp)
    assert_no_processes_under(ray_tmp)
    shutil.rmtree(ray_tmp, ignore_errors=True)

    finished = _finished(sweep)
    running = _started(sweep) - finished
    assert finished and running
    teachers_before = {p.name: p.stat().st_mtime_ns for p in (results / "_teachers").glob("*.pt")}
    assert len(teachers_before) == 2
    kept = {name: data for name, data in owner_files(sweep, "trials").items() if Path(name).stem in finished}

    done = run_cli("sweep", str(config), "--results", str(results), "--no-report", "-q", "--resume")
    output = done.stdout + done.stderr
    assert done.returncode == 0, output[-4000:]
    assert f"({len(finished)} already finished)" in done.stdout
    assert "teachers trained 0, reused 2" in done.stdout

    # Finished trials were not rerun: their rows are byte-for-byte the ones written before.
    after = owner_files(sweep, "trials")
    assert {name: after[name] for name in kept} == kept
    # Unfinished trials continued from their last epoch checkpoint, not from scratch.
    for trial_id in running:
        assert re.search(rf"{re.escape(trial_id)}: resuming from its epoch [1-9]\d* checkpoint", output), (
            trial_id,
            output[-4000:],
        )
    # Teachers were not retrained.
    assert {p.name: p.stat().st_mtime_ns for p in (results / "_teachers").glob("*.pt")} == teachers_before

    trials, epochs = table(sweep, "trials"), table(sweep, "epochs")
    assert len(trials) == 4 and trials["trial_id"].is_unique and (trials["status"] == "ok").all()
    assert not epochs.duplicated(["trial_id", "epoch", "split"]).any()
    assert len(epochs) == 4 * 4 * 3  # trials x epochs x splits
    assert not table(sweep, "calibration").duplicated(["trial_id", "split", "bin"]).any()
    assert_same_results(trials, table(reference, "trials"), ["trial_id"])
    assert_same_results(epochs, table(reference, "epochs"), ["trial_id", "epoch", "split"])
    assert_same_results(
        table(sweep, "calibration"), table(reference, "calibration"), ["trial_id", "split", "bin"]
    )
