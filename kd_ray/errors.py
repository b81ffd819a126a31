"""User-facing error types.

Everything a user can get wrong (a config field, a data path, a checkpoint, a results
directory) raises a subclass of :class:`KdRayError` with a one-line message that names the
field or path and what was expected. The CLI prints that line and exits non-zero; any other
exception is a bug and keeps its traceback.
"""

from __future__ import annotations


class KdRayError(Exception):
    """Base class of errors caused by user input, reported as one line."""


class ConfigError(KdRayError):
    """A sweep config field is missing, unknown, mistyped or out of range."""


class DataError(KdRayError):
    """A dataset directory or file is missing or not in the expected layout."""


class CheckpointError(KdRayError):
    """A checkpoint is unreadable, corrupt, or belongs to another model."""


class ResultsError(KdRayError):
    """A results directory cannot be written, or holds results of another sweep."""


class ClusterError(KdRayError):
    """The Ray cluster cannot be reached, or can never give what the sweep's runs ask for."""


class StorageError(ResultsError, OSError):
    """The results store failed (unreachable, removed, not writable); also an ``OSError``, so
    code that handles filesystem errors keeps handling it."""


class LeaseHeld(ResultsError):
    """Another live driver holds the lease of this sweep or teacher (see
    :mod:`kd_ray.orchestration.lease`); ``holder`` says who."""

    def __init__(self, message: str, holder: object = None) -> None:
        super().__init__(message)
        self.holder = holder
