"""Metrics of the paper (docs/metrics.md; API: docs/metrics.md#python-api): plain functions and
the streaming per-split accumulator.

    from kd_ray import metrics
    metrics.top1_agreement(ensemble_logits, student_logits)

Metric names (and so Parquet columns) live in :mod:`kd_ray.metrics.names`. The functions and the
accumulator are imported on first use (PEP 562), so code that needs only the names (the results
schema, and through it ``kd-ray report`` and ``kd-ray status``) does not import torch.
"""

from __future__ import annotations

import importlib
from typing import Any

_WHERE = {
    "SplitMetrics": "accumulator",
    **{
        name: "functional"
        for name in (
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
            "top_k_accuracy",
        )
    },
}

__all__ = sorted(_WHERE)


def __getattr__(name: str) -> Any:
    if name not in _WHERE:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f"{__name__}.{_WHERE[name]}"), name)


def __dir__() -> list[str]:
    return sorted([*globals(), *__all__])
