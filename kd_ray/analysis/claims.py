"""The claims check: does each of the paper's claims hold on this sweep?

Each claim is one or more *parts*, each a two-sided test at alpha = 0.05 (see
:mod:`kd_ray.analysis.stats` for the conventions). A claim is

* **supported** when every part is significant in the paper's direction (an intersection-union
  test, which needs no multiplicity correction);
* **contradicted** when some part is significant against the paper's direction at alpha/m
  (Bonferroni over the claim's m parts, since any one part suffices);
* **inconclusive** otherwise, with the number of units that would be needed to detect the
  observed effect with 80% power.

Correlational claims (C1-C3, C6, C7) use full-view trials, the paper's setting; the split view
is an intervention on IoU and is tested on its own (C4). Paired claims (C4, C5) compare
trials that differ in one factor only and so share teachers, seed and data order.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import pandas as pd

from kd_ray.analysis.aggregate import ok_trials
from kd_ray.analysis.stats import ALPHA, TestResult, paired_test, rank_correlation_test, verdict

_STRATUM = ["dataset", "teacher_arch", "student_arch", "n_teachers", "loss", "view"]
_CONFIG = ["dataset", "teacher_arch", "student_arch", "n_teachers", "perm", "loss", "view"]
_METRICS = ["affinity", "iou_teachers", "val_acc", "agreement", "mi", "ece", "gap"]


@dataclass(frozen=True)
class Correlation:
    """A claim part: ``x`` and ``y`` rank-correlate with sign ``sign`` within strata."""

    x: str
    y: str
    sign: int
    min_teachers: int = 1
    stratum: tuple[str, ...] = tuple(_STRATUM)

    def describe(self) -> str:
        return f"stratified Spearman ρ({self.x}, {self.y}), expected {'> 0' if self.sign > 0 else '< 0'}"


@dataclass(frozen=True)
class Paired:
    """A claim part: switching ``factor`` from ``control`` to ``treated`` moves ``metric`` by ``sign``."""

    metric: str
    factor: str
    control: str
    treated: str
    sign: int
    min_teachers: int = 1

    def describe(self) -> str:
        direction = "lower" if self.sign < 0 else "higher"
        return f"Wilcoxon signed-rank, Hodges-Lehmann Δ{self.metric} ({self.treated} − {self.control}), expected {direction}"


CLAIMS: dict[str, tuple[str, tuple[Correlation | Paired, ...]]] = {
    "C1": (
        "Stronger augmentation (lower affinity) goes with lower teacher attention IoU",
        (Correlation("affinity", "iou_teachers", +1, min_teachers=2),),
    ),
    "C2": (
        "Lower teacher attention IoU goes with higher student val accuracy",
        (Correlation("iou_teachers", "val_acc", -1, min_teachers=2),),
    ),
    "C3": (
        "Agreement and MI between teachers and student fall as val accuracy rises",
        (Correlation("agreement", "val_acc", -1), Correlation("mi", "val_acc", -1)),
    ),
    "C4": (
        "The split view lowers teacher IoU and agreement",
        (
            Paired("iou_teachers", "view", "full", "split", -1, min_teachers=2),
            Paired("agreement", "view", "full", "split", -1, min_teachers=2),
        ),
    ),
    "C5": (
        "Z-score KD lowers the train/val gap but does not raise agreement",
        (Paired("gap", "loss", "kd", "zscore_kd", -1), Paired("agreement", "loss", "kd", "zscore_kd", -1)),
    ),
    "C6": ("Lower affinity goes with higher val accuracy", (Correlation("affinity", "val_acc", -1),)),
    "C7": (
        "More teachers and stronger augmentation lower ECE",
        (
            Correlation(
                "n_teachers", "ece", -1, stratum=("dataset", "teacher_arch", "student_arch", "loss", "view")
            ),
            Correlation("affinity", "ece", +1),
        ),
    ),
}

_NOTES = {
    (
        "C5",
        1,
    ): "'does not raise' is tested as the decrease the paper reports; no change is inconclusive, not support",
}


def _key(frame: pd.DataFrame, columns: list[str] | tuple[str, ...]) -> pd.Series:
    key = frame[columns[0]].astype(str)
    for column in columns[1:]:
        key = key + "|" + frame[column].astype(str)
    return key


def _run_correlation(trials: pd.DataFrame, part: Correlation) -> tuple[TestResult, str]:
    data = trials[(trials["view"] == "full") & (trials["n_teachers"] >= part.min_teachers)]
    if data.empty:
        why = "no full-view trials"
        if part.min_teachers > 1 and (trials["view"] == "full").any():
            why = f"no full-view trials with at least {part.min_teachers} teachers (teacher IoU needs two)"
        return TestResult(math.nan, math.nan, math.nan, math.nan, 0, None), why
    frame = pd.DataFrame(
        {
            "unit": _key(data, _CONFIG),
            "stratum": _key(data, part.stratum),
            "x": data[part.x],
            "y": data[part.y],
        }
    )
    result = rank_correlation_test(frame)
    note = ""
    if result.n == 0:
        note = f"no stratum holds two configurations with both {part.x} and {part.y}"
    return result, note


def _run_paired(trials: pd.DataFrame, part: Paired) -> tuple[TestResult, str]:
    data = trials[trials["n_teachers"] >= part.min_teachers]
    match = [c for c in [*_CONFIG, "seed"] if c != part.factor]
    control = data[data[part.factor] == part.control].set_index(match)[part.metric].rename("control")
    treated = data[data[part.factor] == part.treated].set_index(match)[part.metric].rename("treated")
    pairs = pd.concat([control, treated], axis=1, join="inner").reset_index()
    if pairs.empty:
        missing = part.treated if treated.empty else part.control if control.empty else "matching"
        return (
            TestResult(math.nan, math.nan, math.nan, math.nan, 0, None),
            f"no paired trials: the sweep has no {missing} {part.factor} trials to compare"
            if missing != "matching"
            else f"no {part.treated} trial matches a {part.control} trial on every other factor and seed",
        )
    unit_cols = [c for c in match if c != "seed"]
    frame = pd.DataFrame(
        {
            "unit": _key(pairs, unit_cols),
            "stratum": 0,
            "treated": pairs["treated"],
            "control": pairs["control"],
        }
    )
    return paired_test(frame), ""


def claim_parts(trials: pd.DataFrame) -> pd.DataFrame:
    """Every part of every claim with its own test, verdict at alpha and power estimate."""
    used = {"status", "seed", *_CONFIG, *_METRICS}
    ok = ok_trials(trials)[[c for c in trials.columns if c in used]]
    rows = []
    for claim, (text, parts) in CLAIMS.items():
        for i, part in enumerate(parts):
            if isinstance(part, Correlation):
                result, note = _run_correlation(ok, part)
            else:
                result, note = _run_paired(ok, part)
            part_verdict = verdict(result.value, result.p_value, part.sign)
            if part_verdict == "inconclusive" and not note:
                if result.n_needed is None:
                    note = "no effect observed; no n would show the claimed direction"
                else:
                    note = f"n = {result.n}; about {result.n_needed} units would detect the observed effect (80% power)"
            extra = _NOTES.get((claim, i))
            rows.append(
                {
                    "claim": claim,
                    "part": i + 1,
                    "claim_text": text,
                    "statistic": part.describe(),
                    "expected_sign": part.sign,
                    "value": result.value,
                    "p_value": result.p_value,
                    "p_eq9": result.p_eq9,
                    "ci_low": result.ci_low,
                    "ci_high": result.ci_high,
                    "n": result.n,
                    "n_needed": result.n_needed,
                    "verdict": part_verdict,
                    "note": "; ".join(s for s in (note, extra) if s),
                }
            )
    return pd.DataFrame(rows)


def _combine(parts: pd.DataFrame) -> dict:
    m = len(parts)
    against = parts[(parts["p_value"] < ALPHA / m) & (parts["value"] * parts["expected_sign"] < 0)]
    if not against.empty:
        decisive, verdict_ = against.sort_values("p_value").iloc[0], "contradicted"
    elif (parts["verdict"] == "supported").all():
        decisive, verdict_ = parts.sort_values("p_value").iloc[-1], "supported"
    else:
        weak = parts[parts["verdict"] != "supported"]
        decisive, verdict_ = weak.sort_values("p_value", na_position="last").iloc[-1], "inconclusive"
    row = decisive.to_dict()
    row["verdict"] = verdict_
    if verdict_ == "inconclusive":
        needed = parts.loc[parts["verdict"] != "supported", "n_needed"]
        row["n_needed"] = None if needed.isna().any() else int(needed.max())
    else:
        row["n_needed"] = None
    if m > 1:
        others = "; ".join(f"part {r.part}: {r.verdict} (p = {r.p_value:.3g})" for r in parts.itertuples())
        row["note"] = "; ".join(s for s in (row["note"], others) if s)
    return row


def claims_check(trials: pd.DataFrame) -> pd.DataFrame:
    """One row per claim (C1-C7) of ``trials``; see :func:`summarize_claims`."""
    return summarize_claims(claim_parts(trials))


def summarize_claims(parts: pd.DataFrame) -> pd.DataFrame:
    """One row per claim (C1-C7): verdict, statistic, value, p-value, 95% CI, n, n needed.

    For a claim of several parts, the statistic shown is its decisive part: the one that
    contradicts it, or else its weakest (largest p) part; ``note`` lists every part.

    Args:
        parts: the output of :func:`claim_parts`.
    """
    rows = [_combine(group) for _, group in parts.groupby("claim", sort=False)]
    columns = [
        "claim",
        "claim_text",
        "verdict",
        "statistic",
        "value",
        "p_value",
        "p_eq9",
        "ci_low",
        "ci_high",
        "n",
        "n_needed",
        "note",
    ]
    out = pd.DataFrame(rows)[columns]
    out["n_needed"] = out["n_needed"].astype("Int64")
    return out
