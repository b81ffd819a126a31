"""Results and checkpoints through a pyarrow filesystem URI (``file://`` here; ``s3://`` and
``gs://`` take the same path through :class:`kd_ray.storage.Storage` and Ray's storage_path)."""

from __future__ import annotations

import os
import shutil

import pytest
from _sweep_helpers import table, uninterrupted_run

from kd_ray.errors import ResultsError
from kd_ray.storage import Storage, redact

TRIAL = "synthetic-T1w_Sw-kd-full-s0"


def test_storage_file_uri_round_trip(tmp_path):
    root = Storage.open(f"file://{tmp_path}/res")
    sweep = root.child("tiny")
    assert sweep.uri == f"file://{tmp_path}/res/tiny" and sweep.is_local
    root.makedirs()
    root.check_writable()
    sweep.write_bytes("a/b.txt", b"one")
    sweep.write_bytes("a/b.txt", b"two")  # replaced atomically, no temporary file left behind
    assert sweep.read_bytes("a/b.txt") == b"two"
    assert sweep.listdir("a") == ["b.txt"]
    assert (tmp_path / "res" / "tiny" / "a" / "b.txt").read_bytes() == b"two"


def test_storage_unwritable_uri_is_a_results_error(tmp_path):
    (tmp_path / "file").write_text("")
    with pytest.raises(ResultsError, match="cannot"):
        Storage.open(f"file://{tmp_path}/file/sub").makedirs()


SECRET = "wJalrXUtnFEMIK7MDENGbPxRfiCY"
S3_WITH_KEYS = f"s3://AKIDEXAMPLE:{SECRET}@bucket/runs?endpoint_override=127.0.0.1:9&scheme=http"


def test_s3_credentials_leave_the_uri_for_the_environment(monkeypatch):
    for var in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setattr("kd_ray.storage.CREDENTIAL_ENV", {})
    root = Storage.open(S3_WITH_KEYS)
    # What Tune's params, Ray's storage_path and every message are built from holds no secret...
    for uri in (root.uri, root.child("tiny", "_ray").uri, root.root):
        assert SECRET not in uri and "AKIDEXAMPLE" not in uri
    assert root.uri == "s3://bucket/runs?endpoint_override=127.0.0.1:9&scheme=http"
    # ...and the key pair reaches pyarrow (here and in Ray's workers) through the environment.
    assert os.environ["AWS_ACCESS_KEY_ID"] == "AKIDEXAMPLE" and os.environ["AWS_SECRET_ACCESS_KEY"] == SECRET
    assert root.fs.__reduce__()[1][0]["secret_key"] is None  # not baked into a picklable filesystem


def test_redact_and_refused_credentials():
    assert redact(f"cannot open {S3_WITH_KEYS!r}") == (
        "cannot open 's3://***@bucket/runs?endpoint_override=127.0.0.1:9&scheme=http'"
    )
    assert redact("gs://anonymous@bucket/x") == "gs://***@bucket/x"
    assert Storage.open("gs://anonymous@bucket/x").uri == "gs://anonymous@bucket/x"  # no secret: kept
    with pytest.raises(ResultsError, match=r"'gs://\*\*\*@bucket/x': credentials in the URI") as err:
        Storage.open("gs://user:pass@bucket/x")
    assert "pass" not in str(err.value)


def test_a_results_store_that_goes_away_is_a_results_error(tmp_path):
    sweep = Storage.open(f"file://{tmp_path}/res").child("tiny")
    sweep.write_bytes("trials.parquet/a.parquet", b"x")
    shutil.rmtree(tmp_path / "res")
    (tmp_path / "res").write_text("")  # the directory is gone and something else stands there
    for op in (
        lambda: sweep.write_bytes("trials.parquet/b.parquet", b"y"),
        lambda: sweep.read_bytes("trials.parquet/a.parquet"),
        sweep.check_writable,
    ):
        with pytest.raises(ResultsError, match=str(tmp_path / "res")):
            op()


@pytest.mark.slow
def test_sweep_to_file_uri():
    # The shared reference sweep ran with --results file://... (see _sweep_helpers).
    results = uninterrupted_run()
    output = (results.parent / "reference.log").read_text()
    assert f"results in file://{results}/tiny" in output
    sweep = results / "tiny"
    # Teacher weights, Tune state, the students' final weights (the Train runs' checkpoints are
    # deleted once their rows are written) and the report all went to the URI's directory.
    assert len(list((results / "_teachers").glob("*.pt"))) == 2
    assert (sweep / "_ray" / "teachers-1").is_dir() and (sweep / "_ray" / "groups-1").is_dir()
    assert len(list((sweep / "students").glob("*.pt"))) == 4
    assert (sweep / "config.yaml").exists() and (sweep / "report.html").exists()
    trials = table(sweep, "trials")
    assert len(trials) == 4 and (trials["status"] == "ok").all()
