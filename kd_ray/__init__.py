"""kd_ray: distributed sweeps for ensemble knowledge-distillation studies on Ray.

The stable Python API (README.md#python-api; the metrics: docs/metrics.md#python-api) lives in
three submodules, imported on first use so that ``import kd_ray`` (and the CLI's ``--dry-run``)
stays cheap::

    from kd_ray import metrics, losses, data
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"
__all__ = ["data", "losses", "metrics"]


def __getattr__(name: str) -> Any:
    if name in __all__:
        return importlib.import_module(f"kd_ray.{name}")
    raise AttributeError(f"module 'kd_ray' has no attribute {name!r}")
