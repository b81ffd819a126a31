"""A sweep submitted with ``ray job submit`` to a ``ray start --head`` cluster with token auth.

The cluster is what a user would run on one machine: head node on 127.0.0.1, dashboard and job
server on 127.0.0.1, token authentication on (its token in a private file). The client needs
the address, ``RAY_AUTH_MODE=token`` and the token; without the token the job API answers 401.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import time
import urllib.error
import urllib.request
import uuid
from pathlib import Path

import pandas as pd
import psutil
import pytest
from _sweep_helpers import (
    PYTHON,
    assert_no_processes_under,
    kill_processes_under,
    loopback_urlopen,
    processes_under,
    ray_tmpdir,
    write_config,
)

pytestmark = pytest.mark.slow

RAY = str(Path(PYTHON).with_name("ray"))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def cluster(tmp_path):
    """A token-authenticated head node on loopback; yields (job API address, client env)."""
    ray_tmp = ray_tmpdir()
    token = tmp_path / "auth_token"
    token.write_text(uuid.uuid4().hex)
    env = {
        **os.environ,
        "RAY_AUTH_MODE": "token",
        "RAY_AUTH_TOKEN_PATH": str(token),
        # Single-machine mode: every Ray service listens on 127.0.0.1 only.
        "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0",
        "RAY_USAGE_STATS_ENABLED": "0",
    }
    env.pop("RAY_ADDRESS", None)
    gcs_port, dash_port = _free_port(), _free_port()
    cmd = [
        RAY, "start", "--head", "--node-ip-address=127.0.0.1", f"--port={gcs_port}",
        "--dashboard-host=127.0.0.1", f"--dashboard-port={dash_port}",
        f"--ray-client-server-port={_free_port()}", f"--dashboard-agent-listen-port={_free_port()}",
        "--num-cpus=2", f"--temp-dir={ray_tmp}/ray", "--disable-usage-stats",
    ]  # fmt: skip
    try:
        started = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=180)
        assert started.returncode == 0, started.stdout + started.stderr
        # `ray start` returns before the dashboard's HTTP server listens; wait for it.
        deadline = time.monotonic() + 120
        while not _listen_hosts(dash_port) and time.monotonic() < deadline:
            time.sleep(0.5)
        assert _listen_hosts(dash_port), "the dashboard never listened"
        yield f"http://127.0.0.1:{dash_port}", env, gcs_port, dash_port, ray_tmp
    finally:
        kill_processes_under(ray_tmp)
        assert_no_processes_under(ray_tmp)
        shutil.rmtree(ray_tmp, ignore_errors=True)


def _job(
    env: dict, address: str, command: str, *args: str, timeout: float = 60
) -> subprocess.CompletedProcess:
    return subprocess.run(
        [RAY, "job", command, "--address", address, *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def _listen_hosts(port: int) -> set[str]:
    return {
        c.laddr.ip for c in psutil.net_connections("tcp") if c.status == "LISTEN" and c.laddr.port == port
    }


LOOPBACK = {"127.0.0.1", "::1", "::ffff:127.0.0.1"}


def _listeners(marker: str) -> set[tuple[int, str, str, int]]:
    """(pid, command, address, port) of every listening socket of the cluster's processes
    (found by its temp dir) and all their descendants: services, job driver, workers."""
    found = set()
    for proc in processes_under(marker):
        try:
            name = " ".join(proc.cmdline())[:60]
            for c in proc.net_connections("tcp"):
                if c.status == psutil.CONN_LISTEN:
                    found.add((proc.pid, name, c.laddr.ip, c.laddr.port))
        except psutil.Error:
            continue
    return found


def test_sweep_via_ray_job_submit(tmp_path, cluster):
    address, env, gcs_port, dash_port, ray_tmp = cluster
    # Safe defaults: loopback only, and the job API refuses a request without the token.
    assert _listen_hosts(dash_port) <= {"127.0.0.1", "::ffff:127.0.0.1"}
    assert _listen_hosts(gcs_port) <= {"127.0.0.1", "::ffff:127.0.0.1"}
    with pytest.raises(urllib.error.HTTPError) as denied:
        loopback_urlopen(f"{address}/api/jobs/", timeout=30)
    assert denied.value.code == 401

    config = write_config(tmp_path, {"grid": {"permutations": ["T1w_Sw"]}})
    results = tmp_path / "results"
    job_id = f"kd-ray-{uuid.uuid4().hex[:8]}"
    entrypoint = [
        PYTHON,
        "-m",
        "kd_ray.cli",
        "sweep",
        str(config),
        "--results",
        str(results),
        "--no-report",
        "-q",
    ]
    submitted = _job(env, address, "submit", "--no-wait", "--submission-id", job_id, "--", *entrypoint)
    assert submitted.returncode == 0, submitted.stdout + submitted.stderr

    deadline, status = time.monotonic() + 400, ""
    listeners: set[tuple[int, str, str, int]] = set()
    while time.monotonic() < deadline:
        polled = _job(env, address, "status", job_id)
        status = (polled.stdout + polled.stderr).lower()  # "Job '<id>' succeeded"
        if any(f"' {s}" in status for s in ("succeeded", "failed", "stopped")):
            break
        for _ in range(10):  # every listener while the job runs, DDP's own included
            listeners |= _listeners(ray_tmp)
            time.sleep(0.3)
    fetched = _job(env, address, "logs", job_id)
    logs = fetched.stdout + fetched.stderr
    assert "' succeeded" in status, status + logs[-4000:]
    assert "1 trial(s) ok, 0 failed" in logs
    # Every listener of the cluster's processes stayed on loopback, the Train workers' too.
    exposed = sorted(entry for entry in listeners if entry[2] not in LOOPBACK)
    assert not exposed, f"listening beyond loopback: {exposed}"
    ports: dict[int, set[int]] = {}
    for pid, name, _, port in listeners:
        if "RayTrainWorker" in name:
            ports.setdefault(pid, set()).add(port)
    assert ports and max(len(p) for p in ports.values()) >= 2, sorted(listeners)

    trials = pd.read_parquet(results / "tiny" / "trials.parquet")
    assert trials["status"].tolist() == ["ok"] and trials["epochs"].tolist() == [4]
    epochs = pd.read_parquet(results / "tiny" / "epochs.parquet")
    assert len(epochs) == 4 * 3
    assert json.loads((results / "_teachers" / f"{trials['teacher_ids'][0]}.json").read_text())["epochs"] == 1
