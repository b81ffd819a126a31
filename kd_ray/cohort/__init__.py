"""The cohort planner: how to cut each data stream's student trials into runs for a cluster.

Pure Python and PyTorch (to count FLOPs on the meta device), no Ray. Given the sweep's plan, its
config and the number of *slots* -- the concurrent runs the cluster can hold: GPUs divided by the
GPUs one run takes, or CPUs divided by the CPUs one run takes (:func:`slots_for`) -- it chooses
the runs of the student phase so that the estimated makespan is near its lower bound while
shared teacher passes are kept, and says what the sweep will cost (docs/cohorts.md)::

    from kd_ray.cohort import plan_cohorts, slots_for
    cohorts = plan_cohorts(plan, cfg, slots_for(cfg, gpus=8))
    print(cohorts.format())           # what `kd-ray sweep CONFIG --dry-run --gpus 8` shows
    for run in cohorts.runs:          # longest first: one Ray Train run each, in this order
        run.trials                    # tuple[StudentTrial, ...], all of one stream

Where each part lives (each module's docstring says more):

* :mod:`~kd_ray.cohort.cost`: what a run costs. ``CostModel.from_config(cfg, *,
  seconds_per_flop=None, run_overhead_s=30.0, facts=None)`` (``run_flops``, ``run_seconds``,
  ``teacher_flops``, ``seconds``), ``forward_flops(arch, *, num_classes, in_channels, image_size)``,
  ``dataset_facts(dataset_cfg) -> DatasetFacts``, ``default_seconds_per_flop(cfg)``,
  ``teacher_inputs(trials) -> frozenset`` (the teacher forwards per image of one run).
* :mod:`~kd_ray.cohort.schedule`: ``slots_for(cfg, *, gpus=None, cpus=None) -> int`` and
  ``lpt_schedule(durations, slots) -> (makespan, [(slot, start), ...])``.
* :mod:`~kd_ray.cohort.split`: the greedy cut of one stream, ``split_stream(trials, m, cost)``.
* :mod:`~kd_ray.cohort.program`: cuts as an integer program: the exact cuts and
  ``cut_lower_bound(streams, slots, cost, floor_s, ceiling_s) -> float``.
* :mod:`~kd_ray.cohort.packs`: ``teacher_packs(teachers, cfg, slots, *, cost=None)``, the teachers
  cut into at most one run per slot on a cluster that cannot grow, and
  ``packs_teachers(cfg, *, joined) -> bool``, whether a sweep packs them.
* :mod:`~kd_ray.cohort.plan`: ``plan_cohorts(plan, cfg, slots, *, cost=None, tolerance=0.02,
  trials=None, teachers=None, pack_teachers=True) -> CohortPlan``; :class:`CohortPlan` (``runs`` of
  :class:`CohortRun`, ``makespan_s``, ``lower_bound_s`` and its parts, GPU-hours, ``saving``
  against one run per trial, the teacher phase, ``describe()``, ``format()``).
"""

from __future__ import annotations

from kd_ray.cohort.cost import (
    CPU_FLOPS_PER_SECOND,
    DEFAULT_RUN_OVERHEAD_S,
    EVAL_PASSES,
    GPU_FLOPS_PER_SECOND,
    TRAIN_STEP_FORWARDS,
    CostModel,
    DatasetFacts,
    dataset_facts,
    default_seconds_per_flop,
    forward_flops,
    teacher_inputs,
)
from kd_ray.cohort.packs import packs_teachers, teacher_packs
from kd_ray.cohort.plan import CohortPlan, CohortRun, plan_cohorts
from kd_ray.cohort.program import cut_lower_bound
from kd_ray.cohort.schedule import lpt_schedule, slots_for
from kd_ray.cohort.split import split_stream

__all__ = [
    "CPU_FLOPS_PER_SECOND",
    "DEFAULT_RUN_OVERHEAD_S",
    "EVAL_PASSES",
    "GPU_FLOPS_PER_SECOND",
    "TRAIN_STEP_FORWARDS",
    "CohortPlan",
    "CohortRun",
    "CostModel",
    "DatasetFacts",
    "cut_lower_bound",
    "dataset_facts",
    "default_seconds_per_flop",
    "forward_flops",
    "lpt_schedule",
    "packs_teachers",
    "plan_cohorts",
    "slots_for",
    "split_stream",
    "teacher_inputs",
    "teacher_packs",
]
