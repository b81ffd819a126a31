"""Local mode listens on loopback only, torch.distributed included (issue 9, item 14).

Ray's own services of the private cluster were already on 127.0.0.1, but a DDP run's rank 0
TCPStore listened on ``::`` (every interface) and gloo on whatever the host name resolves to.
This test samples every listening socket of every process of a sweep (the driver, the
cluster's services and all its workers) while two-worker DDP runs train.
"""

from __future__ import annotations

import contextlib
import ipaddress
import time

import psutil
import pytest
from _sweep_helpers import kill_tree, processes_under, ray_tmpdir, start_cli, write_config


def _listeners(procs: list[psutil.Process]) -> set[tuple[int, str, str, int]]:
    """(pid, process name, address, port) of every listening TCP socket of ``procs``."""
    found = set()
    for proc in procs:
        with contextlib.suppress(psutil.Error):
            name = " ".join(proc.cmdline())[:60] or proc.name()
            for conn in proc.net_connections("tcp"):
                if conn.status == psutil.CONN_LISTEN:
                    found.add((proc.pid, name, conn.laddr.ip, conn.laddr.port))
    return found


def _is_loopback(ip: str) -> bool:
    address = ipaddress.ip_address(ip.split("%")[0])
    mapped = getattr(address, "ipv4_mapped", None)
    return (mapped or address).is_loopback


_RANK0 = """
import json, os, sys
import psutil
from kd_ray.orchestration.loopback import loopback_env, setup_worker
os.environ.update(loopback_env(), MASTER_ADDR="127.0.0.1", MASTER_PORT=sys.argv[1])
if sys.argv[2] == "hook":
    setup_worker()  # as Ray runs it first in every worker process of the private cluster
import torch
import torch.distributed as dist
dist.init_process_group("gloo", rank=0, world_size=1)
tensor = torch.ones(2)
dist.all_reduce(tensor)
me = psutil.Process()
print(json.dumps(sorted({c.laddr.ip for c in me.net_connections("tcp") if c.status == "LISTEN"})))
"""


@pytest.mark.parametrize("hook", ["hook", "no-hook"])
def test_rank0_store_and_gloo_bind_loopback_with_the_worker_hook(hook):
    import json
    import socket
    import subprocess
    import sys

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    done = subprocess.run(
        [sys.executable, "-c", _RANK0, str(port), hook], capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr
    hosts = json.loads(done.stdout.strip().splitlines()[-1])
    if hook == "hook":
        assert hosts and all(_is_loopback(h) for h in hosts), hosts
    else:  # what torch does by itself, and why the hook exists: the store binds every interface
        assert "::" in hosts or "0.0.0.0" in hosts, hosts


@pytest.mark.slow
def test_every_listener_of_a_local_sweep_is_on_loopback(tmp_path):
    config = write_config(
        tmp_path,
        {
            "grid": {"permutations": ["T1w_Sw"]},
            "teacher": {"train": {"epochs": 3}},
            "student": {"train": {"epochs": 6}},
            "resources": {"num_workers": 2, "teacher_workers": 2, "cpus_per_worker": 0.95},
        },
    )
    ray_tmp = ray_tmpdir()
    log = tmp_path / "sweep.log"
    proc = start_cli(
        "sweep",
        str(config),
        "--results",
        str(tmp_path / "results"),
        "--no-report",
        "-q",
        log=log,
        ray_tmp=ray_tmp,
    )
    seen: set[tuple[int, str, str, int]] = set()
    try:
        deadline = time.monotonic() + 900
        while proc.poll() is None and time.monotonic() < deadline:
            driver = psutil.Process(proc.pid)
            with contextlib.suppress(psutil.Error):
                family = [driver, *driver.children(recursive=True), *processes_under(ray_tmp)]
                seen |= _listeners(family)
            time.sleep(0.3)
        rc = proc.wait(timeout=60)
    finally:
        kill_tree(proc, ray_tmp)
    assert rc == 0, log.read_text()[-4000:]
    # The DDP runs were sampled: a rank 0 Train worker had torch's listeners (TCPStore, gloo)
    # besides its Ray worker's own.
    ports: dict[int, set[int]] = {}
    for pid, name, _, port in seen:
        if "RayTrainWorker" in name:
            ports.setdefault(pid, set()).add(port)
    assert ports and max(len(p) for p in ports.values()) >= 2, sorted(seen)
    exposed = sorted(entry for entry in seen if not _is_loopback(entry[2]))
    assert not exposed, f"listening beyond loopback: {exposed}"
