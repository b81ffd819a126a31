"""What one wave of empty Train runs costs: the floor under any sweep design inside Tune and Train.

    .venv/bin/python benchmarks/_ray_floor.py --runs 2 --num-workers 1 --cpus-per-worker 0.95 --stages 2

A fresh Python imports Ray Tune and Ray Train, starts a private cluster as ``kd-ray sweep``
does (``address="local"``, no dashboard, the controller's poll interval of
``resources.report_interval_s``), and runs ``--stages`` Tune stages one after the other (the
sweep runs two: its teachers, then the students that need them), each of ``--runs`` trials at
once, each a Tune function (0.01 CPU, as the sweep's) that fits a ``TorchTrainer`` whose train function only
reports once. No kd_ray code runs: what it times is Ray's own share of every run, the chain of
processes each Train run starts (the Tune function's actor, the Train controller and its helper
actors, the workers with torch and a gloo process group) and stops.

A sweep that trains each slot's work in Train runs pays at least one stage of this per slot, on
top of its training epochs, however its runs are cut; one whose students wait for teachers it
trains pays two. ``run_all.py`` turns them into lower bounds on the orchestration ratio. Prints
one JSON line: ``import_s`` (Ray Tune and Train imported), ``init_s`` (the cluster up),
``stages_s`` (each Tune stage, ``fit`` called to returned), ``runs_s`` (each Train run's
``fit``, as its Tune function timed it, by stage) and ``total_s`` (the process up to the last
stage's end; the cluster's shutdown is left out).
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time

STARTED = time.perf_counter()

import ray  # noqa: E402  (timed from the first line)
import ray.train  # noqa: E402
from ray import tune  # noqa: E402
from ray.train.torch import TorchTrainer  # noqa: E402
from ray.tune.integration.ray_train import TuneReportCallback  # noqa: E402
from ray.tune.logger import JsonLoggerCallback  # noqa: E402

IMPORTED = time.perf_counter()


def _empty_loop(config: dict) -> None:
    ray.train.report({"empty_loop": 1})


def _trial(config: dict) -> None:
    started = time.perf_counter()
    trainer = TorchTrainer(
        _empty_loop,
        scaling_config=ray.train.ScalingConfig(
            num_workers=config["num_workers"], resources_per_worker={"CPU": config["cpus_per_worker"]}
        ),
        run_config=ray.train.RunConfig(
            name=f"empty-{config['i']}",
            storage_path=config["storage"],
            callbacks=[TuneReportCallback()],
            logging_config=ray.train.LoggingConfig(log_level="WARNING"),
        ),
    )
    trainer.fit()
    tune.report({"fit_s": time.perf_counter() - started})


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, required=True, help="Train runs at once (the sweep's slots)")
    parser.add_argument("--num-workers", type=int, default=1)
    parser.add_argument("--cpus-per-worker", type=float, default=1.0)
    parser.add_argument("--report-interval-s", type=float, default=0.2)
    parser.add_argument("--stages", type=int, default=1, help="Tune stages one after another")
    args = parser.parse_args()
    storage = tempfile.mkdtemp(prefix="kd_floor_")
    env = {
        "RAY_TRAIN_HEALTH_CHECK_INTERVAL_S": str(args.report_interval_s),
        "RAY_USAGE_STATS_ENABLED": "0",
        "TUNE_DISABLE_AUTO_CALLBACK_LOGGERS": "1",
    }
    os.environ.update(env)
    ray.init(address="local", include_dashboard=False, log_to_driver=False, runtime_env={"env_vars": env})
    up = time.perf_counter()
    base = {"num_workers": args.num_workers, "cpus_per_worker": args.cpus_per_worker, "storage": storage}
    stages_s, runs_s = [], []
    for stage in range(args.stages):
        began = time.perf_counter()
        grid = tune.Tuner(
            tune.with_resources(_trial, {"cpu": 0.01}),
            param_space={**base, "i": tune.grid_search([f"{stage}-{i}" for i in range(args.runs)])},
            # As the sweep's stages: Tune's CSV and TensorBoard loggers off, its JSON log on.
            run_config=tune.RunConfig(
                name=f"stage-{stage}", storage_path=storage, verbose=0, callbacks=[JsonLoggerCallback()]
            ),
        ).fit()
        stages_s.append(time.perf_counter() - began)
        if grid.errors:
            raise SystemExit(f"an empty Train run failed: {grid.errors[0]}")
        runs_s.append(sorted(r.metrics["fit_s"] for r in grid))
    print(
        json.dumps(
            {
                "import_s": IMPORTED - STARTED,
                "init_s": up - IMPORTED,
                "stages_s": stages_s,
                "runs_s": runs_s,
                "total_s": time.perf_counter() - STARTED,
            }
        ),
        flush=True,
    )
    ray.shutdown()


if __name__ == "__main__":
    main()
