"""The examples under examples/ run as a newcomer would run them, in a fresh interpreter."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"


@pytest.mark.timeout(300)
def test_distill_one_trial_runs_and_prints_val_accuracy() -> None:
    script = EXAMPLES / "distill_one_trial.py"
    # One intra-op thread: the example's models are tiny, and on a busy shared CPU a thread pool
    # that spins waiting for cores made it 4x slower here.
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run(
        [sys.executable, str(script)], capture_output=True, text=True, cwd=script.parent, env=env, timeout=240
    )
    assert done.returncode == 0, done.stderr[-2000:]
    accuracies = [float(a) for a in re.findall(r"val_acc (\d\.\d+)", done.stdout)]
    assert accuracies, done.stdout
    assert all(0.0 <= a <= 1.0 for a in accuracies)
