"""Sweep config validation: every bad-config class is one line naming the field, exit 2."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from pydantic import ValidationError

from kd_ray.cli import main
from kd_ray.config import dump_config, load_config, parse_config
from kd_ray.errors import ConfigError

REPO = Path(__file__).resolve().parents[1]
MINIMAL = {"name": "t", "datasets": [{"name": "digits"}]}


def test_defaults_follow_the_paper_appendix_a() -> None:
    cfg = parse_config(MINIMAL)
    assert cfg.distill.temperature == 10.0 and cfg.distill.alpha == 0.2
    for train in (cfg.teacher.train, cfg.student.train):
        assert (train.lr, train.momentum, train.batch_size) == (0.1, 0.9, 128)
        assert train.schedule.kind == "step" and train.schedule.warmup_epochs == 1
    assert cfg.grid.teacher_counts == (1, 2, 3) and cfg.grid.losses == ("kd", "zscore_kd")


def test_config_is_frozen_and_round_trips_through_yaml(tmp_path: Path) -> None:
    cfg = load_config(REPO / "experiments" / "demo.yaml")
    with pytest.raises(ValidationError, match="frozen"):
        cfg.name = "other"  # type: ignore[misc]
    path = tmp_path / "again.yaml"
    path.write_text(dump_config(cfg))
    assert load_config(path) == cfg


@pytest.mark.parametrize(
    ("patch", "field"),
    [
        ({"bogus": 1}, "bogus"),
        ({"grid": {"teacher_counts": [4]}}, "grid.teacher_counts.0"),
        ({"grid": {"teacher_counts": []}}, "grid.teacher_counts"),
        ({"student": {"train": {"epochs": "many"}}}, "student.train.epochs"),
        ({"distill": {"alpha": 1.5}}, "distill.alpha"),
        ({"datasets": [{"name": "digits", "imbalanse": 10}]}, "datasets.0.imbalanse"),
        ({"resources": {"num_workers": 3}}, "student.train.batch_size"),
        # Names are path parts under the results directory (issue 9, item 5).
        ({"name": ".."}, "name: '..' is not a safe directory name"),
        ({"name": "."}, "name: '.' is not a safe directory name"),
        ({"name": "_teachers"}, "name: '_teachers' is not a safe directory name"),
        ({"name": ".hidden"}, "name: '.hidden'"),
        ({"name": "a/b"}, "name: 'a/b'"),
        ({"datasets": [{"name": "digits", "label": "../../x"}]}, "datasets.0.label: '../../x' is not a safe"),
        ({"datasets": [{"name": "digits", "label": "a/b"}]}, "datasets.0.label"),
        ({"datasets": [{"name": "digits", "label": "_x"}]}, "datasets.0.label: '_x'"),
        ({"datasets": [{"name": "digits", "label": ".x"}]}, "datasets.0.label: '.x'"),
        ({"datasets": [{"name": "digits", "label": ""}]}, "datasets.0.label"),
        (
            {"datasets": [{"name": "digits", "label": "a b"}, {"name": "digits", "label": "a_b"}]},
            "datasets: dataset labels 'a b' and 'a_b' name the same result files",
        ),
        (
            {"datasets": [{"name": "digits", "label": "LT"}, {"name": "digits_lt", "label": "lt"}]},
            "datasets: dataset labels 'LT' and 'lt' name the same result files",
        ),
        # Numbers numpy, torch or Parquet would refuse later, inside a worker (item 8).
        ({"grid": {"seeds": [2**63]}}, "grid.seeds.0"),
        ({"grid": {"seeds": [-1]}}, "grid.seeds.0"),
        ({"datasets": [{"name": "digits", "split_seed": 2**32}]}, "datasets.0.split_seed"),
        ({"grid": {"permutations": []}}, "grid.permutations: must list at least one value"),
    ],
)
def test_schema_errors_name_the_field(patch: dict, field: str) -> None:
    with pytest.raises(ConfigError) as err:
        parse_config({**MINIMAL, **patch})
    message = str(err.value)
    assert field in message and "\n" not in message


def test_safe_labels_and_largest_seeds_are_accepted() -> None:
    cfg = parse_config(
        {
            **MINIMAL,
            "datasets": [{"name": "digits", "label": "digits 10%"}, {"name": "digits", "label": "d.v2-x"}],
            "grid": {"seeds": [0, 2**63 - 1]},
        }
    )
    assert [d.key for d in cfg.datasets] == ["digits 10%", "d.v2-x"]


def test_a_dataset_is_looked_up_by_its_key() -> None:
    cfg = parse_config(
        {**MINIMAL, "datasets": [{"name": "digits"}, {"name": "digits", "label": "d2", "imbalance": 10}]}
    )
    assert cfg.dataset("digits") is cfg.datasets[0]
    assert cfg.dataset("d2") is cfg.datasets[1] and cfg.dataset("d2").imbalance == 10
    with pytest.raises(
        ConfigError, match=r"^no dataset 'cifar100' in this config's datasets \(digits, d2\)$"
    ):
        cfg.dataset("cifar100")


def test_dumped_config_holds_no_results_credentials(tmp_path: Path) -> None:
    cfg = parse_config({**MINIMAL, "results": "s3://AKIDEXAMPLE:wJalrXUtnFEMI@bucket/runs?region=eu-west-1"})
    assert cfg.results.startswith("s3://AKIDEXAMPLE:wJalrXUtnFEMI@")  # the CLI still gets them
    for text in (dump_config(cfg), str(cfg.model_dump()), str(cfg.model_dump(mode="json"))):
        assert "wJalrXUtnFEMI" not in text and "AKIDEXAMPLE" not in text
    assert "s3://***@bucket/runs?region=eu-west-1" in dump_config(cfg)


def test_non_utf8_config_is_one_line(tmp_path: Path, capsys) -> None:
    path = tmp_path / "latin1.yaml"
    path.write_bytes("name: t\ndatasets: [{name: digits, label: caf\u00e9}]\n".encode("latin-1"))
    assert main(["sweep", str(path), "--dry-run"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err
    assert err.startswith(f"kd-ray: error: {path}: not UTF-8 text (byte 0xe9 at line 2)")


def _run_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "kd_ray.cli", *args], capture_output=True, text=True, cwd=REPO, timeout=120
    )


BAD_CONFIGS = {
    "malformed_yaml": ("name: x\ndatasets: [\n", "malformed YAML"),
    "unknown_key": ("name: x\ndatasets: [{name: digits}]\nteachers: 2\n", "teachers: unknown key"),
    "wrong_type": ("name: x\ndatasets: [{name: digits}]\nstudent: {train: {lr: fast}}\n", "student.train.lr"),
    "teacher_count": (
        "name: x\ndatasets: [{name: digits}]\ngrid: {teacher_counts: [1, 4]}\n",
        "grid.teacher_counts",
    ),
    "unknown_dataset": ("name: x\ndatasets: [{name: mnist}]\n", "datasets.0.name: unknown dataset 'mnist'"),
    "unknown_augmentation": (
        "name: x\ndatasets: [{name: digits}]\ngrid: {teacher_counts: [2], permutations: [T1x_T2w_Sw]}\n",
        "grid.permutations",
    ),
    "unknown_loss": (
        "name: x\ndatasets: [{name: digits}]\ngrid: {losses: [kd, dkd]}\n",
        "grid.losses: unknown loss 'dkd'",
    ),
    "unknown_view": (
        "name: x\ndatasets: [{name: digits}]\ngrid: {views: [full, half]}\n",
        "grid.views: unknown view 'half'",
    ),
    "unknown_model": (
        "name: x\ndatasets: [{name: digits}]\nteacher: {arch: resnet9000}\n",
        "teacher.arch: unknown model",
    ),
    "missing_file": (None, "config file not found"),
}


# A fresh interpreter per case costs seconds of imports; two cases go through a real
# subprocess (as a user's shell would run it), the rest through the same entry point in-process.
SUBPROCESS_CASES = {"malformed_yaml", "unknown_dataset"}


@pytest.mark.parametrize("case", sorted(BAD_CONFIGS))
def test_cli_bad_config_is_one_line_and_exit_2(case: str, tmp_path: Path, capsys) -> None:
    text, expected = BAD_CONFIGS[case]
    path = tmp_path / f"{case}.yaml"
    if text is not None:
        path.write_text(text)
    if case in SUBPROCESS_CASES:
        proc = _run_cli("sweep", str(path), "--dry-run")
        code, stderr = proc.returncode, proc.stderr
    else:
        code, stderr = main(["sweep", str(path), "--dry-run"]), capsys.readouterr().err
    assert code == 2, stderr
    lines = stderr.strip().splitlines()
    assert len(lines) == 1, stderr
    assert "Traceback" not in stderr and expected in lines[0], lines[0]
    assert lines[0].startswith("kd-ray: error: ")
