"""The only place kd_ray touches Ray's private internals, each with why no public API serves.

Checked against Ray 2.60.0 (:data:`CHECKED_RAY_VERSION`); ``tests/test_ray_compat.py`` fails
loudly when an upgrade moves or renames any of them, so the next engineer knows where to look.
"""

from __future__ import annotations

import os

CHECKED_RAY_VERSION = "2.60.0"


def local_cpu_count() -> float:
    """The CPUs a private ``ray.init()`` would register on this machine.

    Ray counts them cgroup-aware (a container's quota, not the host's cores); no public API
    exposes that count before a cluster exists. Without it: the CPUs this process may run on.
    """
    try:
        from ray._private.utils import get_num_cpus
    except ImportError:
        return float(
            len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
        )
    return float(get_num_cpus())


def set_single_machine_mode(enabled: bool) -> None:
    """Ray's single-machine mode (every service on the loopback IP) in a process that has
    already imported ``ray``: Ray reads ``RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER`` only at import."""
    from ray._private import ray_constants

    ray_constants.ENABLE_RAY_CLUSTER = not enabled
