"""Load an exported student: ``RESULTS/N/students/<trial_id>.pt`` back into a ready model.

A sweep exports each finished student's final weights with what rebuilds its network
(:func:`kd_ray.train.checkpoint.student_state`, docs/results.md#students), so a user gets a
trained student without the sweep's config, its Ray run state or its training checkpoints
(which are deleted once the student is exported). The file is read like every kd_ray
checkpoint, with ``torch.load(..., weights_only=True)``: it holds tensors and plain values,
never pickled code.
"""

from __future__ import annotations

import os
from typing import Any

from torch import nn

from kd_ray.errors import CheckpointError, ConfigError, StorageError
from kd_ray.models._registry import create_model
from kd_ray.storage import Storage
from kd_ray.train.checkpoint import check_student, from_bytes, load_file, load_weights


def load_student(path: str | os.PathLike[str]) -> nn.Module:
    """The student saved at ``path``, rebuilt, with its trained weights, in eval mode, on CPU.

    Args:
        path: a ``students/<trial_id>.pt`` file: a local path, or a URI that
            :class:`kd_ray.storage.Storage` opens (``file://``, ``s3://...``).

    Returns:
        The network ``kd_ray.models.create_model`` builds for the student's architecture, number
        of classes, input channels and training resolution, holding the saved weights. It
        expects inputs as the sweep fed it: normalised by the dataset's transform, at the
        recorded ``image_size``.

    Raises:
        CheckpointError: the file is missing, unreadable, not a kd_ray student file (a teacher,
            a training checkpoint, an older student format), names an unknown architecture, or
            holds weights that do not fit it. One line, naming the file.
    """
    state, source = _read(path)
    check_student(state, source)
    arch = state["arch"]
    try:
        model = create_model(
            arch,
            num_classes=state["num_classes"],
            in_channels=state["in_channels"],
            image_size=state["image_size"],
        )
    except ConfigError as err:  # e.g. an architecture this installation does not register
        raise CheckpointError(f"{source}: cannot rebuild its model: {err}") from None
    load_weights(model, state["state_dict"], arch=arch, source=source)
    return model.eval()


def _read(path: str | os.PathLike[str]) -> tuple[dict[str, Any], str]:
    """(the loaded file, how messages name it). A local file is loaded straight from disk; a
    remote one through Storage, whose URI for messages has any credentials taken out."""
    try:
        storage = Storage.open(path)
    except StorageError as err:  # its line names the location without credentials; ours might not
        raise CheckpointError(f"load_student: {_reason(err)}") from None
    if storage.is_local:
        return load_file(storage.root), storage.root
    source = storage.uri
    try:
        data = storage.parent().read_bytes(storage.name)
    except StorageError as err:
        raise CheckpointError(f"load_student: {_reason(err)}") from None
    return from_bytes(data, source), source


def _reason(err: StorageError) -> str:
    # Storage's lines speak of the results store ("results: cannot read 'PATH': ..."); here the
    # file is a student's, and the rest of the line already names it.
    return str(err).removeprefix("results: ")
