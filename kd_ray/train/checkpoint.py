"""Checkpoint files: trained teachers, and per-epoch training state for resume.

Everything is loaded with ``torch.load(..., weights_only=True)``: a checkpoint holds tensors,
numbers, strings and containers of them, never pickled code. A teacher file names the teacher it
holds, so a file that belongs to another teacher (or is not a kd_ray teacher at all) is refused
with one clear line instead of silently distilling from the wrong model.
"""

from __future__ import annotations

import io
from typing import Any

import torch
from torch import nn

from kd_ray.errors import CheckpointError

TEACHER_FORMAT = "kd_ray.teacher.v1"
STATE_FORMAT = "kd_ray.train_state.v1"


def to_bytes(obj: dict[str, Any]) -> bytes:
    buf = io.BytesIO()
    torch.save(obj, buf)
    return buf.getvalue()


def from_bytes(data: bytes, source: str) -> dict[str, Any]:
    """Load a checkpoint safely; corrupt or non-checkpoint bytes raise CheckpointError."""
    try:
        obj = torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    except Exception as err:  # torch's weights-only unpickler raises many types on garbage
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise CheckpointError(f"{source}: not a readable checkpoint ({first[:160]})") from None
    if not isinstance(obj, dict):
        raise CheckpointError(f"{source}: not a kd_ray checkpoint (holds a {type(obj).__name__})")
    return obj


def unwrap(model: nn.Module) -> nn.Module:
    """The model inside a DistributedDataParallel (or torch.compile) wrapper."""
    model = getattr(model, "module", model)
    return getattr(model, "_orig_mod", model)


def teacher_bytes(model: nn.Module, *, teacher_id: str, arch: str, num_classes: int) -> bytes:
    """A trained teacher as a self-describing checkpoint file."""
    state = {k: v.detach().cpu() for k, v in unwrap(model).state_dict().items()}
    return to_bytes(
        {
            "format": TEACHER_FORMAT,
            "teacher_id": teacher_id,
            "arch": arch,
            "num_classes": num_classes,
            "state_dict": state,
        }
    )


def load_teacher_weights(model: nn.Module, data: bytes, *, teacher_id: str, arch: str, source: str) -> None:
    """Load a teacher checkpoint into ``model``.

    Raises:
        CheckpointError: unreadable bytes, another format, another teacher, or weights that do
            not fit ``model``.
    """
    obj = from_bytes(data, source)
    if obj.get("format") != TEACHER_FORMAT:
        raise CheckpointError(f"{source}: not a kd_ray teacher checkpoint (format {obj.get('format')!r})")
    if obj.get("teacher_id") != teacher_id or obj.get("arch") != arch:
        raise CheckpointError(
            f"{source}: holds teacher {obj.get('teacher_id')!r} ({obj.get('arch')}), expected {teacher_id!r} ({arch})"
        )
    try:
        model.load_state_dict(obj["state_dict"])
    except (RuntimeError, KeyError, TypeError) as err:
        raise CheckpointError(
            f"{source}: weights do not fit {arch}: {str(err).splitlines()[0][:160]}"
        ) from None
