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
    from kd_ray.orchestration import sweep as sweep_mod
    from kd_ray.plan import plan_sweep
    from kd_ray.storage import Storage

    cfg = load_config("experiments/demo.yaml")
    plan = plan_sweep(cfg)
    storage = Storage.open(tmp_path / "demo")
    for slots in (1, 2, 8):
        items = sweep_mod._group_items(cfg, plan, storage, list(plan.trials), set(), slots)
        cut = plan_cohorts(plan, cfg, slots, teachers=[]).runs
        assert [[t["trial_id"] for t in item["trials"]] for item in items] == [
            [t.trial_id for t in run.trials] for run in cut
        ]
        assert sorted(t["trial_id"] for item in items for t in item["trials"]) == sorted(
            t.trial_id for t in plan.trials
        )
    eight = sweep_mod._group_items(cfg, plan, storage, list(plan.trials), set(), 8)
    assert len(eight) == 8  # 2 streams cut into 8 runs
    # resources.trials_per_run still overrides the planner: streams cut in plan order.
    fixed = cfg.model_copy(update={"resources": cfg.resources.model_copy(update={"trials_per_run": 3})})
    items = sweep_mod._group_items(fixed, plan, storage, list(plan.trials), set(), 8)
    assert sorted(len(item["trials"]) for item in items) == [2, 2, 3, 3, 3, 3]
