"""The capacity gate: runs start as the cluster has room, rechecked as it changes (issue 10, item 5).

The end-to-end case, a node that joins mid-sweep and takes the next run, is
tests/test_node_gained.py; here, the gate's rules against a cluster size the test sets.
"""

from __future__ import annotations

import pickle

import yaml
from _sweep_helpers import TINY, merged
from ray.tune.search import Searcher

from kd_ray.config import parse_config
from kd_ray.orchestration import placement
from kd_ray.orchestration.placement import CapacityGate, RunsThatFit


def _cfg(**resources):
    return parse_config(yaml.safe_load(yaml.safe_dump(merged(TINY, {"resources": resources}))))


class _Cluster:
    """A cluster whose size the test changes: the gate's capacity function."""

    def __init__(self, runs: int) -> None:
        self.runs = runs

    def __call__(self) -> int:
        return self.runs


def test_runs_that_fit_count_workers_and_the_tune_function() -> None:
    runs = RunsThatFit.of(_cfg(num_workers=2, cpus_per_worker=0.5), 2, 0.01)
    assert runs.fit({"CPU": 2.0}) == 1  # 2 × 0.5 + 0.01 = 1.01 per run
    assert runs.fit({"CPU": 4.1}) == 4  # 4.1 / 1.01
    assert runs.fit({}) == 1  # never 0: a run that cannot fit is preflight's to refuse
    gpu = RunsThatFit.of(_cfg(num_workers=1, cpus_per_worker=1, gpus_per_worker=1), 1, 0.01)
    assert gpu.fit({"CPU": 16.0, "GPU": 3.0}) == 3


def test_the_gate_keeps_no_config_so_no_results_credentials() -> None:
    # Tune saves the searcher into the results store; the config's results URI may hold keys.
    cfg = _cfg()
    cfg = cfg.model_copy(update={"results": "s3://KEY:SECRET@bucket/runs"})
    gate = CapacityGate("group", [{"n": 0}], RunsThatFit.of(cfg, 1, 0.01))
    assert b"SECRET" not in pickle.dumps(gate.__dict__)


def test_the_gate_starts_more_runs_when_the_cluster_grows(monkeypatch) -> None:
    monkeypatch.setattr(placement, "RECHECK_S", 0.0)
    cluster = _Cluster(1)
    gate = CapacityGate("group", [{"n": i} for i in range(4)], cluster)
    assert gate.set_search_properties(None, None, {"sweep": {}})
    assert gate.suggest("a") == {"group": {"n": 0}}
    assert gate.suggest("b") is None  # one run at a time on a one-run cluster
    cluster.runs = 3  # two nodes joined
    assert gate.suggest("b") == {"group": {"n": 1}} and gate.suggest("c") == {"group": {"n": 2}}
    assert gate.suggest("d") is None
    gate.on_trial_complete("a")
    assert gate.suggest("d") == {"group": {"n": 3}}  # in plan order
    assert gate.suggest("e") == Searcher.FINISHED


def test_the_configured_limit_wins_and_the_gate_pickles(tmp_path) -> None:
    cfg = _cfg(max_concurrent_trials=2)
    capacity = RunsThatFit.of(cfg, 1, 0.01)
    assert capacity() == 2  # without asking Ray
    gate = CapacityGate("teacher", [{"t": 1}], capacity)
    gate.save(str(tmp_path / "gate.pkl"))
    again = CapacityGate("teacher", [], RunsThatFit.of(cfg, 1, 0.01))
    again.restore(str(tmp_path / "gate.pkl"))
    assert again.suggest("x") == {"teacher": {"t": 1}}
    pickle.dumps(gate)


def test_the_student_stage_cuts_its_runs_as_the_cohort_planner_does(tmp_path) -> None:
    # Issue 10, item 3: the runs the sweep starts are the planner's cut for the runs the cluster
    # holds (as `--dry-run --cpus` prints it), not one run per stream whatever the cluster.
    from kd_ray.cohort import plan_cohorts
    from kd_ray.config import load_config
    from kd_ray.orchestration import stage_runs
    from kd_ray.plan import plan_sweep
    from kd_ray.storage import Storage

    cfg = load_config("experiments/demo.yaml")
    plan = plan_sweep(cfg)
    storage = Storage.open(tmp_path / "demo")
    for slots in (1, 2, 8):
        items = stage_runs.group_items(cfg, plan, storage, list(plan.trials), set(), slots)
        cut = plan_cohorts(plan, cfg, slots, teachers=[]).runs
        assert [[t["trial_id"] for t in item["trials"]] for item in items] == [
            [t.trial_id for t in run.trials] for run in cut
        ]
        assert sorted(t["trial_id"] for item in items for t in item["trials"]) == sorted(
            t.trial_id for t in plan.trials
        )
    eight = stage_runs.group_items(cfg, plan, storage, list(plan.trials), set(), 8)
    assert len(eight) == 8  # 2 streams cut into 8 runs
    # resources.trials_per_run still overrides the planner: streams cut in plan order.
    fixed = cfg.model_copy(update={"resources": cfg.resources.model_copy(update={"trials_per_run": 3})})
    items = stage_runs.group_items(fixed, plan, storage, list(plan.trials), set(), 8)
    assert sorted(len(item["trials"]) for item in items) == [2, 2, 3, 3, 3, 3]


# --- teacher packs ------------------------------------------------------------------------------


def _teachers(cfg):
    from kd_ray.plan import plan_sweep

    return list(plan_sweep(cfg, check_names=False).teachers)


def test_teachers_get_a_run_each_when_slots_suffice_else_one_pack_per_slot_balanced_by_cost() -> None:
    from kd_ray.cohort import CostModel, teacher_packs

    # Two datasets whose teachers cost 1 and 3 (FLOPs): 4 teachers of each, seeds 0 and 1.
    cfg = parse_config(
        merged(
            TINY,
            {
                "datasets": [
                    {"name": "synthetic", "num_train": 64, "num_val": 32, "label": "small"},
                    {"name": "synthetic", "num_train": 64, "num_val": 32, "label": "big"},
                ],
                "grid": {"seeds": [0, 1]},
            },
        )
    )
    teachers = _teachers(cfg)
    keys = sorted({t.dataset for t in teachers})
    assert len(teachers) == 8 and len(keys) == 2
    weight = {keys[0]: 1.0, keys[1]: 3.0}
    cost = CostModel({}, {}, weight)
    assert teacher_packs(teachers, cfg, 8, cost=cost) == [(t,) for t in teachers]
    packs = teacher_packs(teachers, cfg, 2, cost=cost)
    assert len(packs) == 2 and sorted(t.teacher_id for p in packs for t in p) == sorted(
        t.teacher_id for t in teachers
    )
    assert [sum(weight[t.dataset] for t in p) for p in packs] == [8.0, 8.0]  # 16 FLOPs, halved
    for pack in packs:  # longest first within a pack: the order it trains in
        flops = [weight[t.dataset] for t in pack]
        assert flops == sorted(flops, reverse=True)
    assert teacher_packs(teachers, cfg, 2, cost=cost) == packs  # the same cut every time
    assert teacher_packs(teachers, cfg, 1, cost=cost)[0][0].dataset == keys[1]
    assert len(teacher_packs(teachers, cfg, 3, cost=cost)) == 3


def test_teacher_items_keep_started_runs_and_pack_the_rest(tmp_path, monkeypatch) -> None:
    import json

    from kd_ray.orchestration import stage_runs
    from kd_ray.plan import pack_id, plan_sweep
    from kd_ray.storage import Storage

    cfg = parse_config(merged(TINY, {"grid": {"seeds": [0, 1, 2]}}))  # 6 teachers
    teachers = _teachers(cfg)
    ids = [t.teacher_id for t in teachers]
    ray_dir = Storage.open(str(tmp_path))
    # A pack that had started with teachers 0, 1 and 2, of which 0 is stored now; a lone
    # teacher 3's run that had started; another sweep's pack, none of whose teachers are ours.
    ray_dir.write_bytes("teachers-3x-aaaa/kd_ray_pack.json", json.dumps({"teachers": ids[:3]}).encode())
    ray_dir.write_bytes(f"teacher-{ids[3]}/.validate_storage_marker", b"")
    ray_dir.write_bytes("teachers-2x-bbbb/kd_ray_pack.json", json.dumps({"teachers": ["x", "y"]}).encode())
    ray_dir.write_bytes("teachers-2x-cccc/kd_ray_pack.json", b"{not json")
    plan = plan_sweep(cfg, check_names=False)
    items = stage_runs.teacher_items(cfg, plan, ray_dir, ids[1:], slots=2)
    got = [(item["pack_id"], [t["teacher_id"] for t in item["teachers"]]) for item in items]
    assert got[:2] == [(f"teacher-{ids[3]}", [ids[3]]), ("teachers-3x-aaaa", ids[1:3])]
    rest = got[2:]
    assert sorted(tid for _, members in rest for tid in members) == sorted(ids[4:])
    assert all(name == pack_id([plan.teacher(t) for t in members]) for name, members in rest)
    # A private cluster cuts packs for what it holds; a joined one runs a teacher per run unless
    # resources.max_concurrent_trials says how many run at once.
    monkeypatch.setattr(placement.RunsThatFit, "__call__", lambda self: self.limit or 2)
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    assert stage_runs.teacher_slots(cfg, 6) == 2
    monkeypatch.setenv("RAY_ADDRESS", "127.0.0.1:6379")
    assert stage_runs.teacher_slots(cfg, 6) == 6
    limited = parse_config(merged(TINY, {"resources": {"max_concurrent_trials": 3}}))
    assert stage_runs.teacher_slots(limited, 6) == 3
