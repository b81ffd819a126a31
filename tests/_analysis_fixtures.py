"""Hand-made result directories with the real schemas of docs/results.md, for the analysis tests.

``trial_row`` fills every column of ``trials.parquet`` from a few metrics, keeping the
unprefixed columns and their ``{split}_{metric}`` sources (``TRIAL_SUMMARY_SOURCE``) in step;
``write_results`` writes the four tables as directory datasets, one file per trial, exactly as
the collector does.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from kd_ray.metrics.names import TRIAL_SUMMARY_SOURCE
from kd_ray.results.schema import SCHEMAS


def perms(k: int) -> list[str]:
    """All 2^(k+1) trial names for k teachers (order irrelevant here)."""
    out = []
    for augs in itertools.product("ws", repeat=k + 1):
        out.append("_".join([f"T{i + 1}{a}" for i, a in enumerate(augs[:-1])] + [f"S{augs[-1]}"]))
    return out


def trial_row(
    *,
    perm: str,
    loss: str = "kd",
    view: str = "full",
    seed: int = 0,
    dataset: str = "digits",
    teacher_arch: str = "tiny_cnn",
    student_arch: str = "tiny_cnn",
    status: str = "ok",
    **metrics: float,
) -> dict:
    """One trials.parquet row; ``metrics`` are unprefixed names (val_acc, agreement, ...)."""
    row: dict = {name: None for name in SCHEMAS["trials"].names}
    augs = [p[-1] for p in perm.split("_")]
    k = len(augs) - 1
    row.update(
        trial_id=f"{dataset}-{teacher_arch}-{perm}-{loss}-{view}-{seed}",
        dataset=dataset,
        n_teachers=k,
        perm=perm,
        teacher_augs="".join(augs[:-1]),
        student_aug=augs[-1],
        loss=loss,
        view=view,
        seed=seed,
        teacher_arch=teacher_arch,
        student_arch=student_arch,
        teacher_ids=[f"t{i}{a}" for i, a in enumerate(augs[:-1], 1)],
        status=status,
        error="boom" if status == "failed" else None,
        epochs=3,
        wall_s=1.0,
    )
    for name in row:
        if row[name] is None and SCHEMAS["trials"].field(name).type == pa.float64():
            row[name] = math.nan
    if status != "ok":
        return row
    val_acc = metrics.pop("val_acc", 0.8)
    train_acc = metrics.pop("train_acc", val_acc + metrics.pop("gap", 0.1))
    affinity = metrics.pop("affinity", 0.9)
    row.update(val_acc=val_acc, train_acc=train_acc, gap=train_acc - val_acc, affinity=affinity)
    row["val_aug_acc"] = affinity * val_acc
    for column, (split, metric) in TRIAL_SUMMARY_SOURCE.items():
        if column in ("val_acc", "train_acc"):
            continue
        value = metrics.pop(column, 0.5 if not (column == "iou_teachers" and k == 1) else math.nan)
        row[column] = value
        row[f"{split}_{metric}"] = value
    # Split-prefixed columns given directly (val_iou_teachers, val_acc_ensemble, ...), and the
    # Miller-Madow MI whether or not it is a summary column of this schema.
    for column in [c for c in metrics if c.split("_", 1)[0] in ("train", "val") or c == "mi_mm"]:
        row[column] = metrics.pop(column)
        if column == "mi_mm":
            row["train_mi_mm"] = row[column]
    if metrics:
        raise TypeError(f"unknown metrics {sorted(metrics)}")
    return row


def epoch_rows(trial: dict, n_epochs: int = 3) -> list[dict]:
    """Epoch rows for a trial, rising towards its final values."""
    rows = []
    for epoch in range(1, n_epochs + 1):
        frac = epoch / n_epochs
        for split in ("train", "val", "val_aug"):
            row = {name: math.nan for name in SCHEMAS["epochs"].names}
            row.update(trial_id=trial["trial_id"], epoch=epoch, split=split, seconds=0.5, lr=0.1)
            for metric in (
                "acc",
                "agreement",
                "kl",
                "mi",
                "entropy",
                "ece",
                "iou_teachers",
                "iou_student",
                "loss",
            ):
                final = trial.get(f"{split}_{metric}", math.nan)
                if metric == "loss":
                    final = 1.0
                row[metric] = final * frac if final == final else math.nan
            rows.append(row)
    return rows


def calibration_rows(trial: dict, n_bins: int = 15) -> list[dict]:
    """Val calibration bins with accuracy a little below confidence (an over-confident student)."""
    rows = []
    for b in range(n_bins):
        conf = (b + 0.5) / n_bins
        rows.append(
            dict(
                trial_id=trial["trial_id"],
                split="val",
                bin=b,
                lower=b / n_bins,
                upper=(b + 1) / n_bins,
                count=10 + b,
                acc=max(0.0, conf - 0.05 * trial["n_teachers"] / 3),
                conf=conf,
            )
        )
    return rows


def _write(path: Path, table: str, groups: dict[str, list[dict]]) -> None:
    path.mkdir(parents=True, exist_ok=True)
    for i, rows in enumerate(groups.values()):
        pq.write_table(pa.Table.from_pylist(rows, schema=SCHEMAS[table]), path / f"part-{i:04d}.parquet")


def write_results(root: Path, trials: list[dict], *, epochs: bool = True, calibration: bool = True) -> Path:
    """Write a results directory ``root`` with one file per trial (and per teacher)."""
    root.mkdir(parents=True, exist_ok=True)
    _write(root / "trials.parquet", "trials", {t["trial_id"]: [t] for t in trials})
    ok = [t for t in trials if t["status"] == "ok"]
    if epochs:
        _write(root / "epochs.parquet", "epochs", {t["trial_id"]: epoch_rows(t) for t in ok})
    if calibration:
        _write(root / "calibration.parquet", "calibration", {t["trial_id"]: calibration_rows(t) for t in ok})
    teachers = {}
    for t in trials:
        for slot, tid in enumerate(t["teacher_ids"], 1):
            teachers[tid] = [
                dict(
                    teacher_id=tid,
                    name=f"T{slot}{tid[-1]}",
                    dataset=t["dataset"],
                    arch=t["teacher_arch"],
                    slot=slot,
                    aug=tid[-1],
                    seed=t["seed"],
                    pretrained=False,
                    status="ok",
                    error=None,
                    epochs=3,
                    train_acc=0.9,
                    val_acc=0.85,
                    wall_s=1.0,
                    checkpoint=f"/ckpt/{tid}.pt",
                )
            ]
    _write(root / "teachers.parquet", "teachers", teachers)
    (root / "config.yaml").write_text("name: fixture\n")
    return root


Story = Callable[[str, str, str, int, np.random.Generator], dict]


def paper_story(perm: str, loss: str, view: str, seed: int, rng: np.random.Generator) -> dict:
    """Metrics that follow the paper: strong student aug lowers affinity, which lowers teacher IoU,
    fidelity, MI and ECE and raises val accuracy; the split view lowers IoU and fidelity; z-score
    KD lowers the gap and fidelity."""
    augs = [p[-1] for p in perm.split("_")]
    k = len(augs) - 1
    mismatch = sum(a != augs[-1] for a in augs[:-1]) / k
    affinity = 0.98 - 0.08 * (augs[-1] == "s") - 0.03 * mismatch + rng.normal(0, 0.004)
    strength = 0.98 - affinity
    val_acc = 0.70 + 1.2 * strength + 0.01 * k + rng.normal(0, 0.003)
    split = view == "split"
    z = loss == "zscore_kd"
    iou = (0.3 + 2.0 * (affinity - 0.85) - 0.2 * split + rng.normal(0, 0.005)) if k > 1 else math.nan
    agreement = 0.95 - 1.5 * strength - 0.15 * split - 0.02 * z + rng.normal(0, 0.003)
    mi = 2.0 - 5 * strength + rng.normal(0, 0.01)
    return dict(
        affinity=affinity,
        val_acc=val_acc,
        gap=0.2 - 1.0 * strength - 0.03 * z + rng.normal(0, 0.003),
        iou_teachers=iou,
        iou_student=0.4 + rng.normal(0, 0.01),
        agreement=agreement,
        mi=mi,
        mi_mm=mi - 0.1,
        kl=0.1 + strength + rng.normal(0, 0.005),
        entropy=0.3 + 3 * strength + rng.normal(0, 0.01),
        ece=0.12 - 0.6 * strength - 0.02 * k + rng.normal(0, 0.002),
        val_iou_teachers=iou + 0.05 + rng.normal(0, 0.005),
        val_agreement=agreement + 0.02 + rng.normal(0, 0.003),
        val_mi_mm=mi + 0.05 + rng.normal(0, 0.01),
        val_acc_ensemble=0.85 - 0.01 * split + rng.normal(0, 0.002),
    )


# Measurements that depend on the teachers and the data stream but not on the student: a
# z-score student and its vanilla twin (same teachers, same stream) record the same number.
TEACHER_SIDE: tuple[str, ...] = ("iou_teachers", "val_iou_teachers", "val_acc_ensemble")
# Of those, the ones taken on the clean val split depend on the teachers alone: students of the
# same teachers under either augmentation (T1w_T2s_Sw and T1w_T2s_Ss) record the same number.
TEACHERS_ONLY: tuple[str, ...] = ("val_iou_teachers", "val_acc_ensemble")


def sweep(
    *,
    ks: tuple[int, ...] = (2,),
    losses: tuple[str, ...] = ("kd", "zscore_kd"),
    views: tuple[str, ...] = ("full",),
    seeds: tuple[int, ...] = (0,),
    datasets: tuple[str, ...] = ("digits",),
    teacher_arch: str = "tiny_cnn",
    story: Story = paper_story,
    rng_seed: int = 0,
) -> list[dict]:
    """Trial rows of a full grid whose metrics follow ``story``.

    Teacher-side measurements (:data:`TEACHER_SIDE`) are drawn once per (dataset, perm, view,
    seed) and shared by every loss, and those of the teachers alone (:data:`TEACHERS_ONLY`) once
    per (dataset, teacher augmentations, view, seed), shared by both student augmentations too,
    as a real sweep records them.
    """
    rng = np.random.default_rng(rng_seed)
    rows = []
    teacher_side: dict[tuple, dict] = {}
    for dataset, k, loss, view, seed in itertools.product(datasets, ks, losses, views, seeds):
        for perm in perms(k):
            metrics = story(perm, loss, view, seed, rng)
            shared = {m: metrics[m] for m in TEACHER_SIDE if m in metrics}
            metrics |= teacher_side.setdefault((dataset, perm, view, seed), shared)
            teachers = perm.rsplit("_", 1)[0]
            alone = {m: metrics[m] for m in TEACHERS_ONLY if m in metrics}
            metrics |= teacher_side.setdefault((dataset, teachers, view, seed), alone)
            rows.append(
                trial_row(
                    perm=perm,
                    loss=loss,
                    view=view,
                    seed=seed,
                    dataset=dataset,
                    teacher_arch=teacher_arch,
                    **metrics,
                )
            )
    return rows
