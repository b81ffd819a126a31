"""One student trial, distilled from two teachers, in plain PyTorch: no Ray, no Parquet.

This is the loop every sweep trial runs (``kd-ray sweep`` only spreads it over Ray workers and
writes the reports to Parquet), on a dataset and models small enough for seconds on a laptop CPU.
Read it first; then docs/experiments.md for the grid and docs/extending.md to add a loss.

    python examples/distill_one_trial.py
"""

import torch

from kd_ray.config import parse_config
from kd_ray.data import DATASETS
from kd_ray.plan import plan_sweep
from kd_ray.train.distill import DistillationRun
from kd_ray.train.runtime import Runtime
from kd_ray.train.teacher import TeacherRun

# A sweep config as a dict: the same keys as experiments/*.yaml. Synthetic 16x16 blobs and
# cnn_tiny keep this to seconds; {"name": "digits"} gives real (8x8) handwriting instead.
cfg = parse_config(
    {
        "name": "example",
        "datasets": [{"name": "synthetic", "num_train": 256, "num_val": 128}],
        "teacher": {"arch": "cnn_tiny", "train": {"epochs": 2, "batch_size": 32, "lr": 0.1}},
        "student": {"arch": "cnn_tiny", "train": {"epochs": 3, "batch_size": 32, "lr": 0.1}},
        "distill": {"temperature": 10.0, "alpha": 0.2},  # the paper's τ and α
        # One cell of the grid: T1 trained with strong, T2 with weak augmentation, the student
        # with weak (its augmentation decides the batches the teachers see during distillation).
        # A new loss is one registered function (docs/extending.md#add-a-loss) named here.
        "grid": {"teacher_counts": [2], "permutations": ["T1s_T2w_Sw"], "losses": ["kd"]},
    }
)
plan = plan_sweep(cfg)  # the distinct teachers, and the student trials that name them
datasets = DATASETS.get("synthetic")(cfg.datasets[0])
cpu = Runtime(torch.device("cpu"))

# Each teacher is trained once, on its own augmentation and seed, then frozen and shared.
teachers = {}
for spec in plan.teachers:
    teacher = TeacherRun(cfg, spec, datasets, cpu)
    for epoch in range(1, cfg.teacher.train.epochs + 1):
        teacher.run_epoch(epoch)
    teachers[spec.teacher_id] = teacher.model

# A run trains every trial of one stream group (same batches, teachers run once per batch);
# here the group is a single trial. It freezes the teachers, seeds the student from the stream
# and builds the trial's loss from LOSSES with the trial's τ and α (once; each batch then calls
# it). Per batch the teachers run once, then every student steps on their outputs. Reports are
# flat "split/metric" -> float dicts (docs/metrics.md): train metrics stream from the training
# batches, val/val_aug are passes.
trial = plan.trials[0]
run = DistillationRun(cfg, [trial], datasets, teachers, cpu)
for epoch in range(1, cfg.student.train.epochs + 1):
    report = run.run_epoch(epoch).reports[trial.trial_id]
    print(
        f"{trial.trial_id} epoch {epoch}: val_acc {report['val/acc']:.3f}"
        f"  agreement {report['train/agreement']:.3f}  iou_teachers {report['train/iou_teachers']:.3f}"
    )
