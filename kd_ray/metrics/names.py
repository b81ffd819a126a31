"""The one place metric names are spelled, and so the Parquet columns (docs/metrics.md,
docs/results.md).

Workers report flat ``"{split}/{metric}"`` keys; the collector turns them into rows of
``epochs.parquet`` and into ``{split}_{metric}`` columns of ``trials.parquet``.
"""

from __future__ import annotations

from kd_ray.config import MAX_TEACHERS  # the grid's bound on teachers per trial

SPLITS: tuple[str, ...] = ("train", "val", "val_aug")

# Student-level metrics computed for every split (``loss`` is the distillation loss).
SPLIT_METRICS: tuple[str, ...] = (
    "acc",
    "loss",
    "agreement",
    "kl",
    "mi",
    "entropy",
    "ece",
    "iou_teachers",
    "iou_student",
    # Miller–Madow-corrected MI (``mi`` stays the paper's plug-in estimate).
    "mi_mm",
    # Against the mean of the teachers' probabilities (τ = 1), the target the KD loss pulls
    # towards; ``agreement`` and ``kl`` are against the mean of their logits.
    "agreement_probmean",
    "kl_probmean",
    # Top-1 accuracy of the teacher ensemble (mean of logits) on the batch as the teachers saw
    # it, i.e. under the trial's view.
    "acc_ensemble",
)
# Student-level metrics computed for every split only where the dataset's family asks for them:
# top-5 accuracy (docs/metrics.md#acc_top5) for the ImageNet family, whose 1000 (or many) classes
# make it the accuracy the literature reports beside top-1. Other families leave its columns
# null (not measured), where an undefined metric above is NaN.
TOP5_METRIC = "acc_top5"
TOP5_FAMILIES: tuple[str, ...] = ("imagenet", "imagenet_lt")
FAMILY_METRICS: tuple[str, ...] = (TOP5_METRIC,)
# Per-teacher metrics, suffixed with the teacher's slot: acc_t1, entropy_t2, ...
TEACHER_METRICS: tuple[str, ...] = ("acc", "entropy")

# docs/results.md#trials: the unprefixed final-epoch columns of trials.parquet and the split each
# comes from. The paper measures fidelity, attention and entropy "during KD training", so those
# come from the training stream; calibration is a held-out property, so ECE comes from ``val``.
TRIAL_SUMMARY_SOURCE: dict[str, tuple[str, str]] = {
    "val_acc": ("val", "acc"),
    "train_acc": ("train", "acc"),
    "agreement": ("train", "agreement"),
    "kl": ("train", "kl"),
    "mi": ("train", "mi"),
    "entropy": ("train", "entropy"),
    "ece": ("val", "ece"),
    "iou_teachers": ("train", "iou_teachers"),
    "iou_student": ("train", "iou_student"),
    "mi_mm": ("train", "mi_mm"),
    "agreement_probmean": ("train", "agreement_probmean"),
    "kl_probmean": ("train", "kl_probmean"),
    "ensemble_acc": ("train", "acc_ensemble"),
}


def computes_top5(family: str) -> bool:
    """Whether the runs of a dataset of ``family`` (``ImageDatasets.family``) measure top-5."""
    return family in TOP5_FAMILIES


def teacher_metric(metric: str, slot: int) -> str:
    """Name of a per-teacher metric, e.g. ``teacher_metric("acc", 1) == "acc_t1"``."""
    return f"{metric}_t{slot}"


def all_teacher_metrics() -> tuple[str, ...]:
    """Every per-teacher metric name for slots 1..MAX_TEACHERS."""
    return tuple(teacher_metric(m, s) for m in TEACHER_METRICS for s in range(1, MAX_TEACHERS + 1))


def epoch_metrics() -> tuple[str, ...]:
    """Every metric column of an ``epochs`` row (and, per split, of a ``trials`` row), in order."""
    return SPLIT_METRICS + FAMILY_METRICS + all_teacher_metrics()


def report_key(split: str, metric: str) -> str:
    """Key of a metric in a worker's per-epoch report."""
    return f"{split}/{metric}"
