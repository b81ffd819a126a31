"""Bar, reliability and epoch-curve figures: Fig 4, Fig H.9 (bottom) and per-trial curves.

Where a sweep varies τ, α or lr, each value is its own configuration: Fig 4 draws a panel per
value, the reliability diagrams a line per (k, value), and trial names carry the values.
"""

from __future__ import annotations

import itertools

import pandas as pd
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from kd_ray.analysis.aggregate import NoData, ok_trials, sort_perms, trial_label
from kd_ray.analysis.kd_axes import kd_label, seed_means_by_kd_axes, varied_kd_axes

_LOSS_NAMES = {"kd": "vKD", "zscore_kd": "z-score KD"}
_LOSS_COLORS = {"kd": "#1f77b4", "zscore_kd": "#ff7f0e"}


def fig4_zscore_bars(trials: pd.DataFrame) -> go.Figure:
    """Fig 4: vanilla KD vs z-score KD per trial: train − val gap (top) and fidelity (bottom).

    Only full-view configurations that ran with both losses are drawn, so each pair of bars
    differs in the loss alone (same teachers, seed stream and data order).
    """
    ok = ok_trials(trials)
    ok = ok[ok["view"] == "full"]
    points, axes = seed_means_by_kd_axes(ok, ["gap", "agreement"])
    pair_keys = ["dataset", "teacher_arch", "student_arch", "n_teachers", "perm", *axes]
    both = points.groupby(pair_keys)["loss"].transform(lambda s: {"kd", "zscore_kd"} <= set(s))
    points = points[both & points["loss"].isin(["kd", "zscore_kd"])]
    if points.empty:
        raise NoData("no configuration ran with both kd and zscore_kd losses in the full view")
    panel = points["dataset"].astype(str)
    if points[["teacher_arch", "student_arch"]].drop_duplicates().shape[0] > 1:
        panel = panel + " · " + points["teacher_arch"] + "→" + points["student_arch"]
    if axes:
        panel = panel + " · " + kd_label(points, axes)
    datasets = list(dict.fromkeys(panel))
    fig = make_subplots(rows=2, cols=len(datasets), column_titles=datasets, vertical_spacing=0.15)
    for c, dataset in enumerate(datasets, start=1):
        sel = points[panel == dataset]
        order = sort_perms(sel["perm"])
        for r, metric in enumerate(("gap", "agreement"), start=1):
            for loss in ("kd", "zscore_kd"):
                bars = sel[sel["loss"] == loss].set_index("perm").reindex(order)
                fig.add_trace(
                    go.Bar(
                        x=order,
                        y=bars[metric].tolist(),
                        error_y={"type": "data", "array": bars[f"{metric}_sd"].fillna(0).tolist()},
                        name=_LOSS_NAMES[loss],
                        legendgroup=loss,
                        showlegend=r == 1 and c == 1,
                        marker_color=_LOSS_COLORS[loss],
                    ),
                    row=r,
                    col=c,
                )
            title = "train − val accuracy gap" if metric == "gap" else "fidelity: top-1 agreement (train)"
            if c == 1:
                fig.update_yaxes(title_text=title, row=r, col=c)
    fig.update_layout(
        barmode="group",
        title="Fig 4 · vanilla KD vs z-score KD: generalisation gap (top) and fidelity (bottom)",
        height=760,
        template="plotly_white",
    )
    return fig


def fig_h9_reliability(trials: pd.DataFrame, calibration: pd.DataFrame, split: str = "val") -> go.Figure:
    """Fig H.9 (bottom): reliability diagrams per dataset, one line per teacher count.

    Bins are pooled over the full-view trials of a teacher count (count-weighted accuracy and
    confidence), so a line shows how calibrated students with k teachers are overall.
    """
    ok = ok_trials(trials)
    ok = ok[ok["view"] == "full"]
    # A line per teacher count, and per value of each varied KD axis (never pooled across them).
    ok = ok.assign(line=kd_label(ok, varied_kd_axes(ok)))[["trial_id", "dataset", "n_teachers", "line"]]
    bins = calibration[calibration["split"] == split].merge(ok, on="trial_id")
    bins = bins[bins["count"] > 0]
    if bins.empty:
        raise NoData(f"calibration.parquet has no non-empty {split} bins for successful full-view trials")
    bins = bins.assign(acc_n=bins["acc"] * bins["count"], conf_n=bins["conf"] * bins["count"])
    pooled = bins.groupby(["dataset", "n_teachers", "line", "bin"], as_index=False)[
        ["acc_n", "conf_n", "count"]
    ].sum()
    pooled["acc"] = pooled["acc_n"] / pooled["count"]
    pooled["conf"] = pooled["conf_n"] / pooled["count"]
    datasets = list(dict.fromkeys(pooled["dataset"]))
    fig = make_subplots(rows=1, cols=len(datasets), column_titles=datasets)
    colors = {1: "#2ca02c", 2: "#1f77b4", 3: "#d62728"}
    # Colour says k; the dash, the value of the varied KD axes.
    styles = itertools.cycle(("solid", "dash", "dot", "dashdot", "longdash"))
    dashes = {line: next(styles) for line in sorted(pooled["line"].unique())}
    for c, dataset in enumerate(datasets, start=1):
        fig.add_trace(
            go.Scatter(
                x=[0, 1],
                y=[0, 1],
                mode="lines",
                line={"dash": "dot", "color": "grey"},
                name="perfect calibration",
                showlegend=c == 1,
            ),
            row=1,
            col=c,
        )
        for (k, line), sel in pooled[pooled["dataset"] == dataset].groupby(["n_teachers", "line"]):
            sel = sel.sort_values("bin")
            fig.add_trace(
                go.Scatter(
                    x=sel["conf"].tolist(),
                    y=sel["acc"].tolist(),
                    mode="lines+markers",
                    name=f"{k} teacher{'s' if k > 1 else ''}" + (f" · {line}" if line else ""),
                    legendgroup=f"{k}{line}",
                    showlegend=c == 1,
                    marker_color=colors.get(int(k), "#555"),
                    line={"dash": dashes[line]},
                    customdata=sel["count"].tolist(),
                    hovertemplate="conf=%{x:.3f}<br>acc=%{y:.3f}<br>n=%{customdata}",
                ),
                row=1,
                col=c,
            )
        fig.update_xaxes(title_text="confidence", range=[0, 1], row=1, col=c)
    fig.update_yaxes(title_text="accuracy", range=[0, 1], row=1, col=1)
    fig.update_layout(
        title=f"Fig H.9 (bottom) · reliability diagrams ({split}), by teacher count",
        height=450,
        template="plotly_white",
    )
    return fig


CURVE_METRICS: tuple[str, ...] = ("acc", "agreement", "iou_teachers", "loss")
_SPLIT_COLORS = {"train": "#1f77b4", "val": "#d62728", "val_aug": "#2ca02c"}


def epoch_curves(
    trials: pd.DataFrame, epochs: pd.DataFrame, metrics: tuple[str, ...] = CURVE_METRICS
) -> go.Figure:
    """Epoch-by-epoch curves of one trial at a time, chosen with a dropdown (the trial selector).

    The figure holds one trace per (metric, split); each dropdown entry carries its trial's
    x/y arrays and swaps them in, so the selector works in a static HTML file and the figure
    grows with the data, not with trials × traces.
    """
    known = trials.set_index("trial_id")
    data = epochs[epochs["trial_id"].isin(known.index)]
    if data.empty:
        raise NoData("epochs.parquet holds no rows for these trials")
    labels = trial_label(known.reset_index()).set_axis(known.index)
    axes = varied_kd_axes(known)
    if axes:  # trials that differ only in τ, α or lr must not share a name
        labels = labels + " " + kd_label(known, axes)
    order = sorted(data["trial_id"].unique(), key=lambda t: labels[t])
    groups = {key: rows.sort_values("epoch") for key, rows in data.groupby(["trial_id", "split"], sort=False)}
    combos = [
        (m, split)
        for m in metrics
        for split in _SPLIT_COLORS
        if data.loc[data["split"] == split, m].notna().any()
    ]

    def arrays(trial_id: str) -> tuple[list[list], list[list]]:
        xs, ys = [], []
        for metric, split in combos:
            sel = groups.get((trial_id, split))
            xs.append([] if sel is None else sel["epoch"].tolist())
            ys.append([] if sel is None else sel[metric].tolist())
        return xs, ys

    fig = make_subplots(rows=2, cols=2, subplot_titles=list(metrics), vertical_spacing=0.14)
    xs, ys = arrays(order[0])
    shown: set[str] = set()
    for (metric, split), x, y in zip(combos, xs, ys, strict=True):
        i = metrics.index(metric)
        fig.add_trace(
            go.Scatter(
                x=x,
                y=y,
                mode="lines+markers",
                name=split,
                legendgroup=split,
                showlegend=split not in shown,
                line_color=_SPLIT_COLORS[split],
            ),
            row=i // 2 + 1,
            col=i % 2 + 1,
        )
        shown.add(split)
    buttons = []
    for trial_id in order:
        xs, ys = arrays(trial_id)
        buttons.append(
            {
                "label": labels[trial_id],
                "method": "update",
                "args": [{"x": xs, "y": ys}, {"title.text": f"Epoch curves · {labels[trial_id]}"}],
            }
        )
    fig.update_xaxes(title_text="epoch")
    fig.update_layout(
        title=f"Epoch curves · {labels[order[0]]}",
        updatemenus=[
            {
                "buttons": buttons,
                "direction": "down",
                "x": 1.0,
                "xanchor": "right",
                "y": 1.12,
                "yanchor": "bottom",
            }
        ],
        height=650,
        template="plotly_white",
    )
    return fig
