"""KD's own hyper-parameters as grid axes (issue 11, item 3): τ, α and the student's lr.

A grid may list ``temperatures``, ``alphas`` and ``student_lrs``; each value is a trial column
and part of the trial id, only where the grid lists that axis, so existing configs keep their
ids, fingerprints and saved configs. Teachers do not depend on them, students of one stream
still train together, and the claims check treats each value as its own condition.
"""

from __future__ import annotations

import itertools
import math
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest
import yaml
from _analysis_fixtures import perms, trial_row, write_results
from _sweep_helpers import TINY, feature_sweep, merged
from scipy import stats as sps

from kd_ray import analysis as A
from kd_ray.analysis import load_results, stats
from kd_ray.cli import main
from kd_ray.config import dump_config, load_config, parse_config
from kd_ray.errors import ConfigError
from kd_ray.plan import (
    axis_text,
    fingerprint,
    plan_sweep,
    stream_groups,
    trial_fingerprint_content,
)

SWEPT = merged(TINY, {"grid": {"temperatures": [4, 10]}})


def _plan(override: dict):
    cfg = parse_config(merged(TINY, override))
    return cfg, plan_sweep(cfg)


# --- config ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("grid", "message"),
    [
        ({"temperatures": []}, "grid.temperatures: must list at least one value"),
        ({"temperatures": [4, 4.0]}, "grid.temperatures: has repeated values"),
        ({"temperatures": 4}, "grid.temperatures: Input should be a valid tuple"),
        ({"temperatures": [0]}, "grid.temperatures.0: Input should be greater than 0"),
        ({"alphas": [0.5, 1.5]}, "grid.alphas.1: Input should be less than or equal to 1"),
        ({"student_lrs": [-0.1]}, "grid.student_lrs.0: Input should be greater than 0"),
        ({"temperature": [4]}, "grid.temperature: unknown key"),
    ],
)
def test_bad_axis_is_one_line_naming_the_field(grid: dict, message: str, tmp_path: Path, capsys) -> None:
    with pytest.raises(ConfigError, match=message.replace(".", r"\.")):
        parse_config(merged(TINY, {"grid": grid}))
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(merged(TINY, {"grid": grid})))
    assert main(["sweep", str(path), "--dry-run"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and message in err and "Traceback" not in err


def test_unswept_axes_leave_the_saved_config_as_it_was() -> None:
    """--resume compares the saved config.yaml with the new one: a config that sweeps no KD axis
    must dump exactly as before the axes existed (no ``temperatures: null``)."""
    plain = dump_config(load_config("experiments/demo.yaml"))
    assert not {"temperatures", "alphas", "student_lrs"} & set(yaml.safe_load(plain)["grid"])
    swept = parse_config(SWEPT)
    assert yaml.safe_load(dump_config(swept))["grid"]["temperatures"] == [4.0, 10.0]
    assert parse_config(yaml.safe_load(dump_config(swept))) == swept


# --- plan, ids, fingerprints ----------------------------------------------------------------


# The tiny sweep of tests/_sweep_helpers.py as it was when the digests below were computed,
# frozen here so that a later change to the shared config does not look like a change of ids.
FROZEN_TINY = {
    "name": "tiny",
    "datasets": [{"name": "synthetic", "num_train": 64, "num_val": 32}],
    "teacher": {"arch": "cnn_tiny", "train": {"epochs": 1, "batch_size": 32, "lr": 0.05}},
    "student": {"arch": "cnn_tiny", "train": {"epochs": 4, "batch_size": 32, "lr": 0.05}},
    "grid": {"teacher_counts": [1], "losses": ["kd"], "views": ["full"], "seeds": [0]},
    "resources": {"num_workers": 1, "cpus_per_worker": 0.95, "report_interval_s": 0.2},
}


def test_existing_ids_and_fingerprints_do_not_change() -> None:
    """Values computed before trials carried τ, α and lr: resume of existing sweeps relies on them."""
    cfg = parse_config(FROZEN_TINY)
    plan = plan_sweep(cfg)
    ids = {t.trial_id: fingerprint(trial_fingerprint_content(cfg, t)) for t in plan.trials}
    assert ids == {
        "synthetic-T1w_Sw-kd-full-s0": "3e98aa2d95",
        "synthetic-T1w_Ss-kd-full-s0": "66f27bca9d",
        "synthetic-T1s_Sw-kd-full-s0": "acd4b2a364",
        "synthetic-T1s_Ss-kd-full-s0": "5517abea07",
    }
    assert [t.teacher_id for t in plan.teachers] == [
        "synthetic-cnn_tiny-T1w-s0-0108ef5211",
        "synthetic-cnn_tiny-T1s-s0-8fb2e0be76",
    ]
    assert {(t.temperature, t.alpha, t.lr) for t in plan.trials} == {(10.0, 0.2, 0.05)}


def test_each_listed_axis_multiplies_trials_and_names_them() -> None:
    cfg, plan = _plan(
        {
            "grid": {
                "permutations": ["T1w_Ss"],
                "temperatures": [4, 10],
                "alphas": [0.2, 0.5],
                "student_lrs": [0.05],
            }
        }
    )
    assert [t.trial_id for t in plan.trials] == [
        f"synthetic-T1w_Ss-kd-full-tau{tau}-alpha{a}-lr0.05-s0"
        for tau, a in itertools.product(("4", "10"), ("0.2", "0.5"))
    ]
    assert [(t.temperature, t.alpha, t.lr) for t in plan.trials] == [
        (tau, a, 0.05) for tau, a in itertools.product((4.0, 10.0), (0.2, 0.5))
    ]
    # Only listed axes name ids: τ alone leaves α and lr out (they still hold the config's values).
    _, tau_only = _plan({"grid": {"permutations": ["T1w_Ss"], "temperatures": [4, 10]}})
    assert [t.trial_id for t in tau_only.trials] == [
        "synthetic-T1w_Ss-kd-full-tau4-s0",
        "synthetic-T1w_Ss-kd-full-tau10-s0",
    ]
    assert {(t.alpha, t.lr) for t in tau_only.trials} == {(0.2, 0.05)}


def test_axis_text_is_exact_and_a_safe_file_name() -> None:
    assert [axis_text(v) for v in (4.0, 10, 0.5, 0.05, 1e-05, 1e20)] == [
        "4",
        "10",
        "0.5",
        "0.05",
        "1e-05",
        "1e20",
    ]
    # %g would round these to the same "0.1"; ids must not collide.
    assert axis_text(0.1) != axis_text(0.1000001)
    assert float(axis_text(0.1000001)) == 0.1000001


def test_teachers_do_not_depend_on_kd_axes() -> None:
    _, plain = _plan({})
    _, swept = _plan({"grid": {"temperatures": [4, 10], "alphas": [0.2, 0.5], "student_lrs": [0.05, 0.1]}})
    assert swept.teachers == plain.teachers
    assert len(swept.trials) == 8 * len(plain.trials)


def test_students_of_every_kd_value_share_their_stream_group() -> None:
    _, plan = _plan({"grid": {"permutations": ["T1w_Sw", "T1s_Sw"], "temperatures": [4, 10]}})
    (group,) = stream_groups(plan.trials)
    assert sorted({t.temperature for t in group}) == [4.0, 10.0] and len(group) == 4


def test_fingerprint_holds_the_trials_own_values() -> None:
    """A checkpoint made at τ = 4 must never be resumed as the τ = 10 trial, and the config's
    single value, which a grid list replaces, must not matter."""
    cfg, plan = _plan({"grid": {"temperatures": [4, 10], "student_lrs": [0.05, 0.1]}})
    digests = {fingerprint(trial_fingerprint_content(cfg, t)) for t in plan.trials}
    assert len(digests) == len(plan.trials)
    content = trial_fingerprint_content(cfg, plan.trials[0])
    assert content["distill"]["temperature"] == plan.trials[0].temperature == 4.0
    assert content["student"]["train"]["lr"] == plan.trials[0].lr == 0.05
    other = parse_config(merged(SWEPT, {"distill": {"temperature": 7}, "grid": {"student_lrs": [0.05, 0.1]}}))
    assert [fingerprint(trial_fingerprint_content(other, t)) for t in plan_sweep(other).trials] == [
        fingerprint(trial_fingerprint_content(cfg, t)) for t in plan.trials
    ]


def test_dry_run_lists_each_temperature(tmp_path: Path, capsys) -> None:
    path = tmp_path / "tau.yaml"
    path.write_text(yaml.safe_dump(merged(SWEPT, {"grid": {"permutations": ["T1w_Sw"]}})))
    assert main(["sweep", str(path), "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "synthetic-T1w_Sw-kd-full-tau4-s0" in out and "synthetic-T1w_Sw-kd-full-tau10-s0" in out
    assert out.strip().endswith("1 teachers, 2 student trials")


# --- claims: τ is a condition, not a replicate ----------------------------------------------


def _at(row: dict, temperature: float) -> dict:
    """A fixture row at temperature τ (its id names it, as a real sweep's does)."""
    return row | {"temperature": temperature, "trial_id": f"{row['trial_id']}-tau{axis_text(temperature)}"}


def _tau_only_story() -> list[dict]:
    """C6 (ρ(affinity, val_acc) < 0) built to fool pooling: τ = 4 units have high affinity and low
    accuracy, τ = 10 units the reverse, and within each τ the two are unrelated."""
    rng = np.random.default_rng(7)
    rows = []
    for tau, (aff, acc) in ((4.0, (0.95, 0.60)), (10.0, (0.85, 0.80))):
        for perm in perms(2):
            rows.append(
                _at(
                    trial_row(
                        perm=perm, affinity=aff + rng.normal(0, 0.01), val_acc=acc + rng.normal(0, 0.01)
                    ),
                    tau,
                )
            )
    return rows


def test_an_effect_made_only_by_temperature_is_not_supported() -> None:
    rows = _tau_only_story()
    frame = pd.DataFrame(rows)
    pooled = sps.spearmanr(frame["affinity"], frame["val_acc"])
    assert pooled.statistic < -0.5 and pooled.pvalue < 0.05  # the trap: τ = 4 vs τ = 10 is the trend
    parts = A.claim_parts(frame)
    c6 = parts[(parts["claim"] == "C6") & (parts["role"] == "primary")].iloc[0]
    assert c6["n"] == 16 and c6["n_strata"] == 2
    assert c6["strata"] == "dataset × architectures × k × τ ∈ {4, 10}"
    assert c6["verdict"] != "supported" and c6["p_value"] > 0.05
    claims = A.summarize_claims(parts).set_index("claim")
    assert claims.loc["C6", "verdict"] == "inconclusive"
    assert "τ ∈ {4, 10}" in claims.loc["C6", "strata"]


def test_an_effect_within_each_temperature_stays_supported() -> None:
    """The same sweep with a real within-τ trend: stratifying by τ does not hide it."""
    rows = []
    for tau in (4.0, 10.0):
        for i, perm in enumerate(perms(2)):
            rows.append(
                _at(trial_row(perm=perm, affinity=0.8 + 0.02 * i, val_acc=0.9 - 0.03 * i - tau / 100), tau)
            )
    claims = A.claims_check(pd.DataFrame(rows)).set_index("claim")
    assert claims.loc["C6", "verdict"] == "supported" and claims.loc["C6", "value"] == pytest.approx(-1.0)


def test_pairs_at_two_temperatures_are_not_twice_the_evidence() -> None:
    """C5's pairs repeated at τ = 4 and τ = 10 (the same differences: the τ twins share teachers
    and stream) keep the p-value of one temperature; counted as 16 replicates they would pass."""
    diffs = np.array([-0.03, -0.02, -0.025, -0.01, 0.012, -0.015, 0.01, -0.02])
    alone = sps.wilcoxon(diffs).pvalue
    doubled = sps.wilcoxon(np.r_[diffs, diffs]).pvalue
    assert alone > 0.05 > doubled
    rows = []
    for tau in (4.0, 10.0):
        for perm, d in zip(perms(2), diffs, strict=True):
            rows.append(_at(trial_row(perm=perm, loss="kd", gap=0.1), tau))
            rows.append(_at(trial_row(perm=perm, loss="zscore_kd", gap=0.1 + d), tau))
    parts = A.claim_parts(pd.DataFrame(rows))
    gap = parts[(parts["claim"] == "C5") & (parts["part"] == 1)].iloc[0]
    assert gap["strata"] == "paired within τ ∈ {4, 10}"
    assert gap["n"] == 16 and gap["n_strata"] == 2
    assert gap["p_value"] == pytest.approx(alone)
    assert gap["verdict"] == "inconclusive"


def test_temperature_strata_are_cut_within_each_datasets_block() -> None:
    """C5 at τ = 4 and 10 on two datasets: a τ value's pairs of two datasets share no teachers,
    so each (τ, dataset) cell is a stratum, averaged with the other τ of its dataset (shared
    teachers), and the two datasets combine as independent blocks. Before, a τ stratum took the
    block of its first pair, and the other dataset's pairs went with it."""
    rng = np.random.default_rng(3)
    cells = {
        (dataset, tau): rng.normal(-0.01, 0.01, size=8)
        for dataset in ("digits", "cifar10")
        for tau in (4.0, 10.0)
    }
    rows = []
    for (dataset, tau), diffs in cells.items():
        for perm, d in zip(perms(2), diffs, strict=True):
            rows.append(_at(trial_row(perm=perm, loss="kd", gap=0.1, dataset=dataset), tau))
            rows.append(_at(trial_row(perm=perm, loss="zscore_kd", gap=0.1 + d, dataset=dataset), tau))
    gap = A.claim_parts(pd.DataFrame(rows)).query("claim == 'C5' and part == 1").iloc[0]
    assert gap["n"] == 32 and gap["n_strata"] == 4

    def z(d: np.ndarray) -> float:  # a cell's two-sided Wilcoxon p as a signed z-score
        p = sps.wilcoxon(d, zero_method="zsplit").pvalue
        return float(np.sign(np.sum(np.sign(d) * sps.rankdata(np.abs(d)))) * sps.norm.isf(p / 2))

    # Within a dataset the τ cells' z-scores are averaged (equal weights √8); the datasets, each
    # of weight 2√8, combine by Stouffer: (z_a + z_b) / √2.
    per_dataset = [np.mean([z(cells[(ds, tau)]) for tau in (4.0, 10.0)]) for ds in ("digits", "cifar10")]
    combined = sum(per_dataset) / math.sqrt(2)
    assert gap["p_value"] == pytest.approx(2 * sps.norm.sf(abs(combined)))
    assert gap["direction"] == np.sign(combined)


def test_a_paired_stratum_that_spans_blocks_is_refused() -> None:
    frame = pd.DataFrame(
        {
            "unit": range(8),
            "stratum": ["tau=4"] * 4 + ["tau=10"] * 4,
            "block": ["digits", "cifar10"] * 4,
            "treated": np.linspace(0.1, 0.2, 8),
            "control": np.zeros(8),
        }
    )
    with pytest.raises(ValueError, match="spans blocks"):
        stats.paired_test(frame)


# --- tables and figures: configurations keep their τ -----------------------------------------


def _two_temperature_rows() -> list[dict]:
    """Both losses at τ = 4 and 10; accuracy 0.6 at τ = 4 and 0.8 at τ = 10, whatever the loss."""
    rows = []
    for tau, acc in ((4.0, 0.6), (10.0, 0.8)):
        for perm, loss in itertools.product(perms(2), ("kd", "zscore_kd")):
            rows.append(_at(trial_row(perm=perm, loss=loss, val_acc=acc), tau))
    return rows


def test_tables_keep_each_temperature_apart() -> None:
    trials = pd.DataFrame(_two_temperature_rows())
    table = A.table1_affinity_acc(trials)
    assert "temperature" in table.index.names
    acc = table.xs("val_acc", level="metric")
    by_tau = acc.groupby(level="temperature").mean().mean(axis=1)
    assert by_tau.to_dict() == pytest.approx({4.0: 0.6, 10.0: 0.8})  # never 0.7, the mean of both
    best = A.table_g5_best(trials)
    assert best.loc[0, "temperature"] == 10.0 and best.loc[0, "val_acc"] == pytest.approx(0.8)


def test_figures_name_each_temperature() -> None:
    trials = pd.DataFrame(_two_temperature_rows())
    fig4 = A.fig4_zscore_bars(trials)
    titles = [a.text for a in fig4.layout.annotations]
    assert titles == ["digits · τ=4", "digits · τ=10"]
    epochs = pd.DataFrame(
        [
            {
                "trial_id": t,
                "epoch": 1,
                "split": "val",
                "acc": 0.5,
                "agreement": 0.5,
                "iou_teachers": 0.5,
                "loss": 1.0,
            }
            for t in trials["trial_id"]
        ]
    )
    curves = A.epoch_curves(trials, epochs)
    labels = [b.label for b in curves.layout.updatemenus[0].buttons]
    assert len(labels) == len(set(labels)) == len(trials)
    assert "T1w_T2w_Sw kd full s0 τ=4" in labels


def test_results_written_before_the_columns_existed_still_load(tmp_path: Path) -> None:
    """Old trial files lack temperature, alpha and lr: they load as null, next to new files that
    hold them, and a sweep that is one τ is not split into two conditions by the nulls."""
    rows = [
        _at(trial_row(perm=p, affinity=0.8 + 0.01 * i, val_acc=0.9 - 0.01 * i), 10.0)
        for i, p in enumerate(perms(2))
    ]
    root = write_results(tmp_path / "old", rows)
    old_file = sorted((root / "trials.parquet").glob("*.parquet"))[0]
    table = pq.read_table(old_file)
    pq.write_table(table.drop_columns(["temperature", "alpha", "lr"]), old_file)
    trials = load_results(root).trials
    assert trials["temperature"].isna().sum() == 1 and (trials["temperature"] == 10.0).sum() == 7
    parts = A.claim_parts(trials)
    c6 = parts[(parts["claim"] == "C6") & (parts["role"] == "primary")].iloc[0]
    assert c6["strata"] == "dataset × architectures × k" and c6["n"] == 8


# --- end to end: a sweep over two temperatures, from the CLI ----------------------------------


@pytest.mark.slow
def test_cli_sweep_over_two_temperatures_writes_both_and_stratifies_claims_by_tau() -> None:
    """One permutation at τ = 4 and 10 (the shared feature sweep): one teacher, two students in
    one run, lr 0.04 from --set."""
    _, results_root, done, _ = feature_sweep()
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    sweep = results_root / "tiny"
    results = load_results(sweep)
    trials = results.trials.set_index("trial_id").sort_values("temperature")
    assert list(trials.index) == ["synthetic-T1w_Sw-kd-full-tau4-s0", "synthetic-T1w_Sw-kd-full-tau10-s0"]
    assert trials["temperature"].tolist() == [4.0, 10.0] and set(trials["status"]) == {"ok"}
    assert set(trials["alpha"]) == {0.2} and set(trials["lr"]) == {0.04}
    assert trials["train_loss"].nunique() == 2  # each student trained at its own τ
    assert len(results.teachers) == 1  # τ does not touch the teachers
    # The claims check, as the report shows it and as a notebook computes it.
    claims = A.claims_check(results.trials).set_index("claim")
    assert claims.loc["C6", "strata"] == "dataset × architectures × k × τ ∈ {4, 10}"
    assert claims.loc["C5", "strata"] == "paired within τ ∈ {4, 10}"
    page = (sweep / "report.html").read_text()
    table = page[page.index('id="claims"') : page.index("</table>", page.index('id="claims"'))]
    rows = table.split("<tbody>")[1].split("<tr>")[1:]
    assert len(rows) == 7 and all("τ ∈ {4, 10}" in row for row in rows)  # every claim's strata
