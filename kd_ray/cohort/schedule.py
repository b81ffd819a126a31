"""How runs land on a cluster's slots: longest first, each onto the slot that frees first.

Every candidate cut, the one-run-per-trial baseline and the teacher phase are scored by the
makespan of :func:`lpt_schedule`; :func:`slots_for` says how many slots a cluster holds. Neither
needs the cost model, so the CLI can size a cluster without it.
"""

from __future__ import annotations

import heapq
from collections.abc import Sequence

from kd_ray.config import SweepConfig
from kd_ray.errors import ConfigError


def lpt_schedule(durations: Sequence[float], slots: int) -> tuple[float, list[tuple[int, float]]]:
    """List scheduling, longest first, onto ``slots`` identical slots.

    Returns the makespan and, per duration (in the given order), ``(slot, start)``. This is how
    Ray starts queued runs as slots free up, if it takes them longest first.
    """
    if slots < 1:
        raise ConfigError(f"cohort plan: slots must be at least 1, got {slots}")
    heap = [(0.0, s) for s in range(slots)]
    placed: list[tuple[int, float]] = [(0, 0.0)] * len(durations)
    for i in sorted(range(len(durations)), key=lambda i: (-durations[i], i)):
        load, slot = heapq.heappop(heap)
        placed[i] = (slot, load)
        heapq.heappush(heap, (load + durations[i], slot))
    return max((load for load, _ in heap), default=0.0), placed


def slots_for(cfg: SweepConfig, *, gpus: int | None = None, cpus: float | None = None) -> int:
    """Concurrent student runs a cluster of ``gpus`` GPUs (or ``cpus`` CPUs) holds, at least 1.

    A run takes ``num_workers × gpus_per_worker`` GPUs when ``gpus_per_worker > 0``, else
    ``num_workers × cpus_per_worker`` CPUs.
    """
    res = cfg.resources
    if res.gpus_per_worker > 0 and gpus is not None:
        return max(1, int(gpus / (res.num_workers * res.gpus_per_worker) + 1e-9))
    if cpus is not None:
        return max(1, int(cpus / (res.num_workers * res.cpus_per_worker) + 1e-9))
    if gpus is not None:  # a CPU config sized by a GPU count: one run per "GPU"
        return max(1, int(gpus))
    raise ConfigError("cohort plan: give the cluster's size (gpus or cpus)")
