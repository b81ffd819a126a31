"""Running a whole sweep on Ray: the teacher stage, then the student grid, then the report.

Resume is ours, not Tune's experiment restore: finished trials are read from ``trials.parquet``
and skipped, finished teachers are found in the teacher store, and every unfinished trial is
started again under its fixed Train run name, which continues from its latest epoch checkpoint.
That keeps resume correct whatever state Tune had saved when the driver was killed.
"""

from __future__ import annotations

import logging
import os
import sys
from dataclasses import dataclass
from typing import Any

from kd_ray.config import SweepConfig, dump_config
from kd_ray.errors import ResultsError
from kd_ray.orchestration.preflight import check_datasets, check_teachers, require_trained
from kd_ray.orchestration.teacher_store import TeacherStore
from kd_ray.plan import DATA_LOCATION_FIELDS, StudentTrial, SweepPlan, group_id, plan_sweep, stream_groups
from kd_ray.results.rows import teacher_row, trial_row
from kd_ray.results.store import ResultTables
from kd_ray.storage import Storage

log = logging.getLogger(__name__)

# Settings that may change between a sweep and its resume: they decide where and how fast
# trials run, not what they compute.
_RESUMABLE_CHANGES = ("resources", "runtime", "failure", "results")


@dataclass(frozen=True)
class SweepOutcome:
    sweep_uri: str
    local_dir: str | None  # the sweep directory as a local path, when it is on this machine
    ok: int
    failed: int
    skipped: int
    teachers_trained: int
    teachers_reused: int


def _comparable(cfg_yaml: str) -> dict[str, Any]:
    import yaml

    data = yaml.safe_load(cfg_yaml) or {}
    kept = {k: v for k, v in data.items() if k not in _RESUMABLE_CHANGES}
    kept["datasets"] = [
        {k: v for k, v in d.items() if k not in DATA_LOCATION_FIELDS} for d in kept.get("datasets", [])
    ]
    return kept


def prepare_results(cfg: SweepConfig, results: str, *, resume: bool) -> tuple[Storage, Storage]:
    """Check and create the results directory; returns (results root, sweep directory).

    The sweep's ``config.yaml`` is written later, by :func:`run_sweep`, once every input check
    has passed: a sweep stopped by a user error can be started again without ``--resume``.

    Raises:
        ResultsError: not writable; a sweep of this name exists and ``resume`` is off; or
            ``resume`` is on and the saved config differs in what it computes.
    """
    root = Storage.open(results)
    root.makedirs()
    root.check_writable()
    sweep = root.child(cfg.name)
    config_yaml = dump_config(cfg)
    if sweep.exists("config.yaml"):
        if not resume:
            raise ResultsError(
                f"{sweep.uri}: sweep {cfg.name!r} already has results; pass --resume to continue it, "
                "or use another --results directory or name"
            )
        saved = sweep.read_bytes("config.yaml").decode()
        if _comparable(saved) != _comparable(config_yaml):
            raise ResultsError(
                f"{sweep.uri}/config.yaml: the config changed since this sweep started "
                f"(only {', '.join(_RESUMABLE_CHANGES)} and data locations may change on --resume)"
            )
    return root, sweep


def _loopback_only() -> None:
    """Make a local cluster listen on 127.0.0.1 only.

    ``ray.init(_node_ip_address="127.0.0.1")`` is not enough: Ray resolves a loopback address
    to the machine's routable IP, and GCS and raylet then listen on all interfaces. Ray's
    single-machine mode (meant for Windows/macOS) uses the loopback IP for every service; it is
    read from the environment at ``import ray``, and child processes inherit it.
    """
    os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
    if "ray" in sys.modules:  # imported earlier in this process (tests, notebooks)
        from ray._private import ray_constants

        ray_constants.ENABLE_RAY_CLUSTER = os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] != "0"


def _init_ray(cfg: SweepConfig) -> None:
    """Join the cluster in ``RAY_ADDRESS`` (``ray job submit`` sets it) or start a private one."""
    env = {
        # Train's controller polls workers at this interval; its 2 s default throttles small runs.
        "RAY_TRAIN_HEALTH_CHECK_INTERVAL_S": str(cfg.resources.report_interval_s),
        "RAY_USAGE_STATS_ENABLED": "0",
        # The collector writes the results; Tune's CSV and TensorBoard copies of every report
        # (hundreds of keys per stream group) would only cost driver time and disk. The JSON
        # log stays (see _tune): Tune's result grid reads it when the run ends.
        "TUNE_DISABLE_AUTO_CALLBACK_LOGGERS": "1",
    }
    os.environ.update(env)
    if not os.environ.get("RAY_ADDRESS"):
        _loopback_only()
    import ray

    if ray.is_initialized():
        return
    if os.environ.get("RAY_ADDRESS"):
        ray.init(runtime_env={"env_vars": env}, log_to_driver=True)
    else:
        # "local": always a new cluster private to this process, never one found on the machine;
        # no dashboard or job server, so nothing listens for clients.
        ray.init(address="local", include_dashboard=False, runtime_env={"env_vars": env})


def _experiment_name(sweep: Storage, stage: str) -> str:
    """A fresh Tune experiment name per attempt (``students-1``, ``students-2``...), never a timestamp."""
    existing = set(sweep.listdir("_ray"))
    n = 1
    while f"{stage}-{n}" in existing:
        n += 1
    return f"{stage}-{n}"


# The Tune function itself only waits on its TorchTrainer: a sliver of CPU is enough.
_TRIAL_FN_CPU = 0.01


def _max_concurrent(cfg: SweepConfig, workers: int) -> int:
    """How many trials to run at once: the config's limit, else as many as the cluster fits.

    Tune places a trial by its function's resources only, which are a sliver; the Train
    workers are placed later. Unbounded, Tune would start every trial of the grid at once, each
    with a Train controller (~0.5 GB) waiting for workers, so bound it by the workers' needs.
    """
    if cfg.resources.max_concurrent_trials:
        return cfg.resources.max_concurrent_trials
    import ray

    total = ray.cluster_resources()
    res = cfg.resources
    fits = [total.get("CPU", 0.0) / (workers * res.cpus_per_worker + _TRIAL_FN_CPU)]
    if res.gpus_per_worker:
        fits.append(total.get("GPU", 0.0) / (workers * res.gpus_per_worker))
    return max(1, int(min(fits) + 1e-9))


def _tune(
    cfg: SweepConfig,
    sweep: Storage,
    stage: str,
    trainable,
    items: list[dict],
    base: dict,
    callbacks: list,
    verbose: int,
) -> None:
    from ray import tune
    from ray.tune.logger import JsonLoggerCallback

    workers = cfg.resources.teacher_workers if stage == "teacher" else cfg.resources.num_workers
    fn = tune.with_resources(trainable, {"cpu": _TRIAL_FN_CPU})
    tuner = tune.Tuner(
        fn,
        param_space={**base, stage: tune.grid_search(items)},
        tune_config=tune.TuneConfig(max_concurrent_trials=_max_concurrent(cfg, workers)),
        run_config=tune.RunConfig(
            name=_experiment_name(sweep, stage + "s"),
            storage_path=sweep.child("_ray").uri,
            failure_config=tune.FailureConfig(max_failures=cfg.failure.trial_max_failures),
            callbacks=[*callbacks, JsonLoggerCallback()],
            verbose=verbose,
        ),
    )
    tuner.fit()


def _train_teachers(
    cfg, plan: SweepPlan, root: Storage, sweep: Storage, base: dict, verbose: int
) -> tuple[int, int]:
    store = TeacherStore.under(root)
    missing = [t for t in plan.teachers if not store.has(t.teacher_id)]
    reused = len(plan.teachers) - len(missing)
    if missing:
        _init_ray(cfg)
        from kd_ray.orchestration.trials import teacher_trial

        log.info("training %d teacher(s); %d found already trained", len(missing), reused)
        items = [t.__dict__ for t in missing]
        _tune(
            cfg,
            sweep,
            "teacher",
            teacher_trial,
            items,
            {**base, "ray_storage": store.storage.child("_ray").uri},
            [],
            verbose,
        )
    tables = ResultTables(sweep)
    for spec in plan.teachers:
        ok = store.has(spec.teacher_id)
        info = store.info(spec.teacher_id) if ok else None
        error = None if ok else "teacher training did not finish (see the Ray logs of its trial)"
        tables.write(
            "teachers",
            spec.teacher_id,
            [
                teacher_row(
                    spec,
                    info=info,
                    status="ok" if ok else "failed",
                    error=error,
                    checkpoint=store.weights_path(spec.teacher_id),
                )
            ],
        )
    return len(missing), reused


def _finished_trials(tables: ResultTables) -> set[str]:
    done = tables.read("trials")
    return set(done.loc[done["status"] == "ok", "trial_id"])


def _record_missing_teacher(
    cfg: SweepConfig, tables: ResultTables, trial: StudentTrial, teacher_id: str
) -> None:
    row = trial_row(
        trial,
        teacher_arch=cfg.teacher.arch,
        student_arch=cfg.student.arch,
        report=None,
        status="failed",
        error=f"teacher {teacher_id} failed to train",
        wall_s=0.0,
    )
    tables.write("trials", trial.trial_id, [row])


def run_sweep(cfg: SweepConfig, results: str, *, resume: bool = False, verbose: int = 1) -> SweepOutcome:
    """Run (or continue) the sweep ``cfg`` with results under ``results/cfg.name``.

    Inputs are checked on the driver before Ray starts (data first, before anything is
    written; then the stored teachers the remaining trials need), so a user error costs seconds
    and leaves the results of earlier runs as they were.
    """
    plan = plan_sweep(cfg)
    check_datasets(cfg)
    root, sweep = prepare_results(cfg, results, resume=resume)
    tables = ResultTables(sweep)
    finished = _finished_trials(tables) if resume else set()
    todo = [t for t in plan.trials if t.trial_id not in finished]
    store = TeacherStore.under(root)
    check_teachers(store, plan, todo)
    sweep.write_bytes("config.yaml", dump_config(cfg).encode())

    base = {"sweep": cfg.model_dump(mode="json"), "teacher_store": store.storage.uri}
    trained, reused = _train_teachers(cfg, plan, root, sweep, base, verbose)

    runnable: list[StudentTrial] = []
    for trial in todo:
        missing = require_trained(store, trial)
        if missing:
            _record_missing_teacher(cfg, tables, trial, missing)
        else:
            runnable.append(trial)
    if runnable:
        _init_ray(cfg)
        from kd_ray.orchestration.collector import ResultsCollector
        from kd_ray.orchestration.trials import student_trial

        collector = ResultsCollector(
            sweep.uri,
            teacher_arch=cfg.teacher.arch,
            student_arch=cfg.student.arch,
            ece_bins=cfg.metrics.ece_bins,
        )
        groups = stream_groups(runnable, cfg.resources.trials_per_run)
        items = [{"group_id": group_id(g), "trials": [t.__dict__ for t in g]} for g in groups]
        log.info("%d student trial(s) in %d run(s) that share data streams", len(runnable), len(groups))
        _tune(
            cfg,
            sweep,
            "group",
            student_trial,
            items,
            {**base, "ray_storage": sweep.child("_ray").uri},
            [collector],
            verbose,
        )

    final = tables.read("trials")
    final = final[final["trial_id"].isin([t.trial_id for t in plan.trials])]
    ok = int((final["status"] == "ok").sum())
    return SweepOutcome(
        sweep.uri,
        sweep.root if sweep.is_local else None,
        ok,
        len(plan.trials) - ok,
        len(finished),
        trained,
        reused,
    )
