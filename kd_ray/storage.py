"""Where results and checkpoints live: a local path or any URI pyarrow understands.

A sweep's results directory may be a plain path, ``file:///...``, or an object store
(``s3://bucket/prefix?endpoint_override=...``), so a cluster's workers and driver share one
place; the analysis (``load_results``) and ``kd-ray report`` read through it from the same
places. Writes are atomic: on a local filesystem a file is written under a temporary name and
renamed; object stores publish an object only when its upload completes.

Credentials never travel inside a URI. ``s3://KEY:SECRET@bucket/prefix`` works, but
:meth:`Storage.open` moves the key pair into this process's environment
(``AWS_ACCESS_KEY_ID``/``AWS_SECRET_ACCESS_KEY``, where pyarrow, Ray's storage and the workers
of the private local cluster started from here look) and keeps only ``s3://bucket/prefix`` as
the URI. So what Tune and Ray Train are given, save and print, and every kd_ray message, holds
no secret. A joined cluster (``RAY_ADDRESS``) is not given such credentials: Ray would keep
them in its runtime environment and logs; its nodes need credentials of their own.

Every failure of the filesystem (a store that became unreachable, a directory that was removed
or replaced mid-run) is a :class:`~kd_ray.errors.ResultsError` naming the path.
"""

from __future__ import annotations

import os
import posixpath
import re
import uuid
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import unquote

import pyarrow.fs as pafs

from kd_ray.errors import ResultsError, StorageError


def _is_uri(location: str) -> bool:
    return "://" in location


# scheme://user:password@ or scheme://user@ (the part a URI must not carry through kd_ray)
_USERINFO = re.compile(r"(?P<scheme>\b[A-Za-z][A-Za-z0-9+.-]*://)(?P<userinfo>[^/?#@\s]*)@")

# Environment variables that took credentials out of a results URI; passed on to Ray's workers.
CREDENTIAL_ENV: dict[str, str] = {}


def redact(text: str) -> str:
    """``text`` with the user info (credentials) of every URI in it replaced by ``***``."""
    return _USERINFO.sub(lambda m: f"{m['scheme']}***@", str(text))


def has_credentials(location: str) -> bool:
    """Whether ``location`` is a URI that carries a secret (``scheme://user:secret@...``)."""
    match = _USERINFO.match(str(location))
    return bool(match and ":" in match["userinfo"])


JOINED_CLUSTER_CREDENTIALS = (
    "results: credentials in the results URI are not passed to a joined Ray cluster (Ray would "
    "keep them in its runtime environment and logs); give the cluster's nodes their own "
    "credentials (environment or instance role) and use s3://BUCKET/... without them"
)


def _take_credentials(location: str) -> str:
    """``location`` without its userinfo; an S3 key pair in it moves into the environment.

    Raises:
        ResultsError: userinfo in a URI whose filesystem takes no credentials there.
    """
    match = _USERINFO.search(location)
    if not match or match.start() != 0 or ":" not in match["userinfo"]:
        return location  # no secret (a user name alone, as in gs://anonymous@ or hdfs://user@)
    clean = location[: match.end("scheme")] + location[match.end() :]
    key, _, secret = match["userinfo"].partition(":")
    if match["scheme"].lower() != "s3://":
        raise ResultsError(
            f"results: {redact(location)!r}: credentials in the URI are supported for s3://KEY:SECRET@... "
            "only; give them to the filesystem through its environment instead"
        )
    CREDENTIAL_ENV.update(AWS_ACCESS_KEY_ID=unquote(key), AWS_SECRET_ACCESS_KEY=unquote(secret))
    os.environ.update(CREDENTIAL_ENV)
    os.environ.pop("AWS_SESSION_TOKEN", None)  # belongs to other credentials, not to this pair
    return clean


def _fs_error(err: BaseException) -> str:
    return redact(" ".join(str(err).split()) or type(err).__name__)


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
            location = _take_credentials(location)
            try:
                fs, root = pafs.FileSystem.from_uri(location)
            except (OSError, ValueError) as err:  # ArrowInvalid is a ValueError
                raise StorageError(f"results: cannot open {location!r}: {_fs_error(err)}") from None
            return cls(fs, root.rstrip("/"), location.rstrip("/"))
        path = os.path.abspath(os.path.expanduser(location))
        return cls(pafs.LocalFileSystem(), path, path)

    @property
    def is_local(self) -> bool:
        return isinstance(self.fs, pafs.LocalFileSystem)

    @property
    def name(self) -> str:
        """The root's last component: a sweep's directory is named after the sweep."""
        return posixpath.basename(self.root)

    def parent(self) -> Storage:
        """Storage rooted at the directory above: where a file named by a location goes
        (``Storage.open("s3://b/p/report.html")``: ``.parent()`` writes ``.name`` there)."""
        root = posixpath.dirname(self.root)
        if _is_uri(self.uri):
            base, sep, query = self.uri.partition("?")
            return Storage(self.fs, root, posixpath.dirname(base) + (sep + query if sep else ""))
        return Storage(self.fs, root, root)

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
        try:
            return self.fs.get_file_info(self.path(name)).type != pafs.FileType.NotFound
        except OSError as err:
            raise StorageError(f"results: cannot look up {self.path(name)!r}: {_fs_error(err)}") from None

    def is_dir(self, name: str = "") -> bool:
        """Whether ``name`` is a directory (on an object store: a prefix with objects under it)."""
        try:
            return self.fs.get_file_info(self.path(name)).type == pafs.FileType.Directory
        except OSError as err:
            raise StorageError(f"results: cannot look up {self.path(name)!r}: {_fs_error(err)}") from None

    def makedirs(self, name: str = "") -> None:
        try:
            self.fs.create_dir(self.path(name), recursive=True)
        except OSError as err:
            raise StorageError(
                f"results: cannot create directory {self.path(name)!r}: {_fs_error(err)}"
            ) from None

    def listdir(self, name: str = "") -> list[str]:
        """Base names of the entries of a directory (empty if it does not exist)."""
        try:
            info = self.fs.get_file_info(pafs.FileSelector(self.path(name), allow_not_found=True))
        except OSError as err:
            raise StorageError(f"results: cannot list {self.path(name)!r}: {_fs_error(err)}") from None
        return sorted(posixpath.basename(i.path) for i in info)

    def read_bytes(self, name: str) -> bytes:
        try:
            with self.fs.open_input_stream(self.path(name)) as f:
                return f.read()
        except OSError as err:
            raise StorageError(f"results: cannot read {self.path(name)!r}: {_fs_error(err)}") from None

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
            raise StorageError(f"results: cannot write {target!r}: {_fs_error(err)}") from None

    def check_writable(self) -> None:
        """Fail early, with one line, if results cannot be written here."""
        probe = f".kd_ray_write_probe.{uuid.uuid4().hex}"
        self.write_bytes(probe, b"")
        try:
            self.fs.delete_file(self.path(probe))
        except OSError as err:
            raise StorageError(f"results: cannot delete {self.path(probe)!r}: {_fs_error(err)}") from None
