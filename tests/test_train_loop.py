"""The plain-PyTorch loops: determinism, paired randomness, schedules, checkpoints (no Ray)."""

from __future__ import annotations

import math

import pytest
import torch

from kd_ray.config import ScheduleConfig, parse_config
from kd_ray.data import DATASETS
from kd_ray.errors import CheckpointError
from kd_ray.models import create_model
from kd_ray.plan import plan_sweep
from kd_ray.train.checkpoint import load_teacher_weights, teacher_bytes
from kd_ray.train.distill import Diverged, DistillationRun
from kd_ray.train.optim import lr_factor
from kd_ray.train.runtime import Runtime
from kd_ray.train.teacher import TeacherRun

CFG = {
    "name": "loop",
    "datasets": [{"name": "synthetic", "num_train": 64, "num_val": 32}],
    "teacher": {"arch": "cnn_tiny", "train": {"epochs": 1, "batch_size": 16, "lr": 0.05}},
    "student": {"arch": "cnn_tiny", "train": {"epochs": 2, "batch_size": 16, "lr": 0.05}},
    "grid": {"teacher_counts": [2], "losses": ["kd", "zscore_kd"]},
}
CPU = Runtime(torch.device("cpu"))


@pytest.fixture(scope="module")
def setup():
    cfg = parse_config(CFG)
    plan = plan_sweep(cfg)
    datasets = DATASETS.get("synthetic")(cfg.datasets[0])
    teachers = {}
    for spec in plan.teachers:
        run = TeacherRun(cfg, spec, datasets, CPU)
        run.run_epoch(1)
        teachers[spec.teacher_id] = run.model
    return cfg, plan, datasets, teachers


def _run(setup, trial_index: int, epochs: int = 2):
    cfg, plan, datasets, teachers = setup
    trial = plan.trials[trial_index]
    run = DistillationRun(cfg, trial, datasets, [teachers[t] for t in trial.teacher_ids], CPU)
    return run, [run.run_epoch(e)[0] for e in range(1, epochs + 1)]


def _metrics(report: dict) -> dict:
    return {k: v for k, v in report.items() if k != "seconds"}


def test_same_trial_and_seed_give_identical_metrics(setup) -> None:
    _, first = _run(setup, 0)
    _, second = _run(setup, 0)
    assert [_metrics(r) for r in first] == [_metrics(r) for r in second]
    assert 0.0 <= first[-1]["val/acc"] <= 1.0 and math.isfinite(first[-1]["train/loss"])


def test_trials_differing_only_in_loss_see_the_same_stream(setup) -> None:
    cfg, plan, *_ = setup
    kd, zs = plan.trials[0], plan.trials[1]
    assert (kd.perm, kd.loss, zs.perm, zs.loss) == (kd.perm, "kd", kd.perm, "zscore_kd")
    run_kd, _ = _run(setup, 0, epochs=0)
    run_zs, _ = _run(setup, 1, epochs=0)
    for a, b in zip(run_kd.student.state_dict().values(), run_zs.student.state_dict().values(), strict=True):
        assert torch.equal(a, b)  # same initial weights
    run_kd.loaders.set_epoch(1)
    run_zs.loaders.set_epoch(1)
    for (xa, ya), (xb, yb) in zip(run_kd.loaders.train, run_zs.loaders.train, strict=True):
        assert torch.equal(xa, xb) and torch.equal(ya, yb)


def test_checkpoint_round_trip_continues_identically(setup) -> None:
    _, uninterrupted = _run(setup, 2, epochs=2)
    first, _ = _run(setup, 2, epochs=1)
    state = first.state_dict()
    cfg, plan, datasets, teachers = setup
    trial = plan.trials[2]
    resumed = DistillationRun(cfg, trial, datasets, [teachers[t] for t in trial.teacher_ids], CPU)
    resumed.load_state_dict(state)
    assert _metrics(resumed.run_epoch(2)[0]) == _metrics(uninterrupted[1])


def test_divergence_is_detected_on_the_epoch_loss(setup) -> None:
    cfg, plan, datasets, teachers = setup
    hot = parse_config({**CFG, "student": {"arch": "cnn_tiny", "train": {"epochs": 1, "batch_size": 16, "lr": 1e12}}})
    trial = plan.trials[0]
    run = DistillationRun(hot, trial, datasets, [teachers[t] for t in trial.teacher_ids], CPU)
    with pytest.raises(Diverged):
        run.run_epoch(1)


def test_teacher_checkpoint_refuses_another_teacher(setup) -> None:
    model = create_model("cnn_tiny", num_classes=4, in_channels=3)
    data = teacher_bytes(model, teacher_id="a", arch="cnn_tiny", num_classes=4)
    load_teacher_weights(model, data, teacher_id="a", arch="cnn_tiny", source="a.pt")
    with pytest.raises(CheckpointError, match="holds teacher 'a'"):
        load_teacher_weights(model, data, teacher_id="b", arch="cnn_tiny", source="b.pt")
    with pytest.raises(CheckpointError, match="not a readable checkpoint"):
        load_teacher_weights(model, b"garbage", teacher_id="a", arch="cnn_tiny", source="g.pt")
    with pytest.raises(CheckpointError, match="do not fit"):
        other = create_model("cnn_small", num_classes=4, in_channels=3)
        load_teacher_weights(other, data, teacher_id="a", arch="cnn_tiny", source="a.pt")


def test_step_schedule_with_warmup() -> None:
    s = ScheduleConfig(kind="step", milestones=(3, 5), gamma=0.1, warmup_epochs=2)
    factors = [lr_factor(s, e, 6, 0.1) for e in range(6)]
    assert factors == pytest.approx([0.5, 1.0, 1.0, 0.1, 0.1, 0.01])


def test_cosine_schedule_reaches_eta_min() -> None:
    s = ScheduleConfig(kind="cosine", t_max=4, eta_min=0.01)
    factors = [lr_factor(s, e, 4, 0.1) for e in range(5)]
    assert factors[0] == pytest.approx(1.0) and factors[2] == pytest.approx(0.55)
    assert factors[4] == pytest.approx(0.1)  # eta_min / base lr
