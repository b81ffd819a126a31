"""``kd-ray report`` and ``load_results`` on a sweep in an S3 store (issue 11, item 4).

The finished tiny sweep of ``uninterrupted_run()`` is copied into a bucket of a real S3 API on
127.0.0.1 (moto's server), without its report; from there it is read as a user would: the CLI
with a plain ``s3://bucket/prefix/NAME`` (endpoint and keys in the environment) or with the keys
in the URI, and ``load_results`` with the endpoint in the URI's query. Everything read from S3
must equal what the same sweep gives locally, byte for byte for the report.
"""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace
from urllib.parse import quote

import pandas as pd
import pyarrow.fs as pafs
import pytest
from _s3_helpers import FOREIGN_AWS_ENV, KEY, SECRET, moto_server, s3_env, s3_filesystem
from _sweep_helpers import cli_env, run_cli, uninterrupted_run, user_error_line

from kd_ray.analysis import load_results
from kd_ray.report import write_report

pytestmark = pytest.mark.slow

BUCKET = "kdlab"
PREFIX = f"{BUCKET}/runs"
# What a sweep leaves that the analysis reads; its report is left behind so that a report found
# in the bucket can only have been written by the test.
SWEEP_ENTRIES = ("config.yaml", "trials.parquet", "epochs.parquet", "teachers.parquet", "calibration.parquet")


@pytest.fixture(scope="module")
def store():
    """The tiny sweep, local and in the bucket (one moto server for the module)."""
    pytest.importorskip("moto")
    local = uninterrupted_run() / "tiny"
    with moto_server() as endpoint:
        s3 = s3_filesystem(endpoint)
        s3.create_dir(BUCKET)
        for entry in SWEEP_ENTRIES:
            pafs.copy_files(
                str(local / entry),
                f"{PREFIX}/tiny/{entry}",
                source_filesystem=pafs.LocalFileSystem(),
                destination_filesystem=s3,
            )
        yield SimpleNamespace(
            endpoint=endpoint,
            s3=s3,
            local=local,
            uri=f"s3://{PREFIX}/tiny",  # for a client whose environment names the endpoint
            query=f"?endpoint_override={endpoint}&scheme=http",  # for one whose does not
        )


@pytest.fixture(scope="module")
def local_page(store, tmp_path_factory) -> bytes:
    """The report of the local copy: what every report read from S3 must equal."""
    return write_report(store.local, tmp_path_factory.mktemp("local") / "report.html").read_bytes()


def _env(tmp_path: Path, **extra: str) -> dict[str, str]:
    env = cli_env(str(tmp_path / "ray"), **extra)
    for var in FOREIGN_AWS_ENV:
        if var not in extra:
            env.pop(var, None)
    return env


def test_kd_ray_report_on_an_s3_uri_writes_the_report_into_the_store(store, local_page, tmp_path):
    assert not store.s3.get_file_info(f"{PREFIX}/tiny/report.html").is_file
    done = run_cli("report", store.uri, timeout=300, env=_env(tmp_path, **s3_env(store.endpoint)))
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    assert done.stdout.strip().splitlines()[-1] == f"kd-ray: report: {store.uri}/report.html"
    with store.s3.open_input_stream(f"{PREFIX}/tiny/report.html") as f:
        assert f.read() == local_page


def test_kd_ray_report_with_keys_in_the_uri_writes_a_local_file(store, local_page, tmp_path):
    # No keys in the environment: only the URI carries them, and no output repeats them.
    env = _env(tmp_path, AWS_ENDPOINT_URL=f"http://{store.endpoint}", AWS_EC2_METADATA_DISABLED="true")
    uri = f"s3://{KEY}:{quote(SECRET, safe='')}@{PREFIX}/tiny"
    out = tmp_path / "tiny.html"
    done = run_cli("report", uri, "-o", str(out), timeout=300, env=env)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    assert done.stdout.strip().splitlines()[-1] == f"kd-ray: report: {out}"
    assert out.read_bytes() == local_page
    for secret in (SECRET, quote(SECRET, safe=""), KEY):
        assert secret not in done.stdout + done.stderr


def test_load_results_on_an_s3_uri_equals_the_local_load(store, local_page, monkeypatch):
    for var in FOREIGN_AWS_ENV:
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", KEY)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", SECRET)
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    monkeypatch.delenv("AWS_ENDPOINT_URL", raising=False)
    local = load_results(store.local)
    remote = load_results(store.uri + store.query)
    assert remote.name == local.name == "tiny"
    for table in ("trials", "epochs", "teachers", "calibration"):
        assert len(getattr(local, table)) > 0, table
        pd.testing.assert_frame_equal(getattr(remote, table), getattr(local, table), obj=table)
    # The same sweep from both places, told apart by a label.
    both = load_results({"s3": store.uri + store.query, "disk": f"file://{store.local}"})
    assert both.trials.groupby("sweep").size().to_dict() == {"s3": 4, "disk": 4}
    # -o to another place in the store: written whole, the URI returned without credentials.
    target = f"s3://{BUCKET}/shared/tiny.html{store.query}"
    assert write_report(store.uri + store.query, target) == target
    with store.s3.open_input_stream(f"{BUCKET}/shared/tiny.html") as f:
        assert f.read() == local_page


def test_a_missing_sweep_or_an_unknown_uri_is_one_line_and_exit_2(store, tmp_path):
    env = _env(tmp_path, **s3_env(store.endpoint))
    missing = run_cli("report", f"s3://{PREFIX}/nosuch", timeout=300, env=env)
    assert missing.returncode == 2
    line = user_error_line(missing.stderr)
    assert f"results directory s3://{PREFIX}/nosuch not found" in line, line
    unknown = run_cli("report", "nosuchfs://bucket/runs/tiny", timeout=300, env=env)
    assert unknown.returncode == 2
    line = user_error_line(unknown.stderr)
    assert "cannot open 'nosuchfs://bucket/runs/tiny'" in line, line
