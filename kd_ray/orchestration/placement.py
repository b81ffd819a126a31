"""Runs start as the cluster has room for them, not by a count fixed when the sweep began.

Tune places a trial by its function's resources only (a sliver of CPU: the function just waits
on its Train run), and the Train workers are placed later. Unbounded, Tune would start every
run of a stage at once, each with a Train controller (about 0.5 GB) idling for workers. So
:class:`CapacityGate`, a Tune searcher, hands out the next run only while the cluster, as it is
now, has room for one more: ``ray.cluster_resources()`` is read again at most every
``RECHECK_S`` seconds, so a node that joins mid-sweep (an autoscaler's, or a ``ray start`` by
hand) is used as soon as Ray sees it, and a lost one stops new starts. ``resources.
max_concurrent_trials`` in the config fixes the number instead.

On a joined cluster, :func:`announce_demand` also tells Ray's autoscaler (public
``ray.autoscaler.sdk.request_resources``) the worker bundles of every run of the stage at once,
so it can scale for the whole stage rather than for the runs already started.
"""

from __future__ import annotations

import logging
import math
import pickle
import time
from dataclasses import dataclass
from typing import Any

from ray.tune.search import Searcher

from kd_ray.config import SweepConfig
from kd_ray.orchestration.runbook import RunBook

log = logging.getLogger(__name__)

# How often the gate reads the cluster's resources again (seconds).
RECHECK_S = 1.0


@dataclass(frozen=True)
class RunsThatFit:
    """How many runs of ``workers`` workers the cluster holds now (the config's limit if set).

    It keeps only the numbers it needs, never the config: Tune saves its searcher with the
    experiment state, in the results store, and the config's results URI may hold credentials.
    """

    workers: int
    cpus_per_worker: float
    gpus_per_worker: float
    trial_cpu: float  # what each run's Tune function holds
    limit: int | None = None  # resources.max_concurrent_trials

    @classmethod
    def of(cls, cfg: SweepConfig, workers: int, trial_cpu: float) -> RunsThatFit:
        res = cfg.resources
        return cls(workers, res.cpus_per_worker, res.gpus_per_worker, trial_cpu, res.max_concurrent_trials)

    def __call__(self) -> int:
        if self.limit:
            return self.limit
        import ray

        return self.fit(ray.cluster_resources())

    def fit(self, total: dict[str, float]) -> int:
        """Runs (and their Tune functions) that ``total`` resources hold, at least 1."""
        fits = [total.get("CPU", 0.0) / (self.workers * self.cpus_per_worker + self.trial_cpu)]
        if self.gpus_per_worker:
            fits.append(total.get("GPU", 0.0) / (self.workers * self.gpus_per_worker))
        return max(1, int(min(fits) + 1e-9))


class CapacityGate(Searcher):
    """Hands Tune the runs of one stage in order, one more only while the cluster has room.

    Tune merges each suggestion (``{stage: item}``) into the ``param_space`` it was given; the
    gate writes down in ``runs`` (:class:`kd_ray.orchestration.runbook.RunBook`) which Tune trial
    got which item.
    """

    def __init__(
        self, stage: str, items: list[dict[str, Any]], capacity: RunsThatFit, runs: RunBook | None = None
    ) -> None:
        super().__init__()
        self._runs = runs if runs is not None else RunBook(stage)
        self._stage = stage
        self._pending = list(items)
        self._live: set[str] = set()
        self._capacity = capacity
        self._room = 0
        self._checked = -math.inf

    def set_search_properties(self, metric: str | None, mode: str | None, config: dict, **spec: Any) -> bool:
        return True  # the param_space holds the stage's fixed keys; the items come from here

    def suggest(self, trial_id: str) -> dict[str, Any] | str | None:
        if not self._pending:
            return Searcher.FINISHED
        now = time.monotonic()
        if now - self._checked >= RECHECK_S:
            room = self._capacity()
            if room != self._room and self._checked > -math.inf:
                what = "student" if self._stage == "group" else self._stage
                log.info("the cluster now holds %d %s run(s) at once (was %d)", room, what, self._room)
            self._room, self._checked = room, now
        if len(self._live) >= self._room:
            return None
        self._live.add(trial_id)
        item = self._pending.pop(0)
        self._runs.record(trial_id, item)  # the driver's callbacks find the trial's run there
        return {self._stage: item}

    def on_trial_complete(self, trial_id: str, result: dict | None = None, error: bool = False) -> None:
        self._live.discard(trial_id)

    # Tune saves its searcher with the experiment state. kd_ray never restores a Tune
    # experiment (a resumed sweep starts a fresh one with the unfinished runs), but saving
    # keeps Tune from warning that it cannot.
    def save(self, checkpoint_path: str) -> None:
        with open(checkpoint_path, "wb") as f:
            pickle.dump(self.__dict__, f)

    def restore(self, checkpoint_path: str) -> None:
        with open(checkpoint_path, "rb") as f:
            self.__dict__.update(pickle.load(f))


def announce_demand(cfg: SweepConfig, workers: int, runs: int) -> None:
    """Ask a joined cluster's autoscaler for the worker bundles of ``runs`` runs at once
    (``runs=0`` withdraws the request: a stage that ended must not keep nodes up)."""
    from ray.autoscaler.sdk import request_resources

    bundle = {"CPU": cfg.resources.cpus_per_worker}
    if cfg.resources.gpus_per_worker:
        bundle["GPU"] = cfg.resources.gpus_per_worker
    try:
        request_resources(bundles=[dict(bundle) for _ in range(workers * runs)])
    except Exception as err:  # no autoscaler to tell: the runs still start as room appears
        log.debug("request_resources: %s", err)
