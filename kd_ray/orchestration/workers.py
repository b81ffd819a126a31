"""Ray Train worker loops: plain training runs plus per-epoch report and checkpoint.

Every rank calls ``ray.train.report`` once per epoch (it is a barrier); rank 0 attaches the
checkpoint. Metrics are already reduced across ranks by the runs, so rank 0's report is the
trial's. On restart (worker fault, driver resume) the loop continues from the newest usable
checkpoint and first re-announces every epoch that checkpoint covers (each checkpoint carries the
reports of the epochs before it): a checkpoint is stored by the worker before the driver sees its
report, so a driver killed while behind by some epochs never wrote their rows.

A checkpoint is usable when it loads and its fingerprint (what changes the numbers, per trial)
is the run's: one made under another config is never restored. The newest is Ray's latest; if
that one is unreadable (a kill mid-write, a corrupt file), the run falls back to the previous
checkpoint kept in its directory, else starts fresh, and says which in one line per trial.
"""

from __future__ import annotations

import logging
import os
import posixpath
import re
import tempfile
import time
from collections.abc import Callable, Iterator
from typing import Any

import ray.train
import ray.train.torch
import torch

from kd_ray.config import SweepConfig, parse_config
from kd_ray.distributed import sync_batchnorm
from kd_ray.errors import CheckpointError
from kd_ray.orchestration.teacher_store import TeacherStore
from kd_ray.plan import (
    StudentTrial,
    TeacherSpec,
    fingerprint,
    torch_threads,
    trial_fingerprint_content,
)
from kd_ray.results.rows import report_field, trial_keys
from kd_ray.storage import Storage
from kd_ray.train.checkpoint import (
    STATE_FORMAT,
    fingerprint_problem,
    load_file,
    save_file,
    save_to_storage,
    student_state,
)
from kd_ray.train.runtime import Runtime

# Data, models and the training loops (torchvision, scikit-learn: seconds of imports) are
# imported inside the worker functions: this module is also imported by every trial's Tune
# function and Train controller, which only need to refer to the functions.

log = logging.getLogger(__name__)

STATE_FILE = "state.pt"


def _setup(cfg: SweepConfig) -> tuple[Runtime, int, int]:
    ctx = ray.train.get_context()
    torch.set_num_threads(torch_threads(cfg))
    device = ray.train.torch.get_device()
    return Runtime.from_config(cfg.runtime, device), ctx.get_world_rank(), ctx.get_world_size()


def _wrapper(runtime: Runtime, world_size: int) -> Callable[[torch.nn.Module], torch.nn.Module]:
    """How each model of this worker is wrapped for DDP (kd_ray.distributed: SyncBatchNorm)."""

    def wrap(model: torch.nn.Module) -> torch.nn.Module:
        model = sync_batchnorm(model, runtime.device, world_size)
        # Sharding is ours (kd_ray.data.streams), so only the model goes through Ray's prepare.
        return ray.train.torch.prepare_model(model, move_to_device=False)

    return wrap


Fingerprints = dict[str, dict[str, Any]]


def student_fingerprints(cfg: SweepConfig, trials: list[StudentTrial]) -> Fingerprints:
    """Per trial: the digest and content of what changes its numbers."""
    out = {}
    for trial in trials:
        content = trial_fingerprint_content(cfg, trial)
        out[trial.trial_id] = {"digest": fingerprint(content), "content": content}
    return out


def teacher_fingerprints(spec: TeacherSpec) -> Fingerprints:
    # The id hashes everything that changes the teacher (kd_ray.plan.teacher_spec).
    return {"teacher": {"digest": spec.teacher_id, "content": dict(spec.__dict__)}}


def _candidates(config: dict[str, Any]) -> Iterator[ray.train.Checkpoint]:
    """Checkpoints to restore from, newest first: Ray's latest, then the others kept in the
    Train run's directory (the run may have no snapshot if a truncated one was set aside)."""
    latest = ray.train.get_checkpoint()
    latest_name = None
    if latest is not None:
        latest_name = posixpath.basename(latest.path.rstrip("/"))
        yield latest
    run_name = config.get("run_name")
    if not run_name:
        return
    run_dir = Storage.open(config["ray_storage"]).child(run_name)
    names = sorted((n for n in run_dir.listdir() if _CHECKPOINT_DIR.match(n)), reverse=True)
    for name in names:
        if name != latest_name:
            yield ray.train.Checkpoint(run_dir.path(name), filesystem=run_dir.fs)


# Ray Train names a run's checkpoint directories by time: ``checkpoint_2026-11-30_02-39-13.297639``.
_CHECKPOINT_DIR = re.compile(r"^checkpoint_\d{4}-\d\d-\d\d_\d\d-\d\d-\d\d(\.\d+)?$")


def _digests(state: dict[str, Any]) -> set[str]:
    """The fingerprint digests a checkpoint's state says it holds."""
    found = state.get("fingerprint")
    if not isinstance(found, dict):
        return set()
    return {str(v.get("digest")) for v in found.values() if isinstance(v, dict)}


def _problem(state: dict[str, Any], fingerprints: Fingerprints) -> str | None:
    if state.get("format") != STATE_FORMAT:
        return f"its format is {state.get('format')!r}, not {STATE_FORMAT!r} (written by another kd_ray)"
    return fingerprint_problem(state.get("fingerprint"), fingerprints)


def _restore(
    run: Any,
    config: dict[str, Any],
    fingerprints: Fingerprints,
    labels: list[str],
    packmates: frozenset[str] = frozenset(),
) -> tuple[int, list[dict[str, Any]]]:
    """Load the newest usable checkpoint into ``run``: (first epoch to train, the reports of the
    epochs it covers, oldest first; the last one whole, earlier ones without calibration bins).

    Checkpoints of ``packmates`` (the digests of the other teachers a teacher pack trains in the
    same Train run) are passed over without a word: they are expected there.
    """
    skipped: list[str] = []
    restored: tuple[int, list[dict[str, Any]]] | None = None
    for checkpoint in _candidates(config):
        name = posixpath.basename(checkpoint.path.rstrip("/"))
        try:
            with checkpoint.as_directory() as d:
                state = load_file(os.path.join(d, STATE_FILE))
                if packmates and _digests(state) & packmates:
                    continue
                problem = _problem(state, fingerprints)
                if problem is None:
                    run.load_state_dict(state["run"])
                    # A checkpoint written before reports were kept in it has only its own.
                    reports = [*state.get("history", []), dict(state["report"])]
                    restored = int(state["epoch"]), reports
        except CheckpointError as err:  # the checkpoint's name says where; this says why
            problem = f"its {STATE_FILE} is {str(err).rpartition(STATE_FILE + ': ')[2][:200]}"
        except OSError as err:
            problem = f"it could not be read ({str(err)[:200] or type(err).__name__})"
        if restored is not None:
            break
        skipped.append(f"{name}: {problem}")
    if ray.train.get_context().get_world_rank() == 0:
        # Said once per (re)start, so a resumed, recovered or restarted trial is visible in
        # the driver's log, with the reason when a checkpoint was passed over: a warning, so
        # that -q (kd_ray's info lines off in the workers too) still shows every recovery.
        passed = f"; passed over {'; '.join(skipped)}" if skipped else ""
        for label in labels:
            if restored is not None:
                log.warning("%s: resuming from its epoch %d checkpoint%s", label, restored[0], passed)
            elif skipped:
                log.warning("%s: starting fresh, no usable checkpoint (%s)", label, "; ".join(skipped))
    if restored is None:
        return 1, []
    return restored[0] + 1, restored[1]


def _reannounce(reports: list[dict[str, Any]]) -> None:
    """Report again the epochs a restored checkpoint covers (every rank: a report is a barrier).
    The collector replaces rows it has, so a driver that has them all loses nothing."""
    for report in reports:
        ray.train.report(report, checkpoint=None)


def _without_calibration(report: dict[str, Any]) -> dict[str, Any]:
    # Calibration bins are written for a trial's final epoch only; earlier epochs' bins would
    # grow each checkpoint's history by bins x splits x students per epoch.
    return {k: v for k, v in report.items() if not report_field(k).startswith("calibration/")}


def _report(
    run: Any,
    epoch: int,
    report: dict[str, Any],
    rank: int,
    fingerprints: Fingerprints,
    history: list[dict[str, Any]],
) -> None:
    """Report one epoch from every rank; rank 0 attaches the state checkpoint, which carries
    ``history`` (the reports of the epochs before). Appends this epoch's report to ``history``."""
    metrics = {**report, "epoch": epoch}
    if rank != 0:
        ray.train.report(metrics, checkpoint=None)
    else:
        with tempfile.TemporaryDirectory() as d:
            state = {
                "format": STATE_FORMAT,
                "epoch": epoch,
                "report": metrics,
                "history": history,
                "fingerprint": fingerprints,
                "run": run.state_dict(),
            }
            save_file(state, os.path.join(d, STATE_FILE))  # streamed to disk: no in-memory copy
            del state
            ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(d))
    history.append(_without_calibration(metrics))


def calibration_keys(calibration: dict[str, list[dict]]) -> dict[str, float]:
    """Calibration bins as flat report keys ``calibration/{split}/{bin}/{field}``."""
    return {
        f"calibration/{split}/{row['bin']}/{field}": float(row[field])
        for split, rows in calibration.items()
        for row in rows
        for field in ("count", "acc", "conf")
    }


def student_worker(config: dict[str, Any]) -> dict[str, Any]:
    """Train loop of one stream group of student trials on one Ray Train worker.

    Every epoch is one report whose keys are ``{trial_id}::{split}/{metric}`` for each student
    still training; the return value says how each trial ended. At the end rank 0 stores each
    finished student's final weights alone (``config["students"]/{trial_id}.pt``, small), so the
    group's training checkpoints can be deleted once the driver has its rows.
    """
    from kd_ray.data import DATASETS
    from kd_ray.models import create_model
    from kd_ray.train.distill import DistillationRun

    cfg = parse_config(config["sweep"])
    trials = [StudentTrial.from_dict(d) for d in config["group"]["trials"]]
    runtime, rank, world_size = _setup(cfg)
    dcfg = cfg.dataset(trials[0].dataset)
    datasets = DATASETS.get(dcfg.name)(dcfg)
    store = TeacherStore(Storage.open(config["teacher_store"]))
    teachers = {}
    for spec in (TeacherSpec(**d) for d in config["group"]["teachers"]):  # from the driver's plan
        model = create_model(
            cfg.teacher.arch,
            num_classes=datasets.num_classes,
            in_channels=datasets.channels,
            image_size=dcfg.image_size or datasets.native_size,
        )
        teachers[spec.teacher_id] = store.load_into(model, spec)
    run = DistillationRun(
        cfg,
        trials,
        datasets,
        teachers,
        runtime,
        rank=rank,
        world_size=world_size,
        wrap=_wrapper(runtime, world_size),
    )
    fingerprints = student_fingerprints(cfg, trials)
    start, done = _restore(run, config, fingerprints, [t.trial_id for t in trials])
    _reannounce(done)
    history = [_without_calibration(r) for r in done]
    failed = {s.trial.trial_id: s.failure for s in run.students if s.failure}
    for epoch in range(start, cfg.student.train.epochs + 1):
        if not run.active:  # every student diverged; all ranks agree, so all stop here
            break
        result = run.run_epoch(epoch)
        failed.update(result.failures)
        report: dict[str, Any] = {}
        for tid, values in result.reports.items():
            report.update(
                trial_keys(tid, {**values, "epoch": epoch, **calibration_keys(result.calibration[tid])})
            )
        _report(run, epoch, report, rank, fingerprints, history)
    if rank == 0 and config.get("students"):
        students = Storage.open(config["students"])
        for s in run.students:
            tid = s.trial.trial_id
            if tid not in failed:
                state = student_state(
                    s.model,
                    trial_id=tid,
                    arch=cfg.student.arch,
                    num_classes=datasets.num_classes,
                    in_channels=datasets.channels,
                    image_size=run.input_size,  # what create_model got: the resolution it saw
                    dataset=dcfg.key,
                    fingerprint=fingerprints[tid],
                )
                save_to_storage(students, f"{tid}.pt", state)
    return {
        "status": {t.trial_id: "failed" if t.trial_id in failed else "ok" for t in trials},
        "error": failed,
    }


def teacher_worker(config: dict[str, Any]) -> dict[str, Any]:
    """Train loop of a teacher pack, one teacher after another (docs/architecture.md#teacher-packs);
    rank 0 stores each trained teacher's weights in the teacher store.

    A teacher already in the store (trained by an earlier attempt of this run) is skipped, so a
    restarted run goes on where it stopped. Each epoch's report names its teacher (``teacher``,
    and ``teacher_index``, its place in the pack); a teacher that diverges fails alone and the
    next one trains. Returns how each teacher ended: ``{"status": {id: ...}, "error": {id: ...}}``.
    """
    from kd_ray.data import DATASETS
    from kd_ray.train.teacher import TeacherRun

    cfg = parse_config(config["sweep"])
    specs = [TeacherSpec(**d) for d in config["teacher"]["teachers"]]
    runtime, rank, world_size = _setup(cfg)
    store = TeacherStore(Storage.open(config["teacher_store"]))
    pack = frozenset(s.teacher_id for s in specs)
    datasets: dict[str, Any] = {}
    status: dict[str, str] = {}
    errors: dict[str, str] = {}
    for index, spec in enumerate(specs):
        if store.has(spec.teacher_id):
            status[spec.teacher_id] = "ok"
            continue
        started = time.perf_counter()
        dcfg = cfg.dataset(spec.dataset)
        if dcfg.key not in datasets:
            datasets[dcfg.key] = DATASETS.get(dcfg.name)(dcfg)
        data = datasets[dcfg.key]
        run = TeacherRun(
            cfg, spec, data, runtime, rank=rank, world_size=world_size, wrap=_wrapper(runtime, world_size)
        )
        fingerprints = teacher_fingerprints(spec)
        packmates = pack - {spec.teacher_id}
        start, done = _restore(run, config, fingerprints, [f"teacher {spec.teacher_id}"], packmates)
        _reannounce(done)
        report = done[-1] if done else {}
        history = [_without_calibration(r) for r in done]
        names = {"teacher": spec.teacher_id, "teacher_index": index}
        for epoch in range(start, cfg.teacher.train.epochs + 1):
            report = run.run_epoch(epoch)
            if run.failure:  # judged by the loop, as a student's is (kd_ray.train.teacher)
                break
            _report(run, epoch, {**report, **names}, rank, fingerprints, history)
        if run.failure:
            status[spec.teacher_id], errors[spec.teacher_id] = "failed", run.failure
            continue
        if rank == 0:
            info = {
                "epochs": cfg.teacher.train.epochs,
                "train_acc": report.get("train/acc"),
                "val_acc": report.get("val/acc"),
                "val_acc_top5": report.get("val/acc_top5"),  # ImageNet family only (docs/metrics.md#acc_top5)
                "wall_s": time.perf_counter() - started,  # this attempt only, after a resume
            }
            store.save(run.model, spec, num_classes=data.num_classes, info=info)
        status[spec.teacher_id] = "ok"
    return {"status": status, "error": errors}
