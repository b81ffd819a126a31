"""SPEC §2: a 2-worker DDP trial reports the same metrics as a 1-worker trial (real Ray Train)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from _sweep_cli import run_cli, write_config

from kd_ray.metrics.names import SPLIT_METRICS

pytestmark = pytest.mark.slow


def _config(name: str, workers: int) -> dict:
    return {
        "name": name,
        "datasets": [{"name": "synthetic", "num_train": 128, "num_val": 64}],
        "teacher": {"arch": "cnn_tiny", "train": {"epochs": 1, "batch_size": 32, "lr": 0.05}},
        "student": {"arch": "cnn_tiny", "train": {"epochs": 2, "batch_size": 32, "lr": 0.05}},
        "grid": {"teacher_counts": [2], "losses": ["zscore_kd"], "permutations": ["T1w_T2s_Ss"]},
        "resources": {"num_workers": workers, "cpus_per_worker": 0.95},
    }


def test_two_workers_report_the_same_metrics_as_one(tmp_path: Path) -> None:
    results = tmp_path / "results"
    frames = {}
    for workers in (1, 2):
        config = write_config(tmp_path / f"ddp{workers}.yaml", _config(f"ddp{workers}", workers))
        proc = run_cli("sweep", str(config), "--results", str(results), "--no-report", "--quiet")
        assert proc.returncode == 0, proc.stderr[-3000:]
        frames[workers] = pd.read_parquet(results / f"ddp{workers}" / "epochs.parquet")
    one, two = (frames[w].sort_values(["epoch", "split"]).reset_index(drop=True) for w in (1, 2))
    assert len(one) == len(two) == 2 * 3
    for column in SPLIT_METRICS + ("acc_t1", "acc_t2", "entropy_t1", "entropy_t2"):
        np.testing.assert_allclose(two[column], one[column], rtol=1e-5, atol=1e-6, err_msg=column)
    # The second sweep found both teachers already trained by the first (content-hashed store).
    teachers = pd.read_parquet(results / "ddp2" / "teachers.parquet")
    assert len(teachers) == 2 and (teachers["status"] == "ok").all()
