"""``kd-ray report``: one self-contained, offline HTML file with the claims check and the paper's
figures and tables drawn from a sweep's own results.

plotly.js is embedded once in the page head and every figure is a bare ``<div>`` that uses it,
so the file opens without a network and stays a few MB however many figures it has. This is
the analysis package's I/O edge: it reads the results, calls the pure functions of
:mod:`kd_ray.analysis`, and writes the file atomically.
"""

from __future__ import annotations

import html
import logging
import os
from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from typing import TypeVar

import pandas as pd
import plotly.graph_objects as go
import plotly.io as pio
from plotly.offline import get_plotlyjs

from kd_ray import analysis as A
from kd_ray.analysis.claims import SUMMARY_COLUMNS
from kd_ray.errors import ResultsError
from kd_ray.storage import Storage

logger = logging.getLogger(__name__)

Built = TypeVar("Built")  # what a page section builds: a figure or a table

_CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:2rem auto;max-width:1280px;
padding:0 1rem;color:#222;line-height:1.45}
h1{margin-bottom:.2rem} h2{border-bottom:1px solid #ddd;padding-bottom:.2rem;margin-top:2.5rem}
table.kd-table{border-collapse:collapse;font-size:.85rem;margin:.8rem 0;display:block;overflow-x:auto}
table.kd-table th,table.kd-table td{border:1px solid #ddd;padding:.25rem .5rem;text-align:right}
table.kd-table th{background:#f5f5f5} td.text{text-align:left}
.verdict-supported{background:#e3f4e1} .verdict-contradicted{background:#fbe3e1}
.verdict-inconclusive{background:#f4f1e1}
p.nodata{color:#8a6d3b;background:#fcf8e3;border:1px solid #faebcc;padding:.5rem .8rem;border-radius:4px}
p.partial{font-weight:600;color:#31708f;background:#d9edf7;border:1px solid #bce8f1;padding:.6rem .9rem;
border-radius:4px}
.meta{color:#666;font-size:.9rem} details{margin:.5rem 0} pre{background:#f7f7f7;padding:.6rem;overflow-x:auto}
"""

_TEXT_COLUMNS = (
    "claim",
    "claim_text",
    "verdict",
    "statistic",
    "unit",
    "strata",
    "pooled",
    "robustness",
    "note",
)


def _fmt(value: object) -> str:
    if value is None or (isinstance(value, float) and value != value) or value is pd.NA:
        return "–"
    if isinstance(value, float):
        return f"{value:.3g}" if abs(value) < 1e-3 and value != 0 else f"{value:.4f}"
    return html.escape(str(value))


def _claims_html(claims: pd.DataFrame) -> str:
    head = "".join(f"<th>{html.escape(label)}</th>" for label in SUMMARY_COLUMNS.values())
    body = []
    for row in claims.to_dict("records"):
        cells = []
        for column in SUMMARY_COLUMNS:
            cls = "text" if column in _TEXT_COLUMNS else ""
            if column == "verdict":
                cls += f" verdict-{row['verdict']}"
            cells.append(f'<td class="{cls.strip()}">{_fmt(row[column])}</td>')
        body.append(f"<tr>{''.join(cells)}</tr>")
    return f'<table class="kd-table" id="claims"><thead><tr>{head}</tr></thead><tbody>{"".join(body)}</tbody></table>'


def _claims_method_html() -> str:
    """How the verdicts are reached, and why each claim is tested the way it is (docs/claims.md)."""
    per_claim = "".join(
        f"<li><b>{key}</b> · unit: {html.escape(c.unit)}. {html.escape(c.rationale)}</li>"
        for key, c in A.CLAIMS.items()
    )
    return (
        f"<p>The seven claims are one family, tested two-sided; a verdict is reached when its "
        f"<b>Holm-adjusted</b> p-value is below α = {A.ALPHA}, which holds the family-wise error rate at "
        f"{A.ALPHA} over the claims the sweep could test. <b>supported</b>: every part of the claim is "
        "significant in the paper's direction (intersection-union: the claim's p is its largest part p); "
        "<b>contradicted</b>: some part goes against it (Bonferroni within the claim); otherwise "
        "<b>inconclusive</b>, with the n that would detect the observed effect at 80% power (unadjusted α).</p>"
        "<p><b>Units.</b> A unit is a configuration, seeds averaged. The correlational claims (C1-C3, C6, C7) "
        "use vanilla-KD, full-view trials only, the paper's setting: a z-score student shares its teachers "
        "and its data stream with its vanilla twin, so teacher IoU and ensemble accuracy are the same "
        "measurement in both and would be counted twice. Z-score trials feed C5, the split view C4. "
        "Where the sweep varies τ, α or the student's lr (<code>grid.temperatures</code>, "
        "<code>grid.alphas</code>, <code>grid.student_lrs</code>), each value is its own condition, "
        "never a replicate: it is part of every unit and stratum, paired claims are tested within "
        "each value before the values are combined, and the strata column names the values.</p>"
        "<p><b>Correlations</b> are Spearman's ρ within strata, each stratum tested against its exact "
        "permutation distribution (Monte Carlo above 8 units); strata are combined by <b>weighted "
        "Stouffer</b> (weights √(n−1), the effect shown is the ρ of the strata weighted by n−1). Strata that "
        "share teacher models (same dataset and teacher architecture) form a block whose z-scores are "
        "averaged (variance at most 1 whatever their correlation); independent blocks add up. <b>Paired</b> "
        "claims use the Wilcoxon signed-rank test (level pairs ranked, not dropped) with the "
        "Hodges-Lehmann difference and show the paper's eq. 9; 'comparable generalisation' (C4) is an "
        "equivalence test (two one-sided Wilcoxon tests). A part whose effect and test point opposite "
        "ways decides nothing. CIs are 95% percentile intervals of a two-level bootstrap over "
        "configurations and seeds: they describe the effect, unadjusted for Holm and resampling strata "
        "independently, and never decide a verdict. MI is the "
        "Miller–Madow-corrected estimate; agreement and KL are against the mean of the teachers' logits "
        "(<code>agreement_probmean</code> / <code>kl_probmean</code> hold the probability-mean target).</p>"
        f"<details><summary>Why each claim is tested this way</summary><ul>{per_claim}</ul></details>"
    )


def _table_html(table: pd.DataFrame, table_id: str) -> str:
    return table.to_html(
        classes="kd-table", table_id=table_id, float_format=lambda v: f"{v:.4f}", na_rep="–", border=0
    )


class _Page:
    """Accumulates sections; figures and tables whose data is missing become a sentence."""

    def __init__(self) -> None:
        self.parts: list[str] = []
        self.n_figures = 0

    def add(self, markup: str) -> None:
        self.parts.append(markup)

    def _build(self, slug: str, build: Callable[[], Built]) -> Built | None:
        """``build()``, or None after a sentence saying why its data is missing (the page goes on)."""
        try:
            return build()
        except A.NoData as reason:
            self.parts.append(
                f'<p class="nodata" data-missing="{slug}">Not shown: {html.escape(str(reason))}.</p>'
            )
            return None

    def figure(self, slug: str, build: Callable[[], go.Figure]) -> None:
        fig = self._build(slug, build)
        if fig is None:
            return
        self.n_figures += 1
        div = pio.to_html(
            fig, full_html=False, include_plotlyjs=False, div_id=f"fig-{slug}", config={"responsive": True}
        )
        self.parts.append(f'<div class="kd-figure" data-figure="{slug}">{div}</div>')

    def table(self, slug: str, build: Callable[[], pd.DataFrame]) -> None:
        table = self._build(slug, build)
        if table is not None:
            self.parts.append(_table_html(table, f"table-{slug}"))


def partial_label(finished: int, planned: int) -> str:
    """What marks a report written while its sweep runs, in its banner and its title."""
    return f"partial: {finished} of {planned} trials finished"


def _partial_banner(finished: int, planned: int) -> str:
    written = datetime.now().astimezone().strftime("%Y-%m-%d %H:%M %Z")
    return (
        f'<p class="partial" id="partial">{partial_label(finished, planned)} · written {written} while '
        "the sweep runs. Figures, tables and verdicts cover the finished trials only and may change "
        "as more finish; the final report replaces this page when the sweep ends.</p>"
    )


def build_report_html(
    results: A.Results, config_text: str | None = None, *, planned_trials: int | None = None
) -> str:
    """The report page for loaded results: claims first, then the paper's order, then curves.

    ``planned_trials`` (the sweep's planned student trials) marks the page partial: a banner
    and the title say how many of them have finished, so nobody takes it for the final word.
    """
    t, page = results.trials, _Page()
    ok = t[t["status"] == "ok"]
    failed = t[t["status"] != "ok"]
    page.add(f"<h1>kd_ray report · {html.escape(results.name)}</h1>")
    if planned_trials is not None:
        page.add(_partial_banner(len(t), planned_trials))
    page.add(
        f'<p class="meta">{len(t)} student trials ({len(ok)} ok, {len(failed)} failed) · datasets: '
        f"{html.escape(', '.join(sorted(t['dataset'].unique())))} · teacher counts: "
        f"{', '.join(str(k) for k in sorted(t['n_teachers'].unique()))} · losses: "
        f"{html.escape(', '.join(sorted(t['loss'].unique())))} · views: {html.escape(', '.join(sorted(t['view'].unique())))} · "
        f"seeds: {t['seed'].nunique()} · {len(results.teachers)} teachers</p>"
    )
    page.add("<h2>Claims check</h2>")
    page.add(_claims_method_html())
    parts = A.claim_parts(t)
    page.add(_claims_html(A.summarize_claims(parts)))
    detail = parts.drop(columns=["claim_text", "expected_sign"]).set_index(["claim", "part", "role"])
    page.add(
        f"<details><summary>Every part of every claim</summary>{_table_html(detail, 'claim-parts')}</details>"
    )

    page.add("<h2>1 · Overview (Fig 1)</h2>")
    page.figure("fig1", lambda: A.fig1_overview(t))
    page.add("<h2>6.1 · Attention map diversity (Fig 2, Table 1, Fig D.6)</h2>")
    page.figure("fig2", lambda: A.fig2_iou_vs_acc(t))
    page.add("<h3>Table 1 · affinity and val accuracy</h3>")
    page.table("table1", lambda: A.table1_affinity_acc(t))
    page.figure("figD6", lambda: A.fig_d6_iou_vs_affinity(t))
    page.add("<h2>6.2 · Fidelity and mutual information (Fig 3, Fig B.5, Tables C.2-C.4)</h2>")
    page.figure("fig3", lambda: A.fig3_fidelity_mi(t))
    page.figure("figB5", lambda: A.fig_b5_kl(t))
    page.add("<h3>Tables C.2-C.4 · A/B test, vKD (full view) vs hKD (split view)</h3>")
    page.table("tableC", lambda: A.table_c_ab(t))
    page.add("<p>Eq. 9: p = #|fidelity(hKD) &gt; fidelity(vKD)| / Num over paired trials.</p>")
    page.table(
        "eq9",
        lambda: A.ab_p_values(t).set_index(["dataset", "teacher_arch", "student_arch", "n_teachers", "loss"]),
    )
    page.add("<h2>6.3 · Logit-matching optimisation (Fig 4)</h2>")
    page.figure("fig4", lambda: A.fig4_zscore_bars(t))
    page.add("<h2>Appendix E · Vision Transformers (Fig E.7)</h2>")
    page.figure("figE7", lambda: A.fig_e7_vit(t))
    page.add("<h2>Appendix F · three teachers (Fig F.8)</h2>")
    page.figure("figF8", lambda: A.fig_f8_three_teachers(t))
    page.add("<h2>Appendix G · best student per teacher count (Table G.5)</h2>")
    page.table("tableG5", lambda: A.table_g5_best(t).set_index(["method", "dataset"]))
    page.add("<h2>Appendix H · calibration and overfitting (Fig H.9, Table H.6)</h2>")
    page.figure("figH9top", lambda: A.fig_h9_entropy_gap(t))
    page.figure("figH9bottom", lambda: A.fig_h9_reliability(t, results.calibration))
    page.add("<h3>Table H.6 · ECE and affinity</h3>")
    page.table("tableH6", lambda: A.table_h6_ece_affinity(t))
    page.add("<h2>Per-trial epoch curves</h2><p>Choose a trial with the selector at the top right.</p>")
    page.figure("curves", lambda: A.epoch_curves(t, results.epochs))
    if not failed.empty:
        page.add("<h2>Failed trials</h2>")
        page.add(
            _table_html(
                failed[["trial_id", "perm", "loss", "view", "seed", "error"]].set_index("trial_id"), "failed"
            )
        )
    if config_text:
        page.add(
            f"<details><summary>Resolved sweep config</summary><pre>{html.escape(config_text)}</pre></details>"
        )
    title = f"kd_ray report · {results.name}"
    if planned_trials is not None:
        title += f" · {partial_label(len(t), planned_trials)}"
    title = html.escape(title)
    return (
        f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8"><title>{title}</title>'
        f'<style>{_CSS}</style><script type="text/javascript">{get_plotlyjs()}</script></head>'
        f'<body data-figures="{page.n_figures}">{"".join(page.parts)}</body></html>\n'
    )


def write_report(
    results_dir: str | Path, out: str | Path | None = None, *, planned_trials: int | None = None
) -> Path | str:
    """Write the HTML report of a sweep's results directory.

    Both ends go through :class:`kd_ray.storage.Storage`, so a sweep on S3 is reported without
    copying it first, and its report can stay beside it.

    Args:
        results_dir: ``RESULTS/N``, the directory a sweep wrote: a local path or a pyarrow
            filesystem URI (``file://``, ``s3://``, ``gs://``).
        out: the HTML file to write, a local path or URI; defaults to ``RESULTS/N/report.html``,
            wherever ``RESULTS`` is.
        planned_trials: the number of student trials the sweep plans, for a report written
            while it runs (:mod:`kd_ray.orchestration.live_report`): the page is marked
            "partial: N of M trials finished", N being the ``trials`` rows present. ``None``
            (the final report, ``kd-ray report``): no mark.

    Returns:
        The path written, or its URI (without credentials) when it is not on this machine.

    Raises:
        ResultsError: the results directory is missing or invalid, or ``out`` cannot be written.
    """
    sweep = Storage.open(results_dir)
    results = A.load_results(sweep)
    config = (
        sweep.read_bytes("config.yaml").decode("utf-8", "replace") if sweep.exists("config.yaml") else None
    )
    page = build_report_html(results, config, planned_trials=planned_trials)
    if out is None:
        target = sweep.child("report.html")
    else:
        target = Storage.open(out)
        if target.is_local and not os.path.isdir(target.parent().root):
            raise ResultsError(f"cannot write {target.root}: directory {target.parent().root} does not exist")
    # Storage writes atomically (locally a temporary file + rename, with the user's umask, so
    # the report is readable like any other output file; an object store publishes it whole).
    target.parent().write_bytes(target.name, page.encode("utf-8"))
    logger.debug("wrote %s", target.uri)
    return Path(target.root) if target.is_local else target.uri
