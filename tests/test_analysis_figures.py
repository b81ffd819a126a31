"""Figures and tables from a small hand-made results directory contain exactly the expected points."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from _analysis_fixtures import sweep, trial_row, write_results

from kd_ray import analysis as A
from kd_ray.errors import ResultsError


@pytest.fixture(scope="module")
def results(tmp_path_factory: pytest.TempPathFactory) -> A.Results:
    """Two configurations with two seeds each, one failed trial, one split-view trial and a
    z-score pair, with values chosen so means and sds are easy to check by hand."""
    rows = [
        trial_row(
            perm="T1s_T2w_Ss",
            seed=0,
            val_acc=0.80,
            iou_teachers=0.30,
            agreement=0.70,
            affinity=0.86,
            gap=0.05,
        ),
        trial_row(
            perm="T1s_T2w_Ss",
            seed=1,
            val_acc=0.84,
            iou_teachers=0.34,
            agreement=0.72,
            affinity=0.88,
            gap=0.07,
        ),
        trial_row(
            perm="T1w_T2w_Sw",
            seed=0,
            val_acc=0.70,
            iou_teachers=0.60,
            agreement=0.90,
            affinity=0.98,
            gap=0.20,
        ),
        trial_row(
            perm="T1w_T2w_Sw",
            seed=1,
            val_acc=0.72,
            iou_teachers=0.62,
            agreement=0.92,
            affinity=0.96,
            gap=0.22,
        ),
        trial_row(perm="T1w_T2s_Sw", seed=0, status="failed"),
        trial_row(
            perm="T1w_T2w_Sw", seed=0, view="split", val_acc=0.71, iou_teachers=0.20, agreement=0.60, gap=0.21
        ),
        trial_row(
            perm="T1w_T2w_Sw",
            seed=0,
            loss="zscore_kd",
            val_acc=0.73,
            iou_teachers=0.61,
            agreement=0.88,
            gap=0.15,
        ),
    ]
    return A.load_results(write_results(tmp_path_factory.mktemp("r") / "hand", rows))


def test_load_gives_schema_types(results: A.Results) -> None:
    assert results.name == "hand"
    assert len(results.trials) == 7
    assert results.trials["n_teachers"].dtype == np.int64
    assert results.trials["val_acc"].dtype == np.float64
    assert set(results.epochs["split"]) == {"train", "val", "val_aug"}


def test_load_errors_are_one_line(tmp_path: Path) -> None:
    with pytest.raises(ResultsError, match="not found"):
        A.load_results(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ResultsError, match="trials.parquet"):
        A.load_results(tmp_path / "empty")
    (tmp_path / "bad" / "trials.parquet").mkdir(parents=True)
    (tmp_path / "bad" / "trials.parquet" / "x.parquet").write_text("not parquet")
    with pytest.raises(ResultsError) as info:
        A.load_results(tmp_path / "bad")
    assert "\n" not in str(info.value)


def test_fig2_points_are_seed_means_in_paper_order(results: A.Results) -> None:
    fig = A.fig2_iou_vs_acc(results.trials)
    assert [t.name for t in fig.data] == ["kd", "zscore_kd"]
    kd = fig.data[0]
    assert list(kd.text) == ["T1w_T2w_Sw", "T1s_T2w_Ss"]
    assert kd.x == pytest.approx([0.71, 0.82])
    assert kd.y == pytest.approx([0.61, 0.32])
    assert kd.error_y.array == pytest.approx([np.std([0.60, 0.62], ddof=1), np.std([0.30, 0.34], ddof=1)])
    assert list(kd.customdata) == [2, 2]
    zs = fig.data[1]
    assert list(zs.text) == ["T1w_T2w_Sw"] and zs.x == pytest.approx([0.73]) and zs.y == pytest.approx([0.61])
    assert zs.error_y.visible is False


def test_fig3_has_fidelity_and_mi_rows(results: A.Results) -> None:
    fig = A.fig3_fidelity_mi(results.trials)
    agreement = [t for t in fig.data if t.yaxis == "y" and t.name == "kd"][0]
    assert agreement.y == pytest.approx([0.91, 0.71])
    assert {t.yaxis for t in fig.data} == {"y", "y2"}


def test_fig4_pairs_kd_with_zscore(results: A.Results) -> None:
    fig = A.fig4_zscore_bars(results.trials)
    gap = {t.name: t for t in fig.data if t.yaxis == "y"}
    assert list(gap["vKD"].x) == ["T1w_T2w_Sw"] and gap["vKD"].y == pytest.approx([0.21])
    assert gap["z-score KD"].y == pytest.approx([0.15])


def test_missing_sections_say_why(results: A.Results) -> None:
    with pytest.raises(A.NoData, match="ViT"):
        A.fig_e7_vit(results.trials)
    with pytest.raises(A.NoData, match="3 teachers"):
        A.fig_f8_three_teachers(results.trials)


def test_every_other_figure_builds(results: A.Results) -> None:
    for build in (A.fig1_overview, A.fig_b5_kl, A.fig_d6_iou_vs_affinity, A.fig_h9_entropy_gap):
        assert len(build(results.trials).data) >= 1
    reliability = A.fig_h9_reliability(results.trials, results.calibration)
    assert [t.name for t in reliability.data] == ["perfect calibration", "2 teachers"]
    curves = A.epoch_curves(results.trials, results.epochs)
    buttons = curves.layout.updatemenus[0].buttons
    assert len(buttons) == 6  # the failed trial has no epochs
    assert buttons[0].args[0]["x"][0] == [1, 2, 3]


def test_table1_layout(results: A.Results) -> None:
    table = A.table1_affinity_acc(results.trials)
    assert list(table.columns) == ["T1w_T2w_Sw", "T1s_T2w_Ss"]  # paper order; the failed perm is absent
    assert table.loc[("digits", 2, "kd", "full", "val_acc"), "T1s_T2w_Ss"] == pytest.approx(0.82)
    assert table.loc[("digits", 2, "kd", "full", "affinity"), "T1w_T2w_Sw"] == pytest.approx(0.97)
    h6 = A.table_h6_ece_affinity(results.trials)
    assert ("digits", 2, "kd", "full", "ece") in h6.index


def test_ab_table_and_eq9(results: A.Results) -> None:
    table = A.table_c_ab(results.trials)
    row = table.loc[("digits", "tiny_cnn", "tiny_cnn", 2, "kd", "T1w_T2w_Sw")]
    assert row[("iou_teachers", "vKD")] == pytest.approx(0.60)  # seed 0 only: the seed present in both
    assert row[("agreement", "hKD")] == pytest.approx(0.60)
    p = A.ab_p_values(results.trials)
    assert p[["num", "n_higher", "p_eq9"]].iloc[0].tolist() == [1, 0, 0.0]


def test_eq9_matches_hand_computation_on_paper_table_c2() -> None:
    """Table C.2 (CIFAR100): hKD fidelity is below vKD in all 8 trials, so eq. 9 gives 0/8."""
    vkd = [0.9523, 0.7859, 0.9411, 0.8536, 0.9387, 0.8568, 0.9048, 0.8897]
    hkd = [0.7564, 0.5921, 0.7295, 0.6520, 0.7248, 0.6513, 0.6621, 0.6801]
    assert A.eq9_p_value(np.array(hkd), np.array(vkd)) == 0.0
    # 3 of 8 pairs with hKD above vKD: 3 / 8; a tie does not count as "greater".
    assert A.eq9_p_value(np.array([1, 1, 1, 0, 0, 0, 0.5, 0]), np.array([0, 0, 0, 1, 1, 1, 0.5, 1])) == 3 / 8
    assert math.isnan(A.eq9_p_value(np.array([]), np.array([])))


def test_g5_best_per_teacher_count() -> None:
    trials = pd.DataFrame(sweep(ks=(1, 2)))
    g5 = A.table_g5_best(trials)
    assert list(g5["method"]) == ["Ours(1T)", "Ours(2T)"]
    kd = trials[trials["loss"] == "kd"]
    assert g5["val_acc"].tolist() == pytest.approx(kd.groupby("n_teachers")["val_acc"].max().tolist())
