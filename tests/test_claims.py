"""The claims check says supported, contradicted or inconclusive when the data say so."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
from _analysis_fixtures import paper_story, perms, sweep, trial_row
from scipy import stats as sps

from kd_ray import analysis as A
from kd_ray.analysis import stats


def _claims(rows: list[dict]) -> pd.DataFrame:
    return A.claims_check(pd.DataFrame(rows)).set_index("claim")


@pytest.fixture(scope="module")
def paper_like() -> pd.DataFrame:
    """A sweep built to satisfy every claim: 2 and 3 teachers, both views, both losses, 2 seeds."""
    return _claims(sweep(ks=(2, 3), views=("full", "split"), seeds=(0, 1)))


def test_every_claim_supported_on_a_sweep_built_to_satisfy_it(paper_like: pd.DataFrame) -> None:
    assert paper_like["verdict"].to_dict() == {f"C{i}": "supported" for i in range(1, 8)}
    assert (paper_like["p_value"] < A.ALPHA).all()
    assert (paper_like["ci_low"] <= paper_like["value"]).all() and (
        paper_like["value"] <= paper_like["ci_high"]
    ).all()
    # Units are configurations: 2 seeds do not double n.
    assert paper_like.loc["C6", "n"] == 2 * (8 + 16)  # full view, 2 losses; seeds averaged
    assert paper_like.loc["C4", "p_eq9"] == 0.0


def _anti_story(perm: str, loss: str, view: str, seed: int, rng: np.random.Generator) -> dict:
    """The paper's story with every direction reversed."""
    m = paper_story(perm, loss, view, seed, rng)
    strength = 0.98 - m["affinity"]
    k = len(perm.split("_")) - 1
    return m | dict(
        val_acc=0.9 - 1.2 * strength + rng.normal(0, 0.003),
        iou_teachers=0.3 - 2.0 * (m["affinity"] - 0.85) + 0.2 * (view == "split") + rng.normal(0, 0.005),
        agreement=0.6
        + 1.5 * strength
        + 0.15 * (view == "split")
        + 0.02 * (loss == "zscore_kd")
        + rng.normal(0, 0.003),
        mi=1.0 + 5 * strength + rng.normal(0, 0.01),
        gap=0.1 + strength + 0.03 * (loss == "zscore_kd") + rng.normal(0, 0.003),
        ece=0.02 + 0.6 * strength + 0.02 * k + rng.normal(0, 0.002),
    )


def _mimicry_story(perm: str, loss: str, view: str, seed: int, rng: np.random.Generator) -> dict:
    """Accuracy rises with augmentation as in the paper, but so do teacher IoU, fidelity and MI."""
    m = paper_story(perm, loss, view, seed, rng)
    strength = 0.98 - m["affinity"]
    return m | dict(
        iou_teachers=0.3 + 2.0 * strength + rng.normal(0, 0.005),
        agreement=0.6 + 1.5 * strength + rng.normal(0, 0.003),
        mi=1.0 + 5 * strength + rng.normal(0, 0.01),
    )


@pytest.mark.parametrize(
    ("story", "contradicted"),
    [(_anti_story, {"C1", "C4", "C5", "C6", "C7"}), (_mimicry_story, {"C1", "C2", "C3"})],
)
def test_claims_contradicted_on_sweeps_built_against_them(story, contradicted: set[str]) -> None:
    """A one-dimensional story cannot reverse C1, C2 and C6 at once (C2 follows from the other two),
    so two stories together contradict every claim."""
    claims = _claims(sweep(ks=(2, 3), views=("full", "split"), seeds=(0, 1), story=story))
    assert {c for c, v in claims["verdict"].items() if v == "contradicted"} == contradicted


def test_tiny_sweep_is_inconclusive_and_says_what_n_is_needed() -> None:
    rng = np.random.default_rng(1)
    rows = [
        trial_row(perm=p, **paper_story(p, "kd", "full", 0, rng))
        for p in ["T1w_T2w_Sw", "T1w_T2w_Ss", "T1s_T2w_Ss"]
    ]
    claims = _claims(rows)
    assert set(claims["verdict"]) == {"inconclusive"}
    assert claims.loc["C6", "n"] == 3
    assert claims.loc["C6", "n_needed"] >= 5
    assert "no paired trials" in claims.loc["C4", "note"] and "split" in claims.loc["C4", "note"]


def test_demo_shaped_sweep_has_no_split_view_for_c4() -> None:
    claims = _claims(sweep())
    assert claims.loc["C4", "verdict"] == "inconclusive" and claims.loc["C4", "n"] == 0
    assert claims.loc["C6", "verdict"] == "supported" and claims.loc["C6", "n"] == 16


def test_failed_trials_are_ignored() -> None:
    rows = sweep()
    rows[0] = trial_row(perm=rows[0]["perm"], loss=rows[0]["loss"], status="failed")
    assert _claims(rows).loc["C6", "n"] == 15


def test_one_part_against_contradicts_the_claim_with_bonferroni() -> None:
    """C3 has two parts: agreement falls with accuracy (supported) but MI rises (contradicted)."""

    def story(perm: str, loss: str, view: str, seed: int, rng: np.random.Generator) -> dict:
        m = paper_story(perm, loss, view, seed, rng)
        return m | {"mi": 1.0 + 5 * (0.98 - m["affinity"]) + rng.normal(0, 0.01)}

    parts = A.claim_parts(pd.DataFrame(sweep(story=story)))
    c3 = parts[parts["claim"] == "C3"].set_index("part")
    assert c3["verdict"].tolist() == ["supported", "contradicted"]
    assert A.summarize_claims(parts).set_index("claim").loc["C3", "verdict"] == "contradicted"


def test_stratified_spearman_is_spearman_for_one_stratum() -> None:
    rng = np.random.default_rng(0)
    x, y = rng.normal(size=20), rng.normal(size=20)
    y = y + x
    assert stats.stratified_spearman(x, y, np.zeros(20)) == pytest.approx(sps.spearmanr(x, y).statistic)
    frame = pd.DataFrame({"unit": range(20), "stratum": 0, "x": x, "y": y})
    result = stats.rank_correlation_test(frame)
    exact = sps.spearmanr(x, y).pvalue
    assert result.p_value == pytest.approx(exact, abs=0.01)


def test_strata_remove_between_dataset_trends() -> None:
    """Two datasets whose levels differ: pooled, accuracy seems to rise; within each, it falls."""
    x = np.array([1, 2, 3, 4, 11, 12, 13, 14], float)
    y = np.array([4, 3, 2, 1, 14, 13, 12, 11], float)
    strata = np.array([0] * 4 + [1] * 4)
    assert sps.spearmanr(x, y).statistic > 0.4
    assert stats.stratified_spearman(x, y, strata) == pytest.approx(-1.0)


def test_paired_test_uses_wilcoxon_and_hodges_lehmann() -> None:
    d = np.array([-0.3, -0.2, -0.25, -0.1, -0.15, -0.05, 0.02])
    frame = pd.DataFrame({"unit": range(7), "stratum": 0, "treated": d, "control": np.zeros(7)})
    result = stats.paired_test(frame)
    assert result.p_value == pytest.approx(sps.wilcoxon(d).pvalue)
    assert result.value == pytest.approx(stats.hodges_lehmann(d))
    assert result.p_eq9 == pytest.approx(1 / 7)
    assert result.ci_low < result.value < result.ci_high


def test_power_estimates() -> None:
    assert stats.n_needed_correlation(0.3) == pytest.approx(
        3 + 1.045 * ((1.96 + 0.8416) / math.atanh(0.3)) ** 2, abs=1
    )
    assert stats.n_needed_correlation(0.99) == 5
    assert stats.n_needed_correlation(0.0) is None
    assert stats.n_needed_paired(np.array([1.0, 1.0, 1.0])) == 6
    assert stats.n_needed_paired(np.array([0.1, -0.1, 0.2, 0.0])) > 6


def test_verdict_rule() -> None:
    assert stats.verdict(-0.5, 0.01, -1) == "supported"
    assert stats.verdict(0.5, 0.01, -1) == "contradicted"
    assert stats.verdict(-0.5, 0.05, -1) == "inconclusive"  # alpha is strict
    assert stats.verdict(math.nan, math.nan, -1) == "inconclusive"


def test_claims_cover_perms_of_every_k() -> None:
    assert len(perms(3)) == 16
    assert set(A.CLAIMS) == {f"C{i}" for i in range(1, 8)}
