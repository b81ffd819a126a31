"""Resume after the driver is killed (SIGKILL of its whole process tree, local Ray included).

The resumed sweep must skip finished trials, continue unfinished ones from their last epoch
checkpoint, not retrain teachers, leave one row per key, and end with the same metrics as an
uninterrupted run of the same config (CPU, fixed seeds: exactly, or to 1e-9).

One killed sweep (``killed``, kept pristine) serves every case: a plain resume; a rerun after
the config changed under a kept ``_ray/`` (its checkpoints are stale, never restored); a resume
through a corrupt checkpoint and a truncated checkpoint snapshot with ``trials_per_run``
changed and a finished trial's rows incomplete; and a resume that would change the numerics.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import time
from pathlib import Path

import pytest
import torch
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
    user_error_line,
    wait_for,
    write_config,
)

from kd_ray.models import load_student

# The first test that uses `killed` also pays for the reference run and the killed sweep.
pytestmark = [pytest.mark.slow, pytest.mark.timeout(1200)]

ONE_AT_A_TIME = {"resources": {"max_concurrent_trials": 1}}


def _finished(sweep: Path) -> set[str]:
    folder = sweep / "trials.parquet"
    return {p.stem for p in folder.glob("*.parquet")} if folder.exists() else set()


def _started(sweep: Path) -> set[str]:
    folder = sweep / "epochs.parquet"
    return {p.stem for p in folder.glob("*.parquet")} if folder.exists() else set()


def _stream(trial_id: str) -> str:
    """The student augmentation of a trial id like ``synthetic-T1w_Sw-kd-full-s0``."""
    return trial_id.split("-")[1].rsplit("_", 1)[1]


def _perm(trial_id: str) -> str:
    return trial_id.split("-")[1]


def _one_group_done_another_running(sweep: Path) -> bool:
    # A stream group's rows are written one trial after another: a group counts as done only
    # when a trial of a *different* stream has started, i.e. the next run is under way.
    finished = _finished(sweep)
    done = {_stream(t) for t in finished}
    return bool(finished) and any(_stream(t) not in done for t in _started(sweep) - finished)


def _checkpoints(root: Path) -> list[Path]:
    return sorted(p for p in root.rglob("checkpoint_*") if p.is_dir())


@pytest.fixture(scope="module")
def killed(tmp_path_factory) -> dict:
    """A sweep SIGKILLed with one stream group finished and the other mid-way (kept pristine)."""
    root = tmp_path_factory.mktemp("killed")
    reference = uninterrupted_run()
    # One run at a time, so one stream group has finished while the other is mid-way.
    config = write_config(root, ONE_AT_A_TIME)
    results = root / "results"
    copy_teachers(reference, results)  # trained teachers in the store: resume must keep them
    sweep = results / "tiny"
    ray_tmp = ray_tmpdir()
    proc = start_cli(
        "sweep",
        str(config),
        "--results",
        str(results),
        "--no-report",
        "-q",
        log=root / "first.log",
        ray_tmp=ray_tmp,
    )
    try:
        # Kill once a group has finished while another is mid-way (it has reported an epoch,
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
    manifests = {
        p.parent.name: json.loads(p.read_text()) for p in (sweep / "_ray").glob("*/kd_ray_group.json")
    }
    group = next(name for name, m in manifests.items() if running <= set(m["trials"]))
    assert _checkpoints(sweep / "_ray" / group)
    return {"root": root, "finished": finished, "running": running, "group": group}


def _copy(killed: dict, tmp_path: Path) -> Path:
    """A private copy of the killed sweep's results directory."""
    results = tmp_path / "results"
    shutil.copytree(killed["root"] / "results", results)
    return results


def test_resume_after_driver_sigkill_matches_uninterrupted_run(killed, tmp_path):
    reference = uninterrupted_run() / "tiny"
    results = _copy(killed, tmp_path)
    # report.every_minutes may change on --resume; this small, the resumed group's first result
    # rewrites report.html as a partial report (issue 12, item 4): 2 of the 4 trials are done.
    config = write_config(tmp_path, {**ONE_AT_A_TIME, "report": {"every_minutes": 0.001}})
    sweep = results / "tiny"
    finished, running = killed["finished"], killed["running"]
    teachers_before = {p.name: p.stat().st_mtime_ns for p in (results / "_teachers").glob("*.pt")}
    assert len(teachers_before) == 2
    kept = {name: data for name, data in owner_files(sweep, "trials").items() if Path(name).stem in finished}

    done = run_cli("sweep", str(config), "--results", str(results), "--resume", shared=True)
    output = done.stdout + done.stderr
    assert done.returncode == 0, output[-4000:]
    assert f"({len(finished)} already finished)" in done.stdout
    assert "teachers trained 0, reused 2" in done.stdout
    partial = f"kd-ray: partial report: {sweep / 'report.html'} ({len(finished)} of 4 trials)"
    assert partial in output, output[-4000:]
    assert f"kd-ray: report: {sweep / 'report.html'}" in done.stdout  # then the final one

    # Finished trials were not rerun: their rows are byte-for-byte the ones written before.
    after = owner_files(sweep, "trials")
    assert {name: after[name] for name in kept} == kept
    # Unfinished trials continued from their last epoch checkpoint, not from scratch.
    for trial_id in running:
        assert re.search(
            rf"{re.escape(trial_id)}: resuming from its epoch [1-9]\d* checkpoint(?!;)", output
        ), (
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


def test_finished_runs_keep_no_training_checkpoints_only_small_student_weights():
    # Issue 9, item 16: once a teacher is stored or a group's rows are written, its Train run's
    # checkpoints are deleted; each finished student keeps its final weights alone.
    results = uninterrupted_run()
    assert _checkpoints(results) == []
    trials = table(results / "tiny", "trials")
    weights = sorted((results / "tiny" / "students").glob("*.pt"))
    assert [p.stem for p in weights] == sorted(trials["trial_id"])
    state = torch.load(weights[0], weights_only=True)
    assert state["format"] == "kd_ray.student.v2" and set(state) >= {"state_dict", "fingerprint"}
    assert all(isinstance(v, torch.Tensor) for v in state["state_dict"].values())  # no optimiser
    assert not [p for p in results.rglob("*.tmp")]


def test_a_stale_checkpoint_is_not_restored_after_the_config_changed(killed, tmp_path):
    # Issue 9, item 1: config.yaml and the tables deleted, _ray/ kept, the student lr changed:
    # the mid-way group's checkpoints were made with the old lr and must not be restored.
    results = _copy(killed, tmp_path)
    sweep = results / "tiny"
    (sweep / "config.yaml").unlink()
    for name in ("trials", "epochs", "calibration", "teachers"):
        shutil.rmtree(sweep / f"{name}.parquet", ignore_errors=True)
    running = sorted(killed["running"])
    config = write_config(
        tmp_path,
        {
            **ONE_AT_A_TIME,
            "student": {"train": {"lr": 0.5}},
            # Only the mid-way group: the same members, so the same Train run name.
            "grid": {"permutations": [_perm(t) for t in running]},
        },
    )
    done = run_cli("sweep", str(config), "--results", str(results), "--no-report", "-q", shared=True)
    output = done.stdout + done.stderr
    assert done.returncode == 0, output[-4000:]
    for trial_id in running:
        line = re.search(rf"{re.escape(trial_id)}: starting fresh, no usable checkpoint \(.*\n", output)
        assert line and "changed: student" in line.group(0), output[-4000:]
        assert f"{trial_id}: resuming" not in output
    epochs = table(sweep, "epochs")
    assert sorted(set(epochs["trial_id"])) == running
    assert len(epochs) == len(running) * 4 * 3  # every epoch from 1: a fresh start
    ref = table(uninterrupted_run() / "tiny", "epochs").set_index(["trial_id", "epoch", "split"])
    new = epochs[epochs["split"] == "train"].set_index(["trial_id", "epoch", "split"])
    assert (new["loss"] != ref.loc[new.index, "loss"]).all()  # the new lr, not the old weights


def test_corrupt_checkpoints_fall_back_and_incomplete_rows_are_repaired(killed, tmp_path):
    # Issue 9, items 10, 4, 2 and 16: the mid-way group's newest checkpoint is garbage and Ray's
    # checkpoint snapshot was truncated by the kill; a finished trial lost its calibration rows;
    # the driver died before writing any epoch row of the mid-way group (a worker stores each
    # checkpoint before the driver sees its report, so it may be epochs ahead of the rows);
    # trials_per_run changed to 1; a write interrupted long ago left a .tmp file; the other
    # finished trial lost its exported student (its rows are whole, its weights the product).
    reference = uninterrupted_run() / "tiny"
    results = _copy(killed, tmp_path)
    sweep = results / "tiny"
    run_dir = sweep / "_ray" / killed["group"]
    kept = [p.name for p in _checkpoints(run_dir)]
    (run_dir / kept[-1] / "state.pt").write_bytes(b"\x00garbage")
    snapshot = run_dir / "checkpoint_manager_snapshot.json"
    snapshot.write_bytes(snapshot.read_bytes()[:40])
    repaired = sorted(killed["finished"])[0]
    (sweep / "calibration.parquet" / f"{repaired}.parquet").unlink()
    (unexported,) = set(killed["finished"]) - {repaired}
    sidecar = json.loads((sweep / "students" / f"{unexported}.json").read_text())
    (sweep / "students" / f"{unexported}.pt").unlink()
    for trial_id in killed["running"]:
        (sweep / "epochs.parquet" / f"{trial_id}.parquet").unlink()
    orphan = sweep / "trials.parquet" / f".{repaired}.parquet.{'a' * 32}.tmp"
    orphan.write_bytes(b"half")
    an_hour_ago = time.time() - 3600
    os.utime(orphan, (an_hour_ago, an_hour_ago))

    config = write_config(tmp_path, {"resources": {"max_concurrent_trials": 1, "trials_per_run": 1}})
    done = run_cli(
        "sweep", str(config), "--results", str(results), "--no-report", "-q", "--resume", shared=True
    )
    output = done.stdout + done.stderr
    assert done.returncode == 0, output[-4000:]
    assert "checkpoint_manager_snapshot.json is unreadable" in output, output[-4000:]
    for trial_id in killed["running"]:
        # The same group continued (not orphaned by trials_per_run), past the corrupt checkpoint.
        unreadable = rf"{kept[-1]}: its state\.pt is not a readable checkpoint"
        if len(kept) > 1:
            expected = (
                rf"{re.escape(trial_id)}: resuming from its epoch \d+ checkpoint; passed over {unreadable}"
            )
        else:
            expected = rf"{re.escape(trial_id)}: starting fresh, no usable checkpoint \({unreadable}"
        assert re.search(expected, output), output[-4000:]
    assert f"trial {repaired}: its trials row says ok but its calibration rows are missing" in output
    assert f"trial {unexported}: its trials row says ok but its exported student" in output
    assert not orphan.exists()
    # Exported again, by the same computation: the same fingerprint, and a model that loads.
    weights = torch.load(sweep / "students" / f"{unexported}.pt", weights_only=True)
    assert weights["fingerprint"]["digest"] == sidecar["fingerprint"]
    load_student(sweep / "students" / f"{unexported}.pt")

    for name, keys in (
        ("trials", ["trial_id"]),
        ("epochs", ["trial_id", "epoch", "split"]),
        ("calibration", ["trial_id", "split", "bin"]),
    ):
        assert_same_results(table(sweep, name), table(reference, name), keys)
    assert _checkpoints(results) == []


def test_resume_of_a_finished_sweep_refuses_other_numerics_too(tmp_path):
    # Nothing would run, but the saved config would be rewritten to numerics none of the trials
    # had (and every teacher retrained under its new id); a later grow would mix the two.
    results = tmp_path / "results"
    shutil.copytree(uninterrupted_run(), results, ignore=shutil.ignore_patterns("_ray"))
    saved = (results / "tiny" / "config.yaml").read_bytes()
    teachers = sorted(p.name for p in (results / "_teachers").iterdir())
    config = write_config(tmp_path, {"runtime": {"channels_last": True}})
    done = run_cli(
        "sweep", str(config), "--results", str(results), "--no-report", "-q", "--resume", shared=True
    )
    assert done.returncode == 2, (done.stdout + done.stderr)[-4000:]
    line = user_error_line(done.stderr)
    assert (
        "runtime.channels_last" in line
        and "its 4 finished trial(s) were computed with the saved setting" in line
    )
    assert (results / "tiny" / "config.yaml").read_bytes() == saved
    assert sorted(p.name for p in (results / "_teachers").iterdir()) == teachers


def test_resume_refuses_to_change_numerics_under_unfinished_trials(killed, tmp_path):
    # Issue 9, item 2: channels-last changes the numbers; the mid-way group would mix two.
    results = _copy(killed, tmp_path)
    before = owner_files(results / "tiny", "trials")
    config = write_config(tmp_path, {**ONE_AT_A_TIME, "runtime": {"channels_last": True}})
    done = run_cli(
        "sweep", str(config), "--results", str(results), "--no-report", "-q", "--resume", shared=True
    )
    assert done.returncode == 2, (done.stdout + done.stderr)[-4000:]
    line = user_error_line(done.stderr)
    assert "runtime.channels_last" in line and "would mix two numerics" in line
    assert owner_files(results / "tiny", "trials") == before
