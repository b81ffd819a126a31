"""Turning a worker's flat per-epoch report into rows of the result tables of docs/results.md
(pure functions)."""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

from kd_ray.metrics.functional import NAN, affinity
from kd_ray.metrics.names import FAMILY_METRICS, SPLITS, TRIAL_SUMMARY_SOURCE, epoch_metrics, report_key
from kd_ray.plan import StudentTrial, TeacherSpec

_METRICS = epoch_metrics()

# A stream group's report holds every student's values as ``{trial_id}::{key}``. The three
# functions below are the only code that writes or reads that encoding.
TRIAL_SEP = "::"


def trial_keys(trial_id: str, values: Mapping[str, Any]) -> dict[str, Any]:
    """One trial's values as keys of its stream group's report (what :func:`trial_report` reads)."""
    return {f"{trial_id}{TRIAL_SEP}{k}": v for k, v in values.items()}


def trial_report(result: Mapping[str, Any], trial_id: str) -> dict[str, Any]:
    """One trial's values from a stream group's report (empty if it has none this epoch)."""
    prefix = trial_id + TRIAL_SEP
    return {k[len(prefix) :]: v for k, v in result.items() if k.startswith(prefix)}


def report_field(key: str) -> str:
    """The value's own name in a report key: ``val/acc`` for ``{trial_id}::val/acc`` and for a
    teacher's plain ``val/acc``."""
    return key.rpartition(TRIAL_SEP)[2]


def _value(report: Mapping[str, Any], key: str) -> float:
    v = report.get(key)
    return NAN if v is None else float(v)


def _metric(report: Mapping[str, Any], split: str, metric: str) -> float | None:
    """A metric's cell: NaN where the report lacks a metric every run measures (undefined, or
    no epoch yet), null where it lacks one only some families measure (docs/results.md#epochs:
    ``acc_top5`` outside the ImageNet family)."""
    key = report_key(split, metric)
    if metric in FAMILY_METRICS and report.get(key) is None:
        return None
    return _value(report, key)


def epoch_rows(trial_id: str, report: Mapping[str, Any]) -> list[dict[str, Any]]:
    """One ``epochs`` row per split of one epoch's report.

    ``seconds`` is per run, not per trial: the wall time of the epoch of the whole stream group
    the trial trained in (every student's training, then the ``val`` and ``val_aug`` passes), the
    same for every trial of the group (docs/results.md#epochs).
    """
    common = {
        "trial_id": trial_id,
        "epoch": int(report["epoch"]),
        "seconds": report.get("seconds"),
        "lr": report.get("lr"),
    }
    return [
        {**common, "split": split, **{m: _metric(report, split, m) for m in _METRICS}} for split in SPLITS
    ]


def calibration_rows(trial_id: str, report: Mapping[str, Any], n_bins: int) -> list[dict[str, Any]]:
    """The reliability-diagram bins of the report's epoch, bin m covering (m/M, (m+1)/M]."""
    rows = []
    for split in SPLITS:
        for b in range(n_bins):
            key = f"calibration/{split}/{b}"
            if f"{key}/count" not in report:
                continue
            rows.append(
                {
                    "trial_id": trial_id,
                    "split": split,
                    "bin": b,
                    "lower": b / n_bins,
                    "upper": (b + 1) / n_bins,
                    "count": int(round(report[f"{key}/count"])),
                    "acc": report[f"{key}/acc"],
                    "conf": report[f"{key}/conf"],
                }
            )
    return rows


def trial_row(
    trial: StudentTrial,
    *,
    teacher_arch: str,
    student_arch: str,
    report: Mapping[str, Any] | None,
    status: str,
    error: str | None,
    wall_s: float | None,
) -> dict[str, Any]:
    """The ``trials`` row of a finished (or failed) trial from its final-epoch report.

    ``wall_s`` is per run, not per trial: the driver's time from the start of the trial's run
    (its whole stream group) to its end, shared by every trial of the group (docs/results.md#trials).
    """
    report = report or {}
    row: dict[str, Any] = {
        "trial_id": trial.trial_id,
        "dataset": trial.dataset,
        "n_teachers": trial.n_teachers,
        "perm": trial.perm,
        "teacher_augs": trial.teacher_augs,
        "student_aug": trial.student_aug,
        "loss": trial.loss,
        "view": trial.view,
        "seed": trial.seed,
        "temperature": trial.temperature,
        "alpha": trial.alpha,
        "lr": trial.lr,
        "teacher_arch": teacher_arch,
        "student_arch": student_arch,
        "teacher_ids": list(trial.teacher_ids),  # slot order
        "status": status,
        "error": error or None,
        "epochs": int(report.get("epoch", 0)),
        "wall_s": wall_s,
    }
    for split in SPLITS:
        for m in _METRICS:
            row[f"{split}_{m}"] = _metric(report, split, m)
    for column, (split, metric) in TRIAL_SUMMARY_SOURCE.items():
        row[column] = _value(report, report_key(split, metric))
    row["gap"] = row["train_acc"] - row["val_acc"]
    val, val_aug = row["val_acc"], row["val_aug_acc"]
    row["affinity"] = affinity(val_aug, val) if val > 0 and not math.isnan(val_aug) else NAN
    return row


def teacher_fields(spec: TeacherSpec) -> dict[str, Any]:
    """What names one teacher, as its ``teachers`` row and its tracker run both record it.

    Every field of the spec but ``pretrained``, which each adds in its own form (a bool column
    in the table, the setting as text among a run's parameters); one function, so the table and
    the trackers cannot name a teacher differently.
    """
    return {
        "teacher_id": spec.teacher_id,
        "name": spec.name,
        "dataset": spec.dataset,
        "arch": spec.arch,
        "slot": spec.slot,
        "aug": spec.aug,
        "seed": spec.seed,
    }


def teacher_row(
    spec: TeacherSpec, *, info: Mapping[str, Any] | None, status: str, error: str | None, checkpoint: str
) -> dict[str, Any]:
    """The ``teachers`` row of one distinct teacher."""
    info = info or {}
    return {
        **teacher_fields(spec),
        "pretrained": bool(spec.pretrained),
        "status": status,
        "error": error or None,
        "epochs": info.get("epochs"),
        "train_acc": info.get("train_acc"),
        "val_acc": info.get("val_acc"),
        # Only teachers of the ImageNet family measure it (docs/results.md#teachers).
        "val_acc_top5": info.get("val_acc_top5"),
        "wall_s": info.get("wall_s"),
        "checkpoint": checkpoint,
    }
