"""Ctrl-C stops a sweep (issue 9, item 9).

Ray Tune catches the first SIGINT itself: ``fit()`` returned normally, the student stage still
started, the output told the user to call ``Tuner.restore`` (not how a kd_ray sweep resumes)
and the exit code was 1. A sweep interrupted by Ctrl-C now stops, says the ``kd-ray sweep ...
--resume`` command that continues it, and exits 130 like any command stopped by Ctrl-C.
"""

from __future__ import annotations

import os
import re
import shlex
import signal

import pytest
from _sweep_helpers import (
    kill_tree,
    processes_under,
    ray_tmpdir,
    start_cli,
    wait_for,
    write_config,
)

pytestmark = pytest.mark.slow


def test_ctrl_c_stops_the_sweep_and_names_the_resume_command(tmp_path):
    # One teacher with enough epochs that the interrupt lands while it trains.
    config = write_config(
        tmp_path, {"grid": {"permutations": ["T1w_Sw"]}, "teacher": {"train": {"epochs": 40}}}
    )
    results = tmp_path / "results"
    ray_tmp = ray_tmpdir()
    log = tmp_path / "sweep.log"
    proc = start_cli("sweep", str(config), "--results", str(results), "--no-report", log=log, ray_tmp=ray_tmp)
    try:
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
    output = log.read_text()
    assert rc == 130, output[-3000:]
    resume = f"kd-ray sweep {shlex.quote(str(config))} --results {shlex.quote(str(results))} --resume"
    assert resume in output, output[-3000:]
    assert "Tuner.restore" not in output, output[-3000:]
    # No traceback from the driver (Ray's actors' own output, "(Name pid=N) ...", is theirs).
    driver = "\n".join(line for line in output.splitlines() if not re.search(r"\(\w+ pid=\d+\)", line))
    assert "Traceback" not in driver and "KeyboardInterrupt" not in driver, driver[-3000:]
    # The student stage never started, and no teacher was recorded as trained.
    assert not list((results / "tiny" / "_ray").glob("groups-*"))
    assert not list((results / "_teachers").glob("*.json"))
