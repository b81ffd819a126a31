"""Ctrl-C stops a sweep (issue 9, item 9), and a second driver of a running sweep refuses
(issue 9: the sweep lease, kd_ray/orchestration/lease.py).

Ray Tune catches the first SIGINT itself: ``fit()`` returned normally, the student stage still
started, the output told the user to call ``Tuner.restore`` (not how a kd_ray sweep resumes)
and the exit code was 1. A sweep interrupted by Ctrl-C now stops, says the ``kd-ray sweep ...
--resume`` command that continues it, and exits 130 like any command stopped by Ctrl-C.

Both checks share one sweep on its own private cluster (``interrupted``): while its teacher
trains, a second driver of the same sweep is started and must refuse with one line, before it
starts Ray, leaving the first undisturbed; then the first gets a terminal's Ctrl-C. One Ray
start-up and one Train run serve both tests.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import signal
import subprocess
import time
from pathlib import Path
from types import SimpleNamespace

import pytest
from _sweep_helpers import (
    REPO,
    cli_env,
    kd_ray_cmd,
    kill_processes_under,
    kill_tree,
    processes_under,
    ray_tmpdir,
    start_cli,
    user_error_line,
    wait_for,
    write_config,
)

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def interrupted(tmp_path_factory) -> SimpleNamespace:
    """One teacher with enough epochs that the second driver and the interrupt land while it
    trains; what each step saw, for the tests to check."""
    tmp = tmp_path_factory.mktemp("interrupted")
    config = write_config(tmp, {"grid": {"permutations": ["T1w_Sw"]}, "teacher": {"train": {"epochs": 400}}})
    results = tmp / "results"
    ray_tmp, second_tmp = ray_tmpdir(), ray_tmpdir()
    log = tmp / "sweep.log"
    proc = start_cli("sweep", str(config), "--results", str(results), "--no-report", log=log, ray_tmp=ray_tmp)
    try:
        wait_for(lambda: (results / "tiny.lease").exists(), 120, "the first driver's lease", proc)
        holder = json.loads((results / "tiny.lease").read_text())
        started = time.monotonic()
        second = subprocess.run(
            kd_ray_cmd("sweep", str(config), "--results", str(results), "--no-report", "-q", "--resume"),
            capture_output=True,
            text=True,
            timeout=120,
            cwd=REPO,
            env=cli_env(second_tmp),
        )
        second_s = time.monotonic() - started
        second_sessions = list(Path(second_tmp).rglob("session_*"))
        first_running_after_second = proc.poll() is None
        wait_for(
            lambda: list((results / "_teachers" / "_ray").glob("teacher-*/checkpoint_*")),
            400,
            "the teacher's first epoch checkpoint",
            proc,
        )
        os.killpg(proc.pid, signal.SIGINT)  # what a terminal's Ctrl-C does: the foreground group
        rc = proc.wait(timeout=120)
        # Stopping the sweep stops its private cluster too.
        wait_for(lambda: not [p for p in processes_under(ray_tmp) if p.is_running()], 60, "Ray to stop")
    finally:
        kill_tree(proc, ray_tmp)
        kill_processes_under(second_tmp)
    return SimpleNamespace(
        config=config,
        results=results,
        pid=proc.pid,
        rc=rc,
        output=log.read_text(),
        holder=holder,
        second=second,
        second_s=second_s,
        second_sessions=second_sessions,
        first_running_after_second=first_running_after_second,
    )


def test_a_second_driver_of_a_running_sweep_refuses_with_one_line(interrupted):
    run = interrupted
    assert run.holder["pid"] == run.pid
    assert run.second.returncode == 2, run.second.stdout + run.second.stderr
    line = user_error_line(run.second.stderr)
    assert f"{run.results}/tiny.lease: sweep 'tiny' is being run by another driver" in line
    assert f"pid {run.pid}" in line and run.holder["owner"] in line
    # It refused before starting Ray: no session directory in its Ray temp dir.
    assert not run.second_sessions, run.second_sessions
    assert run.first_running_after_second, "the first driver stopped"
    assert "lost its lease" not in run.output
    # The first driver, stopped by Ctrl-C, gave its leases back.
    assert not (run.results / "tiny.lease").exists()
    assert not list((run.results / "_teachers").glob("*.lease"))
    print(f"second driver refused in {run.second_s:.1f} s: {line}")


def test_ctrl_c_stops_the_sweep_and_names_the_resume_command(interrupted):
    run = interrupted
    assert run.rc == 130, run.output[-3000:]
    resume = f"kd-ray sweep {shlex.quote(str(run.config))} --results {shlex.quote(str(run.results))} --resume"
    assert resume in run.output, run.output[-3000:]
    assert "Tuner.restore" not in run.output, run.output[-3000:]
    # No traceback from the driver (Ray's actors' own output, "(Name pid=N) ...", is theirs).
    driver = "\n".join(line for line in run.output.splitlines() if not re.search(r"\(\w+ pid=\d+\)", line))
    assert "Traceback" not in driver and "KeyboardInterrupt" not in driver, driver[-3000:]
    # The student stage never started, and no teacher was recorded as trained.
    assert not list((run.results / "tiny" / "_ray").glob("groups-*"))
    assert not list((run.results / "_teachers").glob("*.json"))
