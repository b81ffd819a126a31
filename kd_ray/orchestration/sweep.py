"""Running a whole sweep on Ray: the teacher stage, then the student grid, then the report.

Resume is ours, not Tune's experiment restore: finished trials are read from ``trials.parquet``
and skipped, finished teachers are found in the teacher store, and every unfinished trial is
started again under its fixed Train run name, which continues from its latest epoch checkpoint.
That keeps resume correct whatever state Tune had saved when the driver was killed.

On ``--resume``:

- a trial counts as finished only if its ``trials`` row says ok *and* its ``epochs`` and
  ``calibration`` rows are complete; otherwise it runs again (from its group's last
  checkpoint when only the final rows are missing, from scratch when epoch rows are);
- a stream group that had started continues as the same group (its run directory names its
  members), whatever ``trials_per_run`` says now;
- the config may grow the grid (more seeds, teacher counts, losses, views, datasets,
  permutations, values of a listed KD axis; :mod:`kd_ray.orchestration.growth` says why that
  is safe): the new trials run, the finished ones are kept and stored teachers are reused.
  Any other change to what trials compute is refused with one line naming the keys;
- settings that change the numbers of a run (:func:`kd_ray.plan.numerics`: workers, torch
  threads, device, bf16, channels-last, compile) may not change while trials are unfinished:
  one run would mix two numerics, so the sweep is refused with one line.

Temporary files that a killed write left behind (``.NAME.<hex>.tmp``) are removed at start.
"""

from __future__ import annotations

import logging
import os
import re
import time
from dataclasses import dataclass
from itertools import product
from typing import Any

from kd_ray.config import SweepConfig, dump_config
from kd_ray.errors import KdRayError, ResultsError
from kd_ray.orchestration.cluster import TRIAL_FN_CPU, init_ray, sweep_environment
from kd_ray.orchestration.growth import NotAGrowth, growth
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
from kd_ray.orchestration.teacher_store import TeacherStore
from kd_ray.plan import (
    DATA_LOCATION_FIELDS,
    NUMERICS_FIELDS,
    StudentTrial,
    SweepPlan,
    numerics,
    plan_sweep,
)
from kd_ray.results.rows import teacher_row, trial_row
from kd_ray.results.store import ResultTables
from kd_ray.storage import Storage
from kd_ray.trackers import Trackers, check_trackers

log = logging.getLogger(__name__)

# Settings that may change between a sweep and its resume: they decide where and how fast
# trials run, or how often the report is written, not what trials compute.
_RESUMABLE_CHANGES = ("resources", "runtime", "failure", "results", "trackers", "report")


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


def _comparable(cfg: SweepConfig) -> dict[str, Any]:
    """What of a config must not change on --resume: all of it but :data:`_RESUMABLE_CHANGES`
    and the datasets' locations (where the data lives, not what it is)."""
    kept = cfg.model_dump(mode="json", exclude=set(_RESUMABLE_CHANGES))
    kept["datasets"] = [
        {k: v for k, v in d.items() if k not in DATA_LOCATION_FIELDS} for d in kept["datasets"]
    ]
    return kept


def _read_saved_config(sweep: Storage) -> SweepConfig:
    """The config a sweep saved (``config.yaml``).

    Raises:
        ResultsError: one line, when it is unreadable (not UTF-8, malformed YAML, or no longer a
            valid sweep config), with what to do.
    """
    import yaml

    from kd_ray.config import parse_config

    try:
        text = sweep.read_bytes("config.yaml").decode("utf-8")
        return parse_config(yaml.safe_load(text), source="config.yaml")
    except (ValueError, yaml.YAMLError, KdRayError) as err:  # UnicodeDecodeError is a ValueError
        if isinstance(err, UnicodeDecodeError):
            reason = "not UTF-8 text"
        elif isinstance(err, yaml.YAMLError):
            reason = f"malformed YAML ({getattr(err, 'problem', None) or 'invalid'})"
        else:
            reason = str(err).removeprefix("config.yaml: ")
        raise ResultsError(
            f"{sweep.uri}/config.yaml: the saved config of this sweep is unreadable ({reason}); "
            "restore it, or start the sweep afresh under another name or --results directory"
        ) from None


def prepare_results(cfg: SweepConfig, results: str, *, resume: bool) -> tuple[Storage, Storage]:
    """Check and create the results directory; returns (results root, sweep directory).

    The sweep's ``config.yaml`` is written later, by :func:`run_sweep`, once every input check
    has passed: a sweep stopped by a user error can be started again without ``--resume``, and
    a grown config (:mod:`kd_ray.orchestration.growth`) replaces the saved one only then.

    Raises:
        ResultsError: not writable; a sweep of this name exists and ``resume`` is off; or
            ``resume`` is on and the saved config differs in what existing trials compute or
            lists fewer grid values.
    """
    root = Storage.open(results)
    root.makedirs()
    root.check_writable()
    sweep = root.child(cfg.name)
    if sweep.exists("config.yaml"):
        if not resume:
            raise ResultsError(
                f"{sweep.uri}: sweep {cfg.name!r} already has results; pass --resume to continue it, "
                "or use another --results directory or name"
            )
        saved = _comparable(_read_saved_config(sweep))
        try:
            grown = growth(saved, _comparable(cfg))
        except NotAGrowth as err:
            raise ResultsError(
                f"{sweep.uri}/config.yaml: the config changed since this sweep started: {err}. "
                f"Only {', '.join(_RESUMABLE_CHANGES)} and data locations may change on --resume, "
                "and grid values may be added; start a new sweep (another name or --results) for "
                "anything else"
            ) from None
        if grown:
            log.info("--resume grows the sweep: %s", grown.describe())
    return root, sweep


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
    joined = bool(os.environ.get("RAY_ADDRESS"))
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


def _incomplete(tables: ResultTables, cfg: SweepConfig, trial_ids: set[str]) -> dict[str, tuple[str, bool]]:
    """Trials among ``trial_ids`` whose rows are not complete: trial id -> (what, epochs missing).

    A finished trial has one ``epochs`` row per (epoch, split) for every epoch and one
    ``calibration`` row per (split, bin).
    """
    from kd_ray.metrics.names import SPLITS

    epochs, calibration = tables.read("epochs"), tables.read("calibration")
    want_epochs = set(product(range(1, cfg.student.train.epochs + 1), SPLITS))
    want_bins = set(product(SPLITS, range(cfg.metrics.ece_bins)))
    have_epochs = {
        tid: set(zip(g["epoch"].astype(int), g["split"], strict=True))
        for tid, g in epochs.groupby("trial_id")
    }
    have_bins = {
        tid: set(zip(g["split"], g["bin"].astype(int), strict=True))
        for tid, g in calibration.groupby("trial_id")
    }
    out = {}
    for tid in sorted(trial_ids):
        lost = want_epochs - have_epochs.get(tid, set())
        if lost:
            e, split = min(lost)
            out[tid] = (f"{len(lost)} epochs row(s), e.g. epoch {e} {split}", True)
        elif want_bins - have_bins.get(tid, set()):
            out[tid] = ("calibration rows", False)
    return out


def _finished_trials(tables: ResultTables, cfg: SweepConfig | None = None) -> tuple[set[str], set[str]]:
    """(finished trials, trials to run again from scratch).

    Finished: an ok ``trials`` row and complete ``epochs`` and ``calibration`` rows. An ok trial
    with rows missing runs again: from its group's last checkpoint when only its final rows are
    missing (the restart re-announces that epoch), from scratch when epoch rows are missing.
    """
    done = tables.read("trials")
    ok = set(done.loc[done["status"] == "ok", "trial_id"])
    if cfg is None:
        return ok, set()
    scratch = set()
    for tid, (what, from_scratch) in _incomplete(tables, cfg, ok).items():
        ok.discard(tid)
        how = "from scratch" if from_scratch else "from its last checkpoint if it has one"
        log.warning(
            "trial %s: its trials row says ok but its %s are missing; running it again %s", tid, what, how
        )
        if from_scratch:
            scratch.add(tid)
    return ok, scratch


def _saved_config(sweep: Storage) -> SweepConfig | None:
    """The sweep's saved config, None if it has none or it is unreadable (nothing to compare)."""
    try:
        return _read_saved_config(sweep)
    except (ResultsError, OSError):
        return None


def _refuse_changed_numerics(cfg: SweepConfig, sweep: Storage, unfinished: int) -> None:
    """Refuse a --resume that would run unfinished trials under other numerics than the sweep's.

    Raises:
        ResultsError: names the setting, its saved and new values, and what to do.
    """
    saved = _saved_config(sweep) if unfinished else None
    if saved is None:
        return
    for role in ("student", "teacher"):
        old, new = numerics(saved, role), numerics(cfg, role)
        for key in old:
            if old[key] != new[key]:
                raise ResultsError(
                    f"{sweep.uri}/config.yaml: {NUMERICS_FIELDS[key]} changed since this sweep "
                    f"started ({role} {key} {old[key]!r} -> {new[key]!r}) while {unfinished} trial(s) "
                    "are unfinished; it changes the numbers, so --resume would mix two numerics in "
                    "one sweep. Resume with the saved setting, or start a new sweep (another name "
                    "or --results)"
                )


# Storage.write_bytes and save_to_storage write ``.NAME.<32 hex>.tmp`` and rename it.
_TMP = re.compile(r"^\..+\.[0-9a-f]{32}\.tmp$")
# A temporary file still being written is touched continuously; one this old was orphaned by a kill.
_TMP_ORPHAN_AGE_S = 15 * 60


def _clean_orphans(*storages: Storage) -> None:
    """Delete temporary files left by writes that a kill interrupted (local storage only)."""
    now = time.time()
    for storage in storages:
        if not storage.is_local or not os.path.isdir(storage.root):
            continue
        removed = 0
        for folder, dirs, files in os.walk(storage.root):
            dirs[:] = [d for d in dirs if d != "_ray"]  # Ray's own files; none of ours
            for name in files:
                path = os.path.join(folder, name)
                try:
                    if _TMP.match(name) and now - os.stat(path).st_mtime > _TMP_ORPHAN_AGE_S:
                        os.remove(path)
                        removed += 1
                except OSError:  # removed meanwhile, or not ours to remove
                    continue
        if removed:
            log.info("removed %d temporary file(s) that interrupted writes left in %s", removed, storage.uri)


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
    finished, scratch = _finished_trials(tables, cfg) if resume else (set(), set())
    todo = [t for t in plan.trials if t.trial_id not in finished]
    if resume:
        _refuse_changed_numerics(cfg, sweep, len(todo))
    store = TeacherStore.under(root)
    check_teachers(store, plan, todo, cfg)
    check_pretrained(cfg, store, plan)
    _clean_orphans(sweep, store.storage)
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
