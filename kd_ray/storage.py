"""Where results and checkpoints live: a local path or any URI pyarrow understands.

A sweep's results directory may be a plain path, ``file:///...``, or an object store
(``s3://bucket/prefix?endpoint_override=...``), so a cluster's workers and driver share one
place. Writes are atomic: on a local filesystem a file is written under a temporary name and
renamed; object stores publish an object only when its upload completes.
"""

from __future__ import annotations

import os
import posixpath
import uuid
from dataclasses import dataclass
from pathlib import Path

import pyarrow.fs as pafs

from kd_ray.errors import ResultsError


def _is_uri(location: str) -> bool:
    return "://" in location


@dataclass(frozen=True)
class Storage:
    """A directory on some filesystem; paths below it are '/'-joined relative names."""

    fs: pafs.FileSystem
    root: str
    uri: str  # how Ray's storage_path and users see it

    @classmethod
    def open(cls, location: str | Path) -> Storage:
        """Storage at a local path or URI (the directory need not exist yet)."""
        location = str(location)
        if _is_uri(location):
            try:
                fs, root = pafs.FileSystem.from_uri(location)
            except (OSError, ValueError) as err:  # ArrowInvalid is a ValueError
                raise ResultsError(f"results: cannot open {location!r}: {err}") from None
            return cls(fs, root.rstrip("/"), location.rstrip("/"))
        path = os.path.abspath(os.path.expanduser(location))
        return cls(pafs.LocalFileSystem(), path, path)

    @property
    def is_local(self) -> bool:
        return isinstance(self.fs, pafs.LocalFileSystem)

    def child(self, *names: str) -> Storage:
        """Storage rooted at a subdirectory."""
        root = posixpath.join(self.root, *names)
        if _is_uri(self.uri):
            base, sep, query = self.uri.partition("?")
            uri = posixpath.join(base, *names) + (sep + query if sep else "")
        else:
            uri = root
        return Storage(self.fs, root, uri)

    def path(self, name: str = "") -> str:
        return posixpath.join(self.root, name) if name else self.root

    def exists(self, name: str = "") -> bool:
        return self.fs.get_file_info(self.path(name)).type != pafs.FileType.NotFound

    def makedirs(self, name: str = "") -> None:
        try:
            self.fs.create_dir(self.path(name), recursive=True)
        except OSError as err:
            raise ResultsError(f"results: cannot create directory {self.path(name)!r}: {err}") from None

    def listdir(self, name: str = "") -> list[str]:
        """Base names of the entries of a directory (empty if it does not exist)."""
        info = self.fs.get_file_info(pafs.FileSelector(self.path(name), allow_not_found=True))
        return sorted(posixpath.basename(i.path) for i in info)

    def read_bytes(self, name: str) -> bytes:
        with self.fs.open_input_stream(self.path(name)) as f:
            return f.read()

    def write_bytes(self, name: str, data: bytes) -> None:
        """Write a file so that readers see either the old or the new content, never half."""
        target = self.path(name)
        parent = posixpath.dirname(target)
        try:
            self.fs.create_dir(parent, recursive=True)
            if self.is_local:
                tmp = posixpath.join(parent, f".{posixpath.basename(target)}.{uuid.uuid4().hex}.tmp")
                with self.fs.open_output_stream(tmp) as f:
                    f.write(data)
                os.replace(tmp, target)
            else:
                with self.fs.open_output_stream(target) as f:
                    f.write(data)
        except OSError as err:
            raise ResultsError(f"results: cannot write {target!r}: {err}") from None

    def check_writable(self) -> None:
        """Fail early, with one line, if results cannot be written here."""
        probe = f".kd_ray_write_probe.{uuid.uuid4().hex}"
        self.write_bytes(probe, b"")
        self.fs.delete_file(self.path(probe))
