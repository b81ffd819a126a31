"""KD's own hyper-parameters (τ, α, the student's lr) as analysis axes.

A sweep may run the same configuration at several temperatures, α or learning rates
(``grid.temperatures``, ``grid.alphas``, ``grid.student_lrs``). Each value is a different
experimental condition: two trials that differ only in τ are not two seeds of one
configuration, so every grouping by configuration must hold the axes the sweep varies. An axis
the sweep does not vary is left out, so results without it look as they always did (and rows
written before the columns existed, which read them as null, do not split a configuration).
"""

from __future__ import annotations

import pandas as pd

from kd_ray.analysis.aggregate import seed_means
from kd_ray.plan import axis_text

# The trials columns of the KD axes, in the order they name trial ids.
KD_AXIS_COLUMNS: tuple[str, ...] = ("temperature", "alpha", "lr")
# How each is written in tables and labels.
KD_AXIS_SYMBOLS: dict[str, str] = {"temperature": "τ", "alpha": "α", "lr": "lr"}


def varied_kd_axes(trials: pd.DataFrame) -> list[str]:
    """The KD axes that take more than one (non-null) value in ``trials``."""
    return [c for c in KD_AXIS_COLUMNS if c in trials and trials[c].nunique(dropna=True) > 1]


def axis_values_text(trials: pd.DataFrame, column: str) -> str:
    """``τ ∈ {4, 10}``: an axis and the values it takes in ``trials``."""
    values = sorted(trials[column].dropna().unique())
    return f"{KD_AXIS_SYMBOLS[column]} ∈ {{{', '.join(axis_text(float(v)) for v in values)}}}"


def kd_label(trials: pd.DataFrame, axes: list[str]) -> pd.Series:
    """Each row's values of ``axes``, e.g. ``τ=4 α=0.5`` (empty strings without axes)."""
    label = pd.Series("", index=trials.index, dtype=object)
    for column in axes:
        text = trials[column].map(lambda v: "?" if pd.isna(v) else axis_text(float(v)))
        label = label.str.cat(KD_AXIS_SYMBOLS[column] + "=" + text, sep=" ").str.strip()
    return label


def seed_means_by_kd_axes(trials: pd.DataFrame, metrics: list[str]) -> tuple[pd.DataFrame, list[str]]:
    """:func:`kd_ray.analysis.aggregate.seed_means` within each value of the varied KD axes.

    Returns the points, with the varied axes as columns, and those axes; seeds are averaged
    within a (configuration, τ, α, lr), never across τ, α or lr.
    """
    axes = varied_kd_axes(trials)
    if not axes:
        return seed_means(trials, metrics), []
    parts = []
    for values, group in trials.groupby(axes, sort=True, dropna=False):
        values = values if isinstance(values, tuple) else (values,)
        parts.append(seed_means(group, metrics).assign(**dict(zip(axes, values, strict=True))))
    return pd.concat(parts, ignore_index=True), axes
