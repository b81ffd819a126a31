"""A 2-worker DDP trial reports the same metrics as a 1-worker trial (real Ray Train;
docs/metrics.md#ddp-reduction).

The 1-worker side is the shared reference sweep (``_sweep_helpers.uninterrupted_run``); the
2-worker sweep reuses its teachers from the store, so both students distil from the same
teachers on the same data stream, and only the number of DDP workers differs.
"""

from __future__ import annotations

import numpy as np
import pytest
from _sweep_helpers import copy_teachers, run_cli, table, uninterrupted_run, write_config

from kd_ray.metrics.names import SPLIT_METRICS

pytestmark = pytest.mark.slow

TRIAL = "synthetic-T1s_Ss-kd-full-s0"


def test_two_workers_report_the_same_metrics_as_one(tmp_path) -> None:
    reference = uninterrupted_run()
    results = tmp_path / "results"
    copy_teachers(reference, results)
    config = write_config(
        tmp_path,
        {"grid": {"permutations": ["T1s_Ss"]}, "resources": {"num_workers": 2, "cpus_per_worker": 0.95}},
    )
    done = run_cli("sweep", str(config), "--results", str(results), "--no-report", "-q", shared=True)
    assert done.returncode == 0, (done.stdout + done.stderr)[-4000:]
    assert "teachers trained 0, reused 1" in done.stdout

    two = table(results / "tiny", "epochs").sort_values(["epoch", "split"]).reset_index(drop=True)
    one = table(reference / "tiny", "epochs")
    one = one[one["trial_id"] == TRIAL].sort_values(["epoch", "split"]).reset_index(drop=True)
    assert len(two) == len(one) == 4 * 3  # epochs x splits
    for column in (*SPLIT_METRICS, "acc_t1", "entropy_t1", "lr"):
        np.testing.assert_allclose(two[column], one[column], rtol=1e-5, atol=1e-6, err_msg=column)
