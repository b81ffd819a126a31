"""Bad input: one clear line on stderr, no traceback, exit 2, and nothing already finished lost.

Most cases are caught on the driver before Ray starts, so they cost a CLI start-up each. The
teacher-checkpoint case also shows that a rerun with --resume after fixing the input keeps the
rows that had finished before.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from _sweep_helpers import (
    owner_files,
    run_cli,
    table,
    uninterrupted_run,
    user_error_line,
    write_config,
)

pytestmark = pytest.mark.slow


def _sweep(config: Path, results: Path, *extra: str):
    return run_cli("sweep", str(config), "--results", str(results), "--no-report", "-q", *extra, timeout=300)


def test_malformed_yaml(tmp_path):
    config = tmp_path / "bad.yaml"
    config.write_text("name: tiny\ndatasets: [{name: synthetic\n")
    done = _sweep(config, tmp_path / "results")
    assert done.returncode == 2
    line = user_error_line(done.stderr)
    assert "malformed YAML" in line and str(config) in line
    assert not (tmp_path / "results").exists()


def test_unknown_key(tmp_path):
    config = write_config(tmp_path, {"teacher": {"arhc": "cnn_tiny"}})
    done = _sweep(config, tmp_path / "results")
    assert done.returncode == 2
    assert "teacher.arhc: unknown key" in user_error_line(done.stderr)


def test_wrong_type(tmp_path):
    config = write_config(tmp_path, {"student": {"train": {"epochs": "many"}}})
    done = _sweep(config, tmp_path / "results")
    assert done.returncode == 2
    assert "student.train.epochs" in user_error_line(done.stderr)


SYNTHETIC = {"name": "synthetic", "num_train": 64, "num_val": 32}


@pytest.mark.parametrize(
    ("override", "expected"),
    [
        ({"name": ".."}, "name: '..' is not a safe directory name"),
        ({"name": "_teachers"}, "name: '_teachers' is not a safe directory name"),
        ({"datasets": [{**SYNTHETIC, "label": "../../x"}]}, "datasets.0.label: '../../x' is not a safe file name"),
        ({"datasets": [{**SYNTHETIC, "label": "_x"}]}, "datasets.0.label: '_x' is not a safe file name"),
        (
            {"datasets": [{**SYNTHETIC, "label": "a b"}, {**SYNTHETIC, "label": "a_b"}]},
            "dataset labels 'a b' and 'a_b' name the same result files",
        ),
        ({"grid": {"seeds": [2**63]}}, "grid.seeds.0: Input should be less than 9223372036854775808"),
        ({"datasets": [{**SYNTHETIC, "split_seed": 2**32}]}, "datasets.0.split_seed"),
        ({"grid": {"permutations": []}}, "grid.permutations: must list at least one value"),
    ],
    ids=["name-parent", "name-teacher-store", "label-escapes", "label-hidden", "labels-one-file",
         "seed-2^63", "split-seed-2^32", "no-permutations"],
)  # fmt: skip
def test_unsafe_names_and_out_of_range_numbers_stop_before_anything_is_written(tmp_path, override, expected):
    results = tmp_path / "results"
    done = _sweep(write_config(tmp_path, override), results)
    assert done.returncode == 2, (done.stdout + done.stderr)[-3000:]
    assert expected in user_error_line(done.stderr)
    assert not results.exists() and not (tmp_path / "x").exists()


def test_non_utf8_config(tmp_path):
    config = tmp_path / "latin1.yaml"
    config.write_bytes(write_config(tmp_path).read_text().replace("tiny", "caf\u00e9").encode("latin-1"))
    done = _sweep(config, tmp_path / "results")
    assert done.returncode == 2
    assert f"{config}: not UTF-8 text (byte 0xe9 at line 1)" in user_error_line(done.stderr)


def test_missing_data_directory(tmp_path):
    missing = tmp_path / "no-such-dir"
    config = write_config(tmp_path, {})
    text = config.read_text().replace(
        "- name: synthetic\n  num_train: 64\n  num_val: 32\n",
        f"- name: cifar100\n  root: {missing}\n  verify_checksums: false\n",
    )
    assert "cifar100" in text
    config.write_text(text)
    done = _sweep(config, tmp_path / "results")
    assert done.returncode == 2
    line = user_error_line(done.stderr)
    assert "datasets.0" in line and str(missing) in line
    # Caught before anything was written or any Ray cluster started.
    assert not (tmp_path / "results" / "tiny").exists()


def test_unwritable_results_directory(tmp_path):
    # A path below a regular file cannot be created, even by root (chmod would not stop root).
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    done = _sweep(write_config(tmp_path), blocker / "results")
    assert done.returncode == 2
    assert str(blocker) in user_error_line(done.stderr)


def test_corrupt_teacher_checkpoint_before_the_student_stage(tmp_path):
    config = write_config(tmp_path)
    dry = run_cli("sweep", str(config), "--dry-run")
    assert dry.returncode == 0, dry.stderr
    ids = [line.split()[1] for line in dry.stdout.splitlines() if line.startswith("  T1")]
    assert len(ids) == 2
    store = tmp_path / "results" / "_teachers"
    store.mkdir(parents=True)
    for tid in ids:
        (store / f"{tid}.pt").write_bytes(b"this is not a checkpoint")
        (store / f"{tid}.json").write_text("{}")
    done = _sweep(config, tmp_path / "results")
    assert done.returncode == 2
    line = user_error_line(done.stderr)
    assert "not a readable checkpoint" in line and str(store) in line


def test_foreign_teacher_checkpoint_then_resume_keeps_finished_rows(tmp_path):
    reference = uninterrupted_run()
    results = tmp_path / "results"
    shutil.copytree(reference, results, ignore=shutil.ignore_patterns("_ray"))
    sweep = results / "tiny"
    trials = table(sweep, "trials")
    # Forget one trial's results, as if the sweep had been stopped before it finished.
    victim = trials.iloc[0]
    teacher_id = victim["teacher_ids"]
    for name in ("trials", "epochs", "calibration"):
        (sweep / f"{name}.parquet" / f"{victim['trial_id']}.parquet").unlink()
    kept = owner_files(sweep, "trials")
    # Put the other teacher's checkpoint where this trial's teacher should be.
    other = next(p for p in (results / "_teachers").glob("*.pt") if p.stem != teacher_id)
    own = results / "_teachers" / f"{teacher_id}.pt"
    original = own.read_bytes()
    shutil.copy(other, own)

    config = write_config(tmp_path)
    done = _sweep(config, results, "--resume")
    assert done.returncode == 2
    line = user_error_line(done.stderr)
    assert str(own) in line and f"expected {teacher_id!r}" in line
    assert owner_files(sweep, "trials") == kept

    own.write_bytes(original)  # the user fixes the store and resumes
    done = _sweep(config, results, "--resume")
    assert done.returncode == 0, (done.stdout + done.stderr)[-4000:]
    after = owner_files(sweep, "trials")
    assert {name: after[name] for name in kept} == kept
    final = table(sweep, "trials")
    assert len(final) == 4 and (final["status"] == "ok").all()
