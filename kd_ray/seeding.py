"""Stable seeds derived from names, the basis of paired randomness
(docs/experiments.md#paired-randomness).

Python's ``hash`` is salted per process, so seeds are derived from a SHA-256 of the parts'
text instead: the same parts give the same seed on every machine, worker and restart.
"""

from __future__ import annotations

import hashlib


def stable_seed(*parts: object) -> int:
    """A 63-bit seed that depends only on the text of ``parts``."""
    text = "\x1f".join(str(p) for p in parts)
    return int.from_bytes(hashlib.sha256(text.encode()).digest()[:8], "big") >> 1


def stream_seed(dataset: str, student_aug: str, seed: int) -> int:
    """Seed of a student's data stream and initial weights.

    It depends on (dataset, student augmentation, seed) only, never on the teachers, the loss or
    the teacher view (which decides what the teachers see, not the student's data), so student
    trials that differ only in those see the same batches in the same order and start from the
    same weights (common random numbers).
    """
    return stable_seed("student-stream", dataset, student_aug, seed)
