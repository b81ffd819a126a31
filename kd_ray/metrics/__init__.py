"""Metrics of the paper (docs/metrics.md; API: docs/metrics.md#python-api): plain functions and
the streaming per-split accumulator.

    from kd_ray import metrics
    metrics.top1_agreement(ensemble_logits, student_logits)

Metric names (and so Parquet columns) live in :mod:`kd_ray.metrics.names`.
"""

from __future__ import annotations

from kd_ray.metrics.accumulator import SplitMetrics
from kd_ray.metrics.functional import (
    affinity,
    attention_iou,
    calibration_curve,
    ensemble_log_probs,
    ensemble_logits,
    expected_calibration_error,
    mean_entropy,
    mean_kl,
    mutual_information,
    top1_agreement,
)

__all__ = [
    "SplitMetrics",
    "affinity",
    "attention_iou",
    "calibration_curve",
    "ensemble_log_probs",
    "ensemble_logits",
    "expected_calibration_error",
    "mean_entropy",
    "mean_kl",
    "mutual_information",
    "top1_agreement",
]
