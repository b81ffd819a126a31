"""The sweep plan: counts, names, teacher sharing and the dry-run listing."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from kd_ray.config import load_config, parse_config
from kd_ray.errors import ConfigError
from kd_ray.plan import group_id, parse_perm, perm_name, permutations, plan_sweep, stream_groups, stream_key

REPO = Path(__file__).resolve().parents[1]


def _cfg(**grid) -> object:
    return parse_config({"name": "p", "datasets": [{"name": "digits"}], "grid": grid})


@pytest.mark.parametrize("k", [1, 2, 3])
def test_permutations_are_all_assignments(k: int) -> None:
    perms = permutations(k)
    assert len(perms) == 2 ** (k + 1) == len(set(perms))
    assert all(len(t) == k and s in "ws" for t, s in perms)


def test_perm_names_round_trip() -> None:
    assert perm_name("sw", "s") == "T1s_T2w_Ss"
    for k in (1, 2, 3):
        for t, s in permutations(k):
            assert parse_perm(perm_name(t, s)) == (t, s)
    for bad in ("T1x_Sw", "T2w_Sw", "T1w", "T1w_T2w_T3w_T4w_Sw", "S"):
        with pytest.raises(ConfigError):
            parse_perm(bad)


def test_full_grid_counts() -> None:
    plan = plan_sweep(_cfg(teacher_counts=[1, 2, 3], losses=["kd", "zscore_kd"]))
    assert len(plan.trials) == 2 * (4 + 8 + 16) == 56
    assert sorted(t.name for t in plan.teachers) == ["T1s", "T1w", "T2s", "T2w", "T3s", "T3w"]
    assert len({t.trial_id for t in plan.trials}) == 56


def test_teachers_are_shared_and_distinct_per_slot() -> None:
    plan = plan_sweep(_cfg(teacher_counts=[2], losses=["kd"]))
    assert len(plan.teachers) == 4
    by_perm = {t.perm: t for t in plan.trials}
    # T1w is the same model in every trial that names it; T1w and T2w are different models.
    assert by_perm["T1w_T2s_Sw"].teacher_ids[0] == by_perm["T1w_T2w_Ss"].teacher_ids[0]
    t1w, t2w = by_perm["T1w_T2w_Sw"].teacher_ids
    assert t1w != t2w


def test_teacher_ids_change_with_what_changes_the_teacher() -> None:
    base = parse_config({"name": "a", "datasets": [{"name": "digits"}]})
    renamed = parse_config({"name": "b", "datasets": [{"name": "digits"}], "resources": {"num_workers": 2}})
    other_lr = parse_config(
        {"name": "a", "datasets": [{"name": "digits"}], "teacher": {"train": {"lr": 0.01}}}
    )
    ids = lambda c: {t.teacher_id for t in plan_sweep(c).teachers}  # noqa: E731
    assert ids(base) == ids(renamed)  # sweep name and resources do not change a teacher
    assert ids(base).isdisjoint(ids(other_lr))


def test_seeds_multiply_teachers_and_trials() -> None:
    plan = plan_sweep(_cfg(teacher_counts=[2], losses=["kd"], seeds=[0, 1, 2]))
    assert len(plan.teachers) == 12 and len(plan.trials) == 24


def test_permutation_filter() -> None:
    plan = plan_sweep(_cfg(teacher_counts=[2], losses=["kd"], permutations=["T1s_T2w_Ss", "T1w_T2w_Sw"]))
    assert sorted(t.perm for t in plan.trials) == ["T1s_T2w_Ss", "T1w_T2w_Sw"]
    with pytest.raises(ConfigError, match="has 3 teachers"):
        plan_sweep(_cfg(teacher_counts=[2], permutations=["T1s_T2w_T3w_Ss"]))


def test_stream_groups_ignore_teachers_loss_and_view() -> None:
    # docs/experiments.md#stream-groups: the stream is (dataset, student augmentation, seed); the
    # view only changes what the teachers see, so a full- and a split-view trial of one permutation
    # share a group.
    plan = plan_sweep(
        _cfg(teacher_counts=[1, 2], losses=["kd", "zscore_kd"], views=["full", "split"], seeds=[0, 1])
    )
    groups = stream_groups(plan.trials)
    assert len(groups) == 2 * 2  # student augmentations x seeds
    for group in groups:
        assert len({stream_key(t) for t in group}) == 1
        assert len(group) == (2 + 4) * 2 * 2  # permutations per student aug x losses x views
    by_id = {t.trial_id: t for t in plan.trials}
    full, split = by_id["digits-T1s_T2w_Ss-kd-full-s1"], by_id["digits-T1s_T2w_Ss-kd-split-s1"]
    assert stream_key(full) == stream_key(split) == ("digits", "s", 1)
    assert [len(g) for g in stream_groups(plan.trials, max_size=10)] == [10, 10, 4] * 4
    names = [group_id(g) for g in stream_groups(plan.trials, max_size=10)]
    assert len(set(names)) == len(names) and names[0].startswith("digits-Sw-s0-10x-")


def test_demo_dry_run_lists_4_teachers_and_16_trials() -> None:
    cfg = load_config(REPO / "experiments" / "demo.yaml")
    plan = plan_sweep(cfg)
    assert (len(plan.teachers), len(plan.trials)) == (4, 16)
    proc = subprocess.run(
        [sys.executable, "-m", "kd_ray.cli", "sweep", "experiments/demo.yaml", "--dry-run"],
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip().splitlines()[-1] == "4 teachers, 16 student trials"
    listed = [line.split()[0] for line in proc.stdout.splitlines() if line.startswith("  ")]
    assert sum(n.startswith("digits-T") for n in listed) == 16
