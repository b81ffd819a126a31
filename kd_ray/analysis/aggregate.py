"""From trial rows to plotted points: successful trials, seeds averaged, paper ordering.

A *configuration* is everything that defines a student trial except its seed; every figure
point and every unit of the claims check is one configuration, so that seeds give error bars
and bootstrap draws rather than pseudo-replicates. Where a sweep varies τ, α or the student's lr
(``grid.temperatures``, ``grid.alphas``, ``grid.student_lrs``), each value is part of the
configuration: trials that differ only in τ are two conditions, never two seeds of one. An axis
that does not vary is left out, so results that vary none are grouped and named as before.
"""

from __future__ import annotations

import pandas as pd

CONFIG_COLUMNS: tuple[str, ...] = (
    "dataset",
    "teacher_arch",
    "student_arch",
    "n_teachers",
    "perm",
    "loss",
    "view",
)


class NoData(Exception):  # noqa: N818 - it names a situation, not a failure of the code
    """A figure or table has no data in these results; the message says what it needs."""


def ok_trials(trials: pd.DataFrame) -> pd.DataFrame:
    """Trials that finished (failed trials carry NaN metrics and an ``error``)."""
    return trials[trials["status"] == "ok"]


def perm_sort_key(perm: str) -> tuple[int, ...]:
    """Sort key giving the paper's column order (Table 1: T1wT2wSw, T1wT2wSs, T1sT2wSw, ...).

    The student's augmentation varies fastest, then T1, then T2: the key is (T_k, ..., T_1, S)
    with weak before strong.
    """
    augs = [part[-1] == "s" for part in perm.split("_")]
    teachers, student = augs[:-1], augs[-1]
    return (len(teachers), *reversed(teachers), student)


def sort_perms(perms: pd.Series | list[str]) -> list[str]:
    """Distinct perms in the paper's order."""
    return sorted(set(perms), key=perm_sort_key)


def _varied_kd_axes(trials: pd.DataFrame) -> list[str]:
    # Imported here: kd_ray.analysis.kd_axes builds on this module's seed_means.
    from kd_ray.analysis.kd_axes import varied_kd_axes

    return varied_kd_axes(trials)


def _kd_label(trials: pd.DataFrame, axes: list[str]) -> pd.Series:
    from kd_ray.analysis.kd_axes import kd_label

    return kd_label(trials, axes)


def seed_means(trials: pd.DataFrame, metrics: list[str]) -> pd.DataFrame:
    """One row per configuration with ``{metric}`` (mean over seeds) and ``{metric}_sd``.

    The standard deviation is across seeds (ddof=1), NaN with a single seed; ``n_seeds`` counts
    the successful seeds. Failed trials are dropped first. The KD axes (``temperature``,
    ``alpha``, ``lr``) that take more than one value among the successful trials are part of the
    configuration and kept as columns, so seeds are averaged within a value, never across values.
    """
    ok = ok_trials(trials)
    axes = _varied_kd_axes(ok)
    keys = [*CONFIG_COLUMNS, *axes]
    grouped = ok.groupby(keys, sort=False, dropna=False)[metrics]
    means = grouped.mean()
    sds = grouped.std(ddof=1).add_suffix("_sd")
    counts = ok.groupby(keys, sort=False, dropna=False)["seed"].nunique().rename("n_seeds")
    out = pd.concat([means, sds, counts], axis=1).reset_index()
    out["perm_order"] = out["perm"].map(perm_sort_key)
    order = ["dataset", "n_teachers", "loss", "view", *axes, "perm_order"]
    return out.sort_values(order).drop(columns="perm_order")


def series_names(points: pd.DataFrame, kd_axes: list[str] | None = None) -> pd.Series:
    """Legend name of each point: its loss, plus view and architectures when those vary.

    ``kd_axes`` (default: the KD axes that vary in ``points``) add their values, e.g.
    ``kd · τ=4``, so points of different τ, α or lr are different series.
    """
    parts = [points["loss"].astype(str)]
    if points["view"].nunique() > 1:
        parts.append(points["view"].astype(str))
    if points[["teacher_arch", "student_arch"]].drop_duplicates().shape[0] > 1:
        parts.append(points["teacher_arch"].astype(str) + "→" + points["student_arch"].astype(str))
    if points["n_teachers"].nunique() > 1:
        parts.append(points["n_teachers"].astype(str) + "T")
    kd_axes = _varied_kd_axes(points) if kd_axes is None else kd_axes
    if kd_axes:
        parts.append(_kd_label(points, kd_axes))
    name = parts[0]
    for part in parts[1:]:
        name = name + " · " + part
    return name


def trial_label(trials: pd.DataFrame, *, kd_axes: bool = False) -> pd.Series:
    """Human name of each trial: perm, loss, view and seed (dataset when several).

    With ``kd_axes``, the values of the KD axes that vary in ``trials`` follow the seed
    (``T1w_T2w_Sw kd full s0 τ=4``), so trials that differ only in τ, α or lr get different
    names. It is off by default because :func:`kd_ray.analysis.comparisons.epoch_curves` appends
    the same values itself.
    """
    label = trials["perm"] + " " + trials["loss"] + " " + trials["view"] + " s" + trials["seed"].astype(str)
    if trials["dataset"].nunique() > 1:
        label = trials["dataset"] + " " + label
    axes = _varied_kd_axes(trials) if kd_axes else []
    if axes:
        label = label + " " + _kd_label(trials, axes)
    return label
