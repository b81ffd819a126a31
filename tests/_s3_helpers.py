"""A real S3 API on this machine for the results-URI tests: moto's server mode on 127.0.0.1.

Each test module that needs S3 starts at most one server (``moto_server``), and reaches it the
way a user reaches a real store: pyarrow's S3 filesystem with an endpoint override, either in
the URI (``?endpoint_override=HOST:PORT&scheme=http``) or from the environment
(``AWS_ENDPOINT_URL``, which pyarrow and every AWS SDK read).
"""

from __future__ import annotations

import contextlib
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pyarrow.fs as pafs
from _sweep_helpers import PYTHON

# moto accepts any key pair; these only have to be the same on both sides.
KEY = "AKIDKDRAYTEST0001"
SECRET = "kdRaySecret/+x9Zq7Wv"  # '/' and '+' must be URL-quoted in a URI

# Variables through which other credentials (or a slow instance-metadata lookup) could reach
# the test's S3 client.
FOREIGN_AWS_ENV = ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_PROFILE")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def moto_server(timeout: float = 60) -> Iterator[str]:
    """Run moto's S3 server on a free port of 127.0.0.1; yields its endpoint ``HOST:PORT``."""
    port = free_port()
    server = subprocess.Popen(
        [str(Path(PYTHON).with_name("moto_server")), "-H", "127.0.0.1", "-p", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + timeout
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                if server.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"moto_server did not listen on 127.0.0.1:{port}") from None
                time.sleep(0.2)
        yield f"127.0.0.1:{port}"
    finally:
        server.kill()
        server.wait(timeout=30)


def s3_filesystem(endpoint: str, key: str = KEY, secret: str = SECRET) -> pafs.S3FileSystem:
    """The test's own client of the server (creates buckets, puts and reads objects)."""
    return pafs.S3FileSystem(
        access_key=key,
        secret_key=secret,
        endpoint_override=endpoint,
        scheme="http",
        allow_bucket_creation=True,
    )


def s3_env(endpoint: str, key: str = KEY, secret: str = SECRET) -> dict[str, str]:
    """Environment under which a plain ``s3://bucket/...`` URI reaches the server, as a user's
    shell would hold it for a store other than AWS."""
    return {
        "AWS_ACCESS_KEY_ID": key,
        "AWS_SECRET_ACCESS_KEY": secret,
        "AWS_ENDPOINT_URL": f"http://{endpoint}",
        "AWS_EC2_METADATA_DISABLED": "true",
    }
