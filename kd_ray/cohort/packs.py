"""Teacher packs: a sweep's teachers cut into at most one run per slot, balanced by cost.

Every Train run pays a fixed cost to start and stop its processes (about 20 s on a 2-core
machine, benchmarks/RESULTS.md), so on a cluster that cannot grow, training ``n`` teachers on
``s < n`` slots as ``n`` runs pays it ``n / s`` times per slot where one run per slot pays it
once. A pack is the teachers one run trains one after another.

Each teacher goes to the slot that frees first, longest first (:func:`lpt_schedule` on the
cost model's FLOPs of training it), so the packs end close together; within a pack the teachers
train in that order. The cut is of the teachers given (the sweep gives those not yet trained and
not in a pack that had started: a resumed sweep keeps started packs whole, from the list of
teachers in their run directories, ``kd_ray.orchestration.stage_runs.teacher_items``).
"""

from __future__ import annotations

from collections.abc import Sequence

from kd_ray.cohort.cost import CostModel
from kd_ray.cohort.schedule import lpt_schedule
from kd_ray.config import SweepConfig
from kd_ray.plan import TeacherSpec


def packs_teachers(cfg: SweepConfig, *, joined: bool) -> bool:
    """Whether a sweep cuts its teachers into packs: where the cluster cannot grow (the private
    one it starts) or ``resources.max_concurrent_trials`` caps the runs at once. On a joined
    cluster without that cap each teacher is its own run, so an autoscaler sees every teacher's
    demand from the start."""
    return not joined or bool(cfg.resources.max_concurrent_trials)


def teacher_packs(
    teachers: Sequence[TeacherSpec], cfg: SweepConfig, slots: int, *, cost: CostModel | None = None
) -> list[tuple[TeacherSpec, ...]]:
    """``teachers`` as at most ``slots`` packs, one teacher each when there are slots enough.

    Packs come in slot order; a pack's teachers in the order they train (longest first).
    """
    if slots >= len(teachers):
        return [(t,) for t in teachers]
    cost = cost or CostModel.from_config(cfg)
    _, placed = lpt_schedule([cost.teacher_flops(t) for t in teachers], slots)
    by_slot: dict[int, list[tuple[float, int]]] = {}
    for i, (slot, start) in enumerate(placed):
        by_slot.setdefault(slot, []).append((start, i))
    return [tuple(teachers[i] for _, i in sorted(by_slot[slot])) for slot in sorted(by_slot)]
