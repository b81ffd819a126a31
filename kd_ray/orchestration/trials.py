"""Tune function trainables: each drives one Ray Train run (a teacher, or a stream group of
student trials that share their data stream).

Ray 2.60 (Train V2) cannot take a Trainer inside a Tuner; the supported form is a Tune
function that builds a ``TorchTrainer`` and fits it. The Train run is named after the teacher or
trial id — never a timestamp — so a rerun of the same trial (driver resume, Tune retry) picks up
its latest epoch checkpoint. Per-epoch metrics reach Tune through ``TuneReportCallback``; the
function then reports one final ``kd_status`` result so the collector knows how the trial ended.
"""

from __future__ import annotations

import re
from typing import Any

import ray.train
import ray.tune
from ray.train.torch import TorchTrainer
from ray.tune.integration.ray_train import TuneReportCallback

from kd_ray.config import parse_config
from kd_ray.orchestration.workers import student_worker, teacher_worker
from kd_ray.results.rows import TRIAL_SEP

STATUS_KEY = "kd_status"
ERROR_KEY = "kd_error"


class TrialError(RuntimeError):
    """A trial's Train run failed after its worker restarts (the reason is the message)."""


_ERROR_LINE = re.compile(r"^\s*(?:[\w.]+\.)?(\w+(?:Error|Exception|Diverged)): (.+)$")


def short_error(err: BaseException | str) -> str:
    """The most specific ``SomeError: message`` line of a (possibly remote) error, one line."""
    text = str(err)
    lines = [m for m in (_ERROR_LINE.match(line) for line in text.splitlines()) if m]
    if lines:
        name, msg = lines[-1].groups()
        return f"{name}: {msg.strip()}"[:500]
    first = text.strip().splitlines()[0] if text.strip() else type(err).__name__
    return first[:500]


def _fit(worker, name: str, loop_config: dict[str, Any], num_workers: int) -> dict[str, Any]:
    cfg = parse_config(loop_config["sweep"])
    res = cfg.resources
    per_worker = {"CPU": res.cpus_per_worker}
    if res.gpus_per_worker:
        per_worker["GPU"] = res.gpus_per_worker
    trainer = TorchTrainer(
        worker,
        train_loop_config=loop_config,
        scaling_config=ray.train.ScalingConfig(
            num_workers=num_workers, use_gpu=res.gpus_per_worker > 0, resources_per_worker=per_worker
        ),
        run_config=ray.train.RunConfig(
            name=name,
            storage_path=loop_config["ray_storage"],
            failure_config=ray.train.FailureConfig(max_failures=cfg.failure.worker_max_failures),
            checkpoint_config=ray.train.CheckpointConfig(num_to_keep=2),
            callbacks=[TuneReportCallback()],
        ),
    )
    try:
        result = trainer.fit()
    except Exception as err:
        # Raised, not returned: Tune then re-runs the trial up to failure.trial_max_failures
        # times (the same Train run name resumes from its checkpoint), and after that the
        # collector records it as failed with this one-line reason.
        raise TrialError(short_error(err)) from None
    return result.return_value or {}


def student_trial(config: dict[str, Any]) -> None:
    """Tune function of one stream group of student trials."""
    group = config["group"]
    cfg = parse_config(config["sweep"])
    outcome = _fit(student_worker, group["group_id"], config, cfg.resources.num_workers)
    status, errors = outcome.get("status", {}), outcome.get("error", {})
    final = {}
    for trial in group["trials"]:
        tid = trial["trial_id"]
        final[f"{tid}{TRIAL_SEP}{STATUS_KEY}"] = status.get(tid, "failed")
        final[f"{tid}{TRIAL_SEP}{ERROR_KEY}"] = errors.get(tid) or (
            "" if tid in status else "the run returned no status"
        )
    ray.tune.report(final)


def teacher_trial(config: dict[str, Any]) -> None:
    """Tune function that trains one teacher."""
    cfg = parse_config(config["sweep"])
    outcome = _fit(
        teacher_worker, f"teacher-{config['teacher']['teacher_id']}", config, cfg.resources.teacher_workers
    )
    ray.tune.report({STATUS_KEY: outcome.get("status", "failed"), ERROR_KEY: outcome.get("error") or ""})
