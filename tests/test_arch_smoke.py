"""One real distillation step of every paper architecture pair, on CPU, at reduced resolution.

The paper-scale configs (``experiments/``) pair ResNet50 teachers with a ResNet18 student, and
ViT-B/32 teachers with a ViT-B/16 student, at 224 px on GPUs. Here the same
:class:`~kd_ray.train.distill.DistillationRun` trains each pair for one epoch of exactly one
batch of the ``synthetic`` dataset, upsampled from its native 16 px by the loop's own
``resize_batch``: teachers forward with attention hooks, student forward/backward, the loss, an
SGD step and every metric of docs/metrics.md on the three splits. It catches what a dry run
cannot — a model that does not build at a non-native size, attention hooks that miss a family, a
metric that breaks on a real forward pass — in seconds rather than GPU hours.
"""

from __future__ import annotations

import math

import pytest
import torch

from kd_ray.config import SweepConfig, parse_config
from kd_ray.data import DATASETS
from kd_ray.models import create_model
from kd_ray.plan import plan_sweep
from kd_ray.train.distill import DistillationRun
from kd_ray.train.runtime import Runtime

NUM_CLASSES = 4
PERM = "T1w_T2s_Sw"  # two teachers with different augmentations, so both IoUs are defined

# (teacher, student, image side or None for the native 16 px, batch, loss, view). The CIFAR-stem
# ResNets keep full resolution through layer1, so they run at the native 16 px. ViT sides are
# multiples of 32 (the B/32 patch); 64 px gives the teachers a 2x2 and the student a 4x4 attention
# grid, where 32 px would leave B/32 a single patch and a constant map. ViT-B models are ~86M
# parameters, so batch 2.
PAIRS = [
    ("resnet50", "resnet18", 32, 4, "kd", "full"),
    ("resnet50_cifar", "resnet18_cifar", None, 2, "kd", "full"),
    ("vit_b_32", "vit_b_16", 64, 2, "kd", "full"),
    ("cnn_small", "cnn_tiny", None, 4, "zscore_kd", "split"),
]


def _config(teacher: str, student: str, size: int | None, batch: int, loss: str, view: str) -> SweepConfig:
    dataset = {"name": "synthetic", "num_classes": NUM_CLASSES, "num_train": batch, "num_val": batch}
    if size is not None:
        dataset["image_size"] = size
    return parse_config(
        {
            "name": "arch_smoke",
            "datasets": [dataset],
            "teacher": {"arch": teacher},
            "student": {
                "arch": student,
                "train": {"epochs": 1, "batch_size": batch, "lr": 0.05, "schedule": {"kind": "constant"}},
            },
            "grid": {"teacher_counts": [2], "losses": [loss], "views": [view], "permutations": [PERM]},
        }
    )


def _head(model: torch.nn.Module) -> list[torch.Tensor]:
    """The classifier's weight and bias (the last parameters): every step's loss reaches them.

    Copying only these keeps the check cheap for ~86M-parameter ViTs.
    """
    return [p.detach().clone() for p in list(model.parameters())[-2:]]


@pytest.mark.parametrize(
    ("teacher", "student", "size", "batch", "loss", "view"), PAIRS, ids=[f"{t}->{s}" for t, s, *_ in PAIRS]
)
def test_one_distillation_step(
    teacher: str, student: str, size: int | None, batch: int, loss: str, view: str
) -> None:
    cfg = _config(teacher, student, size, batch, loss, view)
    (trial,) = plan_sweep(cfg).trials
    datasets = DATASETS.get("synthetic")(cfg.datasets[0])
    side = size or datasets.native_size
    torch.manual_seed(0)
    teachers = {
        tid: create_model(teacher, num_classes=NUM_CLASSES, in_channels=datasets.channels, image_size=side)
        for tid in trial.teacher_ids
    }
    run = DistillationRun(cfg, [trial], datasets, teachers, Runtime(torch.device("cpu")))
    assert len(run.loaders.train) == 1, "one epoch must be exactly one optimiser step"
    (student,) = run.students
    head_before = _head(student.model)

    result = run.run_epoch(1)
    report, calibration = result.reports[trial.trial_id], result.calibration[trial.trial_id]

    assert math.isfinite(report["train/loss"])
    assert all(not torch.equal(a, b) for a, b in zip(_head(student.model), head_before, strict=True))
    for t in run.teachers.values():  # frozen: no parameter asks for or received a gradient
        assert not t.training and all(not p.requires_grad and p.grad is None for p in t.parameters())
    for split in ("train", "val", "val_aug"):
        for metric in ("acc", "acc_t1", "acc_t2", "agreement", "ece", "iou_teachers", "iou_student"):
            assert 0.0 <= report[f"{split}/{metric}"] <= 1.0, (split, metric, report[f"{split}/{metric}"])
        for metric in ("loss", "kl", "mi", "entropy", "entropy_t1", "entropy_t2"):
            value = report[f"{split}/{metric}"]
            assert math.isfinite(value) and value >= 0.0, (split, metric, value)
        assert sum(row["count"] for row in calibration[split]) == batch
