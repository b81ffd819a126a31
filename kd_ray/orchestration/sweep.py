"""Running a whole sweep on Ray: the teacher stage, then the student grid, then the report.

Resume is ours, not Tune's experiment restore: finished trials are read from ``trials.parquet``
and skipped, finished teachers are found in the teacher store, and every unfinished trial is
started again under its fixed Train run name, which continues from its latest epoch checkpoint.
That keeps resume correct whatever state Tune had saved when the driver was killed.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from typing import Any

from kd_ray.config import SweepConfig, dump_config
from kd_ray.errors import ResultsError
from kd_ray.plan import StudentTrial, SweepPlan, plan_sweep
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
    ok: int
    failed: int
    skipped: int
    teachers_trained: int
    teachers_reused: int


def _comparable(cfg_yaml: str) -> dict[str, Any]:
    import yaml

    data = yaml.safe_load(cfg_yaml) or {}
    return {k: v for k, v in data.items() if k not in _RESUMABLE_CHANGES}


def prepare_results(cfg: SweepConfig, results: str, *, resume: bool) -> tuple[Storage, Storage]:
    """Check and create the results directory; returns (results root, sweep directory).

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
                f"(only {', '.join(_RESUMABLE_CHANGES)} may change on --resume)"
            )
    sweep.write_bytes("config.yaml", config_yaml.encode())
    return root, sweep


def _init_ray(cfg: SweepConfig) -> None:
    import ray

    env = {
        # Train's controller polls workers at this interval; its 2 s default throttles small runs.
        "RAY_TRAIN_HEALTH_CHECK_INTERVAL_S": str(cfg.resources.report_interval_s),
        "RAY_USAGE_STATS_ENABLED": "0",
    }
    os.environ.update(env)
    if ray.is_initialized():
        return
    if os.environ.get("RAY_ADDRESS"):
        ray.init(runtime_env={"env_vars": env}, log_to_driver=True)
    else:
        # A local cluster for this process only; the dashboard is not needed for a local sweep.
        ray.init(include_dashboard=False, runtime_env={"env_vars": env}, _node_ip_address="127.0.0.1")


def _experiment_name(sweep: Storage, stage: str) -> str:
    """A fresh Tune experiment name per attempt (``students-1``, ``students-2``...), never a timestamp."""
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
) -> None:
    from ray import tune

    # The Tune function itself only waits on its TorchTrainer: a sliver of CPU is enough.
    fn = tune.with_resources(trainable, {"cpu": 0.01})
    tuner = tune.Tuner(
        fn,
        param_space={**base, stage: tune.grid_search(items)},
        tune_config=tune.TuneConfig(max_concurrent_trials=cfg.resources.max_concurrent_trials),
        run_config=tune.RunConfig(
            name=_experiment_name(sweep, stage + "s"),
            storage_path=sweep.child("_ray").uri,
            failure_config=tune.FailureConfig(max_failures=cfg.failure.trial_max_failures),
            callbacks=callbacks,
            verbose=verbose,
        ),
    )
    tuner.fit()


def _train_teachers(
    cfg, plan: SweepPlan, root: Storage, sweep: Storage, base: dict, verbose: int
) -> tuple[int, int]:
    from kd_ray.orchestration.teacher_store import TeacherStore
    from kd_ray.orchestration.trials import teacher_trial

    store = TeacherStore.under(root)
    missing = [t for t in plan.teachers if not store.has(t.teacher_id)]
    reused = len(plan.teachers) - len(missing)
    if missing:
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


def run_sweep(cfg: SweepConfig, results: str, *, resume: bool = False, verbose: int = 1) -> SweepOutcome:
    """Run (or continue) the sweep ``cfg`` with results under ``results/cfg.name``."""
    plan = plan_sweep(cfg)
    root, sweep = prepare_results(cfg, results, resume=resume)
    tables = ResultTables(sweep)
    finished = set()
    if resume:
        done = tables.read("trials")
        finished = set(done.loc[done["status"] == "ok", "trial_id"])
    todo = [t for t in plan.trials if t.trial_id not in finished]

    _init_ray(cfg)
    from kd_ray.orchestration.collector import ResultsCollector
    from kd_ray.orchestration.teacher_store import TeacherStore
    from kd_ray.orchestration.trials import student_trial

    base = {"sweep": cfg.model_dump(mode="json"), "teacher_store": TeacherStore.under(root).storage.uri}
    trained, reused = _train_teachers(cfg, plan, root, sweep, base, verbose)

    store = TeacherStore.under(root)
    runnable: list[StudentTrial] = []
    for trial in todo:
        missing = [tid for tid in trial.teacher_ids if not store.has(tid)]
        if missing:
            row = trial_row(
                trial,
                teacher_arch=cfg.teacher.arch,
                student_arch=cfg.student.arch,
                report=None,
                status="failed",
                error=f"teacher {missing[0]} failed to train",
                wall_s=0.0,
            )
            tables.write("trials", trial.trial_id, [row])
        else:
            runnable.append(trial)
    if runnable:
        collector = ResultsCollector(
            sweep.uri,
            teacher_arch=cfg.teacher.arch,
            student_arch=cfg.student.arch,
            ece_bins=cfg.metrics.ece_bins,
        )
        items = [t.__dict__ for t in runnable]
        _tune(
            cfg,
            sweep,
            "trial",
            student_trial,
            items,
            {**base, "ray_storage": sweep.child("_ray").uri},
            [collector],
            verbose,
        )

    final = tables.read("trials")
    final = final[final["trial_id"].isin([t.trial_id for t in plan.trials])]
    ok = int((final["status"] == "ok").sum())
    return SweepOutcome(sweep.uri, ok, len(plan.trials) - ok, len(finished), trained, reused)
