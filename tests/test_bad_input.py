"""Bad input: one clear line on stderr, no traceback, exit 2, and nothing already finished lost.

Most cases are caught on the driver before Ray starts, so they cost a CLI start-up each. The
teacher-checkpoint case also shows that a rerun with --resume after fixing the input keeps the
rows that had finished before.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from _sweep_helpers import (
    cli_env,
    owner_files,
    ray_tmpdir,
    run_cli,
    table,
    uninterrupted_run,
    user_error_line,
    write_config,
)

pytestmark = pytest.mark.slow


def _sweep(config: Path, results: Path, *extra: str):
    return run_cli(
        "sweep", str(config), "--results", str(results), "--no-report", "-q", *extra, timeout=300, shared=True
    )


def _sweep_here(capsys, config: Path, results: Path, *extra: str) -> tuple[int, str]:
    """The CLI's ``main`` in this process: (exit code, stderr). For the variants of an input
    error whose first case runs the real CLI in a subprocess (a subprocess costs seconds of
    imports, and these stop before Ray starts)."""
    from kd_ray.cli import main

    capsys.readouterr()
    code = main(["sweep", str(config), "--results", str(results), "--no-report", "-q", *extra])
    return code, capsys.readouterr().err


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


def _teacher_ids(config: Path) -> list[str]:
    """The T1 teacher ids the plan of ``config`` holds (what ``--dry-run`` lists)."""
    from kd_ray.config import load_config
    from kd_ray.plan import plan_sweep

    plan = plan_sweep(load_config(config))
    return [t.teacher_id for t in plan.teachers if t.name.startswith("T1")]


# Errors that only workers used to see (issue 9, item 7): Ray started, each run failed and was
# restarted, and the sweep exited 1 with the reason in a log. Now checked on the driver.


def test_batch_larger_than_the_dataset(tmp_path):
    config = write_config(tmp_path, {"student": {"train": {"batch_size": 96}}})
    done = _sweep(config, tmp_path / "results")
    assert done.returncode == 2
    line = user_error_line(done.stderr)
    assert "student.train.batch_size: 96 is larger than the 64 training images of datasets.0" in line
    assert not (tmp_path / "results").exists()


def test_pretrained_weights_that_cannot_be_had(tmp_path):
    config = write_config(tmp_path, {"teacher": {"arch": "resnet18", "pretrained": True}})
    env = {
        **cli_env(ray_tmpdir()),
        "TORCH_HOME": str(tmp_path / "torch"),  # an empty cache, and no network (a closed port)
        "HTTPS_PROXY": "http://127.0.0.1:9",
        "https_proxy": "http://127.0.0.1:9",
    }
    env.pop("NO_PROXY", None), env.pop("no_proxy", None)
    done = run_cli("sweep", str(config), "--results", str(tmp_path / "results"), "-q", env=env, timeout=300)
    assert done.returncode == 2
    line = user_error_line(done.stderr)
    assert line.startswith(
        "kd-ray: error: teacher.pretrained: pretrained weights ResNet18_Weights.IMAGENET1K_V1"
    )
    assert "could not be downloaded" in line and str(tmp_path / "torch") in line


def test_teacher_weights_of_the_wrong_shape(tmp_path):
    import torch

    from kd_ray.models import create_model
    from kd_ray.train.checkpoint import teacher_bytes

    config = write_config(tmp_path)
    store = tmp_path / "results" / "_teachers"
    store.mkdir(parents=True)
    for tid in _teacher_ids(config):
        # The right teacher id and arch, but a head for 7 classes instead of the dataset's.
        torch.manual_seed(0)
        model = create_model("cnn_tiny", num_classes=7, in_channels=3, image_size=32)
        (store / f"{tid}.pt").write_bytes(
            teacher_bytes(model, teacher_id=tid, arch="cnn_tiny", num_classes=7)
        )
        (store / f"{tid}.json").write_text(json.dumps({"epochs": 1, "val_acc": 0.5}))
    done = _sweep(config, tmp_path / "results")
    assert done.returncode == 2
    line = user_error_line(done.stderr)
    assert str(store) in line and "weights do not fit the cnn_tiny built for dataset" in line
    assert "is (7, 32) there, (4, 32) here" in line
    assert not (tmp_path / "results" / "tiny").exists()


# More user errors that were tracebacks (item 8).


@pytest.mark.parametrize("record", [b"{not json", b"[1, 2]", b'{"val_acc": "high"}', b"\xff\xfe"])
def test_garbage_teacher_record(tmp_path, record, capsys):
    config = write_config(tmp_path)
    store = tmp_path / "results" / "_teachers"
    store.mkdir(parents=True)
    tid = _teacher_ids(config)[0]
    (store / f"{tid}.json").write_bytes(record)
    if record == b"{not json":  # the real CLI once; the other records through its main()
        done = _sweep(config, tmp_path / "results")
        code, stderr = done.returncode, done.stderr
    else:
        code, stderr = _sweep_here(capsys, config, tmp_path / "results")
    assert code == 2
    line = user_error_line(stderr)
    assert f"{store / tid}.json: not a kd_ray teacher record" in line
    assert not (tmp_path / "results" / "tiny").exists()


@pytest.mark.parametrize("saved", [b"\xff\xfe\x00", b"name: [unclosed\n", b"- a list\n", b"datasets: 3\n"])
def test_unreadable_saved_config(tmp_path, saved, capsys):
    sweep = tmp_path / "results" / "tiny"
    sweep.mkdir(parents=True)
    (sweep / "config.yaml").write_bytes(saved)
    if saved == b"- a list\n":  # the real CLI once; the other files through its main()
        done = _sweep(write_config(tmp_path), tmp_path / "results", "--resume")
        code, stderr = done.returncode, done.stderr
    else:
        code, stderr = _sweep_here(capsys, write_config(tmp_path), tmp_path / "results", "--resume")
    assert code == 2
    line = user_error_line(stderr)
    assert f"{sweep}/config.yaml: the saved config of this sweep is unreadable" in line
    assert (sweep / "config.yaml").read_bytes() == saved  # left for the user to look at


def test_an_unreadable_results_file_is_one_line_for_resume_and_status(tmp_path, capsys):
    # A host that crashed mid-write can leave a table's file empty: one line naming it, exit 2.
    results = tmp_path / "results"
    shutil.copytree(uninterrupted_run(), results, ignore=shutil.ignore_patterns("_ray"))
    sweep = results / "tiny"
    broken = sorted((sweep / "trials.parquet").glob("*.parquet"))[0]
    broken.write_bytes(b"")
    done = _sweep(write_config(tmp_path), results, "--resume")
    assert done.returncode == 2, (done.stdout + done.stderr)[-3000:]
    line = user_error_line(done.stderr)
    assert f"{broken.name}: not a readable Parquet file" in line and "delete it and run with --resume" in line
    from kd_ray.cli import main

    capsys.readouterr()
    assert main(["status", str(sweep)]) == 2
    assert f"{broken.name}: not a readable Parquet file" in user_error_line(capsys.readouterr().err)


def test_foreign_teacher_checkpoint_then_resume_keeps_finished_rows(tmp_path):
    reference = uninterrupted_run()
    results = tmp_path / "results"
    shutil.copytree(reference, results, ignore=shutil.ignore_patterns("_ray"))
    sweep = results / "tiny"
    trials = table(sweep, "trials")
    # Forget one trial's results, as if the sweep had been stopped before it finished.
    victim = trials.iloc[0]
    (teacher_id,) = victim["teacher_ids"]  # the tiny sweep's trials have one teacher
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
