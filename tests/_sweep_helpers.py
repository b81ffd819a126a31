"""Shared pieces of the cluster, resume and fault tests: a tiny sweep, the CLI as a subprocess,
and process-tree clean-up that touches only the Ray processes a test started.

Every Ray cluster a test starts lives under its own temporary directory (``RAY_TMPDIR``), so its
processes can be found by that path and stopped by pid; ``ray stop`` would stop every Ray
cluster on the machine, including ones this test did not start.

Most of a CLI sweep's time in these tests is Ray start-up, so the sweeps that run to completion
and test what a sweep computes, not the life of its cluster, join one shared cluster
(:func:`shared_cluster`, through ``RAY_ADDRESS`` as under ``ray job submit``). Tests that kill a
driver or its processes, press Ctrl-C, inspect listeners or credentials, or test the default
private cluster itself start their own.
"""

from __future__ import annotations

import contextlib
import copy
import functools
import ipaddress
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
import uuid
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import psutil
import yaml

REPO = Path(__file__).resolve().parents[1]
PYTHON = sys.executable
RAY = str(Path(PYTHON).with_name("ray"))

# 2 teachers (T1w, T1s), 4 student trials of 4 epochs: a few seconds of training per trial.
TINY: dict[str, Any] = {
    "name": "tiny",
    "datasets": [{"name": "synthetic", "num_train": 64, "num_val": 32}],
    "teacher": {"arch": "cnn_tiny", "train": {"epochs": 1, "batch_size": 32, "lr": 0.05}},
    "student": {"arch": "cnn_tiny", "train": {"epochs": 4, "batch_size": 32, "lr": 0.05}},
    "grid": {"teacher_counts": [1], "losses": ["kd"], "views": ["full"], "seeds": [0]},
    "resources": {"num_workers": 1, "cpus_per_worker": 0.95, "report_interval_s": 0.2},
}

# Columns that vary from run to run by nature (wall-clock time), not by what was computed.
TIMING_COLUMNS = {"wall_s", "seconds"}


def merged(base: dict[str, Any], override: dict[str, Any]) -> dict[str, Any]:
    out = copy.deepcopy(base)
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = merged(out[key], value)
        else:
            out[key] = value
    return out


def write_config(directory: Path, override: dict[str, Any] | None = None) -> Path:
    path = Path(directory) / "sweep.yaml"
    path.write_text(yaml.safe_dump(merged(TINY, override or {}), sort_keys=False))
    return path


def ray_tmpdir() -> str:
    """A short private directory for one Ray cluster (unix socket paths must stay short)."""
    return tempfile.mkdtemp(prefix="kdr", dir="/tmp")


def cli_env(ray_tmp: str, **extra: str) -> dict[str, str]:
    env = {**os.environ, "RAY_TMPDIR": ray_tmp, "RAY_USAGE_STATS_ENABLED": "0", **extra}
    env.pop("RAY_ADDRESS", None)
    return env


def loopback_urlopen(request: str | urllib.request.Request, timeout: float = 30):
    """``urlopen`` for a server on 127.0.0.1, never through a proxy.

    ``urllib.request.urlopen`` builds its opener once per process, with the proxies of the
    environment at that moment: after a test that points them at a closed port (the no-network
    tests), every later plain ``urlopen`` in the process would go there.
    """
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    return opener.open(request, timeout=timeout)


def kd_ray_cmd(*args: str) -> list[str]:
    return [PYTHON, "-m", "kd_ray.cli", *args]


def run_cli(
    *args: str, timeout: float = 540, env: dict[str, str] | None = None, shared: bool = False
) -> subprocess.CompletedProcess:
    """Run ``kd-ray`` to completion, then make sure any cluster it started is gone.

    By default it starts its own private cluster (in its own Ray temp dir); ``shared=True``
    joins :func:`shared_cluster` instead.
    """
    ray_tmp = ray_tmpdir()
    env = dict(env or cli_env(ray_tmp))
    if shared:
        # The cluster is in single-machine mode (every service on 127.0.0.1); a driver outside
        # it would resolve 127.0.0.1 to the machine's routable IP and never find its GCS.
        env.update(shared_cluster_env())
    try:
        return subprocess.run(
            kd_ray_cmd(*args), capture_output=True, text=True, timeout=timeout, cwd=REPO, env=env
        )
    finally:
        kill_processes_under(ray_tmp)
        shutil.rmtree(ray_tmp, ignore_errors=True)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def node_ports() -> list[str]:
    """Ports a raylet and its agents would otherwise share with the other nodes on this host."""
    return [
        f"--node-manager-port={free_port()}",
        f"--object-manager-port={free_port()}",
        f"--metrics-export-port={free_port()}",
        f"--dashboard-agent-listen-port={free_port()}",
        f"--dashboard-agent-grpc-port={free_port()}",
        f"--runtime-env-agent-port={free_port()}",
    ]


# Worker nodes join through Ray's own CLI (``ray.scripts.scripts.main``, what ``ray start`` runs)
# with two settings changed in that process only. Ray's single-machine mode
# (RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0, which keeps every service on 127.0.0.1) makes ``ray start``
# refuse to add a worker node; cluster mode instead swaps 127.0.0.1 (in --address and
# --node-ip-address) for the machine's routable IP, and GCS and raylet then listen on every
# interface. So the CLI runs in cluster mode with 127.0.0.1 kept as given; the node's processes
# inherit single-machine mode from the environment, like the head's.
JOIN_ON_LOOPBACK = (
    "import sys\n"
    "from ray._private import ray_constants, services\n"
    "from ray.scripts.scripts import main\n"
    "ray_constants.ENABLE_RAY_CLUSTER = True\n"
    "services.resolve_ip_for_localhost = lambda host: host\n"
    "sys.argv[0] = 'ray'\n"
    "sys.exit(main())\n"
)


_shared: dict[str, str] = {}


def shared_cluster_env() -> dict[str, str]:
    """What a driver needs to join this test process's shared Ray cluster (started on first use).

    A head node of ``ray start`` on 127.0.0.1 with 2 CPUs and no dashboard, stopped by
    :func:`stop_shared_cluster` at the end of the session (conftest). It runs in single-machine
    mode (every service on 127.0.0.1; a driver outside it would otherwise resolve 127.0.0.1 to
    the machine's routable IP and never find its GCS) with token auth and its own token.
    """
    if "address" not in _shared:
        ray_tmp = ray_tmpdir()
        port = free_port()
        token = Path(ray_tmp) / "auth_token"
        token.write_text(uuid.uuid4().hex)
        join = {
            "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0",
            "RAY_AUTH_MODE": "token",
            "RAY_AUTH_TOKEN_PATH": str(token),
        }
        env = {**cli_env(ray_tmp), **join}
        cmd = [
            RAY, "start", "--head", "--node-ip-address=127.0.0.1", f"--port={port}",
            "--include-dashboard=false", f"--ray-client-server-port={free_port()}",
            f"--dashboard-agent-listen-port={free_port()}", "--num-cpus=2",
            f"--temp-dir={ray_tmp}/ray", "--disable-usage-stats",
        ]  # fmt: skip
        started = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=180)
        if started.returncode != 0:
            kill_processes_under(ray_tmp)
            raise RuntimeError(f"the shared Ray cluster did not start:\n{started.stdout}{started.stderr}")
        _shared.update(tmp=ray_tmp, address=f"127.0.0.1:{port}", **join)
    return {"RAY_ADDRESS": _shared["address"], **{k: v for k, v in _shared.items() if k.startswith("RAY_")}}


def stop_shared_cluster() -> None:
    """Stop the shared cluster, if this process started one (by its processes, not ``ray stop``)."""
    ray_tmp = _shared.get("tmp")
    _shared.clear()
    if ray_tmp:
        kill_processes_under(ray_tmp)
        shutil.rmtree(ray_tmp, ignore_errors=True)


# Ctrl-C's default action for the command it execs. A shell that starts a job in the background
# (`make test &`, `nohup ... &`) runs it with SIGINT ignored, and an ignored SIGINT is inherited
# through exec: Python then installs no KeyboardInterrupt handler, and a test's Ctrl-C would do
# nothing. A terminal's foreground job, which the tests stand for, has the default.
_SIGINT_DEFAULT = "import os, signal, sys; signal.signal(signal.SIGINT, signal.SIG_DFL); os.execv(sys.argv[1], sys.argv[1:])"


def start_cli(*args: str, log: Path, ray_tmp: str) -> subprocess.Popen:
    """Start ``kd-ray`` in a new session (process group) so the test can kill its whole tree, or
    stop it with a terminal's Ctrl-C (SIGINT at its default, however the tests were started)."""
    out = open(log, "w")  # noqa: SIM115 - closed when the process is reaped by the test
    return subprocess.Popen(
        [PYTHON, "-c", _SIGINT_DEFAULT, *kd_ray_cmd(*args)],
        stdout=out,
        stderr=subprocess.STDOUT,
        cwd=REPO,
        env=cli_env(ray_tmp),
        start_new_session=True,
    )


def _started_in(proc: psutil.Process, marker: str) -> bool:
    """Whether ``proc`` runs with ``RAY_TMPDIR`` = ``marker``: a daemon that ``ray start``
    leaves behind (its Ray client server) names no temp dir on its command line, and its
    parent has exited."""
    try:
        return proc.environ().get("RAY_TMPDIR") == marker
    except (psutil.Error, OSError):
        return False


def processes_under(marker: str) -> list[psutil.Process]:
    """Processes whose command line names ``marker`` (a cluster's temp dir) or that run with it
    as their ``RAY_TMPDIR``, with descendants."""
    found: dict[int, psutil.Process] = {}
    for proc in psutil.process_iter(["cmdline"]):
        cmdline = " ".join(proc.info["cmdline"] or [])
        if (marker in cmdline or _started_in(proc, marker)) and proc.pid != os.getpid():
            found[proc.pid] = proc
            with contextlib.suppress(psutil.NoSuchProcess):
                found.update({c.pid: c for c in proc.children(recursive=True)})
    return list(found.values())


def train_workers_under(marker: str) -> list[psutil.Process]:
    """The Ray Train worker processes of one cluster (found by ``marker``), skipping any that
    ended (or became a zombie) between being listed and being looked at."""
    workers = []
    for proc in processes_under(marker):
        with contextlib.suppress(psutil.Error):
            if "RayTrainWorker" in " ".join(proc.cmdline()):
                workers.append(proc)
    return workers


def listening_sockets(procs: list[psutil.Process]) -> set[tuple[int, str, str, int]]:
    """(pid, command, address, port) of every listening TCP socket of ``procs``, skipping any
    process that ended (or became a zombie) while being looked at."""
    found = set()
    for proc in procs:
        with contextlib.suppress(psutil.Error):
            name = " ".join(proc.cmdline())[:60] or proc.name()
            for conn in proc.net_connections("tcp"):
                if conn.status == psutil.CONN_LISTEN:
                    found.add((proc.pid, name, conn.laddr.ip, conn.laddr.port))
    return found


def is_loopback(ip: str) -> bool:
    """Whether a socket address is a loopback one (IPv4, IPv6 or IPv4-mapped IPv6)."""
    address = ipaddress.ip_address(ip.split("%")[0])
    mapped = getattr(address, "ipv4_mapped", None)
    return (mapped or address).is_loopback


def kill_processes_under(marker: str, extra: list[psutil.Process] = ()) -> None:
    """SIGKILL the processes of one cluster (found by ``marker``) plus ``extra``; wait for them."""
    procs = {p.pid: p for p in [*processes_under(marker), *extra]}
    for proc in procs.values():
        with contextlib.suppress(psutil.NoSuchProcess):
            proc.kill()
    psutil.wait_procs(list(procs.values()), timeout=20)


def kill_tree(proc: subprocess.Popen, ray_tmp: str) -> None:
    """SIGKILL a CLI started with :func:`start_cli`: its process group, then its Ray cluster."""
    try:
        family = psutil.Process(proc.pid).children(recursive=True)
    except psutil.NoSuchProcess:
        family = []
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)
    proc.wait(timeout=30)
    kill_processes_under(ray_tmp, family)


def assert_no_processes_under(marker: str) -> None:
    alive = [p for p in processes_under(marker) if p.is_running() and p.status() != psutil.STATUS_ZOMBIE]
    assert not alive, f"stale Ray processes: {[(p.pid, p.name()) for p in alive]}"


def wait_for(predicate, timeout: float, what: str, proc: subprocess.Popen | None = None) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        if proc is not None and proc.poll() is not None:
            raise AssertionError(f"the sweep exited (rc {proc.returncode}) before {what}")
        time.sleep(0.1)
    raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}")


def table(sweep_dir: Path, name: str) -> pd.DataFrame:
    return pd.read_parquet(Path(sweep_dir) / f"{name}.parquet")


def owner_files(sweep_dir: Path, name: str) -> dict[str, bytes]:
    folder = Path(sweep_dir) / f"{name}.parquet"
    return {p.name: p.read_bytes() for p in sorted(folder.glob("*.parquet"))}


def assert_same_results(a: pd.DataFrame, b: pd.DataFrame, keys: list[str]) -> None:
    """Two result tables are equal on every column but timings (floats to 1e-9, NaN == NaN)."""
    a = a.sort_values(keys).reset_index(drop=True)
    b = b.sort_values(keys).reset_index(drop=True)
    ka, kb = list(a[keys].itertuples(index=False)), list(b[keys].itertuples(index=False))
    if ka != kb:
        only_a, only_b = sorted(set(ka) - set(kb)), sorted(set(kb) - set(ka))
        dup = sorted({k for k in ka if ka.count(k) > 1})
        raise AssertionError(
            f"keys {keys} differ: {len(ka)} vs {len(kb)} rows; only in the first {only_a[:8]}, "
            f"only in the second {only_b[:8]}, repeated in the first {dup[:8]}"
        )
    for column in a.columns:
        if column in TIMING_COLUMNS:
            continue
        if pd.api.types.is_float_dtype(a[column]):
            np.testing.assert_allclose(
                a[column].to_numpy(), b[column].to_numpy(), rtol=0, atol=1e-9, equal_nan=True, err_msg=column
            )
        else:
            assert a[column].tolist() == b[column].tolist(), column


def copy_teachers(src_root: Path, dst_root: Path) -> None:
    """Seed a results directory with already trained teachers (found again by content hash)."""
    dst = Path(dst_root) / "_teachers"
    dst.mkdir(parents=True, exist_ok=True)
    for f in (Path(src_root) / "_teachers").glob("*.*"):
        if f.is_file():
            shutil.copy2(f, dst / f.name)


@functools.cache
def uninterrupted_run() -> Path:
    """The tiny sweep run once, start to finish, per test process: the reference results root.

    It writes to a ``file://`` URI, so the same run is also the storage test's sweep through a
    pyarrow filesystem URI (its output is kept in ``reference.log`` beside the results).
    """
    root = Path(tempfile.mkdtemp(prefix="kd_ref_"))
    config = write_config(root)
    done = run_cli("sweep", str(config), "--results", f"file://{root / 'results'}", "-q", shared=True)
    (root / "reference.log").write_text(done.stdout + done.stderr)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return root / "results"


@functools.cache
def feature_sweep() -> tuple[Path, Path, subprocess.CompletedProcess, tuple[str, ...]]:
    """One sweep shared by the end-to-end tests of user-facing features, per test process.

    T1w_Sw at τ = 4 and 10 (a KD axis: two students in one stream group; one teacher, trained
    here so the trackers see its epochs), 2 epochs and lr 0.04 given by ``--set``, MLflow and
    TensorBoard on, the default (not quiet) progress output, and the report. Used by the τ-axis
    (test_kd_axes), progress and ``--set`` (test_progress) and tracker (test_trackers) tests;
    each checks its own part. Returns (config, results root, the CLI run, the CLI's options).
    """
    root = Path(tempfile.mkdtemp(prefix="kd_features_"))
    config = write_config(root, {"grid": {"permutations": ["T1w_Sw"], "temperatures": [4, 10]}})
    options = (
        "--set", "student.train.epochs=2", "--set", "student.train.lr=0.04",
        "--tracker", "mlflow", "--tracker", "tensorboard",
    )  # fmt: skip
    done = run_cli("sweep", str(config), *options, "--results", str(root / "results"), shared=True)
    (root / "sweep.log").write_text(done.stdout + done.stderr)
    return config, root / "results", done, options


def user_error_line(stderr: str) -> str:
    """The CLI's one-line user error; asserts there is exactly one line and no traceback."""
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert "Traceback" not in stderr, stderr
    assert len(lines) == 1 and lines[0].startswith("kd-ray: error: "), stderr
    return lines[0]
