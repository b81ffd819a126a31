"""Statistics of the claims check: stratified rank correlations, paired and equivalence tests,
Holm's adjustment, eq. 9, bootstrap intervals and power.

Conventions, fixed in advance and never tuned to the data (docs/claims.md says why each):

* alpha = 0.05, two-sided tests; a verdict needs the direction the paper states, and the seven
  claims are one family: Holm-adjusted p-values decide the verdicts (:func:`holm`).
* The unit is a configuration (a trial without its seed): seeds are averaged first, so more
  seeds sharpen each unit instead of inflating n.
* Confidence intervals are 95% percentile intervals of a two-level bootstrap (units resampled
  within their stratum, then each unit's seeds resampled), 2000 draws, seeded.
* A rank correlation is tested within strata (one dataset, architecture pair, teacher count,
  ...). Each stratum gets Spearman's rho and its exact permutation distribution (all n!
  orderings up to n = 8, else 9999 seeded draws); its one-sided p in the direction of its rho
  (ties counted in full, not the mid-p, which is not a valid p-value) becomes a z-score, and the
  strata are combined by **weighted Stouffer** (Liptak) with weights sqrt(n_s - 1), the inverse
  null standard deviation of Spearman's rho. The effect shown is the matching weighted mean of
  the strata's rho (weights n_s - 1), so a stratum counts in proportion to its information,
  not to n_s^3 as pooled centred ranks would make it.
* Strata that share teacher models (same dataset and teacher architecture: different teacher
  counts or student augmentations reuse T1, T2, ...) are not independent. Within such a *block*
  the z-scores are averaged with their weights (sum w z / sum w): its variance is at most 1 for
  any correlation between them, and it is a standard normal score or narrower when they are jointly
  normal (small strata: an approximation, checked by enumeration at its worst case, identical
  strata); blocks are independent and combine by weighted Stouffer. With a single stratum the
  p-value is that stratum's exact permutation p-value.
* Paired tests (Wilcoxon signed-rank, TOST) pool every pair into one test, unless the pairs fall
  into strata (a sweep over KD's τ, α or lr: each value is its own condition). Then each stratum
  gets its own Wilcoxon test, whose two-sided p and direction give a z-score, and the z-scores
  combine as the correlations' do (averaged within a block of strata that share teachers,
  weighted Stouffer across blocks, weights sqrt(n_s)); the effect is the strata's
  Hodges-Lehmann estimates weighted by n_s. Pairs that differ only in τ share their teachers and
  data stream, so counting them as separate replicates of one test would inflate n. Zero
  differences are ranked, their ranks split between the signs (``_ZERO_METHOD``).
* Each test reports its ``direction``, the side of its own statistic. With several strata it can
  differ from the sign of the weighted estimate; :func:`verdict` then decides nothing.
"""

from __future__ import annotations

import functools
import itertools
import math
from dataclasses import dataclass, replace

import numpy as np
import pandas as pd
from scipy import stats

ALPHA = 0.05
POWER = 0.8
N_BOOT = 2000
N_PERM = 9999
# Strata up to this size get their exact permutation distribution (8! = 40320 orderings).
EXACT_MAX_N = 8
RNG_SEED = 0
# Asymptotic relative efficiency of the Wilcoxon signed-rank test to the t test (normal data).
_WILCOXON_ARE = 3 / math.pi
_TOL = 1e-12


@dataclass(frozen=True, kw_only=True)
class TestResult:
    """One test of one claim part, built by keyword: its fields are numbers that only their
    names tell apart.

    Attributes:
        value: the effect (weighted mean rho, or Hodges-Lehmann paired difference); NaN without data.
        p_value: two-sided p-value (for an equivalence test: the TOST p-value).
        ci_low, ci_high: 95% bootstrap interval of ``value``.
        n: number of units (configurations, or pairs of them).
        n_needed: units needed to detect ``value`` with 80% power at alpha (None if no effect).
        p_eq9: the paper's eq. 9 p-value, for paired comparisons.
        n_strata: strata that entered the test.
        p_against: for an equivalence test, the one-sided p-value that the difference lies
            beyond the margin on the harmful side (NaN otherwise).
        direction: the side the p-value's evidence lies on, as a sign: that of the test's own
            statistic (rho or the signed-rank sum for one stratum, the combined z-score for
            several). With several strata it can differ from the sign of ``value``, a weighted
            mean of the strata's estimates; :func:`verdict` then decides nothing. NaN for an
            equivalence test or without data.
    """

    value: float
    p_value: float
    ci_low: float
    ci_high: float
    n: int
    n_needed: int | None
    p_eq9: float = math.nan
    n_strata: int = 0
    p_against: float = math.nan
    direction: float = math.nan


# No data: nothing estimated, no unit, and no n that would help.
EMPTY = TestResult(value=math.nan, p_value=math.nan, ci_low=math.nan, ci_high=math.nan, n=0, n_needed=None)


def verdict(
    value: float, p_value: float, expected_sign: int, alpha: float = ALPHA, direction: float | None = None
) -> str:
    """``supported`` if significant in the expected direction, ``contradicted`` if significant
    against it, otherwise ``inconclusive``.

    ``direction`` is the side of the test's evidence (:attr:`TestResult.direction`): where the
    effect's sign differs from it (or the effect is 0), estimate and test disagree on which way
    the data lean, and nothing is decided.
    """
    if not (np.isfinite(value) and np.isfinite(p_value)) or p_value >= alpha or value == 0:
        return "inconclusive"
    if direction is not None and np.sign(value) != direction:
        return "inconclusive"
    return "supported" if np.sign(value) == expected_sign else "contradicted"


def holm(p_values: np.ndarray | list[float]) -> np.ndarray:
    """Holm's step-down adjusted p-values (family-wise error rate); NaN entries stay NaN and do
    not count towards the family size."""
    p = np.asarray(p_values, float)
    out = np.full(p.shape, np.nan)
    idx = np.flatnonzero(np.isfinite(p))
    m = idx.size
    if m == 0:
        return out
    order = idx[np.argsort(p[idx], kind="stable")]
    adjusted = np.minimum(1.0, np.maximum.accumulate((m - np.arange(m)) * p[order]))
    out[order] = adjusted
    return out


def _z(q: float) -> float:
    return float(stats.norm.ppf(q))


def n_needed_correlation(rho: float, alpha: float = ALPHA, power: float = POWER) -> int | None:
    """Units for a rank correlation ``rho`` to reach significance with the given power.

    Fisher z with the Bonett-Wright variance (1 + rho²/2)/(n − 3) for Spearman; at least 5,
    the smallest n whose permutation test can reach p < 0.05 (2/5! = 0.017).
    """
    if not np.isfinite(rho) or rho == 0:
        return None
    r = min(abs(rho), 0.999)
    n = 3 + (1 + r**2 / 2) * ((_z(1 - alpha / 2) + _z(power)) / math.atanh(r)) ** 2
    return max(5, math.ceil(n))


def n_needed_paired(diffs: np.ndarray, alpha: float = ALPHA, power: float = POWER) -> int | None:
    """Pairs for the Wilcoxon signed-rank test to detect the observed mean difference.

    The t-test sample size for effect size d = mean/sd, divided by the Wilcoxon's efficiency
    3/pi; at least 6, the smallest n whose exact two-sided test can reach p < 0.05.
    """
    diffs = diffs[np.isfinite(diffs)]
    if diffs.size < 2 or diffs.mean() == 0:
        return None
    sd = diffs.std(ddof=1)
    if sd == 0:
        return 6
    d = abs(diffs.mean()) / sd
    n = ((_z(1 - alpha / 2) + _z(power)) / d) ** 2 / _WILCOXON_ARE
    return max(6, math.ceil(n))


def eq9_p_value(treated: np.ndarray, control: np.ndarray) -> float:
    """The paper's eq. 9: #|fidelity(hKD) > fidelity(vKD)| / Num, over Num paired trials.

    It is the fraction of pairs that go the way of H0 (the treatment raising the metric), not a
    sampling p-value; we report it beside the Wilcoxon test for comparison with the paper.
    """
    treated, control = np.asarray(treated, float), np.asarray(control, float)
    if treated.size == 0:
        return math.nan
    return float(np.mean(treated > control))


def _units(frame: pd.DataFrame, columns: list[str]) -> tuple[np.ndarray, list[np.ndarray], np.ndarray]:
    """Seed matrix per unit (units, max_seeds, len(columns)), unit indices per stratum, seed counts."""
    codes, uniques = pd.factorize(frame["unit"], sort=True)
    counts = np.bincount(codes)
    position = frame.groupby(codes).cumcount().to_numpy()
    values = np.full((len(uniques), int(counts.max()), len(columns)), np.nan)
    values[codes, position] = frame[columns].to_numpy(float)
    strata_of_unit = np.empty(len(uniques), dtype=object)
    strata_of_unit[codes] = frame["stratum"].to_numpy()
    strata = [np.flatnonzero(strata_of_unit == s) for s in pd.unique(strata_of_unit)]
    return values, strata, counts


def _bootstrap_means(
    values: np.ndarray, counts: np.ndarray, strata: list[np.ndarray], rng: np.random.Generator
) -> np.ndarray:
    """(N_BOOT, units, columns) unit means of a two-level bootstrap resample.

    Strata are concatenated in order, so stratum i occupies a contiguous block of the units axis.
    """
    n_units, max_seeds, _ = values.shape
    seed_idx = np.floor(rng.random((N_BOOT, n_units, max_seeds)) * counts[None, :, None]).astype(int)
    valid = np.arange(max_seeds)[None, None, :] < counts[None, :, None]
    drawn = values[np.arange(n_units)[None, :, None], seed_idx]
    means = np.where(valid[..., None], drawn, 0).sum(axis=2) / counts[None, :, None]
    unit_idx = np.concatenate([idx[rng.integers(0, idx.size, (N_BOOT, idx.size))] for idx in strata], axis=1)
    return np.take_along_axis(means, unit_idx[..., None], axis=1)


def _centered_ranks(a: np.ndarray) -> np.ndarray:
    """Average ranks along the last axis, centred (Spearman's rho is their Pearson correlation)."""
    r = stats.rankdata(a, axis=-1)
    return r - r.mean(axis=-1, keepdims=True)


def _rho(rx: np.ndarray, ry: np.ndarray) -> np.ndarray:
    """Pearson correlation of centred rank vectors along the last axis."""
    with np.errstate(invalid="ignore", divide="ignore"):
        return (rx * ry).sum(axis=-1) / np.sqrt((rx * rx).sum(axis=-1) * (ry * ry).sum(axis=-1))


@functools.lru_cache(maxsize=EXACT_MAX_N)
def _all_orderings(n: int) -> np.ndarray:
    """Every permutation of range(n), (n!, n): the exact null of a stratum of n units."""
    return np.array(list(itertools.permutations(range(n))))


@dataclass(frozen=True, kw_only=True)
class StratumTest:
    """Spearman's rho of one stratum against its permutation distribution."""

    n: int
    rho: float
    p_two_sided: float  # 2 * min(P(null <= rho), P(null >= rho)), capped at 1 (scipy's convention)
    z: float  # the one-sided P(null >= rho) as a standard normal score, positive for rho > 0


def stratum_test(x: np.ndarray, y: np.ndarray, rng: np.random.Generator) -> StratumTest:
    """Spearman's rho of ``x`` and ``y`` with its exact (n <= 8) or Monte Carlo permutation null."""
    rx, ry = _centered_ranks(np.asarray(x, float)), _centered_ranks(np.asarray(y, float))
    n = rx.size
    rho = float(_rho(rx, ry))
    if not math.isfinite(rho):
        return StratumTest(n=n, rho=math.nan, p_two_sided=math.nan, z=math.nan)
    if n <= EXACT_MAX_N:
        null = _rho(rx[None, :], ry[_all_orderings(n)])
        greater = np.mean(null > rho + _TOL)
        equal = np.mean(np.abs(null - rho) <= _TOL)
        less = np.mean(null < rho - _TOL)
    else:
        orders = rng.permuted(np.tile(np.arange(n), (N_PERM, 1)), axis=1)
        null = _rho(rx[None, :], ry[orders])
        n_greater = np.sum(null > rho + _TOL)
        n_equal = np.sum(np.abs(null - rho) <= _TOL)
        n_less = np.sum(null < rho - _TOL)
        # The observed ordering is one draw of the null (Phipson & Smyth), so no p is 0.
        greater, equal, less = n_greater / (N_PERM + 1), (n_equal + 1) / (N_PERM + 1), n_less / (N_PERM + 1)
    p_two = min(1.0, 2 * min(greater + equal, less + equal))
    return StratumTest(
        n=n, rho=rho, p_two_sided=float(p_two), z=_one_sided_z(rho, greater + equal, less + equal)
    )


def _one_sided_z(rho: float, p_greater: float, p_less: float) -> float:
    """The one-sided p in the direction of ``rho`` as a z-score: +isf(P(null >= rho)) for rho > 0,
    -isf(P(null <= rho)) for rho < 0, 0 for rho = 0 or a one-sided p above 1/2.

    Ties are counted in full, so the p is a valid p-value and, in each tail, the z-score is never
    more extreme than a standard normal under the null. The mid-p (ties counted half) is not
    valid: with the few orderings of a small stratum it makes z too large, and averaging such
    z-scores within a block of dependent strata rejected a true null 8.3% of the time at
    alpha = 0.05 (n = 4; ``tests/test_claims.py`` enumerates it).
    """
    if rho > 0:
        return float(stats.norm.isf(min(0.5, p_greater)))
    if rho < 0:
        return float(-stats.norm.isf(min(0.5, p_less)))
    return 0.0


def combine_z(z: list[float], weights: list[float], blocks: list[object]) -> float:
    """One z-score from per-stratum z-scores: the weighted mean within each block (variance at
    most 1 whatever the dependence between its strata; module docstring), then weighted Stouffer
    across blocks."""
    z_blocks, w_blocks = [], []
    for block in pd.unique(pd.Series(blocks, dtype=object)):
        members = [i for i, b in enumerate(blocks) if b == block]
        w = np.array([weights[i] for i in members], float)
        z_blocks.append(float(np.sum(w * [z[i] for i in members]) / w.sum()))
        w_blocks.append(float(w.sum()))
    w_blocks_arr = np.array(w_blocks)
    return float(np.sum(w_blocks_arr * z_blocks) / np.sqrt(np.sum(w_blocks_arr**2)))


def combine_strata(tests: list[StratumTest], blocks: list[object]) -> tuple[float, float, float]:
    """(weighted mean rho, two-sided p, direction) of stratum tests; ``blocks[i]`` names the
    block of test i; the direction is the sign of the combined z-score.

    Within a block the weighted z-scores are averaged (module docstring); blocks are combined by
    weighted Stouffer. A single stratum keeps its exact permutation p-value and rho's sign.
    """
    if len(tests) == 1:
        return tests[0].rho, tests[0].p_two_sided, float(np.sign(tests[0].rho))
    rho_weights = np.array([t.n - 1 for t in tests], float)
    rho_bar = float(np.sum(rho_weights * [t.rho for t in tests]) / rho_weights.sum())
    z = combine_z([t.z for t in tests], list(np.sqrt(rho_weights)), blocks)
    return rho_bar, float(2 * stats.norm.sf(abs(z))), float(np.sign(z))


def _weighted_rho_of_draws(boot: np.ndarray, sizes: list[int]) -> np.ndarray:
    """Weighted mean rho (weights n_s - 1) of each bootstrap draw; strata are contiguous blocks."""
    offsets = np.cumsum([0, *sizes])
    rhos = np.stack(
        [
            _rho(_centered_ranks(boot[:, a:b, 0]), _centered_ranks(boot[:, a:b, 1]))
            for a, b in zip(offsets[:-1], offsets[1:], strict=True)
        ],
        axis=1,
    )
    weights = np.array(sizes, float) - 1
    ok = np.isfinite(rhos)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(ok, rhos, 0) @ weights / (ok * weights).sum(axis=1)


def rank_correlation_test(frame: pd.DataFrame) -> TestResult:
    """Stratified Spearman test of ``x`` vs ``y`` over units, seeds averaged.

    Args:
        frame: one row per trial with columns ``unit`` (configuration id), ``stratum``, ``x``,
            ``y`` and optionally ``block`` (strata of one block share teacher models; default:
            every stratum its own block).
    """
    frame = frame.dropna(subset=["x", "y"])
    if frame.empty:
        return EMPTY
    if "block" not in frame:
        frame = frame.assign(block=frame["stratum"])
    values, strata, counts = _units(frame, ["x", "y"])
    block_of = frame.drop_duplicates("stratum").set_index("stratum")["block"]
    # _units numbers units in sorted order; each stratum's key is that of its first unit.
    codes, _ = pd.factorize(frame["unit"], sort=True)
    stratum_of_unit = frame.groupby(codes)["stratum"].first().to_numpy()
    strata_keys = [stratum_of_unit[idx[0]] for idx in strata]
    means = np.nanmean(values, axis=1)
    rng = np.random.default_rng(RNG_SEED)
    kept, tests, blocks = [], [], []
    for idx, key in zip(strata, strata_keys, strict=True):
        if idx.size < 3:
            continue
        test = stratum_test(means[idx, 0], means[idx, 1], rng)
        if math.isfinite(test.rho):
            kept.append(idx)
            tests.append(test)
            blocks.append(block_of[key])
    n = int(sum(idx.size for idx in kept))
    if not tests:
        # No stratum could be tested: nothing estimated.
        return replace(EMPTY, n=n, n_needed=5 if n < 3 else None)
    rho, p, direction = combine_strata(tests, blocks)
    boot = _bootstrap_means(values, counts, kept, rng)
    boot_rho = _weighted_rho_of_draws(boot, [idx.size for idx in kept])
    low, high = (
        np.nanpercentile(boot_rho, [2.5, 97.5]) if np.isfinite(boot_rho).any() else (math.nan, math.nan)
    )
    return TestResult(
        value=rho,
        p_value=p,
        ci_low=float(low),
        ci_high=float(high),
        n=n,
        n_needed=n_needed_correlation(rho),
        n_strata=len(tests),
        direction=direction,
    )


def hodges_lehmann(diffs: np.ndarray) -> float:
    """Median of the Walsh averages: the location estimate that goes with the Wilcoxon test."""
    i, j = np.triu_indices(diffs.size)
    return float(np.median((diffs[i] + diffs[j]) / 2))


def _paired_diffs(frame: pd.DataFrame) -> tuple[np.ndarray, np.ndarray, list[np.ndarray], np.ndarray]:
    """Unit-level mean differences ``treated − control`` and the bootstrap layout.

    Strata are the frame's ``stratum`` column (one stratum without it); ``strata[i]`` holds the
    unit indices of stratum i.
    """
    frame = frame.assign(d=frame["treated"] - frame["control"])
    if "stratum" not in frame:
        frame = frame.assign(stratum=0)
    values, strata, counts = _units(frame, ["d"])
    return np.nanmean(values[..., 0], axis=1), values, strata, counts


def _hl_of_draws(boot: np.ndarray) -> np.ndarray:
    """The Hodges-Lehmann estimate of each bootstrap draw (rows of ``boot``), vectorised over
    chunks of draws to bound memory."""
    i, j = np.triu_indices(boot.shape[1])
    chunk = max(1, 4_000_000 // i.size)
    return np.concatenate(
        [
            np.median((b[:, i] + b[:, j]) / 2, axis=1)
            for b in np.split(boot, range(chunk, boot.shape[0], chunk))
        ]
    )


def _bootstrap_hl(values: np.ndarray, counts: np.ndarray, strata: list[np.ndarray]) -> tuple[float, float]:
    """95% interval of the Hodges-Lehmann estimate over a two-level bootstrap; with several
    strata, of the strata's estimates weighted by their sizes (units resampled within each)."""
    rng = np.random.default_rng(RNG_SEED)
    boot = _bootstrap_means(values, counts, strata, rng)[..., 0]
    sizes = [idx.size for idx in strata]
    offsets = np.cumsum([0, *sizes])
    per_stratum = np.stack(
        [_hl_of_draws(boot[:, a:b]) for a, b in zip(offsets[:-1], offsets[1:], strict=True)], axis=1
    )
    boot_hl = per_stratum @ np.array(sizes, float) / sum(sizes)
    low, high = np.percentile(boot_hl, [2.5, 97.5])
    return float(low), float(high)


# Zero differences (a pair whose two trials ended level) count as evidence of no effect: they are
# ranked and their ranks split between the two signs, as the Hodges-Lehmann estimate keeps them
# among its Walsh averages. scipy's default drops them, so 20 level pairs and 6 lower ones tested
# as 6 of 6 lower (p = 0.014; 0.058 with the zeros) while the estimate said 0.
_ZERO_METHOD = "zsplit"


def _wilcoxon(diffs: np.ndarray, alternative: str) -> float:
    """scipy's Wilcoxon signed-rank p-value; 1 when every difference is zero (no evidence)."""
    if np.all(diffs == 0):
        return 1.0
    return float(stats.wilcoxon(diffs, alternative=alternative, zero_method=_ZERO_METHOD).pvalue)


def _rank_sum_sign(diffs: np.ndarray) -> float:
    """The sign of the signed-rank sum (zeros ranked, signed 0): the Wilcoxon test's direction."""
    ranks = stats.rankdata(np.abs(diffs))
    return float(np.sign(np.sum(np.sign(diffs) * ranks)))


def _signed_z(diffs: np.ndarray) -> float:
    """A stratum's two-sided Wilcoxon p as a z-score, positive when the differences lean above 0.

    ``p/2`` is the one-sided p in the observed direction (the direction of the signed-rank sum),
    so a stratum with p = 1 adds z = 0 and no stratum adds an infinite score.
    """
    direction = _rank_sum_sign(diffs)
    if direction == 0:
        return 0.0
    p = max(_wilcoxon(diffs, "two-sided"), 1e-300)
    return float(direction * stats.norm.isf(min(p, 1.0) / 2))


def _stratified_z(
    diffs: np.ndarray, strata: list[np.ndarray], blocks: list[object], shift: float = 0.0
) -> float:
    """The combined z-score of ``diffs + shift`` over strata (see the module docstring)."""
    z = [_signed_z(diffs[idx] + shift) for idx in strata]
    return combine_z(z, [math.sqrt(idx.size) for idx in strata], blocks)


def _strata_blocks(frame: pd.DataFrame, strata: list[np.ndarray]) -> list[object]:
    """The block of each stratum (as ordered by :func:`_units`); each its own without ``block``.

    Raises:
        ValueError: a stratum spans blocks: its pairs would be combined as one dependent set
            with one block's and never as the independent pieces they are.
    """
    codes, _ = pd.factorize(frame["unit"], sort=True)
    firsts = frame.groupby(codes).first()
    column = "block" if "block" in frame else "stratum"
    blocks = []
    for idx in strata:
        members = pd.unique(firsts[column].iloc[idx])
        if len(members) > 1:
            raise ValueError(f"a stratum spans blocks {list(members)}: stratify within blocks")
        blocks.append(members[0])
    return blocks


def _weighted_hl(diffs: np.ndarray, strata: list[np.ndarray]) -> float:
    sizes = np.array([idx.size for idx in strata], float)
    return float(np.sum(sizes * [hodges_lehmann(diffs[idx]) for idx in strata]) / sizes.sum())


def paired_test(frame: pd.DataFrame) -> TestResult:
    """Wilcoxon signed-rank test of paired differences ``treated − control``, seeds averaged.

    Args:
        frame: one row per paired trial (same configuration and seed but for the factor under
            test) with columns ``unit``, ``treated``, ``control``, and optionally ``stratum``
            and ``block``: with more than one stratum, each is tested alone and the tests are
            combined (module docstring).
    """
    frame = frame.dropna(subset=["treated", "control"])
    if frame.empty:
        return EMPTY
    p_eq9 = eq9_p_value(frame["treated"].to_numpy(), frame["control"].to_numpy())
    diffs, values, strata, counts = _paired_diffs(frame)
    low, high = _bootstrap_hl(values, counts, strata)
    if len(strata) == 1:
        value, p = hodges_lehmann(diffs), _wilcoxon(diffs, "two-sided")
        direction = _rank_sum_sign(diffs)
    else:
        value = _weighted_hl(diffs, strata)
        z = _stratified_z(diffs, strata, _strata_blocks(frame, strata))
        p, direction = float(2 * stats.norm.sf(abs(z))), float(np.sign(z))
    return TestResult(
        value=value,
        p_value=p,
        ci_low=low,
        ci_high=high,
        n=int(diffs.size),
        n_needed=n_needed_paired(diffs),
        p_eq9=p_eq9,
        n_strata=len(strata),
        direction=direction,
    )


def equivalence_test(frame: pd.DataFrame, margin: float) -> TestResult:
    """Two one-sided Wilcoxon tests (TOST) that ``treated − control`` lies within ±``margin``.

    ``p_value`` is the larger of the two one-sided p-values (H0: difference <= −margin, and H0:
    difference >= +margin); ``p_against`` is the one-sided p-value that the difference is below
    −margin (the treatment significantly worse than the margin allows).
    """
    frame = frame.dropna(subset=["treated", "control"])
    if frame.empty:
        return EMPTY
    diffs, values, strata, counts = _paired_diffs(frame)
    low, high = _bootstrap_hl(values, counts, strata)
    if len(strata) == 1:
        value = hodges_lehmann(diffs)
        p_low = _wilcoxon(diffs + margin, "greater")
        p_high = _wilcoxon(diffs - margin, "less")
        p_against = _wilcoxon(diffs + margin, "less")
    else:  # each one-sided test combined over strata, as paired_test combines two-sided ones
        value = _weighted_hl(diffs, strata)
        blocks = _strata_blocks(frame, strata)
        z_low = _stratified_z(diffs, strata, blocks, shift=margin)
        p_low = float(stats.norm.sf(z_low))
        p_high = float(stats.norm.cdf(_stratified_z(diffs, strata, blocks, shift=-margin)))
        p_against = float(stats.norm.cdf(z_low))
    return TestResult(
        value=value,
        p_value=max(p_low, p_high),
        ci_low=low,
        ci_high=high,
        n=int(diffs.size),
        n_needed=None,
        n_strata=len(strata),
        p_against=p_against,
    )
