"""Statistics of the claims check: rank correlations, paired tests, eq. 9, bootstrap, power.

Conventions, fixed in advance and never tuned to the data:

* alpha = 0.05, two-sided tests; a verdict needs the direction the paper states.
* The unit is a configuration (a trial without its seed): seeds are averaged first, so more
  seeds sharpen each unit instead of inflating n.
* Confidence intervals are 95% percentile intervals of a two-level bootstrap (units resampled
  within their stratum, then each unit's seeds resampled), 2000 draws, seeded.
* Rank correlations are *stratified Spearman*: ranks are taken within a stratum (one dataset,
  architecture pair, loss, ...) and pooled, so that one dataset's higher accuracy does not
  masquerade as a trend. With a single stratum this is exactly Spearman's rho. Its p-value is
  a permutation test that shuffles within strata (9999 permutations, seeded), which is exact in
  small samples where scipy's t approximation is not.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import pandas as pd
from scipy import stats

ALPHA = 0.05
POWER = 0.8
N_BOOT = 2000
N_PERM = 9999
RNG_SEED = 0
# Asymptotic relative efficiency of the Wilcoxon signed-rank test to the t test (normal data).
_WILCOXON_ARE = 3 / math.pi


@dataclass(frozen=True)
class TestResult:
    """One test of one claim part.

    Attributes:
        value: the effect (rho, or Hodges-Lehmann paired difference); NaN without data.
        p_value: two-sided p-value.
        ci_low, ci_high: 95% bootstrap interval of ``value``.
        n: number of units (configurations, or pairs of them).
        n_needed: units needed to detect ``value`` with 80% power at alpha (None if no effect).
        p_eq9: the paper's eq. 9 p-value, for paired comparisons.
    """

    value: float
    p_value: float
    ci_low: float
    ci_high: float
    n: int
    n_needed: int | None
    p_eq9: float = math.nan


def verdict(value: float, p_value: float, expected_sign: int, alpha: float = ALPHA) -> str:
    """``supported`` if significant in the expected direction, ``contradicted`` if significant
    against it, otherwise ``inconclusive``."""
    if not (np.isfinite(value) and np.isfinite(p_value)) or p_value >= alpha or value == 0:
        return "inconclusive"
    return "supported" if np.sign(value) == expected_sign else "contradicted"


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
    """(N_BOOT, units, columns) unit means of a two-level bootstrap resample."""
    n_units, max_seeds, _ = values.shape
    seed_idx = np.floor(rng.random((N_BOOT, n_units, max_seeds)) * counts[None, :, None]).astype(int)
    valid = np.arange(max_seeds)[None, None, :] < counts[None, :, None]
    drawn = values[np.arange(n_units)[None, :, None], seed_idx]
    means = np.where(valid[..., None], drawn, 0).sum(axis=2) / counts[None, :, None]
    unit_idx = np.concatenate([idx[rng.integers(0, idx.size, (N_BOOT, idx.size))] for idx in strata], axis=1)
    return np.take_along_axis(means, unit_idx[..., None], axis=1)


def _centered_ranks(a: np.ndarray, strata: list[np.ndarray]) -> list[np.ndarray]:
    out = []
    for idx in strata:
        r = stats.rankdata(a[..., idx], axis=-1)
        out.append(r - r.mean(axis=-1, keepdims=True))
    return out


def _pooled_rho(rx: list[np.ndarray], ry: list[np.ndarray]) -> np.ndarray:
    sxy = sum((a * b).sum(axis=-1) for a, b in zip(rx, ry, strict=True))
    sxx = sum((a * a).sum(axis=-1) for a in rx)
    syy = sum((b * b).sum(axis=-1) for b in ry)
    with np.errstate(invalid="ignore", divide="ignore"):
        return sxy / np.sqrt(sxx * syy)


def stratified_spearman(x: np.ndarray, y: np.ndarray, strata: np.ndarray) -> float:
    """Spearman's rho of ranks taken within strata; equals scipy's spearmanr for one stratum."""
    groups = [np.flatnonzero(strata == s) for s in pd.unique(strata)]
    return float(
        _pooled_rho(
            _centered_ranks(np.asarray(x, float), groups), _centered_ranks(np.asarray(y, float), groups)
        )
    )


def rank_correlation_test(frame: pd.DataFrame) -> TestResult:
    """Stratified Spearman test of ``x`` vs ``y`` over units, seeds averaged.

    Args:
        frame: one row per trial with columns ``unit`` (configuration id), ``stratum``, ``x``, ``y``.
    """
    frame = frame.dropna(subset=["x", "y"])
    if frame.empty:
        return TestResult(math.nan, math.nan, math.nan, math.nan, 0, None)
    values, strata, counts = _units(frame, ["x", "y"])
    strata = [idx for idx in strata if idx.size >= 2]
    n = int(sum(idx.size for idx in strata))
    if n < 3:
        return TestResult(math.nan, math.nan, math.nan, math.nan, n, 5)
    means = np.nanmean(values, axis=1)
    rx, ry = _centered_ranks(means[:, 0], strata), _centered_ranks(means[:, 1], strata)
    rho = float(_pooled_rho(rx, ry))
    if not np.isfinite(rho):
        return TestResult(math.nan, math.nan, math.nan, math.nan, n, None)
    rng = np.random.default_rng(RNG_SEED)
    perm_ry = [r[rng.permuted(np.tile(np.arange(r.size), (N_PERM, 1)), axis=1)] for r in ry]
    null = _pooled_rho([r[None, :] for r in rx], perm_ry)
    p = float((1 + np.sum(np.abs(null) >= abs(rho) - 1e-12)) / (N_PERM + 1))
    boot = _bootstrap_means(values, counts, strata, rng)
    # The bootstrap concatenates strata in order, so stratum i occupies a contiguous block.
    offsets = np.cumsum([0] + [idx.size for idx in strata])
    local = [np.arange(offsets[i], offsets[i + 1]) for i in range(len(strata))]
    boot_rho = _pooled_rho(_centered_ranks(boot[..., 0], local), _centered_ranks(boot[..., 1], local))
    low, high = (
        np.nanpercentile(boot_rho, [2.5, 97.5]) if np.isfinite(boot_rho).any() else (math.nan, math.nan)
    )
    return TestResult(rho, p, float(low), float(high), n, n_needed_correlation(rho))


def hodges_lehmann(diffs: np.ndarray) -> float:
    """Median of the Walsh averages: the location estimate that goes with the Wilcoxon test."""
    i, j = np.triu_indices(diffs.size)
    return float(np.median((diffs[i] + diffs[j]) / 2))


def paired_test(frame: pd.DataFrame) -> TestResult:
    """Wilcoxon signed-rank test of paired differences ``treated − control``, seeds averaged.

    Args:
        frame: one row per paired trial (same configuration and seed but for the factor under
            test) with columns ``unit``, ``stratum``, ``treated``, ``control``.
    """
    frame = frame.dropna(subset=["treated", "control"])
    if frame.empty:
        return TestResult(math.nan, math.nan, math.nan, math.nan, 0, None)
    p_eq9 = eq9_p_value(frame["treated"].to_numpy(), frame["control"].to_numpy())
    frame = frame.assign(d=frame["treated"] - frame["control"], stratum=0)
    values, strata, counts = _units(frame, ["d"])
    diffs = np.nanmean(values[..., 0], axis=1)
    n = int(diffs.size)
    value = hodges_lehmann(diffs)
    p = 1.0 if np.all(diffs == 0) else float(stats.wilcoxon(diffs, alternative="two-sided").pvalue)
    rng = np.random.default_rng(RNG_SEED)
    boot = _bootstrap_means(values, counts, strata, rng)[..., 0]
    # The Hodges-Lehmann estimate of each draw, vectorised over chunks of draws to bound memory.
    i, j = np.triu_indices(n)
    chunk = max(1, 4_000_000 // i.size)
    boot_hl = np.concatenate(
        [np.median((b[:, i] + b[:, j]) / 2, axis=1) for b in np.split(boot, range(chunk, N_BOOT, chunk))]
    )
    low, high = np.percentile(boot_hl, [2.5, 97.5])
    return TestResult(value, p, float(low), float(high), n, n_needed_paired(diffs), p_eq9)
