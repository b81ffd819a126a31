"""Credentials in a results URI never reach Tune, Ray's files, logs or output (issue 9, item 15).

A sweep writes to ``s3://KEY:SECRET@bucket/...`` on a local S3 stand-in (moto's server): the
shared private-cluster sweep of ``_private_sweep``. The key pair is taken out of the URI into
the environment, so Tune's params, ``result.json``,
experiment state, the saved config, Ray's session logs and the CLI's output hold only
``s3://bucket/...`` (or ``s3://***@...`` where the user's own text is echoed).
"""

from __future__ import annotations

import socket
import subprocess
from pathlib import Path
from urllib.parse import quote

import pytest
from _private_sweep import private_sweep
from _s3_helpers import KEY, SECRET
from _sweep_helpers import (
    cli_env,
    kd_ray_cmd,
    ray_tmpdir,
    user_error_line,
    write_config,
)

pytestmark = pytest.mark.slow


def test_results_uri_credentials_are_never_written_or_printed():
    # The shared private-cluster sweep wrote into s3://KEY:SECRET@kdbucket/runs (in its config
    # file, the harder case: the config itself travels into Tune's params).
    sweep = private_sweep()
    secrets = [SECRET, quote(SECRET, safe=""), KEY]
    assert sweep.returncode == 0, sweep.output[-4000:]
    assert "results in s3://kdbucket/runs/tiny?endpoint_override=" in sweep.stdout
    for secret in secrets:
        assert secret not in sweep.output
    # Every object the sweep, Tune and Ray Train wrote to the bucket.
    names = "\n".join(sweep.objects)
    assert "params.json" in names and "result.json" in names and "tuner.pkl" in names
    assert any(name.endswith(".parquet") for name in sweep.objects)
    assert b"s3://***@kdbucket/runs" in sweep.objects["kdbucket/runs/tiny/config.yaml"]
    for name, data in sweep.objects.items():
        for secret in secrets:
            assert secret.encode() not in data, f"{secret!r} in {name}"
    # Ray's session logs of the private cluster.
    files = [path for path in sweep.ray_files.rglob("*") if path.is_file()]
    assert any(path.suffix in (".log", ".out", ".err") for path in files)
    for path in files:
        data = path.read_bytes()
        for secret in secrets:
            assert secret.encode() not in data, f"{secret!r} in {path}"


@pytest.mark.slow
def test_credentials_are_not_shipped_to_a_joined_cluster(tmp_path):
    # Ray would keep them in the job's runtime environment (and its agents' logs): refused
    # before anything is written, naming what to do instead.
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        env = {**cli_env(ray_tmpdir()), "RAY_ADDRESS": f"127.0.0.1:{listener.getsockname()[1]}"}
        uri = f"s3://{KEY}:{quote(SECRET, safe='')}@kdbucket/runs?endpoint_override=127.0.0.1:9&scheme=http"
        done = subprocess.run(
            kd_ray_cmd("sweep", str(write_config(tmp_path)), "--results", uri),
            capture_output=True,
            text=True,
            timeout=120,
            env=env,
            cwd=Path(__file__).resolve().parents[1],
        )
    assert done.returncode == 2
    line = user_error_line(done.stderr)
    assert "credentials in the results URI are not passed to a joined Ray cluster" in line
    assert SECRET not in done.stdout + done.stderr and quote(SECRET, safe="") not in done.stderr
