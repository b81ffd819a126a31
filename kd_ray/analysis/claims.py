"""The claims check: does each of the paper's claims hold on this sweep?

The method, and why each choice, is in docs/claims.md. In short:

* **Units are independent.** The unit is a configuration (seeds averaged). Correlational claims
  (C1-C3, C6, C7) use vanilla-KD, full-view trials only, the paper's setting: a z-score student
  shares its teachers and its data stream with its vanilla twin, so teacher-side measurements
  (teacher IoU, ensemble accuracy) would repeat the same number. Z-score trials feed C5 and the
  split view feeds C4.
* **Confounders are controlled.** Strata are (dataset, architectures, teacher count, and the grid's
  KD hyper-parameters where they vary: each τ, α or lr is its own condition, never a replicate of
  another). C2 and C3 relate a teacher-side quantity to the student's
  outcome, both moved by the student's augmentation, so their strata also hold the student's
  augmentation; the pooled test is shown beside it, and the same test on the clean val split as
  a robustness row.
* **Strata are combined** by weighted Stouffer (:mod:`kd_ray.analysis.stats`), conservatively
  within blocks of strata that share teacher models (strata of different τ, α or lr always do).
  Paired claims are tested within each value of the varied KD axes too, and combined the same
  way.
* **The seven claims are a family.** A claim of several parts is supported when every part is
  significant in the paper's direction (intersection-union: the claim's p is its largest part
  p), contradicted when some part goes against it (Bonferroni over its parts); Holm's adjustment
  over the claims then decides each verdict at alpha = 0.05.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import pandas as pd

from kd_ray.analysis.aggregate import ok_trials
from kd_ray.analysis.kd_axes import KD_AXIS_COLUMNS, axis_values_text, varied_kd_axes
from kd_ray.analysis.stats import (
    ALPHA,
    EMPTY,
    TestResult,
    equivalence_test,
    holm,
    paired_test,
    rank_correlation_test,
    verdict,
)

# Grid axes beyond the paper's that, when a sweep varies them, define strata and configurations.
HYPER_COLUMNS: tuple[str, ...] = KD_AXIS_COLUMNS
# Strata that share these share teacher models, so their tests are not independent.
BLOCK_COLUMNS: tuple[str, ...] = ("dataset", "teacher_arch")
_BASE_STRATUM = ("dataset", "teacher_arch", "student_arch")
_CONFIG = ("dataset", "teacher_arch", "student_arch", "n_teachers", "perm", "loss", "view")
# Metrics of the teachers alone (measured on the clean val split): two trials that differ only in
# the student's augmentation record the same measurement, so a paired test counts it once.
TEACHER_ONLY_METRICS: tuple[str, ...] = ("val_acc_ensemble", "val_iou_teachers")
# The split view is "comparable" in val accuracy within this many accuracy points (fraction).
EQUIVALENCE_MARGIN = 0.01
VANILLA = "kd"

_CORRELATION_UNIT = "vanilla-KD full-view configuration (a student, its teachers, its stream), seeds averaged"


@dataclass(frozen=True, kw_only=True)
class Correlation:
    """A claim part: ``x`` and ``y`` rank-correlate with sign ``sign`` within strata.

    Attributes:
        min_teachers: trials with fewer teachers are left out (teacher IoU needs two).
        by_student_aug: the student's augmentation is a stratum (C2, C3); the pooled test is
            reported beside it.
        k_is_variable: ``x`` is the teacher count, so k is not a stratum (C7).
        val_columns: ``(x, y)`` of the same test on the clean val split, as a robustness row.
    """

    x: str
    y: str
    sign: int
    min_teachers: int = 1
    by_student_aug: bool = False
    k_is_variable: bool = False
    val_columns: tuple[str, str] | None = None

    def strata(self, trials: pd.DataFrame, *, pooled: bool = False) -> tuple[str, ...]:
        columns = list(_BASE_STRATUM)
        if not self.k_is_variable:
            columns.append("n_teachers")
        columns += varied_kd_axes(trials)
        if self.by_student_aug and not pooled:
            columns.append("student_aug")
        return tuple(columns)

    def label(self, x: str | None = None, y: str | None = None) -> str:
        """``ρ(x, y)``; ``x`` and ``y`` name the columns tested where they are not the part's own
        (plug-in MI, the clean val split)."""
        return f"ρ({x or self.x}, {y or self.y})"

    def describe(self, x: str | None = None, y: str | None = None) -> str:
        sign = "> 0" if self.sign > 0 else "< 0"
        return f"stratified Spearman {self.label(x, y)}, expected {sign}"


@dataclass(frozen=True, kw_only=True)
class _Switch:
    """What a paired part varies: ``factor`` switched from ``control`` to ``treated`` within each
    pair, ``metric`` compared; only strata with at least ``min_teachers`` teachers take part."""

    metric: str
    factor: str
    control: str
    treated: str
    min_teachers: int = 1

    def label(self) -> str:
        """``Δmetric (treated − control)``: the paired difference the part tests."""
        return f"Δ{self.metric} ({self.treated} − {self.control})"


@dataclass(frozen=True, kw_only=True)
class Paired(_Switch):
    """A claim part: switching ``factor`` from ``control`` to ``treated`` moves ``metric`` by ``sign``."""

    sign: int

    def describe(self) -> str:
        direction = "lower" if self.sign < 0 else "higher"
        return f"Wilcoxon signed-rank, Hodges-Lehmann {self.label()}, expected {direction}"


@dataclass(frozen=True, kw_only=True)
class Equivalent(_Switch):
    """A claim part: switching ``factor`` leaves ``metric`` within ±``margin`` (TOST)."""

    margin: float
    sign: int = 0  # no direction: a part's sign of 0 marks it as an equivalence

    def describe(self) -> str:
        return f"TOST (two one-sided Wilcoxon), Hodges-Lehmann {self.label()} within ±{self.margin:g}"


Part = Correlation | Paired | Equivalent


@dataclass(frozen=True, kw_only=True)
class Claim:
    """One of the paper's claims: its text, its parts, and the reasoning behind its design.

    Its id (``C1``...) is its key in :data:`CLAIMS`; a part's number in the tables is its place in
    ``parts`` from 1, and ``context`` rows are numbered after them.

    Attributes:
        unit: what one observation of the claim's tests is (the report's ``unit`` column).
        rationale: why the claim is tested this way (the report's method section).
        context: shown beside the claim, never part of its verdict.
        note: how the claim's wording is read, added to its row of the claims table.
    """

    text: str
    parts: tuple[Part, ...]
    unit: str
    rationale: str
    context: tuple[Paired, ...] = ()
    note: str = ""


CLAIMS: dict[str, Claim] = {
    "C1": Claim(
        text="Stronger augmentation (lower affinity) goes with lower teacher attention IoU",
        parts=(
            Correlation(
                x="affinity",
                y="iou_teachers",
                sign=+1,
                min_teachers=2,
                val_columns=("affinity", "val_iou_teachers"),
            ),
        ),
        unit=_CORRELATION_UNIT,
        rationale="Pooled over the student's augmentation: the student's augmentation is part of the "
        "augmentation strength the claim is about. Teacher IoU needs two teachers.",
    ),
    "C2": Claim(
        text="Lower teacher attention IoU goes with higher student val accuracy",
        parts=(
            Correlation(
                x="iou_teachers",
                y="val_acc",
                sign=-1,
                min_teachers=2,
                by_student_aug=True,
                val_columns=("val_iou_teachers", "val_acc"),
            ),
        ),
        unit=_CORRELATION_UNIT,
        rationale="Within each student augmentation: teacher IoU is measured on the student's augmented "
        "batches, so S_s versus S_w moves IoU and accuracy at once and a pooled trend can be nothing but "
        "that split.",
    ),
    "C3": Claim(
        text="Agreement and MI between teachers and student fall as val accuracy rises",
        parts=(
            Correlation(
                x="agreement",
                y="val_acc",
                sign=-1,
                by_student_aug=True,
                val_columns=("val_agreement", "val_acc"),
            ),
            Correlation(
                x="mi_mm", y="val_acc", sign=-1, by_student_aug=True, val_columns=("val_mi_mm", "val_acc")
            ),
        ),
        unit=_CORRELATION_UNIT,
        rationale="Within each student augmentation, as C2: fidelity during training is measured on the "
        "student's augmented batches. MI is the Miller–Madow-corrected estimate (the plug-in one is "
        "biased upward by about (cells − 1)/2N).",
    ),
    "C4": Claim(
        text="The split view lowers teacher IoU and agreement, with comparable generalisation",
        parts=(
            Paired(
                metric="iou_teachers", factor="view", control="full", treated="split", sign=-1, min_teachers=2
            ),
            Paired(
                metric="agreement", factor="view", control="full", treated="split", sign=-1, min_teachers=2
            ),
            Equivalent(
                metric="val_acc",
                factor="view",
                control="full",
                treated="split",
                margin=EQUIVALENCE_MARGIN,
                min_teachers=2,
            ),
        ),
        unit="pair of vanilla-KD configurations that differ only in the view (same teachers, same data "
        "stream), seeds averaged",
        rationale="An intervention: the view changes what the teachers see, not the student's data (common "
        "random numbers), so full- and split-view students are paired. 'Comparable generalisation' is an "
        f"equivalence test with a margin of ±{EQUIVALENCE_MARGIN:g} val accuracy, stated in advance. The "
        "teacher ensemble's accuracy under each view is shown beside it: a fall in agreement that comes "
        "only from half-image teachers being worse is not the paper's mechanism.",
        context=(
            Paired(
                metric="val_acc_ensemble",
                factor="view",
                control="full",
                treated="split",
                sign=-1,
                min_teachers=2,
            ),
        ),
    ),
    "C5": Claim(
        text="Z-score KD lowers the train/val gap but does not raise agreement",
        parts=(
            Paired(metric="gap", factor="loss", control="kd", treated="zscore_kd", sign=-1),
            Paired(metric="agreement", factor="loss", control="kd", treated="zscore_kd", sign=-1),
        ),
        unit="pair of full-view configurations that differ only in the loss (same teachers, same data "
        "stream), seeds averaged",
        rationale="Paired by loss on the full view. Both metrics are the student's own, so each pair is one "
        "student pair.",
        note="'does not raise' is tested as the decrease the paper reports; no change is inconclusive, not support",
    ),
    "C6": Claim(
        text="Lower affinity goes with higher val accuracy",
        parts=(Correlation(x="affinity", y="val_acc", sign=-1),),
        unit=_CORRELATION_UNIT,
        rationale="Pooled over the student's augmentation: the claim is about augmentation strength itself, "
        "of which the student's augmentation is the largest part.",
    ),
    "C7": Claim(
        text="More teachers and stronger augmentation lower ECE",
        parts=(
            Correlation(x="n_teachers", y="ece", sign=-1, k_is_variable=True),
            Correlation(x="affinity", y="ece", sign=+1),
        ),
        unit=_CORRELATION_UNIT,
        rationale="Teacher count is the variable of the first part, so it is not a stratum there; both "
        "parts are pooled over the student's augmentation, which is part of the augmentation strength.",
    ),
}

# The columns of :func:`summarize_claims`, in order, with the report's header for each.
SUMMARY_COLUMNS: dict[str, str] = {
    "claim": "claim",
    "claim_text": "what the paper says",
    "verdict": "verdict",
    "statistic": "test",
    "unit": "unit",
    "strata": "strata",
    "value": "value",
    "p_value": "p (raw)",
    "p_holm": "p (Holm)",
    "p_eq9": "eq. 9 p",
    "ci_low": "95% CI low",
    "ci_high": "95% CI high",
    "n": "n",
    "n_needed": "n needed",
    "pooled": "pooled vs within strata",
    "robustness": "robustness and context",
    "note": "note",
}

# Which role a row of :func:`claim_parts` plays: only "primary" rows decide verdicts.
PRIMARY, POOLED, VAL_SPLIT, CONTEXT = "primary", "pooled", "val split", "context"


def _key(frame: pd.DataFrame, columns: tuple[str, ...] | list[str]) -> pd.Series:
    key = frame[columns[0]].astype(str)
    for column in columns[1:]:
        key = key + "|" + frame[column].astype(str)
    return key


def _config_columns(trials: pd.DataFrame) -> list[str]:
    """A unit's key: the configuration without its seed, with the KD axes the sweep varies."""
    return [*_CONFIG, *varied_kd_axes(trials)]


def _strata_text(columns: tuple[str, ...], trials: pd.DataFrame) -> str:
    """``dataset × architectures × k × τ ∈ {4, 10}``: the strata, with the values of a KD axis."""
    names = {
        "dataset": "dataset",
        "teacher_arch": "architectures",
        "n_teachers": "k",
        "student_aug": "student aug",
    }
    return " × ".join(names[c] for c in columns if c != "student_arch" and c in names) + "".join(
        f" × {axis_values_text(trials, c)}" for c in columns if c in HYPER_COLUMNS
    )


def _paired_text(trials: pd.DataFrame) -> str:
    """``paired``, and within which values of the varied KD axes the pairs are tested."""
    axes = varied_kd_axes(trials)
    return "paired" + (f" within {' × '.join(axis_values_text(trials, c) for c in axes)}" if axes else "")


def _correlation_data(trials: pd.DataFrame, part: Correlation) -> tuple[pd.DataFrame, str]:
    """Vanilla-KD full-view trials with enough teachers, or an empty frame and why."""
    if not (trials["loss"] == VANILLA).any():
        return trials.iloc[
            :0
        ], "no vanilla-KD trials (correlational claims use vanilla KD, the paper's setting)"
    data = trials[(trials["loss"] == VANILLA) & (trials["view"] == "full")]
    if data.empty:
        return data, "no vanilla-KD full-view trials"
    enough = data[data["n_teachers"] >= part.min_teachers]
    if enough.empty:
        return (
            enough,
            f"no full-view trials with at least {part.min_teachers} teachers (teacher IoU needs two)",
        )
    return enough, ""


def _run_correlation(
    trials: pd.DataFrame, part: Correlation, x: str, y: str, strata: tuple[str, ...]
) -> tuple[TestResult, str]:
    data, why = _correlation_data(trials, part)
    if data.empty:
        return EMPTY, why
    for column in (x, y):
        if column not in data or data[column].isna().all():
            return EMPTY, f"these results have no {column} values"
    frame = pd.DataFrame(
        {
            "unit": _key(data, _config_columns(data)),
            "stratum": _key(data, strata),
            "block": _key(data, BLOCK_COLUMNS),
            "x": data[x],
            "y": data[y],
        }
    )
    result = rank_correlation_test(frame)
    note = ""
    if result.n_strata == 0:
        varies = frame.dropna(subset=["x", "y"]).groupby("stratum")[["x", "y"]].nunique()
        constant = [c for c, col in (("x", x), ("y", y)) if not (varies[c] > 1).any()]
        if constant and len(varies):
            names = " and ".join({"x": x, "y": y}[c] for c in constant)
            note = f"{names} does not vary within any stratum"
        else:
            note = f"no stratum holds three configurations with both {x} and {y}"
    return result, note


def _teachers_once(trials: pd.DataFrame, metric: str) -> pd.DataFrame:
    """One row per teacher configuration and seed for a metric of the teachers alone: the
    student's augmentation dropped from ``perm`` (``T1w_T2s_Sw`` -> ``T1w_T2s``) and its twins'
    values averaged (they are one measurement, recorded by each student)."""
    keys = [*_config_columns(trials), "seed"]
    teachers = trials.assign(perm=trials["perm"].str.rsplit("_", n=1).str[0])
    return teachers.groupby(keys, dropna=False, as_index=False, sort=False)[metric].mean()


def _pairs(trials: pd.DataFrame, part: Paired | Equivalent) -> tuple[pd.DataFrame, str]:
    """Trials matched on everything but ``part.factor`` (and the seed kept), or empty and why."""
    data = trials[trials["n_teachers"] >= part.min_teachers]
    data = data[data["loss"] == VANILLA] if part.factor == "view" else data[data["view"] == "full"]
    if part.metric not in data:
        return pd.DataFrame(), f"these results have no {part.metric} column"
    if part.metric in TEACHER_ONLY_METRICS:
        data = _teachers_once(data, part.metric)
    match = [c for c in [*_config_columns(data), "seed"] if c != part.factor]
    control = data[data[part.factor] == part.control].set_index(match)[part.metric].rename("control")
    treated = data[data[part.factor] == part.treated].set_index(match)[part.metric].rename("treated")
    pairs = pd.concat([control, treated], axis=1, join="inner").reset_index()
    if pairs.empty or pairs[["control", "treated"]].isna().all().any():
        if treated.empty or control.empty:
            missing = part.treated if treated.empty else part.control
            return (
                pd.DataFrame(),
                f"no paired trials: the sweep has no {missing} {part.factor} trials to compare",
            )
        return (
            pd.DataFrame(),
            f"no {part.treated} trial matches a {part.control} trial on every other factor and seed",
        )
    unit_cols = [c for c in match if c != "seed"]
    axes = varied_kd_axes(data)
    return pd.DataFrame(
        {
            "unit": _key(pairs, unit_cols),
            # Each value of a varied KD axis is a condition of its own: tested alone within each
            # block, combined conservatively there (its pairs share teachers and streams with
            # the other values'), and the independent blocks combined by Stouffer.
            "stratum": _key(pairs, [*axes, *BLOCK_COLUMNS]) if axes else "",
            "block": _key(pairs, BLOCK_COLUMNS),
            "treated": pairs["treated"],
            "control": pairs["control"],
        }
    ), ""


def _row(
    claim_id: str,
    number: int,
    part: Part,
    *,
    role: str,
    label: str,
    statistic: str,
    strata: str,
    result: TestResult,
    note: str,
) -> dict:
    """One row of :func:`claim_parts` for part ``number`` of a claim.

    ``label`` names what was tested (``ρ(affinity, ece)``) and ``statistic`` says how; both come
    from the part, with the columns actually tested where they are not the part's own.
    """
    sign = part.sign
    part_verdict = _part_verdict(result, sign)
    if part_verdict == "inconclusive" and not note and role != CONTEXT:
        if result.n_needed is None:
            note = "no effect observed; no n would show the claimed direction" if sign else ""
        else:
            note = (
                f"n = {result.n}; about {result.n_needed} units would detect the observed effect "
                "(80% power, unadjusted α)"
            )
    return {
        "claim": claim_id,
        "part": number,
        "role": role,
        "claim_text": CLAIMS[claim_id].text,
        "statistic": statistic,
        "label": label,
        "strata": strata,
        "expected_sign": sign,
        "value": result.value,
        "p_value": result.p_value,
        "p_against": result.p_against,
        "direction": result.direction,
        "p_eq9": result.p_eq9,
        "ci_low": result.ci_low,
        "ci_high": result.ci_high,
        "n": result.n,
        "n_strata": result.n_strata,
        "n_needed": result.n_needed,
        "verdict": part_verdict,
        "note": note,
    }


def _part_verdict(result: TestResult, sign: int) -> str:
    """A part's verdict at unadjusted alpha (for reading the parts table, not for the claim)."""
    if sign == 0:  # equivalence
        if math.isfinite(result.p_value) and result.p_value < ALPHA:
            return "supported"
        if math.isfinite(result.p_against) and result.p_against < ALPHA:
            return "contradicted"
        return "inconclusive"
    return verdict(result.value, result.p_value, sign, direction=result.direction)


def claim_parts(trials: pd.DataFrame) -> pd.DataFrame:
    """Every part of every claim with its test, verdict at unadjusted alpha and power estimate.

    ``role`` is ``primary`` for the rows that decide verdicts; ``pooled`` (C2, C3 without the
    student's augmentation as a stratum), ``val split`` (the same test on the clean val split)
    and ``context`` (shown beside a claim) rows are for reading beside them.
    """
    ok = ok_trials(trials)
    rows = []
    for claim_id, claim in CLAIMS.items():
        for number, part in enumerate(claim.parts, 1):
            if isinstance(part, Correlation):
                rows += _correlation_rows(ok, claim_id, number, part)
                continue
            pairs, note = _pairs(ok, part)
            if pairs.empty:
                result = EMPTY
            elif isinstance(part, Equivalent):
                result = equivalence_test(pairs, part.margin)
            else:
                result = paired_test(pairs)
            rows.append(_paired_row(ok, claim_id, number, part, PRIMARY, result, note))
        for number, part in enumerate(claim.context, len(claim.parts) + 1):
            pairs, note = _pairs(ok, part)
            result = paired_test(pairs) if not pairs.empty else EMPTY
            rows.append(_paired_row(ok, claim_id, number, part, CONTEXT, result, note))
    return pd.DataFrame(rows)


def _paired_row(
    ok: pd.DataFrame,
    claim_id: str,
    number: int,
    part: Paired | Equivalent,
    role: str,
    result: TestResult,
    note: str,
) -> dict:
    return _row(
        claim_id,
        number,
        part,
        role=role,
        label=part.label(),
        statistic=part.describe(),
        strata=_paired_text(ok),
        result=result,
        note=note,
    )


def _correlation_rows(ok: pd.DataFrame, claim_id: str, number: int, part: Correlation) -> list[dict]:
    """The primary row of a correlation part, and its pooled and clean-val rows where it has them."""

    def row(role: str, x: str, y: str, strata: tuple[str, ...], result: TestResult, note: str) -> dict:
        return _row(
            claim_id,
            number,
            part,
            role=role,
            label=part.label(x, y),
            statistic=part.describe(x, y),
            strata=_strata_text(strata, ok),
            result=result,
            note=note,
        )

    x, y, note_mi = part.x, part.y, ""
    if x == "mi_mm" and ("mi_mm" not in ok or ok["mi_mm"].isna().all()):
        x, note_mi = "mi", "plug-in MI: these results have no Miller–Madow column"
    strata = part.strata(ok)
    result, note = _run_correlation(ok, part, x, y, strata)
    note = "; ".join(s for s in (note, note_mi) if s)
    rows = [row(PRIMARY, x, y, strata, result, note)]
    if part.by_student_aug:
        pooled = part.strata(ok, pooled=True)
        result, note = _run_correlation(ok, part, x, y, pooled)
        rows.append(row(POOLED, x, y, pooled, result, note))
    if part.val_columns:
        vx, vy = part.val_columns
        if vx == "val_mi_mm" and note_mi:
            vx = "val_mi"
        result, note = _run_correlation(ok, part, vx, vy, strata)
        rows.append(row(VAL_SPLIT, vx, vy, strata, result, note))
    return rows


def _decision(parts: pd.DataFrame) -> tuple[float, str, pd.Series]:
    """The claim's raw p-value, the direction it would decide, and its decisive part.

    All parts in the paper's direction: intersection-union, p = the largest part p. Some part
    against it: Bonferroni over the claim's m parts, p = m × the smallest such part p. A
    directional part leans one way only when its effect and its test agree on the side
    (:func:`kd_ray.analysis.stats.verdict`); a part that leans neither way (an effect of 0, or
    a weighted estimate against its combined test) leaves the claim inconclusive, whatever its
    p-value: it keeps the intersection-union p, so the claim stays in the Holm family.
    """
    m = len(parts)
    directional = parts["expected_sign"] != 0
    leans = np.sign(parts["value"]).where(np.sign(parts["value"]) == parts["direction"], 0)
    against = parts[
        (directional & (leans * parts["expected_sign"] < 0))
        | (~directional & (parts["p_against"] < parts["p_value"]))
    ]
    if not against.empty:
        p_against = against["p_value"].where(against["expected_sign"] != 0, against["p_against"])
        decisive = against.loc[p_against.idxmin()]
        return min(1.0, m * float(p_against.min())), "contradicted", decisive
    if parts["p_value"].isna().any():
        return math.nan, "inconclusive", parts[parts["p_value"].isna()].iloc[0]
    p_iut = float(parts["p_value"].max())
    level = parts[directional & (leans == 0)]
    if not level.empty:
        return p_iut, "inconclusive", level.iloc[0]
    return p_iut, "supported", parts.loc[parts["p_value"].idxmax()]


def _pooled_note(claim_parts_: pd.DataFrame) -> str:
    """Pooled versus within-stratum answers, in words, for parts tested both ways."""
    notes = []
    for part, rows in claim_parts_.groupby("part"):
        by_role = rows.set_index("role")
        if POOLED not in by_role.index:
            continue
        within, pooled = by_role.loc[PRIMARY], by_role.loc[POOLED]
        w, p = within["verdict"], pooled["verdict"]
        prefix = f"part {part}: " if claim_parts_["part"].nunique() > 1 else ""
        if w == p:
            text = f"pooled and within-augmentation agree ({w})"
        elif p != "inconclusive" and w == "inconclusive":
            text = "pooled trend only: explained by the student's augmentation"
        elif w != "inconclusive" and p == "inconclusive":
            text = "within-augmentation trend, masked when pooled"
        else:
            text = f"pooled {p}, within-augmentation {w}: the student's augmentation reverses the trend"
        notes.append(f"{prefix}{text} (pooled ρ = {pooled['value']:.2f}, p = {pooled['p_value']:.3g})")
    return "; ".join(notes)


def _robustness_note(claim_parts_: pd.DataFrame) -> str:
    """The clean-val-split and context rows of a claim, in words."""
    notes = []
    for r in claim_parts_[claim_parts_["role"].isin([VAL_SPLIT, CONTEXT])].itertuples():
        what = f"{r.label} on the clean val split" if r.role == VAL_SPLIT else r.label
        if math.isfinite(r.value):
            notes.append(f"{what}: {r.value:.3g}, p = {r.p_value:.3g} (unadjusted: {r.verdict})")
        else:
            notes.append(f"{what}: {r.note or 'no data'}")
    return "; ".join(notes)


def _part_summary(r) -> str:
    if not math.isfinite(r.p_value):
        return f"part {r.part} ({r.label}): not tested ({r.note or 'no data'})"
    return f"part {r.part} ({r.label}): {r.verdict} (p = {r.p_value:.3g})"


def claims_check(trials: pd.DataFrame) -> pd.DataFrame:
    """One row per claim (C1-C7) of ``trials``; see :func:`summarize_claims`."""
    return summarize_claims(claim_parts(trials))


def summarize_claims(parts: pd.DataFrame) -> pd.DataFrame:
    """One row per claim (C1-C7): verdict, raw and Holm p-values, effect, 95% CI, n, strata, notes.

    The statistic shown is the claim's decisive part: the one that contradicts it, or else its
    weakest (largest p) part; ``note`` lists every part. ``p_holm`` is Holm's adjustment of
    ``p_value`` over the claims that could be tested, and decides the verdict at alpha = 0.05.

    Args:
        parts: the output of :func:`claim_parts`.
    """
    rows = []
    for claim_id, group in parts.groupby("claim", sort=False):
        primary = group[group["role"] == PRIMARY]
        p, direction, decisive = _decision(primary)
        row = decisive.to_dict()
        row.update(claim=claim_id, p_value=p, direction=direction, unit=CLAIMS[claim_id].unit)
        row["strata"] = "; ".join(dict.fromkeys(primary["strata"]))
        row["n"] = int(primary["n"].min())
        row["pooled"] = _pooled_note(group) or (
            "paired within the same teachers and data stream: nothing pooled"
            if primary["strata"].str.startswith("paired").all()
            else "pooled over the student's augmentation by design (see method)"
        )
        row["robustness"] = _robustness_note(group)
        notes = [row["note"], CLAIMS[claim_id].note]
        if len(primary) > 1:
            notes.append("; ".join(_part_summary(r) for r in primary.itertuples()))
        row["note"] = "; ".join(s for s in notes if s)
        rows.append(row)
    out = pd.DataFrame(rows)
    out["p_holm"] = holm(out["p_value"].to_numpy())
    significant = out["p_holm"] < ALPHA
    out["verdict"] = np.where(significant, out["direction"], "inconclusive")
    out.loc[out["verdict"] == "supported", "n_needed"] = None
    out.loc[out["verdict"] == "contradicted", "n_needed"] = None
    columns = list(SUMMARY_COLUMNS)
    out = out[columns]
    out["n_needed"] = out["n_needed"].astype("Int64")
    return out
