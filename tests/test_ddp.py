"""A 2-worker DDP trial reports the same metrics as a 1-worker trial (real Ray Train;
docs/metrics.md#ddp-reduction).

The 1-worker side is the shared reference sweep (``_sweep_helpers.uninterrupted_run``); the
2-worker side is the shared private-cluster sweep (``_private_sweep``), which reuses the
reference's teachers, so both students distil from the same teachers on the same data stream,
and only the number of DDP workers differs.
"""

from __future__ import annotations

import numpy as np
import pytest
from _private_sweep import TRIAL, private_sweep
from _sweep_helpers import table, uninterrupted_run

from kd_ray.metrics.names import SPLIT_METRICS

pytestmark = pytest.mark.slow


def test_two_workers_report_the_same_metrics_as_one() -> None:
    reference = uninterrupted_run()
    sweep = private_sweep()
    assert sweep.returncode == 0, sweep.output[-4000:]
    assert "teachers trained 0, reused 1" in sweep.stdout

    two = table(sweep.results / "tiny", "epochs").sort_values(["epoch", "split"]).reset_index(drop=True)
    one = table(reference / "tiny", "epochs")
    one = one[one["trial_id"] == TRIAL].sort_values(["epoch", "split"]).reset_index(drop=True)
    assert len(two) == len(one) == 4 * 3  # epochs x splits
    for column in (*SPLIT_METRICS, "acc_t1", "entropy_t1", "lr"):
        np.testing.assert_allclose(two[column], one[column], rtol=1e-5, atol=1e-6, err_msg=column)
