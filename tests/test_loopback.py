"""Local mode listens on loopback only, torch.distributed included (issue 9, item 14).

Ray's own services of the private cluster were already on 127.0.0.1, but a DDP run's rank 0
TCPStore listened on ``::`` (every interface) and gloo on whatever the host name resolves to.
The end-to-end test reads the listening sockets of every process of a sweep (the driver, the
cluster's services and all its workers), sampled while a two-worker DDP run trained, from the
shared private-cluster sweep (``_private_sweep``).
"""

from __future__ import annotations

import pytest
from _private_sweep import private_sweep
from _sweep_helpers import is_loopback

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
        assert hosts and all(is_loopback(h) for h in hosts), hosts
    else:  # what torch does by itself, and why the hook exists: the store binds every interface
        assert "::" in hosts or "0.0.0.0" in hosts, hosts


@pytest.mark.slow
def test_every_listener_of_a_local_sweep_is_on_loopback():
    sweep = private_sweep()
    assert sweep.returncode == 0, sweep.output[-4000:]
    # The DDP run was sampled: a rank 0 Train worker had torch's listeners (TCPStore, gloo)
    # besides its Ray worker's own.
    ports: dict[int, set[int]] = {}
    for pid, name, _, port in sweep.listeners:
        if "RayTrainWorker" in name:
            ports.setdefault(pid, set()).add(port)
    assert ports and max(len(p) for p in ports.values()) >= 2, sorted(sweep.listeners)
    exposed = sorted(entry for entry in sweep.listeners if not is_loopback(entry[2]))
    assert not exposed, f"listening beyond loopback: {exposed}"
