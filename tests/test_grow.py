"""Growing a sweep on --resume (issue 12, item 1): a config that only adds grid values runs the
new trials, keeps the finished ones and reuses the stored teachers; anything that changes what
existing trials compute, or drops grid values, is refused with one line naming the keys.

The rule itself (kd_ray.orchestration.growth) is tested through ``prepare_results`` on a saved
config, in milliseconds; one end-to-end test grows a copy of the shared feature sweep by a seed
through the real CLI.
"""

from __future__ import annotations

import json
import shutil

import pytest
import yaml
from _sweep_helpers import (
    TINY,
    feature_sweep,
    merged,
    owner_files,
    run_cli,
    table,
)

from kd_ray.config import dump_config, parse_config
from kd_ray.errors import ResultsError
from kd_ray.orchestration import stage_runs, stored_sweep
from kd_ray.orchestration import sweep as sweep_mod
from kd_ray.orchestration.growth import growth
from kd_ray.orchestration.trials import GROUP_MANIFEST
from kd_ray.plan import plan_sweep
from kd_ray.storage import Storage

# A sweep that lists every grid axis, so each can grow: permutations and the three KD axes.
LISTED = merged(
    TINY,
    {
        "grid": {
            "permutations": ["T1w_Sw"],
            "temperatures": [4.0],
            "alphas": [0.2],
            "student_lrs": [0.05],
        }
    },
)
SECOND_DATASET = {"name": "synthetic", "label": "synthetic_b", "num_train": 48, "num_val": 32}


def _saved(tmp_path, data: dict) -> str:
    """A results directory holding a sweep started with ``data``; returns the results path."""
    sweep = tmp_path / "results" / data["name"]
    sweep.mkdir(parents=True)
    (sweep / "config.yaml").write_text(dump_config(parse_config(data)))
    return str(tmp_path / "results")


def _resume(results: str, data: dict):
    return stored_sweep.prepare_results(parse_config(data), results, resume=True)


def _refusal(results: str, data: dict) -> str:
    with pytest.raises(ResultsError) as err:
        _resume(results, data)
    line = str(err.value)
    assert "\n" not in line
    return line


def _comparable(data: dict) -> dict:
    return stored_sweep.comparable(parse_config(data))


@pytest.mark.parametrize(
    ("grid", "key", "added"),
    [
        ({"seeds": [0, 1]}, "grid.seeds", [1]),
        ({"teacher_counts": [1, 2], "permutations": ["T1w_Sw", "T1s_T2w_Ss"]}, "grid.teacher_counts", [2]),
        ({"losses": ["kd", "zscore_kd"]}, "grid.losses", ["zscore_kd"]),
        ({"views": ["full", "split"]}, "grid.views", ["split"]),
        ({"permutations": ["T1w_Sw", "T1s_Ss"]}, "grid.permutations", ["T1s_Ss"]),
        ({"permutations": None}, "grid.permutations", ["T1s_Ss", "T1s_Sw", "T1w_Ss"]),
        ({"temperatures": [4.0, 10.0]}, "grid.temperatures", [10.0]),
        ({"alphas": [0.2, 0.5]}, "grid.alphas", [0.5]),
        ({"student_lrs": [0.05, 0.1]}, "grid.student_lrs", [0.1]),
    ],
)
def test_adding_values_to_a_grid_axis_is_accepted(tmp_path, grid, key, added) -> None:
    results = _saved(tmp_path, LISTED)
    grown = merged(LISTED, {"grid": grid})
    _resume(results, grown)
    assert growth(_comparable(LISTED), _comparable(grown)).added[key] == added
    # The new plan holds every old trial, under the same id.
    old = {t.trial_id for t in plan_sweep(parse_config(LISTED)).trials}
    assert old < {t.trial_id for t in plan_sweep(parse_config(grown)).trials}


def test_adding_a_dataset_is_accepted(tmp_path) -> None:
    results = _saved(tmp_path, TINY)
    grown = merged(TINY, {"datasets": [*TINY["datasets"], SECOND_DATASET]})
    _resume(results, grown)
    assert growth(_comparable(TINY), _comparable(grown)).added == {"datasets": ["synthetic_b"]}


def test_reordered_values_are_no_change(tmp_path) -> None:
    both = merged(LISTED, {"datasets": [*TINY["datasets"], SECOND_DATASET]})
    both = merged(
        both, {"grid": {"seeds": [0, 1], "losses": ["kd", "zscore_kd"], "temperatures": [4.0, 10.0]}}
    )
    results = _saved(tmp_path, both)
    reordered = merged(
        both,
        {
            "datasets": [SECOND_DATASET, *TINY["datasets"]],
            "grid": {"seeds": [1, 0], "losses": ["zscore_kd", "kd"], "temperatures": [10.0, 4.0]},
        },
    )
    _resume(results, reordered)
    assert not growth(_comparable(both), _comparable(reordered))


def test_settings_of_where_and_how_fast_still_change_freely(tmp_path) -> None:
    results = _saved(tmp_path, TINY)
    _resume(results, merged(TINY, {"resources": {"max_concurrent_trials": 1}, "grid": {"seeds": [0, 1]}}))
    _resume(results, merged(TINY, {"report": {"every_minutes": 5}}))  # how often, not what


@pytest.mark.parametrize(
    ("override", "named"),
    [
        ({"student": {"train": {"lr": 0.04}}}, "student.train.lr 0.05 -> 0.04"),
        ({"distill": {"temperature": 4.0}}, "distill.temperature 10.0 -> 4.0"),
        ({"teacher": {"train": {"epochs": 2}}}, "teacher.train.epochs 1 -> 2"),
        ({"metrics": {"ece_bins": 10}}, "metrics.ece_bins 15 -> 10"),
        ({"datasets": [{**TINY["datasets"][0], "num_train": 96}]}, "datasets.0.num_train 64 -> 96"),
    ],
)
def test_a_changed_field_outside_the_grid_is_refused_by_its_key(tmp_path, override, named) -> None:
    results = _saved(tmp_path, TINY)
    # Growing the grid at the same time does not make the change acceptable.
    line = _refusal(results, merged(merged(TINY, override), {"grid": {"seeds": [0, 1]}}))
    assert "the config changed since this sweep started" in line
    assert f"changed {named}" in line
    assert "Only resources, runtime, failure, results, trackers, report and data locations may change" in line


@pytest.mark.parametrize(
    ("base", "override", "named"),
    [
        (TINY, {"grid": {"seeds": [1]}}, "grid.seeds [0]"),
        (TINY, {"grid": {"losses": ["zscore_kd"]}}, "grid.losses ['kd']"),
        (LISTED, {"grid": {"permutations": ["T1s_Ss"]}}, "grid.permutations ['T1w_Sw']"),
        (TINY, {"grid": {"permutations": ["T1w_Sw"]}}, "grid.permutations ['T1s_Ss', 'T1s_Sw', 'T1w_Ss']"),
        (LISTED, {"grid": {"temperatures": [10.0]}}, "grid.temperatures [4.0]"),
        (
            merged(TINY, {"datasets": [*TINY["datasets"], SECOND_DATASET]}),
            {"datasets": TINY["datasets"]},
            "datasets ['synthetic_b']",
        ),
    ],
)
def test_a_removed_grid_value_is_refused_and_named(tmp_path, base, override, named) -> None:
    results = _saved(tmp_path, base)
    line = _refusal(results, merged(base, override))
    assert f"removed {named}" in line
    assert "saved config must describe" in line  # why shrinking is refused


def test_listing_a_kd_axis_the_sweep_did_not_list_is_refused(tmp_path) -> None:
    # Its trials' ids do not name τ; listing the axis would rename every one of them.
    results = _saved(tmp_path, TINY)
    line = _refusal(results, merged(TINY, {"grid": {"temperatures": [10.0, 4.0]}}))
    assert "grid.temperatures unset -> [10.0, 4.0]" in line and "renames every trial" in line


def test_a_refused_or_checked_grow_leaves_the_saved_config_as_it_was(tmp_path) -> None:
    """config.yaml becomes the grown config only once every input check has passed: here the
    grow passes prepare_results but changes the numerics under unfinished trials."""
    results = _saved(tmp_path, TINY)
    saved = (tmp_path / "results" / "tiny" / "config.yaml").read_bytes()
    grown = merged(TINY, {"grid": {"seeds": [0, 1]}, "runtime": {"channels_last": True}})
    with pytest.raises(ResultsError, match="would mix two numerics"):
        sweep_mod.run_sweep(parse_config(grown), results, resume=True)
    with pytest.raises(ResultsError, match=r"removed grid\.seeds \[0\]"):
        sweep_mod.run_sweep(parse_config(merged(TINY, {"grid": {"seeds": [1]}})), results, resume=True)
    assert (tmp_path / "results" / "tiny" / "config.yaml").read_bytes() == saved


def test_a_new_trial_never_joins_a_started_group(tmp_path) -> None:
    # A started group's checkpoints hold its members only; a trial added by a grow of the same
    # stream (another loss) runs in a fresh group, so the started one still restores.
    cfg = parse_config(merged(TINY, {"grid": {"losses": ["kd", "zscore_kd"]}}))
    trials = list(plan_sweep(cfg).trials)
    old = [t for t in trials if t.loss == "kd" and t.student_aug == "w"]
    new = [t for t in trials if t.loss == "zscore_kd" and t.student_aug == "w"]
    sweep = Storage.open(tmp_path / "tiny")
    manifest = {"group_id": "started-group", "trials": [t.trial_id for t in old]}
    sweep.child("_ray", "started-group").write_bytes(GROUP_MANIFEST, json.dumps(manifest).encode())
    items = stage_runs.group_items(cfg, plan_sweep(cfg), sweep, old + new, set(), slots=2)
    by_id = {item["group_id"]: [t["trial_id"] for t in item["trials"]] for item in items}
    assert by_id.pop("started-group") == [t.trial_id for t in old]
    assert sorted(tid for members in by_id.values() for tid in members) == sorted(t.trial_id for t in new)


@pytest.mark.slow
def test_a_sweep_grown_by_a_seed_keeps_its_old_trials_and_runs_the_new_ones(tmp_path) -> None:
    # The shared feature sweep (one permutation at two temperatures: one teacher, one stream
    # group) grown as a user would: its saved config.yaml with one more seed, then --resume.
    _, feature_results, _, _ = feature_sweep()
    results = tmp_path / "results"
    shutil.copytree(feature_results, results, ignore=shutil.ignore_patterns("_ray"))
    sweep = results / "tiny"
    before = {name: owner_files(sweep, name) for name in ("trials", "epochs", "calibration")}
    old_ids = set(table(sweep, "trials")["trial_id"])
    old_teachers = set(table(sweep, "teachers")["teacher_id"])
    saved = yaml.safe_load((sweep / "config.yaml").read_text())
    saved["grid"]["seeds"] = [0, 1]  # the README's "add seeds"
    config = tmp_path / "grown.yaml"
    config.write_text(yaml.safe_dump(saved, sort_keys=False))
    done = run_cli(
        "sweep", str(config), "--results", str(results), "--no-report", "-q", "--resume", shared=True
    )
    output = done.stdout + done.stderr
    assert done.returncode == 0, output[-4000:]

    for name, files in before.items():  # same files, same bytes
        after = owner_files(sweep, name)
        assert {f: after.get(f) for f in files} == files, name
    trials = table(sweep, "trials")
    new = trials[~trials["trial_id"].isin(old_ids)]
    assert len(new) == len(old_ids) and set(new["seed"]) == {1}
    assert (new["status"] == "ok").all(), new[["trial_id", "error"]].to_string()
    epochs = table(sweep, "epochs")
    epochs_of = {
        trial_id: set(group["epoch"])
        for trial_id, group in epochs.groupby("trial_id")
        if trial_id in set(new["trial_id"])
    }
    assert epochs_of == {trial_id: {1, 2} for trial_id in new["trial_id"]}
    # Seed 1 needs its own teacher (a teacher's id holds its seed); seed 0's is reused.
    assert f"({len(old_ids)} already finished); teachers trained 1, reused {len(old_teachers)}" in output
    # The saved config is the grown one, so a plain --resume of it is accepted from now on.
    grown = parse_config(yaml.safe_load(config.read_text()))
    assert (sweep / "config.yaml").read_text() == dump_config(grown)
    stored_sweep.prepare_results(grown, str(results), resume=True)
