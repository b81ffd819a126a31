"""Every sweep config under ``experiments/`` plans through the real CLI to the grid it claims.

Expected counts come from the grid formula (docs/experiments.md#grid-size), never from a CLI run: k
teachers have 2^(k+1) augmentation permutations, the distinct teachers are the slots T1..T(max k)
times {w, s}, and every permutation runs once per loss, view and seed. Starting a Python that
imports torch and torchvision costs several seconds, so all configs are planned in one subprocess
that calls the CLI's ``main`` (the function the ``kd-ray`` script runs); one more subprocess runs
the installed ``kd-ray`` executable itself, in parallel.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
EXPERIMENTS = REPO / "experiments"
CONFIGS = sorted(EXPERIMENTS.glob("*.yaml"))
SUMMARY = re.compile(r"^(\d+) teachers, (\d+) student trials$")

pytestmark = pytest.mark.slow  # runs the CLI in subprocesses (a few seconds each)

# Plans every path given on the command line through kd_ray.cli.main and prints, as JSON, each
# path's exit code and stdout, so one interpreter start serves every config.
DRIVER = """
import contextlib, io, json, sys
from kd_ray.cli import main

out = {}
for path in sys.argv[1:]:
    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        rc = main(["sweep", path, "--dry-run"])
    out[path] = [rc, buf.getvalue()]
print(json.dumps(out))
"""


@dataclass(frozen=True)
class Grid:
    """The axes of one dataset's student grid that decide the counts."""

    teacher_counts: tuple[int, ...]
    losses: int
    views: int
    seeds: int = 1

    def teachers(self) -> int:
        return 2 * max(self.teacher_counts)

    def trials(self) -> int:
        perms = sum(2 ** (k + 1) for k in self.teacher_counts)
        return perms * self.losses * self.views * self.seeds


# The design each paper config must keep (the experiment list): full grids over k = 1..3
# and both losses; the A/B tests with k = 2 and both views; the ViT run with k = 2.
FULL = Grid(teacher_counts=(1, 2, 3), losses=2, views=1)
AB = Grid(teacher_counts=(2,), losses=1, views=2)
PAPER_GRIDS: dict[str, Grid] = {
    "cifar100.yaml": FULL,
    "cifar100_lt.yaml": FULL,
    "imagenet.yaml": FULL,
    "imagenet_lt.yaml": FULL,
    "cifar100_ab.yaml": AB,
    "cifar100_lt_ab.yaml": AB,
    "imagenet_lt_ab.yaml": AB,
    "cifar100_lt_vit.yaml": Grid(teacher_counts=(2,), losses=1, views=1),
    "demo.yaml": Grid(teacher_counts=(2,), losses=2, views=1),
    "digits_study.yaml": Grid(teacher_counts=(1, 2, 3), losses=2, views=2, seeds=3),
}


def _grid_of(raw: dict) -> Grid:
    """The count-deciding axes of a raw YAML mapping (defaults as in ``kd_ray.config``)."""
    grid = raw.get("grid", {})
    assert grid.get("permutations") is None, "the count formula assumes no permutation filter"
    return Grid(
        teacher_counts=tuple(grid.get("teacher_counts", (1, 2, 3))),
        losses=len(grid.get("losses", ("kd", "zscore_kd"))),
        views=len(grid.get("views", ("full",))),
        seeds=len(grid.get("seeds", (0,))),
    )


def _expected(raw: dict) -> tuple[int, int]:
    grid, n_datasets = _grid_of(raw), len(raw["datasets"])
    return n_datasets * grid.seeds * grid.teachers(), n_datasets * grid.trials()


def _summary(stdout: str) -> tuple[int, int]:
    match = SUMMARY.match(stdout.strip().splitlines()[-1])
    assert match, f"no 'N teachers, M student trials' line at the end of:\n{stdout}"
    return int(match.group(1)), int(match.group(2))


def _kd_ray() -> list[str]:
    script = Path(sys.executable).with_name("kd-ray")
    return [str(script)] if script.exists() else [sys.executable, "-m", "kd_ray.cli"]


@pytest.fixture(scope="module")
def demo_k123(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The demo config widened to the paper's full grid: k = 1..3 and both losses."""
    raw = yaml.safe_load((EXPERIMENTS / "demo.yaml").read_text())
    raw["name"] = "demo_k123"
    raw["grid"]["teacher_counts"] = [1, 2, 3]
    raw["grid"]["losses"] = ["kd", "zscore_kd"]
    path = tmp_path_factory.mktemp("configs") / "demo_k123.yaml"
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    return path


@pytest.fixture(scope="module")
def dry_runs(demo_k123: Path) -> dict[str, tuple[int, str, str]]:
    """``{config name: (exit code, stdout, stderr)}`` for every config and the demo variant."""
    driver = subprocess.Popen(
        [sys.executable, "-c", DRIVER, *(str(p) for p in CONFIGS)],
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    script = subprocess.Popen(
        [*_kd_ray(), "sweep", str(demo_k123), "--dry-run"],
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    out, err = driver.communicate(timeout=300)
    assert driver.returncode == 0, err
    runs = {Path(path).name: (rc, stdout, err) for path, (rc, stdout) in json.loads(out).items()}
    s_out, s_err = script.communicate(timeout=300)
    runs[demo_k123.name] = (script.returncode, s_out, s_err)
    return runs


def test_configs_exist_and_are_in_the_readme() -> None:
    readme = (EXPERIMENTS / "README.md").read_text()
    names = {p.name for p in CONFIGS}
    assert set(PAPER_GRIDS) <= names, f"missing configs: {sorted(set(PAPER_GRIDS) - names)}"
    for name in names:
        assert f"`{name}`" in readme, f"{name} has no row in experiments/README.md"


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.name)
def test_config_opens_with_its_paper_item(path: Path) -> None:
    if path.name == "demo.yaml":
        pytest.skip("the demo reproduces no paper item")
    first = path.read_text().splitlines()[0]
    assert re.match(r"# Paper: .*(Table|Fig)", first), first


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.name)
def test_dry_run_prints_the_grid_counts(path: Path, dry_runs: dict) -> None:
    raw = yaml.safe_load(path.read_text())
    if path.name in PAPER_GRIDS:
        assert _grid_of(raw) == PAPER_GRIDS[path.name], "the config drifted from the paper's design"
        assert len(raw["datasets"]) == 1
    rc, stdout, stderr = dry_runs[path.name]
    assert rc == 0, stderr
    teachers, trials = _expected(raw)
    assert _summary(stdout) == (teachers, trials)
    key = raw["datasets"][0].get("label") or raw["datasets"][0]["name"]
    listed = [line.split()[0] for line in stdout.splitlines() if line.startswith("  ")]
    assert sum(name.startswith(f"{key}-T") and name.count("-") == 4 for name in listed) == trials
    assert len(listed) == teachers + trials


def test_paper_grid_counts_match_spec() -> None:
    # docs/experiments.md#grid-size: "2 × (4 + 8 + 16) = 56 student trials" per dataset and seed;
    # the paper's A/B test is 8 perms in each of its two groups.
    assert (FULL.teachers(), FULL.trials()) == (6, 2 * (4 + 8 + 16))
    assert (AB.teachers(), AB.trials()) == (4, 2 * 8)


def test_demo_widened_to_k123_and_both_losses(demo_k123: Path, dry_runs: dict) -> None:
    rc, stdout, stderr = dry_runs[demo_k123.name]
    assert rc == 0, stderr
    assert _summary(stdout) == _expected(yaml.safe_load(demo_k123.read_text())) == (6, 56)
    names = [line.split()[0] for line in stdout.splitlines() if line.startswith("  T")]
    assert sorted(names) == sorted(f"T{slot}{aug}" for slot in (1, 2, 3) for aug in "ws")
