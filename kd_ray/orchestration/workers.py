"""Ray Train worker loops: plain training runs plus per-epoch report and checkpoint.

Every rank calls ``ray.train.report`` once per epoch (it is a barrier); rank 0 attaches the
checkpoint. Metrics are already reduced across ranks by the runs, so rank 0's report is the
trial's. On restart (worker fault, driver resume) the loop continues from the latest checkpoint
and first re-announces that checkpoint's epoch, so the driver has every epoch's row even if it
died between a report and writing it.
"""

from __future__ import annotations

import logging
import math
import os
import tempfile
import time
from typing import Any

import ray.train
import ray.train.torch
import torch

from kd_ray.config import SweepConfig, parse_config
from kd_ray.orchestration.teacher_store import TeacherStore
from kd_ray.plan import StudentTrial, TeacherSpec, plan_sweep
from kd_ray.results.rows import TRIAL_SEP
from kd_ray.storage import Storage
from kd_ray.train.checkpoint import STATE_FORMAT, from_bytes, to_bytes
from kd_ray.train.runtime import Runtime

# Data, models and the training loops (torchvision, scikit-learn: seconds of imports) are
# imported inside the worker functions: this module is also imported by every trial's Tune
# function and Train controller, which only need to refer to the functions.

log = logging.getLogger(__name__)

STATE_FILE = "state.pt"


def _setup(cfg: SweepConfig) -> tuple[Runtime, int, int]:
    ctx = ray.train.get_context()
    threads = cfg.runtime.torch_threads or max(1, math.floor(cfg.resources.cpus_per_worker))
    torch.set_num_threads(threads)
    device = ray.train.torch.get_device()
    return Runtime.from_config(cfg.runtime, device), ctx.get_world_rank(), ctx.get_world_size()


def _wrap(model: torch.nn.Module) -> torch.nn.Module:
    # Sharding is ours (kd_ray.data.streams), so only the model goes through Ray's prepare.
    return ray.train.torch.prepare_model(model, move_to_device=False)


def _restore(run: Any, labels: list[str]) -> tuple[int, dict[str, Any] | None]:
    """Load the latest checkpoint into ``run``: (first epoch to train, last report or None)."""
    checkpoint = ray.train.get_checkpoint()
    if checkpoint is None:
        return 1, None
    with checkpoint.as_directory() as d:
        path = os.path.join(d, STATE_FILE)
        with open(path, "rb") as f:
            state = from_bytes(f.read(), path)
    if state.get("format") != STATE_FORMAT:
        raise RuntimeError(f"{path}: not a kd_ray training state")
    run.load_state_dict(state["run"])
    if ray.train.get_context().get_world_rank() == 0:
        # Said once per restart, so a resumed or recovered trial is visible in the driver's log.
        for label in labels:
            log.info("%s: resuming from its epoch %d checkpoint", label, int(state["epoch"]))
    return int(state["epoch"]) + 1, dict(state["report"])


def _report(run: Any, epoch: int, report: dict[str, Any], rank: int) -> None:
    """Report one epoch from every rank; rank 0 attaches the state checkpoint."""
    metrics = {**report, "epoch": epoch}
    if rank != 0:
        ray.train.report(metrics, checkpoint=None)
        return
    with tempfile.TemporaryDirectory() as d:
        state = {"format": STATE_FORMAT, "epoch": epoch, "report": metrics, "run": run.state_dict()}
        with open(os.path.join(d, STATE_FILE), "wb") as f:
            f.write(to_bytes(state))
        ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(d))


def calibration_keys(calibration: dict[str, list[dict]]) -> dict[str, float]:
    """Calibration bins as flat report keys ``calibration/{split}/{bin}/{field}``."""
    return {
        f"calibration/{split}/{row['bin']}/{field}": float(row[field])
        for split, rows in calibration.items()
        for row in rows
        for field in ("count", "acc", "conf")
    }


def _prefixed(trial_id: str, values: dict[str, Any]) -> dict[str, Any]:
    return {f"{trial_id}{TRIAL_SEP}{k}": v for k, v in values.items()}


def student_worker(config: dict[str, Any]) -> dict[str, Any]:
    """Train loop of one stream group of student trials on one Ray Train worker.

    Every epoch is one report whose keys are ``{trial_id}::{split}/{metric}`` for each student
    still training; the return value says how each trial ended.
    """
    from kd_ray.data import DATASETS
    from kd_ray.models import create_model
    from kd_ray.train.distill import DistillationRun
    from kd_ray.train.teacher import dataset_config

    cfg = parse_config(config["sweep"])
    trials = [StudentTrial.from_dict(d) for d in config["group"]["trials"]]
    runtime, rank, world_size = _setup(cfg)
    dcfg = dataset_config(cfg, trials[0].dataset)
    datasets = DATASETS.get(dcfg.name)(dcfg)
    plan = plan_sweep(cfg, check_names=False)
    store = TeacherStore(Storage.open(config["teacher_store"]))
    teachers = {}
    for tid in dict.fromkeys(tid for t in trials for tid in t.teacher_ids):
        model = create_model(
            cfg.teacher.arch,
            num_classes=datasets.num_classes,
            in_channels=datasets.channels,
            image_size=dcfg.image_size or datasets.native_size,
        )
        teachers[tid] = store.load_into(model, plan.teacher(tid))
    run = DistillationRun(
        cfg, trials, datasets, teachers, runtime, rank=rank, world_size=world_size, wrap=_wrap
    )
    start, last = _restore(run, [t.trial_id for t in trials])
    if last is not None:
        ray.train.report(last, checkpoint=None)
    failed = {s.trial.trial_id: s.diverged for s in run.students if s.diverged}
    for epoch in range(start, cfg.student.train.epochs + 1):
        if not run.active:  # every student diverged; all ranks agree, so all stop here
            break
        result = run.run_epoch(epoch)
        failed.update(result.diverged)
        report: dict[str, Any] = {}
        for tid, values in result.reports.items():
            report.update(
                _prefixed(tid, {**values, "epoch": epoch, **calibration_keys(result.calibration[tid])})
            )
        _report(run, epoch, report, rank)
    return {
        "status": {t.trial_id: "failed" if t.trial_id in failed else "ok" for t in trials},
        "error": failed,
    }


def teacher_worker(config: dict[str, Any]) -> dict[str, Any]:
    """Train loop of one teacher; rank 0 stores the trained weights in the teacher store."""
    from kd_ray.data import DATASETS
    from kd_ray.train.teacher import TeacherRun, dataset_config

    started = time.perf_counter()
    cfg = parse_config(config["sweep"])
    spec = TeacherSpec(**config["teacher"])
    runtime, rank, world_size = _setup(cfg)
    dcfg = dataset_config(cfg, spec.dataset)
    datasets = DATASETS.get(dcfg.name)(dcfg)
    run = TeacherRun(cfg, spec, datasets, runtime, rank=rank, world_size=world_size, wrap=_wrap)
    start, last = _restore(run, [f"teacher {spec.teacher_id}"])
    report = last or {}
    for epoch in range(start, cfg.teacher.train.epochs + 1):
        report = run.run_epoch(epoch)
        if not math.isfinite(report["train/loss"]):
            return {
                "status": "failed",
                "error": f"teacher diverged at epoch {epoch}: loss {report['train/loss']}",
            }
        _report(run, epoch, report, rank)
    if rank == 0:
        info = {
            "epochs": cfg.teacher.train.epochs,
            "train_acc": report.get("train/acc"),
            "val_acc": report.get("val/acc"),
            "wall_s": time.perf_counter() - started,  # this attempt only, after a resume
        }
        TeacherStore(Storage.open(config["teacher_store"])).save(
            run.model, spec, num_classes=datasets.num_classes, info=info
        )
    return {"status": "ok"}
