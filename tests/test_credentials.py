"""Credentials in a results URI never reach Tune, Ray's files, logs or output (issue 9, item 15).

A sweep writes to ``s3://KEY:SECRET@bucket/...`` on a local S3 stand-in (moto's server). The
key pair is taken out of the URI into the environment, so Tune's params, ``result.json``,
experiment state, the saved config, Ray's session logs and the CLI's output hold only
``s3://bucket/...`` (or ``s3://***@...`` where the user's own text is echoed).
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
from pathlib import Path
from urllib.parse import quote

import pytest
from _s3_helpers import KEY, SECRET, moto_server, s3_filesystem
from _sweep_helpers import (
    cli_env,
    kd_ray_cmd,
    kill_processes_under,
    ray_tmpdir,
    user_error_line,
    write_config,
)

pytestmark = pytest.mark.slow


@pytest.fixture
def s3_endpoint():
    pytest.importorskip("moto")
    with moto_server() as endpoint:
        yield endpoint


def _s3(endpoint: str):
    return s3_filesystem(endpoint, KEY, SECRET)


def test_results_uri_credentials_are_never_written_or_printed(tmp_path, s3_endpoint):
    import pyarrow.fs as pafs

    s3 = _s3(s3_endpoint)
    s3.create_dir("kdbucket")
    uri = f"s3://{KEY}:{quote(SECRET, safe='')}@kdbucket/runs?endpoint_override={s3_endpoint}&scheme=http"
    # In the config file, the harder case: the config itself travels into Tune's params.
    config = write_config(tmp_path, {"grid": {"permutations": ["T1w_Sw"]}, "results": uri})
    ray_tmp = ray_tmpdir()
    env = cli_env(ray_tmp)
    for var in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_PROFILE"):
        env.pop(var, None)
    env["AWS_EC2_METADATA_DISABLED"] = "true"
    try:
        done = subprocess.run(
            kd_ray_cmd("sweep", str(config), "--no-report"),
            capture_output=True,
            text=True,
            timeout=900,
            env=env,
            cwd=Path(__file__).resolve().parents[1],
        )
        secrets = [SECRET, quote(SECRET, safe=""), KEY]
        output = done.stdout + done.stderr
        assert done.returncode == 0, output[-4000:]
        assert "results in s3://kdbucket/runs/tiny?endpoint_override=" in done.stdout
        for secret in secrets:
            assert secret not in output
        # Every object the sweep, Tune and Ray Train wrote to the bucket.
        written = {
            info.path: s3.open_input_stream(info.path).read()
            for info in s3.get_file_info(pafs.FileSelector("kdbucket", recursive=True))
            if info.type == pafs.FileType.File
        }
        names = "\n".join(written)
        assert "params.json" in names and "result.json" in names and "tuner.pkl" in names
        assert (
            any(name.endswith(".parquet") for name in written) and "kdbucket/runs/tiny/config.yaml" in written
        )
        assert b"s3://***@kdbucket/runs" in written["kdbucket/runs/tiny/config.yaml"]
        for name, data in written.items():
            for secret in secrets:
                assert secret.encode() not in data, f"{secret!r} in {name}"
        # Ray's session logs of the private cluster.
        for folder, _, files in os.walk(ray_tmp):
            for file in files:
                path = os.path.join(folder, file)
                if os.path.islink(path) or not os.path.isfile(path) or file.endswith(".sock"):
                    continue
                with open(path, "rb") as f:
                    data = f.read()
                for secret in secrets:
                    assert secret.encode() not in data, f"{secret!r} in {path}"
    finally:
        kill_processes_under(ray_tmp)
        shutil.rmtree(ray_tmp, ignore_errors=True)


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
