"""A node that joins mid-sweep is used at once (issue 10, item 5).

A head node of 1 CPU on 127.0.0.1 holds one student run at a time (0.95 CPU for its one Train
worker), and the tiny sweep has two stream groups. Once the first group trains, a second node
of 1 CPU joins (``ray start``, by PID like tests/test_multinode.py's nodes). The sweep's capacity
gate (kd_ray.orchestration.placement) reads the cluster again, says it now holds two runs, and
starts the second group on the new node while the first still trains. A count of runs frozen at
the start would have kept the new node idle until the first group finished.

The students' epoch count is far more than the test waits for, so the first group cannot finish
before the new node has joined however fast the machine; the test stops the sweep once every
student of both groups has reported an epoch (a sweep over several nodes running to its end is
tests/test_multinode.py's).
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import uuid

import pytest
from _sweep_helpers import (
    JOIN_ON_LOOPBACK,
    PYTHON,
    RAY,
    cli_env,
    copy_teachers,
    free_port,
    kd_ray_cmd,
    kill_processes_under,
    node_ports,
    ray_tmpdir,
    train_workers_under,
    uninterrupted_run,
    wait_for,
    write_config,
)

pytestmark = pytest.mark.slow


def _start(cmd: list[str], env: dict[str, str]) -> None:
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=180)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]


def _trains_on(tmp: str) -> bool:
    return bool(train_workers_under(tmp))


def test_a_node_that_joins_mid_sweep_takes_the_next_run(tmp_path):
    reference = uninterrupted_run()
    tmps = {"head": ray_tmpdir(), "new": ray_tmpdir()}
    token = tmp_path / "auth_token"
    token.write_text(uuid.uuid4().hex)
    env = {
        **cli_env(tmps["head"]),
        "RAY_AUTH_MODE": "token",
        "RAY_AUTH_TOKEN_PATH": str(token),
        "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0",
    }
    gcs_port = free_port()
    common = ["--node-ip-address=127.0.0.1", "--disable-usage-stats", "--object-store-memory=100000000"]
    results = tmp_path / "results"
    copy_teachers(reference, results)  # the student stage is what is placed
    # Two stream groups of one 0.95-CPU worker each, training far longer than the test runs.
    config = write_config(tmp_path, {"student": {"train": {"epochs": 5000}}})
    log = tmp_path / "sweep.log"
    proc = None
    try:
        _start(
            [RAY, "start", "--head", f"--port={gcs_port}", "--num-cpus=1", "--include-dashboard=false",
             f"--ray-client-server-port={free_port()}", f"--temp-dir={tmps['head']}/ray", *common,
             *node_ports()],
            env,
        )  # fmt: skip
        driver_env = {**env, "RAY_ADDRESS": f"127.0.0.1:{gcs_port}"}
        with open(log, "w") as out:
            proc = subprocess.Popen(
                kd_ray_cmd("sweep", str(config), "--results", str(results), "--no-report"),
                stdout=out, stderr=subprocess.STDOUT, env=driver_env, start_new_session=True,
            )  # fmt: skip
        epochs = results / "tiny" / "epochs.parquet"
        wait_for(
            lambda: epochs.is_dir() and any(epochs.iterdir()), 300, "the first group's first epoch", proc
        )
        assert not _trains_on(tmps["new"])
        _start(
            [PYTHON, "-c", JOIN_ON_LOOPBACK, "start", f"--address=127.0.0.1:{gcs_port}", "--num-cpus=1",
             f"--temp-dir={tmps['new']}/ray", *common, *node_ports()],
            {**env, "RAY_TMPDIR": tmps["new"]},
        )  # fmt: skip
        wait_for(lambda: _trains_on(tmps["new"]), 300, "a Train worker on the new node", proc)
        wait_for(lambda: len(list(epochs.iterdir())) == 4, 300, "an epoch of every student", proc)
        # Both groups train at once, the first on the head, the second on the new node.
        assert not list((results / "tiny").glob("trials.parquet/*.parquet"))
    finally:
        if proc is not None and proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=30)
        for tmp in tmps.values():
            kill_processes_under(tmp)
            shutil.rmtree(tmp, ignore_errors=True)
    output = log.read_text()
    assert "the cluster now holds 2 student run(s) at once (was 1)" in output, output[-4000:]
