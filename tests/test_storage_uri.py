"""Results and checkpoints through a pyarrow filesystem URI (``file://`` here; ``s3://`` and
``gs://`` take the same path through :class:`kd_ray.storage.Storage` and Ray's storage_path)."""

from __future__ import annotations

import pandas as pd
import pytest
from _sweep_helpers import assert_same_results, run_cli, table, uninterrupted_run, write_config

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
def test_sweep_to_file_uri(tmp_path):
    results = tmp_path / "shared"
    config = write_config(tmp_path, {"grid": {"permutations": ["T1w_Sw"]}})
    done = run_cli("sweep", str(config), "--results", f"file://{results}", "-q")
    assert done.returncode == 0, (done.stdout + done.stderr)[-4000:]
    assert f"results in file://{results}/tiny" in done.stdout
    sweep = results / "tiny"
    # Teacher weights, Train checkpoints and Tune state all went to the URI's directory.
    assert len(list((results / "_teachers").glob("*.pt"))) == 1
    assert list((sweep / "_ray").glob("*/checkpoint_*"))  # the Train run of TRIAL's stream group
    assert (sweep / "config.yaml").exists() and (sweep / "report.html").exists()
    trials = pd.read_parquet(sweep / "trials.parquet")
    assert trials["status"].tolist() == ["ok"]
    reference = uninterrupted_run() / "tiny"
    ref = table(reference, "trials")
    assert_same_results(trials, ref[ref["trial_id"] == TRIAL], ["trial_id"])
