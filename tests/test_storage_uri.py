"""Results and checkpoints through a pyarrow filesystem URI (``file://`` here; ``s3://`` and
``gs://`` take the same path through :class:`kd_ray.storage.Storage` and Ray's storage_path)."""

from __future__ import annotations

import pytest
from _sweep_helpers import table, uninterrupted_run

from kd_ray.errors import ResultsError
from kd_ray.storage import Storage

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


@pytest.mark.slow
def test_sweep_to_file_uri():
    # The shared reference sweep ran with --results file://... (see _sweep_helpers).
    results = uninterrupted_run()
    output = (results.parent / "reference.log").read_text()
    assert f"results in file://{results}/tiny" in output
    sweep = results / "tiny"
    # Teacher weights, Train checkpoints, Tune state and the report all went to the URI's directory.
    assert len(list((results / "_teachers").glob("*.pt"))) == 2
    assert list((sweep / "_ray").glob("*/checkpoint_*"))
    assert (sweep / "config.yaml").exists() and (sweep / "report.html").exists()
    trials = table(sweep, "trials")
    assert len(trials) == 4 and (trials["status"] == "ok").all()
