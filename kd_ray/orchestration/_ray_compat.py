"""The only place kd_ray touches Ray's private internals, each with why no public API serves.

Checked against Ray 2.60.0 (:data:`CHECKED_RAY_VERSION`); ``tests/test_ray_compat.py`` fails
loudly when an upgrade moves or renames any of them, so the next engineer knows where to look.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterable
from pathlib import Path
from typing import Any

CHECKED_RAY_VERSION = "2.60.0"

log = logging.getLogger(__name__)

# Ray Train's feature flag for its PreemptionWatcher (ray.train.v2._internal.constants): one
# actor per Train run that polls Ray Core for node drains (spot instances being reclaimed) so
# that ray.train.get_preemption_info() can warn the workers. No public setting turns it off.
# A private local cluster's one node is never drained, and the watcher costs a process per run
# that imports ray.train (1 to 3 s of CPU on 2 cores) and logs a core_worker error line in
# every sweep ("PreemptionWatcher ... has constructor arguments in the object store").
PREEMPTION_WATCHER_ENV = "RAY_TRAIN_ENABLE_PREEMPTION_WATCHER"


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


def set_single_machine_mode(enabled: bool) -> bool:
    """Ray's single-machine mode (every service on the loopback IP) in a process that has
    already imported ``ray``: Ray reads ``RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER`` only at import.
    Returns whether it was on before, to put back."""
    from ray._private import ray_constants

    before = not ray_constants.ENABLE_RAY_CLUSTER
    ray_constants.ENABLE_RAY_CLUSTER = not enabled
    return before


def trial_error_text(trial: Any) -> str | None:
    """The error text Tune saved for a trial in ERROR (its traceback), or None.

    Tune's callbacks get the failed ``Trial`` but not its error; ``Trial.get_error`` (a
    developer API) reads the saved text through the storage filesystem, so it works for results
    on a URI; ``Trial.error_file`` is the local copy, tried when that read fails.
    """
    text = None
    try:
        text = trial.get_error()
    except Exception:  # an unreadable error file must not stop the driver's callbacks
        log.debug("no error text from storage for %s", trial, exc_info=True)
    path = getattr(trial, "error_file", None)
    if not text and path and Path(path).exists():
        text = Path(path).read_text()
    return str(text) if text else None


def stop_tune_copying_credentials(names: Iterable[str]) -> None:
    """Stop Tune from copying these environment variables into its trial actors' runtime envs.

    Tune copies a fixed set of variables (AWS credentials among them) from the driver's
    environment into every trial actor's runtime environment, and Ray's runtime-env agent logs
    every runtime environment it sets up. The set is a module global of Tune's trainable class
    cache, with no public setting.
    """
    from ray.tune.execution import class_cache

    class_cache.ENV_VARS_TO_PROPAGATE.difference_update(set(names))
