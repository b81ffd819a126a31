"""What each stage's Ray Train runs are: the teacher packs and the student groups, as the Tune
items the sweep's stages start, each with what its run needs from the plan.

A run that had started keeps its members on ``--resume`` whatever the cut is now, found from the
manifests in the stage's run directories (``kd_ray_pack.json``, ``kd_ray_group.json``), so it
continues from its checkpoints; the rest are cut for the runs the cluster holds at once
(docs/architecture.md#teacher-packs, docs/cohorts.md).
"""

from __future__ import annotations

from typing import Any

from kd_ray.config import SweepConfig
from kd_ray.orchestration.cluster import TRIAL_FN_CPU, joined_cluster
from kd_ray.plan import StudentTrial, SweepPlan, fingerprint, group_id, pack_id, trial_fingerprint_content
from kd_ray.storage import Storage


def _started_runs(
    ray_dir: Storage, manifest: str, key: str, wanted: dict[str, Any], *, lone: str | None = None
) -> list[tuple[str, list[Any]]]:
    """The runs under ``ray_dir`` that had started, with their members still in ``wanted``
    (popped from it, in the run's order): (run name, members), runs with none left out.

    A run's members are the ``key`` list of the ``manifest`` in its directory (an unreadable
    manifest counts as no run); with ``lone``, a directory named ``lone + member`` without one
    is a run of that member alone.
    """
    import json

    found = []
    for name in ray_dir.listdir():
        if not wanted:
            break
        if ray_dir.exists(f"{name}/{manifest}"):
            try:
                members = json.loads(ray_dir.read_bytes(f"{name}/{manifest}"))[key]
            except (ValueError, KeyError, TypeError, OSError):
                continue
        elif lone and name.startswith(lone):
            members = [name.removeprefix(lone)]
        else:
            continue
        kept = [wanted.pop(m) for m in members if m in wanted]
        if kept:
            found.append((name, kept))
    return found


def teacher_slots(cfg: SweepConfig, count: int) -> int:
    """The teacher runs at once that the teacher packs are cut for: what the private cluster
    holds (it cannot grow) or ``resources.max_concurrent_trials``. On a joined cluster without
    that limit, one run per teacher, so its autoscaler sees every teacher's demand at once."""
    from kd_ray.cohort import packs_teachers
    from kd_ray.orchestration.placement import RunsThatFit

    if not packs_teachers(cfg, joined=joined_cluster()):
        return count
    return RunsThatFit.of(cfg, cfg.resources.teacher_workers, TRIAL_FN_CPU)()


def teacher_items(
    cfg: SweepConfig, plan: SweepPlan, ray_dir: Storage, ids: list[str], slots: int
) -> list[dict[str, Any]]:
    """The Tune items of the teacher stage: the teachers ``ids`` in packs, each pack one Train
    run that trains its teachers in turn (docs/architecture.md#teacher-packs).

    A run that had started keeps its unstored teachers, so they continue from its checkpoints
    whatever the cut is now: a pack's run directory holds ``kd_ray_pack.json``, a lone teacher's
    is named by it (``teacher-<id>``). The other teachers are cut by
    :func:`kd_ray.cohort.teacher_packs` for ``slots`` runs at once.
    """
    from kd_ray.cohort import teacher_packs
    from kd_ray.orchestration.trials import PACK_MANIFEST

    wanted = {tid: plan.teacher(tid) for tid in ids}
    items = [
        {"pack_id": name, "teachers": [t.__dict__ for t in kept]}
        for name, kept in _started_runs(ray_dir, PACK_MANIFEST, "teachers", wanted, lone="teacher-")
    ]
    for pack in teacher_packs(list(wanted.values()), cfg, slots):
        items.append({"pack_id": pack_id(pack), "teachers": [t.__dict__ for t in pack]})
    return items


def group_items(
    cfg: SweepConfig,
    plan: SweepPlan,
    sweep: Storage,
    runnable: list[StudentTrial],
    scratch: set[str],
    slots: int,
) -> list[dict[str, Any]]:
    """The Tune items of the student stage: one per stream group, with what its worker and the
    collector need from the plan (its teachers' specs, each trial's fingerprint digest), so
    neither plans the sweep again.

    A group that had started (its run directory holds ``kd_ray_group.json``) keeps its id and
    its unfinished members, so it continues from its checkpoint whatever the cut is now; those
    come first. Trials to run from scratch get fresh groups, with any old run directory of the
    same id removed. The rest are cut into runs by the cohort planner for ``slots`` concurrent
    runs (:func:`student_runs`), longest first.
    """
    from kd_ray.orchestration.trials import GROUP_MANIFEST, delete_run

    ray_dir = sweep.child("_ray")
    by_id = {t.trial_id: t for t in runnable if t.trial_id not in scratch}
    items = [
        {"group_id": name, "trials": kept}
        for name, kept in _started_runs(ray_dir, GROUP_MANIFEST, "trials", by_id)
    ]
    order = {t.trial_id: i for i, t in enumerate(runnable)}
    items.sort(key=lambda item: order[item["trials"][0].trial_id])
    for group in student_runs(cfg, plan, list(by_id.values()), slots):
        items.append({"group_id": group_id(group), "trials": list(group)})
    for group in student_runs(cfg, plan, [t for t in runnable if t.trial_id in scratch], slots):
        delete_run(ray_dir.uri, group_id(group))
        items.append({"group_id": group_id(group), "trials": list(group)})
    return [
        {
            **item,
            "trials": [t.__dict__ for t in item["trials"]],
            "teachers": [
                plan.teacher(tid).__dict__
                for tid in dict.fromkeys(i for t in item["trials"] for i in t.teacher_ids)
            ],
            "digests": {t.trial_id: fingerprint(trial_fingerprint_content(cfg, t)) for t in item["trials"]},
        }
        for item in items
    ]


def student_runs(
    cfg: SweepConfig, plan: SweepPlan, trials: list[StudentTrial], slots: int
) -> list[tuple[StudentTrial, ...]]:
    """``trials`` cut into student runs, longest first: the cohort planner's cut for ``slots``
    concurrent runs (docs/cohorts.md: students that share teacher inputs together, runs balanced
    by cost), or streams cut in plan order into runs of ``resources.trials_per_run`` when set."""
    if not trials:
        return []
    from kd_ray.cohort import plan_cohorts  # torch's FLOP counter: imported when a stage runs

    return [run.trials for run in plan_cohorts(plan, cfg, slots, trials=trials, teachers=[]).runs]
