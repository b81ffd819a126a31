"""Checkpoint files: trained teachers, exported students, and per-epoch training state for resume.

Everything is loaded with ``torch.load(..., weights_only=True)``: a checkpoint holds tensors,
numbers, strings and containers of them, never pickled code. A teacher file names the teacher it
holds, so a file that belongs to another teacher (or is not a kd_ray teacher at all) is refused
with one clear line instead of silently distilling from the wrong model.

Training state carries a *fingerprint* of everything that changes its numbers (see
:func:`kd_ray.plan.trial_fingerprint_content`): a checkpoint made under other settings is not
resumed. Files are written and read straight from disk (``torch.save`` to a path writes one
tensor at a time), never through an in-memory copy of the whole file: a stream group's state
is gigabytes.
"""

from __future__ import annotations

import io
import os
import posixpath
import uuid
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from kd_ray.errors import CheckpointError

if TYPE_CHECKING:
    from kd_ray.storage import Storage

TEACHER_FORMAT = "kd_ray.teacher.v1"
# v2: with what rebuilds the model (input channels, image size, dataset). A v1 student file
# holds weights that cannot be put back into a model without the sweep's config: it is refused.
STUDENT_FORMAT = "kd_ray.student.v2"
STUDENT_V1_FORMAT = "kd_ray.student.v1"
# What kd_ray.models.create_model needs to rebuild a student, and the type each must have.
STUDENT_MODEL_FIELDS: dict[str, type] = {
    "arch": str,
    "num_classes": int,
    "in_channels": int,
    "image_size": int,
}
# v2: with fingerprints. A v1 state (no fingerprint) is not resumed: nothing says what made it.
STATE_FORMAT = "kd_ray.train_state.v2"


def to_bytes(obj: dict[str, Any]) -> bytes:
    buf = io.BytesIO()
    torch.save(obj, buf)
    return buf.getvalue()


def _load_reason(err: BaseException) -> str:
    """The informative part of torch.load's error, one short line."""
    lines = [line.strip() for line in str(err).splitlines() if line.strip()]
    if not lines:
        return type(err).__name__
    # The weights-only unpickler leads with advice on weights_only=False (wrong here: a file
    # that fails the safe load is refused); its reason follows "WeightsUnpickler error:".
    for i, line in enumerate(lines):
        if line.startswith("Please file an issue") and "WeightsUnpickler error:" in line:
            rest = line.split("WeightsUnpickler error:", 1)[1].strip() or (
                lines[i + 1] if i + 1 < len(lines) else ""
            )
            return f"unpickling failed: {rest}"[:160]
    return lines[0][:160]


def from_bytes(data: bytes, source: str) -> dict[str, Any]:
    """Load a checkpoint safely; corrupt or non-checkpoint bytes raise CheckpointError."""
    try:
        obj = torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    except Exception as err:  # torch's weights-only unpickler raises many types on garbage
        raise CheckpointError(f"{source}: not a readable checkpoint ({_load_reason(err)})") from None
    if not isinstance(obj, dict):
        raise CheckpointError(f"{source}: not a kd_ray checkpoint (holds a {type(obj).__name__})")
    return obj


def save_file(obj: dict[str, Any], path: str) -> None:
    """``torch.save`` straight to ``path``: one tensor at a time, no second copy in memory."""
    torch.save(obj, path)


def load_file(path: str) -> dict[str, Any]:
    """Load a checkpoint file safely (``weights_only``) without reading it into memory first.

    Raises:
        CheckpointError: missing, unreadable or not a checkpoint.
    """
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # torch's weights-only unpickler raises many types on garbage
        raise CheckpointError(f"{path}: not a readable checkpoint ({_load_reason(err)})") from None
    if not isinstance(obj, dict):
        raise CheckpointError(f"{path}: not a kd_ray checkpoint (holds a {type(obj).__name__})")
    return obj


def save_to_storage(storage: Storage, name: str, obj: dict[str, Any]) -> None:
    """Write a checkpoint to ``storage`` atomically, streaming it to disk when storage is local.

    Local: ``torch.save`` to a temporary file beside the target (named like
    :meth:`kd_ray.storage.Storage.write_bytes`'s, so orphan clean-up finds it), then rename.
    Object stores publish an object only once its upload completes, so the bytes go in one put.
    """
    if not storage.is_local:
        storage.write_bytes(name, to_bytes(obj))
        return
    target = storage.path(name)
    parent = posixpath.dirname(target)
    storage.makedirs(posixpath.dirname(name))
    tmp = posixpath.join(parent, f".{posixpath.basename(target)}.{uuid.uuid4().hex}.tmp")
    try:
        save_file(obj, tmp)
        os.replace(tmp, target)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise


def fingerprint_problem(saved: Any, expected: Mapping[str, Mapping[str, Any]]) -> str | None:
    """Why a training state with fingerprints ``saved`` must not be resumed as ``expected``.

    Both map a member (a trial id, or ``teacher``) to ``{"digest": ..., "content": {...}}``;
    every expected member must be in ``saved`` with the same digest (extra saved members are
    fine: a group resumed with fewer unfinished trials). None if it may be resumed.
    """
    if not isinstance(saved, Mapping):
        return "it has no fingerprint (written by an older kd_ray)"
    for member, want in expected.items():
        have = saved.get(member)
        if not isinstance(have, Mapping) or "digest" not in have:
            return f"it holds no state for {member}"
        if have["digest"] != want["digest"]:
            old, new = have.get("content") or {}, want.get("content") or {}
            changed = sorted(k for k in set(old) | set(new) if old.get(k) != new.get(k))
            what = ", ".join(changed) if changed else "settings"
            return f"it was made with other settings for {member} (changed: {what})"
    return None


def _weights(model: nn.Module) -> dict[str, Any]:
    """The state dict of the model inside its DDP / torch.compile wrappers: the keys a bare
    model of the architecture loads."""
    # Imported here: kd_ray.models imports this module (load_student reads student files).
    from kd_ray.models import unwrap_model

    return unwrap_model(model).state_dict()


def teacher_state(model: nn.Module, *, teacher_id: str, arch: str, num_classes: int) -> dict[str, Any]:
    """A trained teacher as a self-describing checkpoint; ``teacher_id`` is its fingerprint (the
    id hashes everything that changes its weights). Tensors are the model's own, not copies."""
    return {
        "format": TEACHER_FORMAT,
        "teacher_id": teacher_id,
        "arch": arch,
        "num_classes": num_classes,
        "state_dict": _weights(model),
    }


def teacher_bytes(model: nn.Module, *, teacher_id: str, arch: str, num_classes: int) -> bytes:
    """A trained teacher as the bytes of a self-describing checkpoint file."""
    return to_bytes(teacher_state(model, teacher_id=teacher_id, arch=arch, num_classes=num_classes))


def student_state(
    model: nn.Module,
    *,
    trial_id: str,
    arch: str,
    num_classes: int,
    in_channels: int,
    image_size: int,
    dataset: str,
    fingerprint: Mapping[str, Any],
) -> dict[str, Any]:
    """A finished student's final weights alone (no optimiser state): small, kept after its
    training checkpoints are deleted, and enough to rebuild the model without the sweep
    (:func:`kd_ray.models.load_student`). ``image_size`` is the input resolution it was trained
    at (what ``create_model`` got); ``dataset`` the dataset key its inputs came from;
    ``fingerprint`` says what made the weights (its digest is also in the JSON sidecar)."""
    return {
        "format": STUDENT_FORMAT,
        "trial_id": trial_id,
        "arch": arch,
        "num_classes": num_classes,
        "in_channels": in_channels,
        "image_size": image_size,
        "dataset": dataset,
        "fingerprint": dict(fingerprint),
        "state_dict": _weights(model),
    }


def check_student(obj: Mapping[str, Any], source: str) -> None:
    """Refuse a loaded file that is not a student :func:`student_state` wrote, in one line.

    Raises:
        CheckpointError: another format (a teacher, a training state, an older student file) or
            a model field missing or mistyped.
    """
    fmt = obj.get("format")
    if fmt == STUDENT_V1_FORMAT:
        raise CheckpointError(
            f"{source}: a {STUDENT_V1_FORMAT} file from an older kd_ray; it lacks the input channels "
            "and image size that rebuild the model (run the trial again to export it anew)"
        )
    if fmt != STUDENT_FORMAT:
        raise CheckpointError(f"{source}: not a kd_ray student file (format {fmt!r})")
    for key, kind in STUDENT_MODEL_FIELDS.items():
        value = obj.get(key)
        if not isinstance(value, kind) or isinstance(value, bool):
            raise CheckpointError(f"{source}: its {key!r} is {value!r}, expected a {kind.__name__}")
    if not isinstance(obj.get("state_dict"), Mapping):
        raise CheckpointError(f"{source}: holds no state_dict")


def load_teacher_weights(
    model: nn.Module, data: bytes | dict[str, Any], *, teacher_id: str, arch: str, source: str
) -> None:
    """Load a teacher checkpoint (its bytes, or the loaded dict) into ``model``.

    Raises:
        CheckpointError: unreadable bytes, another format, another teacher, or weights that do
            not fit ``model``.
    """
    obj = data if isinstance(data, dict) else from_bytes(data, source)
    check_teacher(obj, teacher_id=teacher_id, arch=arch, source=source)
    load_weights(model, obj["state_dict"], arch=arch, source=source)


def check_teacher(obj: Mapping[str, Any], *, teacher_id: str, arch: str, source: str) -> None:
    """Refuse a loaded file that is not the teacher ``teacher_id`` of ``arch``, in one line: the
    one check of a teacher file, before its weights are loaded and when a sweep checks its store.

    Raises:
        CheckpointError: another format, or another teacher (its id is its fingerprint).
    """
    if obj.get("format") != TEACHER_FORMAT:
        raise CheckpointError(f"{source}: not a kd_ray teacher checkpoint (format {obj.get('format')!r})")
    if obj.get("teacher_id") != teacher_id or obj.get("arch") != arch:
        raise CheckpointError(
            f"{source}: holds teacher {obj.get('teacher_id')!r} ({obj.get('arch')}), "
            f"expected {teacher_id!r} ({arch}); delete it to retrain that teacher"
        )


def load_weights(model: nn.Module, state_dict: Any, *, arch: str, source: str) -> None:
    """``model.load_state_dict`` (strict), a mismatch being one CheckpointError line."""
    try:
        model.load_state_dict(state_dict)
    except (RuntimeError, KeyError, TypeError, AttributeError) as err:
        raise CheckpointError(
            f"{source}: weights do not fit {arch}: {str(err).splitlines()[0][:160]}"
        ) from None
