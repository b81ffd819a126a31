"""The paper's tables (1, C.2-C.4, G.5, H.6) as DataFrames, values averaged over seeds.

Tables 1 and H.6 keep the paper's layout: one row per (dataset, metric) and one column per
trial name in the paper's order; teacher count, loss and view join the row key because a user's
sweep may vary them, and so do τ, α and lr where the sweep varies them (each value is its own
configuration: seeds are averaged within it, never across values).
"""

from __future__ import annotations

import pandas as pd

from kd_ray.analysis.aggregate import NoData, ok_trials, sort_perms
from kd_ray.analysis.kd_axes import seed_means_by_kd_axes, varied_kd_axes
from kd_ray.analysis.stats import eq9_p_value

_ROW_KEYS = ["dataset", "n_teachers", "loss", "view"]
# docs/metrics.md#acc_top5: measured for the ImageNet family only, null elsewhere and in sweeps
# written before it existed, so the accuracy tables show it only where some trial has it.
_TOP5 = "val_acc_top5"


def _with_top5(trials: pd.DataFrame, metrics: list[str]) -> list[str]:
    """``metrics`` plus top-5 val accuracy right after ``val_acc`` when any trial measured it."""
    if _TOP5 not in trials or trials[_TOP5].isna().all():
        return metrics
    at = metrics.index("val_acc") + 1
    return [*metrics[:at], _TOP5, *metrics[at:]]


def _metric_by_perm(trials: pd.DataFrame, metrics: list[str], what: str) -> pd.DataFrame:
    ok = ok_trials(trials)
    if ok.empty:
        raise NoData(f"no successful trials for {what}")
    points, axes = seed_means_by_kd_axes(ok, metrics)
    row_keys = _ROW_KEYS + axes
    long = points.melt(id_vars=row_keys + ["perm"], value_vars=metrics, var_name="metric")
    table = long.pivot_table(
        index=row_keys + ["metric"], columns="perm", values="value", aggfunc="mean", dropna=False
    )
    table = table.reindex(columns=sort_perms(table.columns))
    table = table.dropna(how="all")
    order = {m: i for i, m in enumerate(metrics)}
    table = table.sort_index(level="metric", key=lambda idx: idx.map(order), sort_remaining=False)
    table = table.sort_index(level=row_keys, sort_remaining=False)
    table.columns.name = "trial"
    return table


def table1_affinity_acc(trials: pd.DataFrame) -> pd.DataFrame:
    """Table 1: affinity and student val accuracy per trial (mean over seeds); for ImageNet-family
    datasets also the top-5 val accuracy (a row only where it was measured)."""
    return _metric_by_perm(trials, _with_top5(ok_trials(trials), ["affinity", "val_acc"]), "Table 1")


def table_h6_ece_affinity(trials: pd.DataFrame) -> pd.DataFrame:
    """Table H.6: student ECE (val) and affinity per trial (mean over seeds)."""
    return _metric_by_perm(trials, ["ece", "affinity"], "Table H.6")


# What one A/B table holds fixed; its rows are trial names (perm).
_AB_TABLE_KEYS = ["dataset", "teacher_arch", "student_arch", "n_teachers", "loss"]


def _ab_table_keys(ok: pd.DataFrame) -> list[str]:
    """One A/B table: the fixed keys and the values of the varied KD axes."""
    return [*_AB_TABLE_KEYS, *varied_kd_axes(ok)]


def _ab_keys(ok: pd.DataFrame) -> list[str]:
    """What an A/B pair shares besides the seed: its table and its trial name."""
    return [*_ab_table_keys(ok), "perm"]


def _ab_pairs(trials: pd.DataFrame) -> pd.DataFrame:
    ok = ok_trials(trials)
    keys = [*_ab_keys(ok), "seed"]
    full = ok[ok["view"] == "full"].set_index(keys)
    split = ok[ok["view"] == "split"].set_index(keys)
    pairs = full[["gap", "iou_teachers", "agreement"]].join(
        split[["gap", "iou_teachers", "agreement"]], how="inner", suffixes=("_vKD", "_hKD")
    )
    if pairs.empty:
        reason = (
            "no split-view (hKD) trials" if split.empty else "no split-view trial matches a full-view trial"
        )
        raise NoData(
            f"the A/B test needs full and split view trials of the same configuration and seed: {reason}"
        )
    return pairs.reset_index()


def table_c_ab(trials: pd.DataFrame) -> pd.DataFrame:
    """Tables C.2-C.4: A/B test per trial, vKD (full view) vs hKD (split view).

    Columns are (metric, group) for the train − val gap, teacher attention IoU and fidelity;
    rows are (dataset, architectures, teacher count, loss, [τ, α, lr where they vary,] trial
    name), seeds averaged over the seeds present in both groups.
    """
    pairs = _ab_pairs(trials)
    keys = _ab_keys(ok_trials(trials))
    table = pairs.groupby(keys, sort=False).mean(numeric_only=True).drop(columns="seed")
    table.columns = pd.MultiIndex.from_tuples(
        [tuple(c.rsplit("_", 1)) for c in table.columns], names=["metric", "group"]
    )
    table = table.reindex(
        columns=pd.MultiIndex.from_product([["gap", "iou_teachers", "agreement"], ["vKD", "hKD"]])
    )
    order = table.index.get_level_values("perm").map({p: i for i, p in enumerate(sort_perms(pairs["perm"]))})
    return table.iloc[order.argsort(kind="stable")]


def ab_p_values(trials: pd.DataFrame) -> pd.DataFrame:
    """Eq. 9 of the paper for each A/B table: #|fidelity(hKD) > fidelity(vKD)| / Num.

    Num counts paired trials (seeds separately, as the paper counts trials); ``n_higher`` is
    the numerator. The same fraction is given for teacher IoU.
    """
    pairs = _ab_pairs(trials)
    keys = _ab_table_keys(ok_trials(trials))
    rows = []
    for key, group in pairs.groupby(keys, sort=False):
        rows.append(
            dict(
                zip(keys, key, strict=True),
                num=len(group),
                n_higher=int((group["agreement_hKD"] > group["agreement_vKD"]).sum()),
                p_eq9=eq9_p_value(group["agreement_hKD"].to_numpy(), group["agreement_vKD"].to_numpy()),
                p_eq9_iou=eq9_p_value(
                    group["iou_teachers_hKD"].to_numpy(), group["iou_teachers_vKD"].to_numpy()
                ),
            )
        )
    return pd.DataFrame(rows)


def table_g5_best(trials: pd.DataFrame) -> pd.DataFrame:
    """Table G.5, the sweep's own rows: best val accuracy per dataset and teacher count.

    "Ours(kT)" in the paper is its best full-view vanilla-KD trial with k teachers; LFME and
    DMAE are other papers' numbers and are not recomputed. One row per (dataset, k) with the
    winning trial name (and its τ, α, lr where the sweep varies them), its mean val accuracy
    over seeds (and top-5 val accuracy where a trial measured it: the ImageNet family) and the
    seed count.
    """
    ok = ok_trials(trials)
    ok = ok[(ok["view"] == "full") & (ok["loss"] == "kd")]
    if ok.empty:
        raise NoData("Table G.5 needs successful full-view vanilla-KD (loss kd) trials")
    accuracies = _with_top5(ok, ["val_acc"])
    points, axes = seed_means_by_kd_axes(ok, accuracies)
    points = points.dropna(subset=["val_acc"]).reset_index(drop=True)
    best = points.loc[points.groupby(["dataset", "n_teachers"])["val_acc"].idxmax()]
    best = best.assign(method=[f"Ours({k}T)" for k in best["n_teachers"]])
    return best[
        [
            "method",
            "dataset",
            "n_teachers",
            "teacher_arch",
            "student_arch",
            "perm",
            *axes,
            *accuracies,
            "n_seeds",
        ]
    ].reset_index(drop=True)
