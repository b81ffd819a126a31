"""Scatter figures and seed means in a sweep that varies τ, α or lr: each value its own condition.

Two trials that differ only in τ are not two seeds of one configuration. The fixture below puts
every metric near 0.2 at τ = 4 and near 0.7 at τ = 10, so a point that averaged the two
temperatures would sit near 0.45, where no per-τ mean lies.
"""

from __future__ import annotations

import pandas as pd
import pytest
from _analysis_fixtures import perms, trial_row

from kd_ray import analysis as A
from kd_ray.analysis.aggregate import series_names, trial_label
from kd_ray.plan import axis_text

_METRICS = ("val_acc", "iou_teachers", "agreement", "mi", "kl", "entropy", "affinity", "gap")
_BASE = {4.0: 0.10, 10.0: 0.60}  # every metric of a τ = 4 trial is in [0.10, 0.30), τ = 10 in [0.60, 0.80)


def _at(row: dict, **axes: float) -> dict:
    """A fixture row at the given KD axis values (its id names them, as a real sweep's does)."""
    suffix = "".join(f"-{name}{axis_text(value)}" for name, value in axes.items())
    return row | axes | {"trial_id": row["trial_id"] + suffix}


def _value(tau: float, i: int, seed: int) -> float:
    return _BASE[tau] + 0.01 * i + 0.02 * seed


def _tau_sweep() -> pd.DataFrame:
    """τ ∈ {4, 10} × seeds {0, 1} × (2 CNN teachers, 3 CNN teachers, 2 ViT teachers) × every perm."""
    rows = []
    for tau in _BASE:
        for seed in (0, 1):
            for k, arch in ((2, "tiny_cnn"), (3, "tiny_cnn"), (2, "vit_tiny")):
                for i, perm in enumerate(perms(k)):
                    value = _value(tau, i, seed)
                    metrics = {m: value for m in _METRICS}
                    row = trial_row(perm=perm, seed=seed, teacher_arch=arch, **metrics)
                    rows.append(_at(row, temperature=tau))
    return pd.DataFrame(rows)


@pytest.fixture(scope="module")
def tau_sweep() -> pd.DataFrame:
    return _tau_sweep()


def test_seed_means_average_seeds_within_each_temperature(tau_sweep: pd.DataFrame) -> None:
    cnn2 = tau_sweep[(tau_sweep["n_teachers"] == 2) & (tau_sweep["teacher_arch"] == "tiny_cnn")]
    points = A.seed_means(cnn2, ["val_acc"])
    assert len(points) == 2 * len(perms(2))  # one point per (perm, τ), not one per perm
    assert set(points["n_seeds"]) == {2}  # the two seeds of one τ, never four "seeds"
    first = points[points["perm"] == perms(2)[0]].set_index("temperature")["val_acc"]
    assert first.to_dict() == pytest.approx({4.0: 0.11, 10.0: 0.61})  # pooled over τ would be 0.36
    # Paper order within a (dataset, k, loss, view): τ = 4's perms, then τ = 10's.
    assert points["temperature"].tolist() == [4.0] * 8 + [10.0] * 8


@pytest.mark.parametrize(
    "build",
    [
        A.fig1_overview,
        A.fig2_iou_vs_acc,
        A.fig3_fidelity_mi,
        A.fig_b5_kl,
        A.fig_d6_iou_vs_affinity,
        A.fig_e7_vit,
        A.fig_f8_three_teachers,
        A.fig_h9_entropy_gap,
    ],
    ids=lambda build: build.__name__,
)
def test_scatter_figures_draw_each_temperature_as_its_own_series(build, tau_sweep: pd.DataFrame) -> None:
    fig = build(tau_sweep)
    names = {trace.name for trace in fig.data}
    assert any(name.endswith("τ=4") for name in names) and any(name.endswith("τ=10") for name in names)
    for trace in fig.data:
        tau = 4.0 if trace.name.endswith("τ=4") else 10.0
        assert trace.name.endswith(f"τ={axis_text(tau)}"), trace.name
        low = _BASE[tau]
        for value in [*trace.x, *trace.y]:
            assert low <= value < low + 0.2, (trace.name, value)  # a mean over τ would be in between
        assert set(trace.customdata) == {2}  # seeds per point: two, not 2 × 2


def test_fig2_points_are_the_per_temperature_means(tau_sweep: pd.DataFrame) -> None:
    fig = A.fig2_iou_vs_acc(tau_sweep)
    assert [t.name for t in fig.data] == ["kd · τ=4", "kd · τ=10"]
    for trace, tau in zip(fig.data, _BASE, strict=True):
        order = list(trace.text)
        assert sorted(order) == sorted(perms(2))
        expected = [
            (_value(tau, perms(2).index(p), 0) + _value(tau, perms(2).index(p), 1)) / 2 for p in order
        ]
        assert trace.x == pytest.approx(expected) and trace.y == pytest.approx(expected)
        assert trace.error_x.array == pytest.approx([0.02 / 2**0.5] * len(order))  # sd of the seeds alone


def test_several_axes_name_the_series_and_the_trials() -> None:
    rows = [
        _at(trial_row(perm="T1w_T2w_Sw", loss=loss, val_acc=0.5), alpha=alpha, lr=lr)
        for loss in ("kd", "zscore_kd")
        for alpha in (0.2, 0.5)
        for lr in (0.05, 0.1)
    ]
    trials = pd.DataFrame(rows)
    points = A.seed_means(trials, ["val_acc"])
    assert len(points) == 8 and {"alpha", "lr"} <= set(points) and "temperature" not in points
    assert series_names(points).tolist() == [
        f"{loss} · α={a} lr={lr}"
        for loss in ("kd", "zscore_kd")
        for a in ("0.2", "0.5")
        for lr in ("0.05", "0.1")
    ]
    labels = trial_label(trials, kd_axes=True)
    assert labels.iloc[0] == "T1w_T2w_Sw kd full s0 α=0.2 lr=0.05"
    assert labels.is_unique
    assert trial_label(trials).iloc[0] == "T1w_T2w_Sw kd full s0"  # the default, as epoch_curves uses it


@pytest.mark.parametrize("tau", [None, 10.0], ids=["no-column-value", "one-value"])
def test_without_a_varied_axis_points_and_names_are_as_before(tau: float | None) -> None:
    """One τ (or none recorded, as in rows written before the columns existed) adds no column,
    no name and no group: the output is what it was before the axes existed."""
    rows = [
        trial_row(perm=p, seed=s, loss=loss, val_acc=0.7 + 0.01 * i + 0.02 * s)
        for i, p in enumerate(perms(2))
        for s in (0, 1)
        for loss in ("kd", "zscore_kd")
    ]
    if tau is not None:
        rows = [_at(r, temperature=tau) for r in rows[1:]] + rows[:1]  # one old row, read as null
    trials = pd.DataFrame(rows)
    points = A.seed_means(trials, ["val_acc", "iou_teachers"])
    assert not {"temperature", "alpha", "lr"} & set(points)
    assert list(points.columns) == [
        "dataset",
        "teacher_arch",
        "student_arch",
        "n_teachers",
        "perm",
        "loss",
        "view",
        "val_acc",
        "iou_teachers",
        "val_acc_sd",
        "iou_teachers_sd",
        "n_seeds",
    ]
    assert len(points) == 16 and set(points["n_seeds"]) == {2}
    assert set(series_names(points)) == {"kd", "zscore_kd"}
    assert trial_label(trials, kd_axes=True).tolist() == trial_label(trials).tolist()
    fig = A.fig2_iou_vs_acc(trials)
    assert [t.name for t in fig.data] == ["kd", "zscore_kd"]
