"""A results store that goes away mid-run is one line and exit 2 (issue 9, item 8).

The collector writes each epoch's rows as reports arrive; when the store is gone (an object
store outage, a directory removed) the write fails inside a Tune callback, and Tune wraps the
error in a TuneError with a traceback. The sweep now stops with the one line it wraps.
"""

from __future__ import annotations

import re
import shutil

import pytest
from _sweep_helpers import (
    copy_teachers,
    kill_tree,
    ray_tmpdir,
    start_cli,
    uninterrupted_run,
    wait_for,
    write_config,
)

pytestmark = pytest.mark.slow


def test_results_directory_removed_mid_run(tmp_path):
    config = write_config(
        tmp_path, {"grid": {"permutations": ["T1w_Sw"]}, "student": {"train": {"epochs": 40}}}
    )
    results = tmp_path / "results"
    copy_teachers(uninterrupted_run(), results)  # straight to the student run, whose rows vanish
    ray_tmp = ray_tmpdir()
    log = tmp_path / "sweep.log"
    proc = start_cli(
        "sweep", str(config), "--results", str(results), "--no-report", "-q", log=log, ray_tmp=ray_tmp
    )
    try:
        epochs = results / "tiny" / "epochs.parquet"
        wait_for(lambda: epochs.is_dir() and any(epochs.iterdir()), 500, "the first epoch rows", proc)
        shutil.rmtree(results / "tiny")
        (results / "tiny").write_text("not a directory any more")
        rc = proc.wait(timeout=300)
    finally:
        kill_tree(proc, ray_tmp)
    output = log.read_text()
    assert rc == 2, output[-4000:]
    # What the driver printed (Ray's actors' own output, "(Name pid=N) ...", is theirs): one
    # error line, the last, naming the path that went away.
    driver = [
        line for line in output.splitlines() if line.strip() and not re.search(r"\(\w+ pid=\d+\)", line)
    ]
    errors = [line for line in driver if line.startswith("kd-ray: error: ")]
    assert len(errors) == 1 and driver[-1] == errors[0], output[-4000:]
    assert errors[0].startswith("kd-ray: error: results: cannot ") and str(results / "tiny") in errors[0]
