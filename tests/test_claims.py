"""The claims check says supported, contradicted or inconclusive when the data say so, and is not
fooled by repeated measurements, confounded pooled trends or the number of claims."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pandas as pd
import pytest
from _analysis_fixtures import paper_story, perms, sweep, trial_row
from scipy import stats as sps

from kd_ray import analysis as A
from kd_ray.analysis import claims as claims_module
from kd_ray.analysis import stats


def _claims(rows: list[dict]) -> pd.DataFrame:
    return A.claims_check(pd.DataFrame(rows)).set_index("claim")


@pytest.fixture(scope="module")
def paper_like() -> pd.DataFrame:
    """A sweep built to satisfy every claim: 1-3 teachers, both views, both losses, 3 seeds."""
    return _claims(sweep(ks=(1, 2, 3), views=("full", "split"), seeds=(0, 1, 2)))


def test_every_claim_supported_on_a_sweep_built_to_satisfy_it(paper_like: pd.DataFrame) -> None:
    assert paper_like["verdict"].to_dict() == {f"C{i}": "supported" for i in range(1, 8)}
    assert (paper_like["p_holm"] < A.ALPHA).all()
    assert (paper_like["p_holm"] >= paper_like["p_value"]).all()
    assert (paper_like["ci_low"] <= paper_like["value"]).all() and (
        paper_like["value"] <= paper_like["ci_high"]
    ).all()
    # Units are vanilla-KD full-view configurations: 3 seeds and the z-score twins do not count.
    assert paper_like.loc["C6", "n"] == 4 + 8 + 16
    assert paper_like.loc["C4", "p_eq9"] == 0.0
    assert paper_like.loc["C2", "strata"] == "dataset × architectures × k × student aug"
    assert paper_like.loc["C6", "strata"] == "dataset × architectures × k"
    assert "agree" in paper_like.loc["C2", "pooled"]


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
        mi_mm=1.0 + 5 * strength + rng.normal(0, 0.01),
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
        mi_mm=1.0 + 5 * strength + rng.normal(0, 0.01),
    )


@pytest.mark.parametrize(
    ("story", "contradicted"),
    [(_anti_story, {"C1", "C4", "C5", "C6", "C7"}), (_mimicry_story, {"C1", "C2", "C3"})],
)
def test_claims_contradicted_on_sweeps_built_against_them(story, contradicted: set[str]) -> None:
    """A one-dimensional story cannot reverse C1, C2 and C6 at once (C2 follows from the other two),
    so two stories together contradict every claim."""
    claims = _claims(sweep(ks=(1, 2, 3), views=("full", "split"), seeds=(0, 1, 2), story=story))
    assert {c for c, v in claims["verdict"].items() if v == "contradicted"} == contradicted


def test_twins_with_identical_teacher_measurements_do_not_make_a_correlation() -> None:
    """C1 on 8 vanilla-KD configurations is inconclusive (scipy: p ≈ 0.1); adding the z-score
    twins, which record the very same teacher IoU and nearly the same affinity, doubles n and
    would make a naive check 'significant'. The check must not count them."""
    affinity = np.array([0.90, 0.91, 0.92, 0.93, 0.94, 0.95, 0.96, 0.97])
    iou = 0.3 + 0.02 * np.array([5, 1, 3, 2, 6, 8, 4, 7])  # Spearman rho = 0.57 with affinity
    alone = sps.spearmanr(affinity, iou)
    assert alone.pvalue > 0.05
    doubled = sps.spearmanr(np.r_[affinity, affinity + 1e-4], np.r_[iou, iou])
    assert doubled.pvalue < 0.05  # the trap: one measurement counted twice
    rows = [
        trial_row(perm=perm, loss=loss, affinity=a + (1e-4 if loss == "zscore_kd" else 0), iou_teachers=i)
        for loss in ("kd", "zscore_kd")
        for perm, a, i in zip(perms(2), affinity, iou, strict=True)
    ]
    claims = _claims(rows)
    assert claims.loc["C1", "verdict"] == "inconclusive"
    assert claims.loc["C1", "n"] == 8
    assert claims.loc["C1", "value"] == pytest.approx(alone.statistic)


def _augmentation_only_story(perm: str, loss: str, view: str, seed: int, rng: np.random.Generator) -> dict:
    """Ss lowers teacher IoU and raises accuracy; within each student augmentation, higher IoU goes
    with *higher* accuracy. Pooled, C2 looks supported; it is nothing but the S_w/S_s split."""
    m = paper_story(perm, loss, view, seed, rng)
    strong = perm.endswith("Ss")
    within = rng.normal(0, 1)
    return m | dict(
        iou_teachers=0.5 - 0.3 * strong + 0.02 * within,
        val_acc=0.6 + 0.2 * strong + 0.01 * within + rng.normal(0, 0.001),
    )


def test_a_pooled_trend_that_is_only_the_student_augmentation_is_not_supported() -> None:
    rows = sweep(
        ks=(2, 3),
        losses=("kd",),
        seeds=(0, 1, 2),
        datasets=("digits", "digits_lt", "synthetic"),
        story=_augmentation_only_story,
    )
    parts = A.claim_parts(pd.DataFrame(rows))
    c2 = parts[parts["claim"] == "C2"].set_index("role")
    assert c2.loc["pooled", "verdict"] == "supported"  # what a pooled check would say
    assert c2.loc["primary", "value"] > 0  # within each augmentation the trend runs the other way
    claims = A.summarize_claims(parts).set_index("claim")
    assert claims.loc["C2", "verdict"] != "supported"
    assert "student's augmentation" in claims.loc["C2", "pooled"]


def test_a_genuine_within_stratum_effect_over_seeds_and_k_stays_supported() -> None:
    """Only vanilla KD, k = 2 and 3 sharing teacher models, 3 seeds: the conservative combination
    within the teachers' block still finds a real effect."""
    claims = _claims(sweep(ks=(2, 3), losses=("kd",), seeds=(0, 1, 2)))
    assert claims.loc["C2", "verdict"] == "supported"
    assert claims.loc["C2", "n"] == 8 + 16


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
    assert claims.loc["C6", "n"] == 8  # vanilla KD only: the z-score twins are not units


def test_failed_trials_are_ignored() -> None:
    rows = sweep()
    rows[0] = trial_row(perm=rows[0]["perm"], loss=rows[0]["loss"], status="failed")
    assert _claims(rows).loc["C6", "n"] == 7


def test_one_part_against_contradicts_the_claim_with_bonferroni() -> None:
    """C3 has two parts: agreement falls with accuracy (supported) but MI rises (contradicted)."""

    def story(perm: str, loss: str, view: str, seed: int, rng: np.random.Generator) -> dict:
        m = paper_story(perm, loss, view, seed, rng)
        return m | {"mi_mm": 1.0 + 5 * (0.98 - m["affinity"]) + rng.normal(0, 0.01)}

    # k = 1..3: strata of 4 units each can only reach one-sided p = 1/24, so the contradicted
    # part needs several of them to survive Bonferroni and Holm.
    parts = A.claim_parts(pd.DataFrame(sweep(ks=(1, 2, 3), seeds=(0, 1, 2), story=story)))
    c3 = parts[(parts["claim"] == "C3") & (parts["role"] == "primary")].set_index("part")
    assert c3["verdict"].tolist() == ["supported", "contradicted"]
    summary = A.summarize_claims(parts).set_index("claim")
    assert summary.loc["C3", "verdict"] == "contradicted"
    assert summary.loc["C3", "p_value"] == pytest.approx(min(1.0, 2 * c3.loc[2, "p_value"]))


def test_holm_matches_hand_computed_values() -> None:
    # Sorted p: 0.01, 0.02, 0.03, 0.04 -> ×4, ×3, ×2, ×1 = 0.04, 0.06, 0.06, 0.04 -> running max.
    p = np.array([0.03, 0.01, np.nan, 0.04, 0.02])
    assert stats.holm(p)[[1, 4, 0, 3]] == pytest.approx([0.04, 0.06, 0.06, 0.06])
    assert math.isnan(stats.holm(p)[2])
    assert stats.holm([0.5, 0.9]) == pytest.approx([1.0, 1.0])  # 0.9 never below an earlier step


def test_verdicts_use_holm_adjusted_p_values() -> None:
    """A claim significant alone (raw p < 0.05) but not after Holm over the family is inconclusive."""
    parts = A.claim_parts(pd.DataFrame(sweep(ks=(2, 3), seeds=(0, 1, 2))))
    summary = A.summarize_claims(parts)
    raw_only = summary[(summary["p_value"] < A.ALPHA) & (summary["p_holm"] >= A.ALPHA)]
    assert (raw_only["verdict"] == "inconclusive").all()
    expected = stats.holm(summary["p_value"].to_numpy())
    assert summary["p_holm"].to_numpy() == pytest.approx(expected, nan_ok=True)


def test_stratum_test_matches_scipy_exact_permutation_and_spearman() -> None:
    rng = np.random.default_rng(0)
    x, y = rng.normal(size=7), rng.normal(size=7)
    y = y + x
    ours = stats.stratum_test(x, y, np.random.default_rng(0))
    assert ours.rho == pytest.approx(sps.spearmanr(x, y).statistic)
    exact = sps.permutation_test(
        (y,),
        lambda v: sps.spearmanr(x, v).statistic,
        permutation_type="pairings",
        alternative="two-sided",
        n_resamples=np.inf,
    )
    assert ours.p_two_sided == pytest.approx(exact.pvalue)
    # One stratum: the check's p-value is that exact permutation p-value.
    frame = pd.DataFrame({"unit": range(7), "stratum": 0, "x": x, "y": y})
    assert stats.rank_correlation_test(frame).p_value == pytest.approx(exact.pvalue)


def test_one_sided_z_of_a_perfect_ranking_counts_the_tie_in_full() -> None:
    # n = 4, rho = 1: P(null >= 1) = 1/24 (the mid-p, 1/48, is not a valid p-value).
    t = stats.stratum_test(np.arange(4.0), np.arange(4.0), np.random.default_rng(0))
    assert t.z == pytest.approx(sps.norm.isf(1 / 24))
    assert t.p_two_sided == pytest.approx(2 / 24)
    reverse = stats.stratum_test(np.arange(4.0), -np.arange(4.0), np.random.default_rng(0))
    assert reverse.z == pytest.approx(-sps.norm.isf(1 / 24))
    level = stats.stratum_test(np.arange(4.0), np.array([0.0, 1.0, 1.0, 0.0]), np.random.default_rng(0))
    assert level.rho == 0 and level.z == 0  # no side, no score


@pytest.mark.parametrize("n", [4, 5, 6])
def test_a_block_of_identical_strata_holds_alpha_exactly(n: int) -> None:
    """Fully dependent strata (the same stratum twice in one block) under the null, enumerated
    over every ordering: the combined test rejects no more often than alpha, and never more
    often than the single stratum's exact test. With mid-p z-scores it rejected 8.3% at n = 4."""
    x = np.arange(float(n))
    rejected_block = rejected_alone = 0
    orderings = list(itertools.permutations(range(n)))
    for order in orderings:
        t = stats.stratum_test(x, np.array(order, float), np.random.default_rng(0))
        _, p_block, _ = stats.combine_strata([t, t], blocks=["same", "same"])
        rejected_block += p_block < stats.ALPHA
        rejected_alone += t.p_two_sided < stats.ALPHA
    assert rejected_block / len(orderings) <= stats.ALPHA
    assert rejected_block <= rejected_alone


def test_independent_strata_combine_as_scipy_weighted_stouffer() -> None:
    rng = np.random.default_rng(3)
    tests = []
    for n in (5, 7, 12):
        x = rng.normal(size=n)
        tests.append(stats.stratum_test(x, x + rng.normal(size=n), rng))
    rho, p, direction = stats.combine_strata(tests, blocks=["a", "b", "c"])
    one_sided = sps.norm.sf([t.z for t in tests])
    weights = np.sqrt([t.n - 1 for t in tests])
    z = sps.combine_pvalues(one_sided, method="stouffer", weights=weights).statistic
    assert p == pytest.approx(2 * sps.norm.sf(abs(z)))
    assert direction == np.sign(z)
    assert rho == pytest.approx(np.average([t.rho for t in tests], weights=[t.n - 1 for t in tests]))


def test_strata_sharing_teachers_combine_conservatively() -> None:
    """Two strata in one block: the z-scores are averaged, never added as if independent."""
    t = stats.StratumTest(n=10, rho=0.6, p_two_sided=0.07, z=1.9)
    _, p_block, _ = stats.combine_strata([t, t], blocks=["same", "same"])
    _, p_indep, _ = stats.combine_strata([t, t], blocks=["one", "other"])
    assert p_block == pytest.approx(2 * sps.norm.sf(1.9))
    assert p_indep == pytest.approx(2 * sps.norm.sf(1.9 * math.sqrt(2)))


def test_stratum_weights_follow_information_not_n_cubed() -> None:
    """A 16-unit stratum and an 8-unit one weigh 15 : 7, not 8 : 1 as pooled centred ranks did."""
    big = np.arange(16.0)
    small = np.arange(8.0)
    frame = pd.DataFrame(
        {
            "unit": range(24),
            "stratum": [0] * 16 + [1] * 8,
            "x": np.r_[big, small],
            "y": np.r_[big, -small],  # rho = +1 in the big stratum, -1 in the small one
        }
    )
    assert stats.rank_correlation_test(frame).value == pytest.approx((15 - 7) / 22)


def test_strata_remove_between_dataset_trends() -> None:
    """Two datasets whose levels differ: pooled, accuracy seems to rise; within each, it falls."""
    x = np.array([1, 2, 3, 4, 11, 12, 13, 14], float)
    y = np.array([4, 3, 2, 1, 14, 13, 12, 11], float)
    assert sps.spearmanr(x, y).statistic > 0.4
    frame = pd.DataFrame({"unit": range(8), "stratum": [0] * 4 + [1] * 4, "x": x, "y": y})
    assert stats.rank_correlation_test(frame).value == pytest.approx(-1.0)


def test_paired_test_uses_wilcoxon_and_hodges_lehmann() -> None:
    d = np.array([-0.3, -0.2, -0.25, -0.1, -0.15, -0.05, 0.02])
    frame = pd.DataFrame({"unit": range(7), "treated": d, "control": np.zeros(7)})
    result = stats.paired_test(frame)
    assert result.p_value == pytest.approx(sps.wilcoxon(d).pvalue)
    assert result.p_eq9 == pytest.approx(1 / 7)
    assert result.ci_low < result.value < result.ci_high


def test_strata_whose_estimate_and_test_disagree_decide_nothing() -> None:
    """Three τ strata of 12 pairs: two rise by 0.001 in every pair (Wilcoxon p = 0.0005 each), the
    third falls by 0.06 in 5 pairs and rises by 0.01 in 7. The combined test says 'rises'
    (p < 0.05); the weighted Hodges-Lehmann estimate says 'falls'. Neither verdict may be given."""
    third = np.r_[np.full(5, -0.06), np.full(7, 0.01)]
    diffs = np.r_[np.full(12, 0.001), np.full(12, 0.001), third]
    frame = pd.DataFrame(
        {
            "unit": range(36),
            "stratum": np.repeat(["tau=1", "tau=4", "tau=10"], 12),
            "block": np.repeat(["a", "b", "c"], 12),
            "treated": diffs,
            "control": np.zeros(36),
        }
    )
    result = stats.paired_test(frame)
    assert result.p_value < stats.ALPHA and result.direction == 1 and result.value < 0
    for expected in (-1, 1):
        assert stats.verdict(result.value, result.p_value, expected, direction=result.direction) == (
            "inconclusive"
        )
    # At the claim level too: the part leans neither way, so the claim is not decided by it.
    part = {"expected_sign": -1, "value": result.value, "p_value": result.p_value, "p_against": math.nan}
    p, direction, _ = claims_module._decision(pd.DataFrame([part | {"direction": result.direction}]))
    assert direction == "inconclusive" and p == pytest.approx(result.p_value)
    p, direction, _ = claims_module._decision(pd.DataFrame([part | {"direction": -1.0}]))  # had they agreed
    assert direction == "supported"


def test_level_pairs_count_as_no_effect() -> None:
    """20 pairs that ended level and 6 that fell: the estimate is 0, and the Wilcoxon test ranks
    the zeros (split between the signs) instead of dropping them, which made it 6 of 6 falls."""
    d = np.r_[np.zeros(20), np.full(6, -0.01)]
    frame = pd.DataFrame({"unit": range(26), "treated": d, "control": np.zeros(26)})
    result = stats.paired_test(frame)
    assert result.value == 0
    assert result.p_value == pytest.approx(sps.wilcoxon(d, zero_method="zsplit").pvalue)
    assert result.p_value > sps.wilcoxon(d).pvalue  # scipy's default drops the 20 zeros
    # A zero effect never supports a direction, whatever its p-value.
    assert stats.verdict(0.0, 0.001, -1, direction=-1.0) == "inconclusive"
    part = {"expected_sign": -1, "value": 0.0, "p_value": 0.001, "p_against": math.nan, "direction": -1.0}
    assert claims_module._decision(pd.DataFrame([part]))[1] == "inconclusive"


def test_hodges_lehmann_hand_computed() -> None:
    # Walsh averages of (1, 2, 4): 1, 1.5, 2.5, 2, 3, 4 -> median of 1, 1.5, 2, 2.5, 3, 4 = 2.25.
    assert stats.hodges_lehmann(np.array([1.0, 2.0, 4.0])) == 2.25


def test_equivalence_test_hand_computed() -> None:
    """Five differences well inside ±0.01: each one-sided exact Wilcoxon p is 1/2^5."""
    d = np.array([0.002, -0.003, 0.001, 0.004, -0.002])
    frame = pd.DataFrame({"unit": range(5), "treated": d, "control": np.zeros(5)})
    result = stats.equivalence_test(frame, margin=0.01)
    assert result.p_value == pytest.approx(1 / 32)
    assert result.p_against == pytest.approx(1.0)
    far = stats.equivalence_test(frame.assign(treated=d - 0.05), margin=0.01)
    assert far.p_value == pytest.approx(1.0) and far.p_against == pytest.approx(1 / 32)


def test_a_teachers_only_metric_counts_each_teacher_set_once() -> None:
    """C4's context row, the teacher ensemble's val accuracy by view: T1w_T2s_Sw and T1w_T2s_Ss
    record the same teachers on the same clean val split, so k = 2 has 4 units (teacher
    augmentations), not the 8 permutations, and the test is scipy's on those 4."""
    rows = sweep(ks=(2,), views=("full", "split"), seeds=(0, 1))
    frame = pd.DataFrame(rows)
    twins = frame.assign(teachers=frame["perm"].str[:7]).groupby(["teachers", "view", "seed"])
    assert twins["val_acc_ensemble"].nunique().eq(1).all() and twins.size().eq(4).all()  # 2 augs × 2 losses
    context = (
        A.claim_parts(frame)
        .query("claim == 'C4' and role == 'context'")
        .set_index("label")
        .loc["Δval_acc_ensemble (split − full)"]
    )
    vanilla = frame[frame["loss"] == "kd"].assign(teachers=frame["perm"].str[:7])
    by_view = vanilla.groupby(["teachers", "view"])["val_acc_ensemble"].mean().unstack()
    diffs = (by_view["split"] - by_view["full"]).to_numpy()
    assert context["n"] == len(diffs) == 4
    assert context["p_value"] == pytest.approx(sps.wilcoxon(diffs, zero_method="zsplit").pvalue)


def test_c4_equivalence_needs_comparable_accuracy() -> None:
    """A split view that lowers IoU and agreement but costs 5 points of accuracy is not the
    paper's 'comparable generalisation'."""

    def story(perm: str, loss: str, view: str, seed: int, rng: np.random.Generator) -> dict:
        m = paper_story(perm, loss, view, seed, rng)
        return m | {"val_acc": m["val_acc"] - 0.05 * (view == "split")}

    parts = A.claim_parts(pd.DataFrame(sweep(ks=(2, 3), views=("full", "split"), seeds=(0, 1), story=story)))
    c4 = parts[(parts["claim"] == "C4") & (parts["role"] == "primary")].set_index("part")
    assert c4.loc[3, "verdict"] == "contradicted"
    assert A.summarize_claims(parts).set_index("claim").loc["C4", "verdict"] == "contradicted"


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
    assert all(len(list(itertools.chain(c.parts))) >= 1 for c in A.CLAIMS.values())
