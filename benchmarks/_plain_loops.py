"""The sweep's training loops in plain processes, no Ray: the baseline of the orchestration ratio.

``run_plain(cfg, processes, workdir)`` does what ``kd-ray sweep`` does for one config, with the
same loops (:class:`kd_ray.train.teacher.TeacherRun`, :class:`kd_ray.train.distill.DistillationRun`)
and the same parallelism, but in a ``multiprocessing`` pool (spawned processes, which import
torch once each, as Ray's workers do): first every teacher, each in one task that saves its
weights to a file the way the teacher store does, then every stream group that
:func:`kd_ray.plan.stream_groups` forms (``resources.trials_per_run`` included), each in one task
that loads its teachers from those files. Each task sets torch's threads as a Train worker does
(:func:`kd_ray.plan.torch_threads`). What it leaves out is exactly what the sweep adds: Ray,
Tune, Train's controllers and workers, per-epoch reports and checkpoints, Parquet rows.

Used by ``benchmarks/run_all.py``; the functions run in the pool, so they take and return plain
data (config dicts, spec dicts, floats).
"""

from __future__ import annotations

import multiprocessing
import os
import resource
import time
from pathlib import Path
from typing import Any


def _cpu_children_s() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def _setup(cfg_dict: dict[str, Any]):
    import torch

    from kd_ray.config import parse_config
    from kd_ray.plan import torch_threads
    from kd_ray.train.runtime import Runtime

    cfg = parse_config(cfg_dict)
    torch.set_num_threads(torch_threads(cfg))
    return cfg, Runtime.from_config(cfg.runtime, torch.device("cpu"))


def train_teacher(task: tuple[dict[str, Any], dict[str, Any], str]) -> dict[str, Any]:
    """One teacher, every epoch; its weights go to ``out_dir/<teacher_id>.pt``."""
    cfg_dict, spec_dict, out_dir = task
    started = time.perf_counter()
    from kd_ray.data import DATASETS
    from kd_ray.plan import TeacherSpec
    from kd_ray.train.checkpoint import save_file, teacher_state
    from kd_ray.train.teacher import TeacherRun

    cfg, runtime = _setup(cfg_dict)
    spec = TeacherSpec(**spec_dict)
    dcfg = cfg.dataset(spec.dataset)
    datasets = DATASETS.get(dcfg.name)(dcfg)
    run = TeacherRun(cfg, spec, datasets, runtime)
    report: dict[str, float] = {}
    epoch_s = 0.0
    for epoch in range(1, cfg.teacher.train.epochs + 1):
        report = run.run_epoch(epoch)
        epoch_s += report["seconds"]
    state = teacher_state(
        run.model, teacher_id=spec.teacher_id, arch=spec.arch, num_classes=datasets.num_classes
    )
    save_file(state, os.path.join(out_dir, f"{spec.teacher_id}.pt"))
    return {
        "teacher_id": spec.teacher_id,
        "val_acc": report.get("val/acc"),
        "epoch_s": epoch_s,
        "task_s": time.perf_counter() - started,
    }


def train_group(task: tuple[dict[str, Any], list[dict[str, Any]], str]) -> dict[str, Any]:
    """One stream group of students, every epoch, teachers loaded from ``teacher_dir``."""
    cfg_dict, trial_dicts, teacher_dir = task
    started = time.perf_counter()
    from kd_ray.data import DATASETS
    from kd_ray.models import create_model
    from kd_ray.plan import StudentTrial, plan_sweep
    from kd_ray.train.checkpoint import load_file, load_teacher_weights
    from kd_ray.train.distill import DistillationRun

    cfg, runtime = _setup(cfg_dict)
    trials = [StudentTrial.from_dict(d) for d in trial_dicts]
    dcfg = cfg.dataset(trials[0].dataset)
    datasets = DATASETS.get(dcfg.name)(dcfg)
    plan = plan_sweep(cfg, check_names=False)
    teachers = {}
    for tid in dict.fromkeys(tid for t in trials for tid in t.teacher_ids):
        model = create_model(
            cfg.teacher.arch,
            num_classes=datasets.num_classes,
            in_channels=datasets.channels,
            image_size=dcfg.image_size or datasets.native_size,
        )
        path = os.path.join(teacher_dir, f"{tid}.pt")
        load_teacher_weights(model, load_file(path), teacher_id=tid, arch=plan.teacher(tid).arch, source=path)
        teachers[tid] = model
    run = DistillationRun(cfg, trials, datasets, teachers, runtime)
    reports: dict[str, dict[str, float]] = {}
    epoch_s = 0.0
    for epoch in range(1, cfg.student.train.epochs + 1):
        result = run.run_epoch(epoch)
        reports.update(result.reports)
        epoch_s += next(iter(result.reports.values()))["seconds"] if result.reports else 0.0
    return {
        "val_acc": {tid: r["val/acc"] for tid, r in reports.items()},
        "epoch_s": epoch_s,
        "task_s": time.perf_counter() - started,
        "trials": len(trials),
    }


def slots(cfg) -> int:
    """How many runs the sweep holds at once on this machine's CPUs (as its Tune stage bounds
    them: a run's workers × CPUs per worker, plus the Tune function's 0.01 CPU)."""
    res = cfg.resources
    return max(1, int((os.cpu_count() or 1) / (res.num_workers * res.cpus_per_worker + 0.01) + 1e-9))


def run_plain(cfg, processes: int, workdir: Path) -> dict[str, Any]:
    """Teachers, then stream groups, in a pool of ``processes``; wall and CPU seconds of each stage.

    ``processes=0`` runs the same tasks one after another in this process (``run_all.py --quick``:
    no processes to spawn); CPU seconds are then this process's own.
    """
    from kd_ray.plan import plan_sweep, stream_groups

    if cfg.resources.num_workers != 1:
        raise ValueError("the plain baseline runs one process per run: resources.num_workers must be 1")
    plan = plan_sweep(cfg)
    cfg_dict = cfg.model_dump(mode="json")
    teacher_dir = Path(workdir) / "teachers"
    teacher_dir.mkdir(parents=True, exist_ok=True)
    groups = stream_groups(plan.trials, cfg.resources.trials_per_run)
    teacher_tasks = [(cfg_dict, dict(t.__dict__), str(teacher_dir)) for t in plan.teachers]
    group_tasks = [(cfg_dict, [dict(t.__dict__) for t in g], str(teacher_dir)) for g in groups]
    cpu_now = _cpu_children_s if processes else time.process_time
    cpu0 = cpu_now()
    start = time.perf_counter()
    if processes:
        with multiprocessing.get_context("spawn").Pool(processes) as pool:
            teachers = list(pool.imap_unordered(train_teacher, teacher_tasks, chunksize=1))
            teachers_done = time.perf_counter()
            students = list(pool.imap_unordered(train_group, group_tasks, chunksize=1))
            pool.close()
            pool.join()
    else:
        teachers = [train_teacher(task) for task in teacher_tasks]
        teachers_done = time.perf_counter()
        students = [train_group(task) for task in group_tasks]
    end = time.perf_counter()
    val_acc: dict[str, float] = {}
    for s in students:
        val_acc.update(s["val_acc"])
    return {
        "wall_s": end - start,
        "teachers_s": teachers_done - start,
        "students_s": end - teachers_done,
        "cpu_s": cpu_now() - cpu0,
        "teacher_runs": len(teachers),
        "student_runs": len(groups),
        "teacher_epoch_s": sum(t["epoch_s"] for t in teachers),
        "student_epoch_s": sum(s["epoch_s"] for s in students),
        "val_acc": val_acc,
        "teacher_val_acc": {t["teacher_id"]: t["val_acc"] for t in teachers},
    }
