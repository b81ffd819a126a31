"""Running a whole sweep on Ray: the teacher stage, then the student grid, then the report.

Resume is ours, not Tune's experiment restore: finished trials are read from ``trials.parquet``
and skipped, finished teachers are found in the teacher store, and every unfinished trial is
started again under its fixed Train run name, which continues from its latest epoch checkpoint.
That keeps resume correct whatever state Tune had saved when the driver was killed.

The rules of ``--resume`` (what it keeps, grows and refuses) live in
:mod:`kd_ray.orchestration.stored_sweep`.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from typing import Any

from kd_ray.config import SweepConfig, dump_config
from kd_ray.errors import KdRayError
from kd_ray.orchestration.cluster import TRIAL_FN_CPU, init_ray, joined_cluster, sweep_environment
from kd_ray.orchestration.lease import sweep_lease, train_once
from kd_ray.orchestration.preflight import (
    check_datasets,
    check_local_resources,
    check_pretrained,
    check_teachers,
    require_trained,
)
from kd_ray.orchestration.runbook import RunBook
from kd_ray.orchestration.stage_runs import group_items, teacher_items, teacher_slots
from kd_ray.orchestration.stored_sweep import (
    clean_orphans,
    finished_trials,
    prepare_results,
    refuse_changed_numerics,
)
from kd_ray.orchestration.teacher_store import TeacherStore
from kd_ray.plan import (
    StudentTrial,
    SweepPlan,
    plan_sweep,
)
from kd_ray.results.rows import teacher_row, trial_row
from kd_ray.results.store import ResultTables
from kd_ray.storage import Storage
from kd_ray.trackers import Trackers, check_trackers

log = logging.getLogger(__name__)


@dataclass(frozen=True, kw_only=True)
class SweepOutcome:
    """How a sweep ended, in counts of its planned student trials and of its teachers."""

    sweep_uri: str
    local_dir: str | None  # the sweep directory as a local path, when it is on this machine
    ok: int  # trials whose trials row says ok
    failed: int  # the other planned trials (failed, or not run)
    skipped: int  # trials already finished before this run (--resume), not run again
    teachers_trained: int  # by this driver
    teachers_reused: int  # found trained, or trained meanwhile by another driver


def _experiment_name(sweep: Storage, stage: str) -> str:
    """A fresh Tune experiment name per attempt (``teachers-1``, ``groups-1``, ``groups-2``...:
    ``stage`` is ``teachers`` or ``groups``), never a timestamp."""
    existing = set(sweep.listdir("_ray"))
    n = 1
    while f"{stage}-{n}" in existing:
        n += 1
    return f"{stage}-{n}"


def _tune(
    cfg: SweepConfig,
    sweep: Storage,
    stage: str,
    trainable,
    items: list[dict],
    base: dict,
    callbacks: list,
    verbose: int,
    runs: RunBook,
) -> None:
    from ray import tune
    from ray.tune.logger import JsonLoggerCallback

    from kd_ray.orchestration.placement import CapacityGate, RunsThatFit, announce_demand
    from kd_ray.orchestration.progress import TrialNamer, progress_callback, trial_dirname

    workers = cfg.resources.teacher_workers if stage == "teacher" else cfg.resources.num_workers
    epochs = (cfg.teacher if stage == "teacher" else cfg.student).train.epochs
    # Tune's SIGINT handler and output engine are set for the sweep by sweep_environment.
    fn = tune.with_resources(trainable, {"cpu": TRIAL_FN_CPU})
    tuner = tune.Tuner(
        fn,
        param_space=base,
        tune_config=tune.TuneConfig(
            # Runs start as the cluster has room (kd_ray.orchestration.placement), in plan order.
            search_alg=CapacityGate(stage, items, RunsThatFit.of(cfg, workers, TRIAL_FN_CPU), runs),
            num_samples=len(items),
            trial_name_creator=TrialNamer(stage, items, runs),
            trial_dirname_creator=trial_dirname,
        ),
        run_config=tune.RunConfig(
            name=_experiment_name(sweep, stage + "s"),
            storage_path=sweep.child("_ray").uri,
            failure_config=tune.FailureConfig(max_failures=cfg.failure.trial_max_failures),
            callbacks=[
                *callbacks,
                JsonLoggerCallback(),
                progress_callback(stage, items, epochs, runs, quiet=verbose == 0),
            ],
            verbose=0,
        ),
    )
    joined = joined_cluster()
    if joined:
        announce_demand(cfg, workers, len(items))
    try:
        tuner.fit()
    except KdRayError:
        raise
    except Exception as err:
        # A user error on the driver inside Tune (the collector cannot write the results any
        # more) arrives wrapped in a TuneError: report it as the one line it is.
        found = _user_error(err)
        if found is None:
            raise
        raise found from None
    finally:
        if joined:
            announce_demand(cfg, workers, 0)


_KD_ERROR_LINE = re.compile(r"^kd_ray\.errors\.(\w+): (.+)$", re.MULTILINE)


def _user_error(err: BaseException) -> KdRayError | None:
    """The kd_ray user error that ``err`` wraps (as its cause, context or traceback text), if any."""
    from kd_ray import errors

    seen: set[int] = set()
    chained: BaseException | None = err
    while chained is not None and id(chained) not in seen:
        if isinstance(chained, KdRayError):
            return chained
        seen.add(id(chained))
        chained = chained.__cause__ or chained.__context__
    matches = _KD_ERROR_LINE.findall(str(err))
    if matches:
        name, message = matches[-1]
        kind = getattr(errors, name, None)
        if isinstance(kind, type) and issubclass(kind, KdRayError):
            return kind(message)
    return None


def _train_teachers(
    cfg,
    plan: SweepPlan,
    root: Storage,
    sweep: Storage,
    base: dict,
    verbose: int,
    trackers: Trackers | None = None,
) -> tuple[int, int, dict[str, str]]:
    """Train the teachers not yet in the store: (trained, reused, reason per failed teacher).

    Each is trained under its lease in the store (``_teachers/<id>.lease``), so two sweeps never
    train one teacher into the same place: a teacher that another live driver is training is
    waited for and reused (:func:`kd_ray.orchestration.lease.train_once`).
    """
    store = TeacherStore.under(root)
    missing = [t for t in plan.teachers if not store.has(t.teacher_id)]
    reasons: dict[str, str] = {}
    trackers = trackers or Trackers([], sweep=cfg.name)

    def train(ids: list[str]) -> None:
        init_ray(cfg)
        from kd_ray.orchestration.collector import TeacherOutcomes
        from kd_ray.orchestration.trials import teacher_trial

        runs = RunBook("teacher")
        outcomes = TeacherOutcomes(runs, trackers)
        ray_dir = store.storage.child("_ray")
        items = teacher_items(cfg, plan, ray_dir, ids, teacher_slots(cfg, len(ids)))
        log.info(
            "training %d teacher(s) in %d run(s); %d found already trained",
            len(ids),
            len(items),
            len(plan.teachers) - len(missing),
        )
        _tune(
            cfg,
            sweep,
            "teacher",
            teacher_trial,
            items,
            {**base, "ray_storage": ray_dir.uri},
            [outcomes],
            verbose,
            runs,
        )
        reasons.update(outcomes.errors)

    mine, gave_up = train_once(
        store.storage,
        [t.teacher_id for t in missing],
        done=store.has,
        train=train,
        what=lambda tid: f"teacher {tid} of sweep {cfg.name!r}",
    )
    reasons.update(gave_up)
    tables = ResultTables(sweep)
    trained = reused = 0
    for spec in plan.teachers:
        ok = store.has(spec.teacher_id)
        info = store.info(spec.teacher_id) if ok else None
        error = None
        if ok:
            trained += spec.teacher_id in mine
            reused += spec.teacher_id not in mine  # found trained, or trained by another driver
        else:
            error = reasons.setdefault(
                spec.teacher_id, "teacher training did not finish (see the Ray logs of its trial)"
            )
            log.warning("teacher %s: failed (%s)", spec.teacher_id, error)
        row = teacher_row(
            spec,
            info=info,
            status="ok" if ok else "failed",
            error=error,
            checkpoint=store.weights_path(spec.teacher_id),
        )
        tables.write("teachers", spec.teacher_id, [row])
        trackers.teacher_done(spec, row)  # after the table; a failing tracker only warns
    return trained, reused, reasons


def _record_missing_teacher(
    cfg: SweepConfig, tables: ResultTables, trial: StudentTrial, teacher_id: str, reason: str | None = None
) -> None:
    row = trial_row(
        trial,
        teacher_arch=cfg.teacher.arch,
        student_arch=cfg.student.arch,
        report=None,
        status="failed",
        error=f"teacher {teacher_id} failed to train" + (f": {reason}" if reason else ""),
        wall_s=0.0,
    )
    tables.write("trials", trial.trial_id, [row])


def run_sweep(
    cfg: SweepConfig,
    results: str,
    *,
    resume: bool = False,
    verbose: int = 1,
    partial_reports: bool = True,
) -> SweepOutcome:
    """Run (or continue) the sweep ``cfg`` with results under ``results/cfg.name``.

    With ``partial_reports`` (the CLI turns it off with ``--no-report``), ``report.html`` is
    rewritten every ``report.every_minutes`` while the student stage runs
    (:class:`kd_ray.orchestration.live_report.LiveReport`).

    Inputs are checked on the driver before Ray starts (data first, before anything is
    written; then the stored teachers the remaining trials need), so a user error costs seconds
    and leaves the results of earlier runs as they were.

    The sweep is leased to this driver (``RESULTS/<name>.lease``, see
    :mod:`kd_ray.orchestration.lease`) from the results check until it returns, fails or is
    interrupted: a second driver of the same sweep refuses with one line, before Ray starts.
    """
    plan = plan_sweep(cfg)
    check_trackers(cfg, results)
    check_datasets(cfg)
    check_local_resources(cfg, trial_cpu=TRIAL_FN_CPU)
    root, sweep = prepare_results(cfg, results, resume=resume)
    lease = sweep_lease(root, cfg.name)  # a second driver of this sweep refuses here, before Ray
    trackers = Trackers.from_config(cfg, sweep)  # contacts nothing until its first run
    try:
        with sweep_environment(cfg):
            return _run_sweep(
                cfg,
                plan,
                root,
                sweep,
                resume=resume,
                verbose=verbose,
                trackers=trackers,
                partial_reports=partial_reports,
            )
    finally:
        trackers.close()
        lease.release()


def _run_sweep(
    cfg: SweepConfig,
    plan: SweepPlan,
    root: Storage,
    sweep: Storage,
    *,
    resume: bool,
    verbose: int,
    trackers: Trackers,
    partial_reports: bool,
) -> SweepOutcome:
    tables = ResultTables(sweep)
    finished, scratch = finished_trials(tables, cfg) if resume else (set(), set())
    todo = [t for t in plan.trials if t.trial_id not in finished]
    if resume:
        refuse_changed_numerics(cfg, sweep, finished=len(finished), unfinished=len(todo))
    store = TeacherStore.under(root)
    check_teachers(store, plan, todo, cfg)
    check_pretrained(cfg, store, plan)
    clean_orphans(sweep, store.storage)
    sweep.write_bytes("config.yaml", dump_config(cfg).encode())

    base = {"sweep": cfg.model_dump(mode="json"), "teacher_store": store.storage.uri}
    trained, reused, teacher_errors = _train_teachers(cfg, plan, root, sweep, base, verbose, trackers)

    runnable: list[StudentTrial] = []
    for trial in todo:
        missing = require_trained(store, trial)
        if missing:
            _record_missing_teacher(cfg, tables, trial, missing, teacher_errors.get(missing))
        else:
            runnable.append(trial)
    if runnable:
        init_ray(cfg)
        from kd_ray.orchestration.collector import ResultsCollector
        from kd_ray.orchestration.placement import RunsThatFit
        from kd_ray.orchestration.trials import group_trial

        runs = RunBook("group")
        ray_storage = sweep.child("_ray").uri
        collector = ResultsCollector(
            sweep.uri,
            runs,
            ray_storage=ray_storage,
            teacher_arch=cfg.teacher.arch,
            student_arch=cfg.student.arch,
            ece_bins=cfg.metrics.ece_bins,
            trackers=trackers,
        )
        # After the collector in the list: a finished trial's row is on disk when it looks.
        callbacks: list[Any] = [collector]
        if partial_reports:
            from kd_ray.orchestration.live_report import LiveReport

            callbacks.append(
                LiveReport(sweep.uri, planned_trials=len(plan.trials), every_minutes=cfg.report.every_minutes)
            )
        slots = RunsThatFit.of(cfg, cfg.resources.num_workers, TRIAL_FN_CPU)()
        items = group_items(cfg, plan, sweep, runnable, scratch, slots)
        log.info(
            "%d student trial(s) in %d run(s) that share data streams, cut for %d run(s) at once",
            len(runnable),
            len(items),
            slots,
        )
        _tune(
            cfg,
            sweep,
            "group",
            group_trial,
            items,
            {**base, "ray_storage": ray_storage, "students": sweep.child("students").uri},
            callbacks,
            verbose,
            runs,
        )

    final = tables.read("trials")
    final = final[final["trial_id"].isin([t.trial_id for t in plan.trials])]
    ok = int((final["status"] == "ok").sum())
    return SweepOutcome(
        sweep_uri=sweep.uri,
        local_dir=sweep.root if sweep.is_local else None,
        ok=ok,
        failed=len(plan.trials) - ok,
        skipped=len(finished),
        teachers_trained=trained,
        teachers_reused=reused,
    )
