"""Model registry, factories, hook-based attention maps, and loading exported students.

Importing the package imports every family module, so ``MODELS`` is complete here::

    from kd_ray.models import create_model, list_models, capture_attention, load_student
    student = create_model("resnet18", num_classes=100)
    trained = load_student("results/demo/students/digits-T1s_Ss-kd-full-s0.pt")
"""

from __future__ import annotations

from kd_ray.models import resnet, small_cnn, vit
from kd_ray.models._registry import MODELS, ModelFactory, create_model, list_models
from kd_ray.models.attention import (
    ATTENTION,
    CAM_TARGETS,
    AttentionCapture,
    AttentionSpec,
    attention_spec,
    capture_attention,
    unwrap_model,
)
from kd_ray.models.export import load_student

__all__ = [
    "ATTENTION",
    "CAM_TARGETS",
    "MODELS",
    "AttentionCapture",
    "AttentionSpec",
    "ModelFactory",
    "attention_spec",
    "capture_attention",
    "create_model",
    "list_models",
    "load_student",
    "resnet",
    "small_cnn",
    "unwrap_model",
    "vit",
]
