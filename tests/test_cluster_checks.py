"""The cluster a sweep runs on: unreachable, or never able to hold a run (issue 9, items 6 and 8).

Ray Train retries a worker group it cannot place without end, and ``ray.init`` retries an
address where nothing answers for many minutes: both used to hang a sweep. Requests are now
checked against the nodes (this machine, before Ray starts, for the private local cluster),
and an autoscaling cluster is given ``resources.node_wait_s`` to add nodes.
"""

from __future__ import annotations

import logging
import socket
import time

import pytest
import torch
from _sweep_helpers import cli_env, ray_tmpdir, run_cli, user_error_line, write_config

from kd_ray.config import parse_config
from kd_ray.errors import ClusterError
from kd_ray.orchestration.preflight import check_ray_address, unplaceable, wait_until_placeable

MINIMAL = {"name": "t", "datasets": [{"name": "synthetic"}]}


def _cfg(**resources) -> object:
    return parse_config({**MINIMAL, "student": {"train": {"batch_size": 12}}, "resources": resources})


def test_unplaceable_counts_whole_workers_per_node():
    cpu2 = {"CPU": 2.0, "memory": 1e9}
    assert unplaceable(_cfg(num_workers=2, cpus_per_worker=0.95), [cpu2], trial_cpu=0.01) is None
    # 2 x 1 CPU + the trial's 0.01 CPU do not fit 2 CPUs: Train would wait for ever.
    reason = unplaceable(_cfg(num_workers=2, cpus_per_worker=1.0), [cpu2], trial_cpu=0.01)
    assert "student run needs 2 worker(s) of {CPU: 1}" in reason and "hold 1" in reason
    # Workers may spread over nodes, but each one must fit on one node.
    assert unplaceable(_cfg(num_workers=3, cpus_per_worker=1.0), [cpu2, cpu2], trial_cpu=0.01) is None
    assert "hold 0" in unplaceable(_cfg(cpus_per_worker=3.0), [cpu2, cpu2])
    gpu = _cfg(gpus_per_worker=1, cpus_per_worker=1, teacher_workers=2, num_workers=2)
    assert "GPU: 0" in unplaceable(gpu, [cpu2]) and "gpus_per_worker" in unplaceable(gpu, [cpu2])
    teacher = unplaceable(gpu, [cpu2, {"CPU": 8.0, "GPU": 1.0}])
    assert teacher.startswith("resources: a student run needs 2 worker(s)")
    assert unplaceable(gpu, [{"CPU": 8.0, "GPU": 1.0}, {"CPU": 8.0, "GPU": 1.0}]) is None


class _Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.now += seconds


def test_a_fixed_cluster_fails_at_once():
    clock = _Clock()
    with pytest.raises(ClusterError, match=r"GPU: 1.*does not add nodes"):
        wait_until_placeable(
            _cfg(gpus_per_worker=1), lambda: [{"CPU": 2.0}], autoscaling=False, clock=clock, sleep=clock.sleep
        )
    assert clock.now == 0


def test_an_autoscaling_cluster_is_waited_for_and_says_what_for(caplog):
    clock = _Clock()
    gpu_node_after = 100.0

    def nodes():
        return [{"CPU": 2.0}] + ([{"CPU": 4.0, "GPU": 1.0}] if clock.now >= gpu_node_after else [])

    with caplog.at_level(logging.WARNING, logger="kd_ray"):
        wait_until_placeable(
            _cfg(gpus_per_worker=1, node_wait_s=300), nodes, autoscaling=True, clock=clock, sleep=clock.sleep
        )
    assert gpu_node_after <= clock.now < gpu_node_after + 10
    waits = [
        r.getMessage() for r in caplog.records if "waiting for the cluster to add nodes" in r.getMessage()
    ]
    assert 3 <= len(waits) <= 5 and all("{CPU: 1, GPU: 1}" in w and "node_wait_s" in w for w in waits)


def test_an_autoscaling_cluster_that_adds_nothing_is_given_up_on():
    clock = _Clock()
    with pytest.raises(ClusterError, match=r"gave up after waiting 60 s \(resources.node_wait_s\)"):
        wait_until_placeable(
            _cfg(gpus_per_worker=1, node_wait_s=60),
            lambda: [{"CPU": 2.0}],
            autoscaling=True,
            clock=clock,
            sleep=clock.sleep,
        )
    assert 60 <= clock.now < 70


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_ray_address_checks():
    check_ray_address(None)
    check_ray_address("auto")  # left to Ray, which fails at once
    with pytest.raises(ClusterError, match="no Ray cluster answers there"):
        check_ray_address(f"127.0.0.1:{_closed_port()}")
    with pytest.raises(ClusterError, match="dashboard/job API address"):
        check_ray_address("http://127.0.0.1:8265")
    with pytest.raises(ClusterError, match="expected HOST:PORT"):
        check_ray_address("somewhere")


@pytest.mark.slow
def test_ray_address_pointing_at_nothing_is_one_line_in_seconds(tmp_path):
    # ray.init alone waited for more than ten minutes on such an address.
    env = {**cli_env(ray_tmpdir()), "RAY_ADDRESS": f"127.0.0.1:{_closed_port()}"}
    start = time.monotonic()
    done = run_cli(
        "sweep", str(write_config(tmp_path)), "--results", str(tmp_path / "results"), timeout=120, env=env
    )
    assert done.returncode == 2
    assert "no Ray cluster answers there (Connection refused)" in user_error_line(done.stderr)
    assert time.monotonic() - start < 60
    assert not (tmp_path / "results").exists()


@pytest.mark.slow
@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without a GPU")
def test_gpus_on_a_cpu_only_machine_fail_before_ray_starts(tmp_path):
    # Ray Train used to retry this worker group for ever: the sweep hung.
    config = write_config(tmp_path, {"resources": {"gpus_per_worker": 1}})
    done = run_cli("sweep", str(config), "--results", str(tmp_path / "results"), "-q", timeout=120)
    assert done.returncode == 2
    line = user_error_line(done.stderr)  # one line: Ray did not even start
    assert "a student run needs 1 worker(s) of {CPU: 0.95, GPU: 1}" in line and "GPU: 0" in line
    assert not (tmp_path / "results").exists()
