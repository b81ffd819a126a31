"""Analysis of a sweep's results: the paper's figures and tables, and a claims check.

Every function below takes DataFrames (from :func:`load_results`, or filtered by hand) and
returns a plotly Figure or a DataFrame without touching the disk; :mod:`kd_ray.report` writes
them to HTML. :func:`load_results` reads a sweep from a local path or any URI the sweep can write
to (``s3://...``), or several sweeps at once with a ``sweep`` column; the functions below take
one sweep's rows. A figure or table whose data the sweep lacks raises :class:`NoData` saying why.

=============================  ==========================================================
paper item                      function
=============================  ==========================================================
Fig 1 (middle, right)           :func:`fig1_overview`
Fig 2 (top)                     :func:`fig2_iou_vs_acc`
Fig 3                           :func:`fig3_fidelity_mi`
Fig 4                           :func:`fig4_zscore_bars`
Fig B.5                         :func:`fig_b5_kl`
Fig D.6                         :func:`fig_d6_iou_vs_affinity`
Fig E.7                         :func:`fig_e7_vit`
Fig F.8                         :func:`fig_f8_three_teachers`
Fig H.9 (top, bottom)           :func:`fig_h9_entropy_gap`, :func:`fig_h9_reliability`
Table 1                         :func:`table1_affinity_acc`
Tables C.2-C.4, eq. 9           :func:`table_c_ab`, :func:`ab_p_values`
Table G.5                       :func:`table_g5_best`
Table H.6                       :func:`table_h6_ece_affinity`
claims C1-C7                    :func:`claims_check`, :func:`claim_parts`
epoch curves                    :func:`epoch_curves`
=============================  ==========================================================
"""

from __future__ import annotations

from kd_ray.analysis.aggregate import NoData, seed_means, sort_perms
from kd_ray.analysis.claims import CLAIMS, claim_parts, claims_check, summarize_claims
from kd_ray.analysis.comparisons import epoch_curves, fig4_zscore_bars, fig_h9_reliability
from kd_ray.analysis.load import Results, load_results
from kd_ray.analysis.scatter import (
    fig1_overview,
    fig2_iou_vs_acc,
    fig3_fidelity_mi,
    fig_b5_kl,
    fig_d6_iou_vs_affinity,
    fig_e7_vit,
    fig_f8_three_teachers,
    fig_h9_entropy_gap,
)
from kd_ray.analysis.stats import ALPHA, eq9_p_value
from kd_ray.analysis.tables import (
    ab_p_values,
    table1_affinity_acc,
    table_c_ab,
    table_g5_best,
    table_h6_ece_affinity,
)

__all__ = [
    "ALPHA",
    "CLAIMS",
    "NoData",
    "Results",
    "ab_p_values",
    "claim_parts",
    "claims_check",
    "epoch_curves",
    "eq9_p_value",
    "fig1_overview",
    "fig2_iou_vs_acc",
    "fig3_fidelity_mi",
    "fig4_zscore_bars",
    "fig_b5_kl",
    "fig_d6_iou_vs_affinity",
    "fig_e7_vit",
    "fig_f8_three_teachers",
    "fig_h9_entropy_gap",
    "fig_h9_reliability",
    "load_results",
    "seed_means",
    "sort_perms",
    "summarize_claims",
    "table1_affinity_acc",
    "table_c_ab",
    "table_g5_best",
    "table_h6_ece_affinity",
]
