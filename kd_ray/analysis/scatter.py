"""The paper's scatter figures (Figs 1-3, B.5, D.6, E.7, F.8, H.9 top) from trial rows.

Every point is one configuration labelled with its trial name (``T1s_T2w_Ss``), at the mean
over seeds with ±1 sd error bars. Fidelity, MI, KL, entropy and IoU come from the unprefixed
trial columns, i.e. from the training stream: the paper plots them "during KD training".
Main-text figures use 2-teacher, full-view trials as the paper does; Appendix E takes the ViT
trials and Appendix F the 3-teacher ones. Where a sweep varies τ, α or lr, each value is its own
series (``kd · τ=4``) with its own points: seeds are averaged within a value, never across.
"""

from __future__ import annotations

from dataclasses import dataclass

import pandas as pd
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from kd_ray.analysis.aggregate import NoData, ok_trials, seed_means, series_names
from kd_ray.analysis.kd_axes import varied_kd_axes

AXIS_TITLES: dict[str, str] = {
    "val_acc": "student val accuracy",
    "iou_teachers": "IoU between teacher attentions (train)",
    "iou_student": "IoU teacher-student attention (train)",
    "agreement": "fidelity: top-1 agreement (train)",
    "mi": "mutual information, nats (train)",
    "kl": "KL(ensemble ‖ student), nats (train)",
    "entropy": "student entropy, nats (train)",
    "affinity": "affinity (val_aug acc / val acc)",
    "gap": "train − val accuracy gap",
    "ece": "ECE (val)",
}
_PALETTE = ("#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b", "#e377c2", "#17becf")


def is_vit(arch: pd.Series) -> pd.Series:
    """Whether an architecture name is a Vision Transformer (Appendix E)."""
    return arch.str.lower().str.contains("vit", regex=False)


@dataclass(frozen=True)
class _Trials:
    """Which successful full-view trials a figure plots, and how a NoData message names them."""

    n_teachers: int | None  # None: any teacher count
    vit: bool | None  # teachers are ViTs (True), CNNs (False), or either (None)
    what: str  # e.g. "with 2 CNN teachers"


# The main-text figures (2, 3, B.5, D.6) all plot the paper's 2-CNN-teacher trials.
_TWO_CNN_TEACHERS = _Trials(n_teachers=2, vit=False, what="with 2 CNN teachers")
_TWO_TEACHERS = _Trials(n_teachers=2, vit=None, what="with 2 teachers")
_THREE_TEACHERS = _Trials(n_teachers=3, vit=None, what="with 3 teachers")
_VIT_TEACHERS = _Trials(n_teachers=None, vit=True, what="with ViT teachers")
_ANY_TEACHERS = _Trials(n_teachers=None, vit=None, what="")


def _select(trials: pd.DataFrame, which: _Trials) -> pd.DataFrame:
    ok = ok_trials(trials)
    ok = ok[ok["view"] == "full"]
    if which.n_teachers is not None:
        ok = ok[ok["n_teachers"] == which.n_teachers]
    if which.vit is not None:
        ok = ok[is_vit(ok["teacher_arch"]) == which.vit]
    if ok.empty:
        raise NoData(
            " ".join(["no successful full-view trials", which.what, "in these results"]).replace("  ", " ")
        )
    return ok


def _add_points(
    fig: go.Figure,
    points: pd.DataFrame,
    x: str,
    y: str,
    row: int,
    col: int,
    legend: set[str],
    kd_axes: list[str],
) -> None:
    names = series_names(points, kd_axes)
    for i, name in enumerate(dict.fromkeys(names)):
        sel = points[names == name].dropna(subset=[x, y])
        if sel.empty:
            continue
        color = _PALETTE[i % len(_PALETTE)]
        fig.add_trace(
            go.Scatter(
                x=sel[x].tolist(),
                y=sel[y].tolist(),
                error_x={
                    "type": "data",
                    "array": sel[f"{x}_sd"].fillna(0).tolist(),
                    "visible": bool(sel[f"{x}_sd"].notna().any()),
                },
                error_y={
                    "type": "data",
                    "array": sel[f"{y}_sd"].fillna(0).tolist(),
                    "visible": bool(sel[f"{y}_sd"].notna().any()),
                },
                text=sel["perm"].tolist(),
                customdata=sel["n_seeds"].tolist(),
                mode="markers+text",
                textposition="top center",
                textfont={"size": 9},
                marker={"color": color, "size": 8},
                name=name,
                legendgroup=name,
                showlegend=name not in legend,
                hovertemplate=f"%{{text}}<br>{x}=%{{x:.4f}}<br>{y}=%{{y:.4f}}<br>seeds=%{{customdata}}<extra>{name}</extra>",
            ),
            row=row,
            col=col,
        )
        legend.add(name)


def scatter_grid(points: pd.DataFrame, panels: list[tuple[str, str]], title: str) -> go.Figure:
    """Rows of (x, y) metric panels, one column per dataset, one trace per series.

    Args:
        points: output of :func:`seed_means` holding every metric the panels name (and the
            KD axes it varies, which name the series).
        panels: (x metric, y metric) per row.
        title: figure title, naming the paper item it reproduces.
    """
    datasets = list(dict.fromkeys(points["dataset"]))
    fig = make_subplots(
        rows=len(panels),
        cols=len(datasets),
        column_titles=datasets,
        horizontal_spacing=0.08,
        vertical_spacing=0.12 if len(panels) > 1 else 0.1,
    )
    legend: set[str] = set()
    # Named over all panels, so a τ is in every point's series name once any dataset varies it.
    kd_axes = varied_kd_axes(points)
    for r, (x, y) in enumerate(panels, start=1):
        for c, dataset in enumerate(datasets, start=1):
            _add_points(fig, points[points["dataset"] == dataset], x, y, r, c, legend, kd_axes)
            fig.update_xaxes(title_text=AXIS_TITLES.get(x, x), row=r, col=c)
            if c == 1:
                fig.update_yaxes(title_text=AXIS_TITLES.get(y, y), row=r, col=c)
    fig.update_layout(
        title=title, height=380 * len(panels) + 80, template="plotly_white", legend_title_text="series"
    )
    return fig


def _figure(trials: pd.DataFrame, which: _Trials, panels: list[tuple[str, str]], title: str) -> go.Figure:
    selected = _select(trials, which)
    metrics = list(dict.fromkeys(m for panel in panels for m in panel))
    points = seed_means(selected, metrics)
    if points[metrics].isna().all().any():
        empty = [m for m in metrics if points[m].isna().all()]
        raise NoData(
            f"metric {', '.join(empty)} is NaN in every trial {which.what} (e.g. teacher IoU needs k ≥ 2)"
        )
    return scatter_grid(points, panels, title)


def fig1_overview(trials: pd.DataFrame) -> go.Figure:
    """Fig 1 (middle, right): teacher IoU and fidelity against student val accuracy.

    The paper's left panel (example attention maps) needs images, which results do not hold.
    """
    return _figure(
        trials,
        _TWO_TEACHERS,
        [("val_acc", "iou_teachers"), ("val_acc", "agreement")],
        "Fig 1 · teacher attention IoU and fidelity vs student accuracy (2 teachers, during KD training)",
    )


def fig2_iou_vs_acc(trials: pd.DataFrame) -> go.Figure:
    """Fig 2 (top): IoU between T1 and T2 attentions vs student val accuracy."""
    return _figure(
        trials,
        _TWO_CNN_TEACHERS,
        [("val_acc", "iou_teachers")],
        "Fig 2 · IoU between T1 and T2 attentions vs student val accuracy",
    )


def fig3_fidelity_mi(trials: pd.DataFrame) -> go.Figure:
    """Fig 3: fidelity (top-1 agreement, top) and mutual information (bottom) vs val accuracy."""
    return _figure(
        trials,
        _TWO_CNN_TEACHERS,
        [("val_acc", "agreement"), ("val_acc", "mi")],
        "Fig 3 · fidelity (top) and mutual information (bottom) vs student val accuracy",
    )


def fig_b5_kl(trials: pd.DataFrame) -> go.Figure:
    """Fig B.5: fidelity measured as KL(ensemble ‖ student) vs val accuracy (higher KL = lower fidelity)."""
    return _figure(
        trials,
        _TWO_CNN_TEACHERS,
        [("val_acc", "kl")],
        "Fig B.5 · KL divergence between teacher ensemble and student vs student val accuracy",
    )


def fig_d6_iou_vs_affinity(trials: pd.DataFrame) -> go.Figure:
    """Fig D.6: IoU between T1 and T2 attentions vs affinity (lower affinity = stronger augmentation)."""
    return _figure(
        trials,
        _TWO_CNN_TEACHERS,
        [("affinity", "iou_teachers")],
        "Fig D.6 · IoU between T1 and T2 attentions vs affinity",
    )


def fig_e7_vit(trials: pd.DataFrame) -> go.Figure:
    """Fig E.7: ViT teachers: fidelity (left) and teacher IoU (right) vs val accuracy."""
    selected = _select(trials, _VIT_TEACHERS)
    points = seed_means(selected, ["val_acc", "agreement", "iou_teachers"])
    fig = scatter_grid(points, [("val_acc", "agreement"), ("val_acc", "iou_teachers")], "")
    fig.update_layout(
        title="Fig E.7 · ViT teachers: fidelity (top) and teacher attention IoU (bottom) vs val accuracy"
    )
    return fig


def fig_f8_three_teachers(trials: pd.DataFrame) -> go.Figure:
    """Fig F.8: 3-teacher ensembles: teacher IoU, fidelity, MI and student entropy vs val accuracy."""
    return _figure(
        trials,
        _THREE_TEACHERS,
        [("val_acc", "iou_teachers"), ("val_acc", "agreement"), ("val_acc", "mi"), ("val_acc", "entropy")],
        "Fig F.8 · 3 teachers: teacher IoU, fidelity, MI and student entropy vs val accuracy",
    )


def fig_h9_entropy_gap(trials: pd.DataFrame) -> go.Figure:
    """Fig H.9 (top): student entropy vs overfitting (train − val accuracy gap), all teacher counts."""
    selected = _select(trials, _ANY_TEACHERS)
    points = seed_means(selected, ["gap", "entropy"])
    return scatter_grid(
        points, [("gap", "entropy")], "Fig H.9 (top) · student entropy vs train − val accuracy gap"
    )
