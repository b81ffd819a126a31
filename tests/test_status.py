"""``kd-ray status RESULTS/NAME`` (issue 12, item 3): where a sweep stands, from its results store
alone (no Ray), during the sweep and after it.

Units build a results store by hand (the config, rows of the trials and epochs tables, stored
teachers, a live driver's lease) and read its status. End to end: the real CLI on a copy of the
shared reference sweep, finished, then with a stream group's rows cut back as a killed driver
leaves them.
"""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import pytest
from _sweep_helpers import TINY, cli_env, ray_tmpdir, run_cli, uninterrupted_run, user_error_line

from kd_ray.config import dump_config, parse_config
from kd_ray.errors import ResultsError
from kd_ray.orchestration.lease import acquire
from kd_ray.plan import plan_sweep
from kd_ray.results.store import ResultTables
from kd_ray.status import format_duration, format_status, sweep_status
from kd_ray.storage import Storage

EPOCHS = TINY["student"]["train"]["epochs"]  # 4


def _sweep(tmp_path: Path, **resources) -> tuple[Path, list[str], list[str]]:
    """A results root with the tiny sweep's config: (sweep dir, trial ids, teacher ids)."""
    cfg = parse_config({**TINY, "resources": {**TINY["resources"], **resources}})
    sweep = tmp_path / "results" / cfg.name
    sweep.mkdir(parents=True)
    (sweep / "config.yaml").write_text(dump_config(cfg))
    plan = plan_sweep(cfg, check_names=False)
    return sweep, [t.trial_id for t in plan.trials], [t.teacher_id for t in plan.teachers]


def _epochs(sweep: Path, trial_id: str, upto: int, seconds: float = 10.0, acc: float = 0.5) -> None:
    rows = [
        {"trial_id": trial_id, "epoch": e, "split": split, "seconds": seconds, "acc": acc + e / 100}
        for e in range(1, upto + 1)
        for split in ("train", "val", "val_aug")
    ]
    ResultTables(Storage.open(sweep)).write("epochs", trial_id, rows)


def _ended(sweep: Path, trial_id: str, status: str = "ok", error: str | None = None) -> None:
    row = {"trial_id": trial_id, "status": status, "error": error, "epochs": EPOCHS, "val_acc": 0.5}
    ResultTables(Storage.open(sweep)).write("trials", trial_id, [row])


def _store_teacher(sweep: Path, teacher_id: str) -> None:
    (sweep.parent / "_teachers").mkdir(exist_ok=True)
    (sweep.parent / "_teachers" / f"{teacher_id}.json").write_text("{}")


def _by_id(status) -> dict:
    return {t.trial_id: t for t in status.trials}


def test_a_finished_sweep(tmp_path):
    sweep, trials, teachers = _sweep(tmp_path)
    for tid in trials:
        _epochs(sweep, tid, EPOCHS)
        _ended(sweep, tid)
    for tid in teachers:
        _store_teacher(sweep, tid)
    status = sweep_status(str(sweep))
    assert status.finished and status.count("ok") == 4 and status.eta is None and status.driver is None
    assert [(t.epoch, t.val_acc) for t in status.trials] == [(EPOCHS, pytest.approx(0.54))] * 4
    text = format_status(status)
    assert text.startswith(f"sweep 'tiny' ({sweep}): 4 trials: 4 ok\n")
    assert "teachers: 2 of 2 trained" in text and text.endswith("\nfinished")
    assert re.search(rf"^  {trials[0]}\s+ok\s+4/4\s+0\.540$", text, re.M), text


def _half_done(sweep: Path, trials: list[str]) -> None:
    """One trial ok, one failed, one at epoch 2 of 4 (stream S_w), one not started (stream S_s)."""
    ok, failed, running, waiting = trials[0], trials[1], trials[2], trials[3]
    assert ok.split("-")[1].endswith("Sw") and running.split("-")[1].endswith("Sw")
    assert failed.split("-")[1].endswith("Ss") and waiting.split("-")[1].endswith("Ss")
    _epochs(sweep, ok, EPOCHS)
    _ended(sweep, ok)
    _epochs(sweep, failed, 1)
    _ended(sweep, failed, "failed", "diverged at epoch 1: loss nan")
    _epochs(sweep, running, 2)


def test_a_sweep_in_progress_under_a_live_driver(tmp_path):
    sweep, trials, teachers = _sweep(tmp_path)
    _half_done(sweep, trials)
    _store_teacher(sweep, teachers[0])
    lease = acquire(Storage.open(sweep.parent), "tiny.lease", what="sweep 'tiny'")
    try:
        status = sweep_status(str(sweep))
    finally:
        lease.release()
    states = {tid: (t.status, t.epoch) for tid, t in _by_id(status).items()}
    assert states == {
        trials[0]: ("ok", 4),
        trials[1]: ("failed", 1),
        trials[2]: ("running", 2),
        trials[3]: ("pending", None),
    }
    assert _by_id(status)[trials[1]].error == "diverged at epoch 1: loss nan"
    # 2 epochs left of the S_w run, 4 of the S_s one, at 10 s per run-epoch (the ok and the running
    # S_w trial shared their run's epochs: counted once), one run in progress now.
    assert status.eta is not None
    assert (status.eta.run_epochs_left, status.eta.seconds_per_run_epoch, status.eta.runs_at_once) == (
        6,
        10.0,
        1,
    )
    assert status.eta.seconds == pytest.approx(60.0)
    text = format_status(status)
    assert "4 trials: 1 ok, 1 failed, 1 running, 1 pending" in text
    assert "driver: host " in text and "teachers: 1 of 2 trained" in text
    assert f"failed (1):\n  {trials[1]}: diverged at epoch 1: loss nan" in text
    assert text.splitlines()[-1] == (
        "ETA: about 1:00 (6 run-epoch(s) left at 10.0 s each, 1 run at a time; run start-up not "
        "counted; plus 1 teacher(s) to train first)"
    )


def test_without_a_driver_unfinished_trials_are_interrupted(tmp_path):
    sweep, trials, _ = _sweep(tmp_path, max_concurrent_trials=2)
    _half_done(sweep, trials)
    status = sweep_status(f"file://{sweep}")
    assert [t.status for t in status.trials] == ["ok", "failed", "interrupted", "not started"]
    # Nothing runs now: the config's limit stands in for the runs at once.
    assert status.eta.runs_at_once == 2 and status.eta.seconds == pytest.approx(30.0)
    text = format_status(status)
    assert "driver: none runs it now" in text and text.splitlines()[-1].startswith(
        "ETA if resumed: about 0:30 ("
    )


def test_no_epoch_yet_means_no_eta(tmp_path):
    sweep, _, _ = _sweep(tmp_path)
    status = sweep_status(str(sweep))
    assert [t.status for t in status.trials] == ["not started"] * 4
    assert format_status(status).splitlines()[-1] == "ETA if resumed: unknown until a student epoch is done"


def test_a_path_that_is_not_a_sweep_is_one_error(tmp_path):
    with pytest.raises(ResultsError, match="nope: not a kd_ray sweep \\(does not exist\\)"):
        sweep_status(str(tmp_path / "nope"))
    with pytest.raises(ResultsError, match="not a kd_ray sweep \\(holds no config.yaml\\)"):
        sweep_status(str(tmp_path))
    (tmp_path / "config.yaml").write_bytes(b"name: [unclosed\n")
    with pytest.raises(ResultsError, match="config.yaml: unreadable \\(malformed YAML\\)"):
        sweep_status(str(tmp_path))


def test_durations_read_as_clock_times():
    assert [format_duration(s) for s in (0, 7.4, 725, 10930)] == ["0:00", "0:07", "12:05", "3:02:10"]


@pytest.mark.slow
def test_status_cli_on_a_finished_and_an_interrupted_sweep(tmp_path):
    results = tmp_path / "results"
    shutil.copytree(uninterrupted_run(), results)
    sweep = results / "tiny"
    # Reading the store alone: Ray is never imported (PYTHONPROFILEIMPORTTIME lists every import).
    ray_tmp = ray_tmpdir()
    done = run_cli("status", str(sweep), env=cli_env(ray_tmp, PYTHONPROFILEIMPORTTIME="1"))
    shutil.rmtree(ray_tmp, ignore_errors=True)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "| encodings" in done.stderr  # the import list is there to be read
    assert not re.search(r"\|\s+ray(\.\S+)?\s*$", done.stderr, re.M)
    assert done.stdout.startswith(f"sweep 'tiny' ({sweep}): 4 trials: 4 ok\n"), done.stdout
    assert "teachers: 2 of 2 trained" in done.stdout and done.stdout.rstrip().endswith("\nfinished")
    assert len(re.findall(r"^  synthetic-\S+\s+ok\s+4/4\s+\d\.\d{3}$", done.stdout, re.M)) == 4, done.stdout

    # As a driver killed in epoch 3 of the S_s run leaves it: those trials have no trials row and
    # epoch rows up to 2. The status names them, their epoch, and the time a resume would take.
    tables = ResultTables(Storage.open(sweep))
    cut = [tid for tid in tables.read("trials")["trial_id"] if tid.split("-")[1].endswith("_Ss")]
    assert len(cut) == 2
    for tid in cut:
        (sweep / "trials.parquet" / f"{tid}.parquet").unlink()
        rows = tables.read_owner("epochs", tid)
        tables.write("epochs", tid, rows[rows["epoch"] <= 2].to_dict("records"))
    interrupted = run_cli("status", f"file://{sweep}")
    assert interrupted.returncode == 0, interrupted.stderr[-3000:]
    out = interrupted.stdout
    assert "4 trials: 2 ok, 2 interrupted" in out and "driver: none runs it now" in out, out
    for tid in cut:
        assert re.search(rf"^  {tid}\s+interrupted\s+2/4\s+\d\.\d{{3}}$", out, re.M), out
    assert re.search(
        r"^ETA if resumed: about \d+:\d\d \(2 run-epoch\(s\) left at \d+\.\d s each, 1 run", out, re.M
    ), out

    bad = run_cli("status", str(results / "nope"))
    assert bad.returncode == 2
    assert "not a kd_ray sweep (does not exist)" in user_error_line(bad.stderr)
