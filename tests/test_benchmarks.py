"""The CPU-checkable parts of the GPU proof: benchmarks/gpu_check.sh and kd_throughput.py's CLI.

The script itself needs a GPU machine; here it is checked for syntax, for every step being under
its own ``timeout`` within the 8-minute budget (its dry-run lists the steps), and for its summary
writer. ``kd_throughput.py`` runs for real at the tiniest settings.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "benchmarks" / "gpu_check.sh"
BUDGET_S = 8 * 60


def _dry_run() -> list[tuple[str, int, str]]:
    done = subprocess.run(
        ["bash", str(SCRIPT)],
        capture_output=True,
        text=True,
        cwd=REPO,
        env={**os.environ, "GPU_CHECK_DRY_RUN": "1", "OUT": "/nonexistent/out"},
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    steps = []
    for line in done.stdout.splitlines():
        tag, name, limit, command = line.split("\t")
        assert tag == "STEP", line
        steps.append((name, int(limit), command))
    return steps


def test_gpu_check_script_parses() -> None:
    done = subprocess.run(["bash", "-n", str(SCRIPT)], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr


def test_every_step_has_a_timeout_and_the_run_fits_in_eight_minutes() -> None:
    text = SCRIPT.read_text()
    grace = int(re.search(r"^KILL_GRACE=(\d+)", text, re.M).group(1))
    assert re.search(r'timeout --signal=INT --kill-after="\$KILL_GRACE" "\$limit" "\$@"', text)
    steps = _dry_run()
    assert [s[0] for s in steps] == ["setup", "env", "pytest_gpu", "throughput", "summary"]
    # This checkout has .venv or a python3 with torch: setup is the quick check, within budget.
    assert all(limit > 0 for _, limit, _ in steps)
    assert sum(limit + grace for _, limit, _ in steps) < BUDGET_S
    commands = dict((name, command) for name, _, command in steps)
    assert "-m pytest -m gpu" in commands["pytest_gpu"] and "--junitxml=" in commands["pytest_gpu"]
    assert "tests/test_gpu.py" in commands["pytest_gpu"]
    throughput = commands["throughput"]
    for flag in ("--size 224", "--teachers 2", "--teacher-arch resnet50", "--student-arch resnet18"):
        assert flag in throughput
    assert "--configs fp32,bf16+cl" in throughput and "--markdown /nonexistent/out/" in throughput


def test_nothing_heavy_runs_outside_a_step() -> None:
    """Outside the helper functions (which the steps call), every command that can take time is a
    ``step`` line, so it is under a timeout and its failure does not stop the later steps."""
    text = SCRIPT.read_text()
    main = text.split("# <<< helpers", 1)[1]
    heavy = re.compile(r"\b(pytest|kd_throughput|nvidia-smi|pip install|tar -x|--env|--summary)\b")
    for number, line in enumerate(main.splitlines(), 1):
        code = line.split("#", 1)[0].strip()
        if heavy.search(code):
            assert code.startswith("step "), f"line {number} after the helpers runs outside a step: {line}"


def test_summary_collects_steps_tests_and_throughput(tmp_path: Path) -> None:
    (tmp_path / "steps.tsv").write_text(
        "setup\t0\t3\t40\npytest_gpu\t1\t120\t250\nthroughput\t124\t110\t110\n"
    )
    (tmp_path / "env.txt").write_text("date: 2026-01-01T00:00:00Z\ntorch 2.11.0, CUDA 13.0\nnoise\n")
    (tmp_path / "pytest_junit.xml").write_text(
        '<?xml version="1.0"?><testsuites><testsuite name="pytest" tests="3" failures="1" errors="0" '
        'skipped="1" time="12.5"><testcase classname="tests.test_gpu" name="test_a[cuda]" time="2.0"/>'
        '<testcase classname="tests.test_gpu" name="test_b[cuda]" time="9.5"><failure message="assert 0.8 &gt;= 0.85">'
        'trace</failure></testcase><testcase classname="tests.test_gpu" name="test_c[cuda]" time="0.1">'
        '<skipped type="pytest.xfail" message="kd_ray bug"/></testcase></testsuite></testsuites>'
    )
    done = subprocess.run(
        ["bash", str(SCRIPT), "--summary", sys.executable, str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    summary = (tmp_path / "summary.md").read_text()
    assert "- date: 2026-01-01T00:00:00Z" in summary and "- torch 2.11.0, CUDA 13.0" in summary
    assert "noise" not in summary
    assert "| throughput | 124 (timed out) | 110 | 110 |" in summary
    assert "3 tests, 1 failed, 0 errors, 1 skipped" in summary
    # slowest first, with the failure's message
    assert summary.index("test_b[cuda] | failure: assert 0.8 >= 0.85") < summary.index(
        "test_a[cuda] | passed"
    )
    assert "not measured" in summary  # no throughput.md


def test_kd_throughput_cli_runs_on_cpu_at_the_tiniest_settings(tmp_path: Path) -> None:
    args = [
        "--size", "16", "--batch", "2", "--steps", "1", "--warmup", "0", "--teachers", "2",
        "--teacher-arch", "cnn_tiny", "--student-arch", "cnn_tiny", "--num-classes", "4",
        "--device", "cpu", "--threads", "1", "--configs", "bf16+cl",
        "--json", str(tmp_path / "t.json"), "--markdown", str(tmp_path / "t.md"),
    ]  # fmt: skip
    done = subprocess.run(
        [sys.executable, str(REPO / "benchmarks" / "kd_throughput.py"), *args],
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert "KD step: 2 x cnn_tiny (frozen, CAM hooks) -> cnn_tiny" in done.stdout
    rows = json.loads((tmp_path / "t.json").read_text())["rows"]
    # fp32 is the ratio's baseline: measured first even when not asked for
    assert [(r["amp"], r["channels_last"]) for r in rows] == [(False, False), (True, True)]
    assert rows[0]["ratio"] == 1.0 and all(r["images_per_s"] > 0 for r in rows)
    assert all(r["peak_mem_gib"] is None for r in rows)  # CPU: no CUDA peak memory
    markdown = (tmp_path / "t.md").read_text()
    assert "| amp | channels_last | images/s | ratio to fp32 | peak GiB |" in markdown
    assert re.search(r"^\| bf16 \| on \| [\d.]+ \| [\d.]+ \| - \|$", markdown, re.M)
    assert "- command: `python benchmarks/kd_throughput.py --size 16" in markdown


def test_kd_throughput_refuses_an_unknown_config() -> None:
    sys.path.insert(0, str(REPO / "benchmarks"))
    try:
        import kd_throughput
    finally:
        sys.path.remove(str(REPO / "benchmarks"))
    with pytest.raises(SystemExit):
        kd_throughput.parse_args(["--configs", "fp16"])
    assert kd_throughput.parse_args(["--configs", "bf16+cl,fp32"]).configs == ["fp32", "bf16+cl"]
    assert kd_throughput.parse_args([]).configs == ["fp32", "cl", "bf16", "bf16+cl"]


# --- benchmarks/run_all.py (issue 10, item 6) ------------------------------------------------------

RUN_ALL = REPO / "benchmarks" / "run_all.py"


def test_run_all_quick_writes_every_section_with_its_ratio_command_and_machine(tmp_path: Path) -> None:
    """``--quick`` never starts Ray (this stays a fast test): every section is there with a ratio
    line (the orchestration ratio says it was not measured), the commands and the machine."""
    output = tmp_path / "RESULTS.md"
    done = subprocess.run(
        [sys.executable, str(RUN_ALL), "--quick", "--output", str(output)],
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    text = output.read_text()
    titles = [
        "## 1. Orchestration overhead",
        "## 2. Cohort saving",
        "## 3. In-training metric overhead",
        "## 4. Data pipeline",
        "## 5. Planner makespan",
    ]
    positions = [text.index(t) for t in titles]
    assert positions == sorted(positions)
    sections = dict(zip(titles, re.split(r"^## \d\. .*$", text, flags=re.M)[1:6], strict=True))
    for title, body in sections.items():
        assert "Measured by:" in body, title
        assert re.search(r"^- \*\*ratio [^*]+\*\*: ", body, re.M), f"{title} has no ratio line"
    measured = r"\*\*: [\d.]+×"
    for title in titles[1:]:  # measured even in --quick
        assert re.search(r"^- \*\*ratio [^*]+" + measured, sections[title], re.M), title
    orchestration = sections[titles[0]]
    assert "**ratio sweep / plain processes (target ≤ 1.5 on 2 cores)**: not measured" in orchestration
    assert "| 1 | plain processes |" in orchestration  # the plain side did run
    assert "kd-ray sweep experiments/cifar100.yaml --dry-run --gpus 8" in sections[titles[4]]
    assert "kd-ray sweep experiments/imagenet.yaml --dry-run --gpus 64" in sections[titles[4]]
    assert (
        "teacher forwards per image, `trials_per_run: 1` / default groups, demo.yaml**: 4.00× (32 / 8)"
        in text
    )
    assert re.search(r"kd_ray stream / reference PIL path, weak \(target ≥ 5×\)\*\*: [\d.]+×", text)
    assert "Written by `python benchmarks/run_all.py --quick --output" in text
    cpus = os.cpu_count()
    assert re.search(rf"^- \*\*machine\*\*: {cpus} CPUs, .+torch [\d.]+.*ray [\d.]+", text, re.M)
    assert re.search(r"^- \*\*load average \(1/5/15 min\) at start\*\*: [\d.]+ / ", text, re.M)
    assert re.search(r"^- \*\*load average at end\*\*: [\d.]+ / ", text, re.M)
    assert re.search(r"^- \*\*date\*\*: \d{4}-\d\d-\d\d \d\d:\d\d UTC", text, re.M)
    assert "incomplete" not in text


def test_run_all_refuses_unknown_sections() -> None:
    sys.path.insert(0, str(REPO / "benchmarks"))
    try:
        import run_all
    finally:
        sys.path.remove(str(REPO / "benchmarks"))
    with pytest.raises(SystemExit):
        run_all.parse_args(["--only", "gpu"])
    args = run_all.parse_args(["--only", "data,planner", "--fixed-epochs", "1,3"])
    assert args.only == ["data", "planner"] and args.fixed_epochs == (1, 3)
    assert run_all.parse_args([]).only == list(run_all.SECTIONS)


def test_ray_floor_script_imports_and_takes_the_sweeps_resources() -> None:
    """The floor runs for real in the full run_all only (it starts a cluster); here its imports and
    options, which run_all passes from the config's resources."""
    done = subprocess.run(
        [sys.executable, str(REPO / "benchmarks" / "_ray_floor.py"), "--help"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    for flag in ("--runs", "--num-workers", "--cpus-per-worker", "--report-interval-s", "--stages"):
        assert flag in done.stdout


def test_floor_bounds_take_the_cold_stage_for_one_and_every_stage_for_two() -> None:
    """The orchestration ratio's lower bounds (RESULTS.md section 1), by hand: a second stage
    quicker than the first (warm caches) must not lower the one-stage bound."""
    sys.path.insert(0, str(REPO / "benchmarks"))
    try:
        import run_all
    finally:
        sys.path.remove(str(REPO / "benchmarks"))
    floor = {"init_s": 4.0, "stages_s": [20.0, 16.0], "runs_s": [[14.0, 15.0], [12.0, 12.0]]}
    one, two = run_all.floor_bounds(floor, epochs_per_slot=22.0, plain_wall_s=30.0)
    assert one == pytest.approx((4.0 + 20.0 + 22.0) / 30.0)
    assert two == pytest.approx((4.0 + 36.0 + 22.0) / 30.0)
