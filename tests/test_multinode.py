"""Multi-node, for real: a worker node lost mid-sweep on a 3-node Ray cluster (issue 9, item 13).

Three ``ray start`` processes on this machine, all on 127.0.0.1 (every Ray service listens on
loopback only), each with its own temp dir and ports: a head with no CPUs (Ray's advice for a
cluster's head: it runs the GCS, the job server and the job's driver) and two worker nodes of
1 CPU each. Token authentication is on: the job API refuses a request without the token. The tiny sweep (teachers
copied from the reference run, so only the student stage runs) is submitted with ``ray job
submit``; its results live on a local path, which every node sees (one machine). Each of its two
stream groups needs 0.95 CPU for its one Train worker, so each worker node trains one group,
and the Tune function that drives a group (and its Train controller) runs on a worker node too.

Once every group has reported an epoch, a worker node that runs a group's Tune function (and a
Train worker) is killed: its raylet and every process under it, by pid (SIGKILL, as a lost spot
node). The sweep must finish (the job succeeds, every trial ok), the lost group must continue
from its epoch checkpoint, and every trial's final metrics and per-epoch rows must equal an
uninterrupted run's. The lost node ran a group's Tune function and so its Train controller,
which Ray Train cannot restart: the default ``failure.trial_max_failures: 1`` has Tune re-run
that trial, which resumes from its epoch checkpoint.

The same cluster also shows what ``ray job submit`` exposes: every listening socket of every
node's processes (GCS, dashboard and job API, raylets, agents, the job's driver, the Train
workers with torch.distributed's own store) is on loopback, sampled while the job runs.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import os
import re
import shutil
import socket
import subprocess
import time
import urllib.error
import urllib.request
import uuid
from pathlib import Path

import psutil
import pytest
from _sweep_helpers import (
    JOIN_ON_LOOPBACK,
    PYTHON,
    assert_no_processes_under,
    assert_same_results,
    copy_teachers,
    kill_processes_under,
    listening_sockets,
    loopback_urlopen,
    node_ports,
    processes_under,
    ray_tmpdir,
    table,
    uninterrupted_run,
    write_config,
)

pytestmark = [pytest.mark.slow, pytest.mark.timeout(900)]

RAY = str(Path(PYTHON).with_name("ray"))
WORKER_NODES = 2


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _start_node(cmd: list[str], env: dict[str, str]) -> None:
    started = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=180)
    assert started.returncode == 0, started.stdout[-3000:] + started.stderr[-3000:]


@pytest.fixture
def cluster(tmp_path):
    """Head (0 CPUs) and two 1-CPU worker nodes, all on 127.0.0.1, each with its own temp dir.

    Yields (job API address, client env, {node name: temp dir}). Every process of every node is
    found by its temp dir and killed at the end, whatever happened.
    """
    token = tmp_path / "auth_token"
    token.write_text(uuid.uuid4().hex)
    env = {
        **os.environ,
        "RAY_AUTH_MODE": "token",
        "RAY_AUTH_TOKEN_PATH": str(token),
        "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0",  # every Ray service on 127.0.0.1 only
        "RAY_USAGE_STATS_ENABLED": "0",
    }
    env.pop("RAY_ADDRESS", None)
    tmps = {"head": ray_tmpdir(), **{f"worker{i}": ray_tmpdir() for i in range(1, WORKER_NODES + 1)}}
    gcs_port, dash_port = _free_port(), _free_port()
    common = ["--node-ip-address=127.0.0.1", "--disable-usage-stats", "--object-store-memory=100000000"]
    try:
        _start_node(
            [
                RAY,
                "start",
                "--head",
                f"--port={gcs_port}",
                "--num-cpus=0",
                "--dashboard-host=127.0.0.1",
                f"--dashboard-port={dash_port}",
                f"--ray-client-server-port={_free_port()}",
                f"--temp-dir={tmps['head']}/ray",
                *common,
                *node_ports(),
            ],
            {**env, "RAY_TMPDIR": tmps["head"]},
        )
        for name, tmp in tmps.items():
            if name != "head":
                _start_node(
                    [
                        PYTHON,
                        "-c",
                        JOIN_ON_LOOPBACK,
                        "start",
                        f"--address=127.0.0.1:{gcs_port}",
                        "--num-cpus=1",
                        f"--temp-dir={tmp}/ray",
                        *common,
                        *node_ports(),
                    ],
                    {**env, "RAY_TMPDIR": tmp},
                )
        yield f"http://127.0.0.1:{dash_port}", env, tmps
    finally:
        for tmp in tmps.values():
            kill_processes_under(tmp)
        for tmp in tmps.values():
            assert_no_processes_under(tmp)
            shutil.rmtree(tmp, ignore_errors=True)


def _titles(procs: list[psutil.Process]) -> str:
    names = []
    for proc in procs:
        try:
            names.append(" ".join(proc.cmdline()))
        except psutil.Error:
            continue
    return "\n".join(names)


def _kill_node(tmp: str) -> int:
    """SIGKILL every process of one node (raylet, agents, log monitor, workers): how many."""
    procs = processes_under(tmp)
    for proc in procs:
        with contextlib.suppress(psutil.NoSuchProcess):
            proc.kill()
    _, alive = psutil.wait_procs(procs, timeout=20)
    assert not alive, f"survived SIGKILL: {alive}"
    assert_no_processes_under(tmp)
    return len(procs)


def _job(env: dict, address: str, command: str, job_id: str) -> str:
    """``ray job COMMAND JOB_ID``'s output ('' when the dashboard does not answer in time)."""
    try:
        done = subprocess.run(
            [RAY, "job", command, "--address", address, job_id], env=env, capture_output=True, text=True, timeout=60
        )  # fmt: skip
    except subprocess.TimeoutExpired:
        return ""
    return done.stdout + done.stderr


def _job_status(address: str, token: str, job_id: str) -> str:
    """The job's status from the job API (cheaper to poll than ``ray job status``)."""
    request = urllib.request.Request(
        f"{address}/api/jobs/{job_id}", headers={"Authorization": f"Bearer {token}"}
    )
    try:
        with loopback_urlopen(request, timeout=30) as reply:
            return json.loads(reply.read())["status"]
    except OSError:  # a busy dashboard: ask again next time
        return "UNKNOWN"


def _files(folder: Path) -> set[str]:
    return {p.stem for p in folder.glob("*.parquet")} if folder.exists() else set()


def _stream(trial_id: str) -> str:
    """The stream group (student augmentation) of a trial id like ``synthetic-T1w_Sw-kd-full-s0``."""
    return trial_id.split("-")[1].rsplit("_", 1)[1]


def _gist(output: str) -> str:
    """kd-ray's own lines and the error lines of a job log (Ray's are long)."""
    keep = [
        line[:300]
        for line in output.splitlines()
        if line.startswith("kd-ray") or "resuming from" in line or "Error" in line or "FailurePolicy" in line
    ]
    return "\n".join(keep[-60:])


class NodeLossNotSurvived(Exception):
    """The sweep lost trials to the node loss (what the xfail below expects, and nothing else)."""


@pytest.fixture
def reference():
    """The uninterrupted tiny sweep (shared with the other slow tests), run before any cluster."""
    return uninterrupted_run()


LOOPBACK = {"127.0.0.1", "::1", "::ffff:127.0.0.1"}


def _listeners(marker: str) -> set[tuple[int, str, str, int]]:
    """Every listening socket of one node's processes (found by its temp dir) and all their
    descendants: services, job driver, workers."""
    return listening_sockets(processes_under(marker))


def test_sweep_survives_losing_a_worker_node(tmp_path, reference, cluster):
    address, env, tmps = cluster
    token = Path(env["RAY_AUTH_TOKEN_PATH"]).read_text().strip()
    with pytest.raises(urllib.error.HTTPError) as denied:  # the job API wants the token
        loopback_urlopen(f"{address}/api/jobs/", timeout=30)
    assert denied.value.code == 401
    results = tmp_path / "results"
    copy_teachers(reference, results)  # teachers found by content hash: only the student stage runs
    # TINY as the reference ran it, with the default failure settings. Train's poll interval at
    # Ray's default (2 s, not TINY's 0.2 s) paces the epoch reports, so a group trains for
    # seconds rather than one: time to find both groups mid-way. It changes no number.
    config = write_config(tmp_path, {"resources": {"report_interval_s": 2.0}})
    trial_ids = set(table(reference / "tiny", "trials")["trial_id"])
    streams = {_stream(t) for t in trial_ids}
    sweep = results / "tiny"
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
    submitted = subprocess.run(
        [RAY, "job", "submit", "--address", address, "--no-wait", "--submission-id", job_id, "--", *entrypoint],
        env=env, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert submitted.returncode == 0, submitted.stdout + submitted.stderr
    t0 = time.monotonic()
    timeline: list[str] = []

    def note(event: str) -> None:
        timeline.append(f"{time.monotonic() - t0:6.1f}s {event}")

    # Kill a worker node once every stream group has reported an epoch (so has a checkpoint) and
    # one still runs: the node that runs a running group's Tune function (and so its Train
    # controller), and a Train worker if one does: 1 CPU per node and 0.95 per Train worker,
    # so each worker node trains one group.
    workers = [name for name in tmps if name != "head"]
    deadline, victim, status, seen, next_log = t0 + 420, None, "", None, 0.0
    listeners: set[tuple[int, str, str, int]] = set()
    for rounds in itertools.count():
        if time.monotonic() >= deadline:
            break
        if rounds % 3 == 0:  # every listener while the job runs, DDP's own included
            for tmp in tmps.values():
                listeners |= _listeners(tmp)
        status = _job_status(address, token, job_id)
        if status in ("SUCCEEDED", "FAILED", "STOPPED"):
            break
        started = {_stream(t) for t in _files(sweep / "epochs.parquet")}
        finished = _files(sweep / "trials.parquet")
        if len(finished) == 4 and time.monotonic() > next_log:
            # The job API may lose the job's status with the killed node (Ray's job bookkeeping,
            # not the sweep's): then the driver's own log, which ends with the sweep's summary,
            # says whether the sweep finished.
            next_log = time.monotonic() + 5
            if "kd-ray: sweep 'tiny':" in _job(env, address, "logs", job_id):
                status = _job_status(address, token, job_id)
                break
        running = streams - {_stream(t) for t in finished}
        if (started, finished) != seen:
            seen = (started, finished)
            note(f"groups reporting {sorted(started)}, trials finished {sorted(finished)}")
        if victim is None and started == streams:
            assert running, "every group finished before a node could be killed:\n" + "\n".join(timeline)
            titles = {name: _titles(processes_under(tmps[name])) for name in workers}
            hosts = [name for name in workers if "ImplicitFunc" in titles[name]]  # Tune functions
            hosts.sort(key=lambda name: "RayTrainWorker" not in titles[name])
            if hosts:
                victim = hosts[0]
                note(
                    f"killed {victim} ({_kill_node(tmps[victim])} processes; groups running {sorted(running)})"
                )
        time.sleep(0.2)
    note(f"job {status}")
    logs = subprocess.run(
        [RAY, "job", "logs", "--address", address, job_id], env=env, capture_output=True, text=True, timeout=120
    )  # fmt: skip
    output = logs.stdout + logs.stderr
    (tmp_path / "job.log").write_text(output)
    story = "\n".join(timeline)
    print(story)
    assert victim is not None, f"no worker node was killed\n{story}\n{_gist(output)}"
    finished_by_log = status not in ("SUCCEEDED", "FAILED") and "kd-ray: sweep 'tiny':" in output
    assert status in ("SUCCEEDED", "FAILED") or finished_by_log, f"job {status}\n{story}\n{_gist(output)}"
    succeeded = status == "SUCCEEDED" or finished_by_log
    if not succeeded or "4 trial(s) ok, 0 failed" not in output:
        raise NodeLossNotSurvived(f"job {status} after losing {victim}\n{story}\n{_gist(output)}")
    # The group the node trained continued from its last epoch checkpoint, on the other node.
    assert re.search(r": resuming from its epoch [1-9]\d* checkpoint", output), _gist(output)

    # Every listener of every node's processes stayed on loopback, the Train workers' too.
    exposed = sorted(entry for entry in listeners if entry[2] not in LOOPBACK)
    assert not exposed, f"listening beyond loopback: {exposed}"
    ports: dict[int, set[int]] = {}
    for pid, name, _, port in listeners:
        if "RayTrainWorker" in name:
            ports.setdefault(pid, set()).add(port)
    assert ports and max(len(p) for p in ports.values()) >= 2, sorted(listeners)

    # Every trial's final metrics and per-epoch rows equal the uninterrupted run's.
    trials, epochs = table(sweep, "trials"), table(sweep, "epochs")
    assert set(trials["trial_id"]) == trial_ids and (trials["status"] == "ok").all()
    assert not epochs.duplicated(["trial_id", "epoch", "split"]).any()
    assert_same_results(trials, table(reference / "tiny", "trials"), ["trial_id"])
    assert_same_results(epochs, table(reference / "tiny", "epochs"), ["trial_id", "epoch", "split"])
