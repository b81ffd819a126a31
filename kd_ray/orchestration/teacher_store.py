"""Where trained teachers live: ``{results}/_teachers/``, shared by the sweeps of one results dir.

A teacher is stored as ``<teacher_id>.pt`` (weights, loaded with ``weights_only=True``) and
``<teacher_id>.json`` (its metrics), written in that order: the JSON is the commit marker, so a
teacher whose training was interrupted is never mistaken for a trained one. Because ids are
content hashes, a later sweep with an identical teacher reuses it instead of training it again;
the id is the stored teacher's fingerprint (:func:`kd_ray.plan.teacher_spec` hashes into it
everything that changes the weights, numerics included), and loading checks it.
"""

from __future__ import annotations

import json
from typing import Any

from torch import nn

from kd_ray.errors import CheckpointError
from kd_ray.plan import TeacherSpec
from kd_ray.storage import Storage
from kd_ray.train.checkpoint import (
    check_teacher,
    from_bytes,
    load_file,
    load_teacher_weights,
    save_to_storage,
    teacher_state,
)


class TeacherStore:
    def __init__(self, storage: Storage) -> None:
        self.storage = storage

    @classmethod
    def under(cls, results_root: Storage) -> TeacherStore:
        return cls(results_root.child("_teachers"))

    def weights_path(self, teacher_id: str) -> str:
        return self.storage.path(f"{teacher_id}.pt")

    def has(self, teacher_id: str) -> bool:
        return self.storage.exists(f"{teacher_id}.json")

    def info(self, teacher_id: str) -> dict[str, Any]:
        return json.loads(self.storage.read_bytes(f"{teacher_id}.json"))

    def save(self, model: nn.Module, spec: TeacherSpec, *, num_classes: int, info: dict[str, Any]) -> None:
        state = teacher_state(model, teacher_id=spec.teacher_id, arch=spec.arch, num_classes=num_classes)
        save_to_storage(self.storage, f"{spec.teacher_id}.pt", state)
        self.storage.write_bytes(f"{spec.teacher_id}.json", json.dumps(info, sort_keys=True).encode())

    def _load(self, teacher_id: str) -> dict[str, Any]:
        path = self.weights_path(teacher_id)
        if not self.storage.exists(f"{teacher_id}.pt"):
            raise CheckpointError(f"{path}: teacher checkpoint not found; it was not trained or was removed")
        if self.storage.is_local:  # straight from disk, not through a copy of the file in memory
            return load_file(path)
        return from_bytes(self.storage.read_bytes(f"{teacher_id}.pt"), path)

    def check(self, spec: TeacherSpec) -> None:
        """Check, without building a model, that the stored file is the teacher ``spec``.

        Raises:
            CheckpointError: the weights file is missing, unreadable, not a kd_ray teacher, or
                holds another teacher.
        """
        path = self.weights_path(spec.teacher_id)
        try:
            obj = self._load(spec.teacher_id)
        except CheckpointError:
            raise
        except Exception as err:  # torch's weights-only unpickler raises more than from_bytes expects
            raise CheckpointError(f"{path}: not a readable checkpoint ({type(err).__name__})") from None
        check_teacher(obj, teacher_id=spec.teacher_id, arch=spec.arch, source=path)

    def load_into(self, model: nn.Module, spec: TeacherSpec) -> nn.Module:
        """Load the trained weights of ``spec`` into ``model`` (frozen by the caller)."""
        load_teacher_weights(
            model,
            self._load(spec.teacher_id),
            teacher_id=spec.teacher_id,
            arch=spec.arch,
            source=self.weights_path(spec.teacher_id),
        )
        return model
