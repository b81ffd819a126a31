"""Tune function trainables: each drives one Ray Train run (a teacher pack: one or more teachers
trained one after another; or a stream group of student trials that share their data stream).

Ray 2.60 (Train V2) cannot take a Trainer inside a Tuner; the supported form is a Tune
function that builds a ``TorchTrainer`` and fits it. The Train run is named after the teacher or
pack id — never a timestamp — so a rerun of the same trial (driver resume, Tune retry) picks up
its latest epoch checkpoint. Per-epoch metrics reach Tune through ``TuneReportCallback``; the
function then reports one final ``kd_status`` result so the collector knows how the trial ended.

Before a run starts, a truncated ``checkpoint_manager_snapshot.json`` (a kill while Ray wrote it)
is set aside, so the run falls back to its newest usable checkpoint instead of failing on every
resume. A stream group's run directory holds ``kd_ray_group.json``, the trials it trains, so a
resumed sweep continues the group as it was (even if ``trials_per_run`` changed); a pack of
several teachers likewise holds ``kd_ray_pack.json``. A pack's run directory is deleted once
its teachers are all stored; a group's, by the collector, once its rows are written.
"""

from __future__ import annotations

import json
import logging
import re
from typing import Any

import ray.train
import ray.tune
from ray.train.torch import TorchTrainer
from ray.tune.integration.ray_train import TuneReportCallback

from kd_ray.config import SweepConfig, parse_config
from kd_ray.orchestration.workers import student_worker, teacher_worker
from kd_ray.results.rows import trial_keys
from kd_ray.storage import Storage

log = logging.getLogger(__name__)

STATUS_KEY = "kd_status"
ERROR_KEY = "kd_error"
SNAPSHOT = "checkpoint_manager_snapshot.json"
GROUP_MANIFEST = "kd_ray_group.json"
PACK_MANIFEST = "kd_ray_pack.json"


class TrialError(RuntimeError):
    """A trial's Train run failed after its worker restarts (the reason is the message)."""


# One exception line of a traceback: ``[module.]Name[: message]``.
_ERROR_LINE = re.compile(
    r"^\s*(?:[\w.]+\.)?([A-Z]\w*(?:Error|Exception|Iteration|Exit|Interrupt))(?::\s*(.*))?$"
)
# Exceptions that only wrap the worker's own error (its text follows them).
_WRAPPERS = frozenset(
    {
        "TrialError",
        "WorkerGroupError",
        "RayTaskError",
        "RayActorError",
        "TrainingFailedError",
        "ControllerError",
    }
)
_ANSI = re.compile(r"\x1b\[[0-9;]*m")


def short_error(err: BaseException | str) -> str:
    """The worker's own ``SomeError: message`` line of a (possibly remote, wrapped) error, one line.

    A failed Train run's text holds Ray's wrappers and the workers' tracebacks; the reason is the
    last exception line that is not a wrapper (a bare ``StopIteration`` counts too).
    """
    text = _ANSI.sub("", str(err))
    found = [m for m in (_ERROR_LINE.match(line) for line in text.splitlines()) if m]
    own = [m for m in found if m.group(1) not in _WRAPPERS]
    if not own and found:  # only wrappers: one may carry the reason, ``TrialError: KeyError: 'x'``
        inner = found[-1].group(2) or ""
        return short_error(inner) if _ERROR_LINE.match(inner) else f"{found[-1].group(1)}: {inner}"[:500]
    if own:
        name, msg = own[-1].groups()
        return (f"{name}: {msg.strip()}" if msg and msg.strip() else name)[:500]
    first = text.strip().splitlines()[0] if text.strip() else type(err).__name__
    return first[:500]


def _snapshot_problem(run_dir: Storage) -> str | None:
    """Why Ray Train could not load the run's checkpoint snapshot, or None."""
    if not run_dir.exists(SNAPSHOT):
        return None
    try:
        data = json.loads(run_dir.read_bytes(SNAPSHOT))
        names = [r["checkpoint_dir_name"] for r in data["checkpoint_results"]]
        if data.get("latest_checkpoint_result"):
            names.append(data["latest_checkpoint_result"]["checkpoint_dir_name"])
    except (ValueError, KeyError, TypeError, OSError) as err:  # JSONDecodeError is a ValueError
        return f"is unreadable ({type(err).__name__}: {str(err)[:120]})"
    gone = [n for n in names if not run_dir.exists(n)]
    return f"names checkpoint {gone[0]}, which is gone" if gone else None


def _set_aside_bad_snapshot(run_dir: Storage, name: str) -> None:
    problem = _snapshot_problem(run_dir)
    if problem is None:
        return
    run_dir.fs.move(run_dir.path(SNAPSHOT), run_dir.path(SNAPSHOT + ".unreadable"))
    log.warning(
        "%s: Ray Train's %s %s; set aside as %s.unreadable, so the run continues from its newest "
        "usable checkpoint, or starts fresh if it has none",
        name,
        SNAPSHOT,
        problem,
        SNAPSHOT,
    )


def delete_run(ray_storage: str, name: str) -> None:
    """Delete a finished Train run's directory (its checkpoints); a failure only logs."""
    run_dir = Storage.open(ray_storage).child(name)
    try:
        if run_dir.exists():
            run_dir.fs.delete_dir(run_dir.path())
    except OSError as err:
        log.warning("%s: could not delete its training checkpoints (%s)", run_dir.uri, err)


def _fit(
    worker, name: str, cfg: SweepConfig, loop_config: dict[str, Any], num_workers: int
) -> dict[str, Any]:
    _set_aside_bad_snapshot(Storage.open(loop_config["ray_storage"]).child(name), name)
    loop_config = {**loop_config, "run_name": name}
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
            # Ray Train's INFO lines (each report's whole metrics dict, worker-group start-up)
            # drown the sweep's own progress; its warnings and errors still show.
            logging_config=ray.train.LoggingConfig(log_level="WARNING"),
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


def _write_manifest(config: dict[str, Any], name: str, manifest: str, content: dict[str, Any]) -> None:
    """Write down, once, which members run ``name``'s checkpoints are for (read by ``--resume``)."""
    run_dir = Storage.open(config["ray_storage"]).child(name)
    if not run_dir.exists(manifest):
        run_dir.write_bytes(manifest, json.dumps(content).encode())


def _final_report(ids: list[str], outcome: dict[str, Any]) -> dict[str, Any]:
    """The run's last Tune report: how each member ended (``{id}::kd_status``, ``{id}::kd_error``)."""
    status, errors = outcome.get("status", {}), outcome.get("error", {})
    final: dict[str, Any] = {}
    for member in ids:
        error = errors.get(member) or ("" if member in status else "the run returned no status")
        final.update(trial_keys(member, {STATUS_KEY: status.get(member, "failed"), ERROR_KEY: error}))
    return final


def group_trial(config: dict[str, Any]) -> None:
    """Tune function of one stream group: one Ray Train run that trains all its student trials."""
    group = config["group"]
    cfg = parse_config(config["sweep"])
    ids = [t["trial_id"] for t in group["trials"]]
    _write_manifest(config, group["group_id"], GROUP_MANIFEST, {"group_id": group["group_id"], "trials": ids})
    outcome = _fit(student_worker, group["group_id"], cfg, config, cfg.resources.num_workers)
    ray.tune.report(_final_report(ids, outcome))


def teacher_trial(config: dict[str, Any]) -> None:
    """Tune function of one teacher pack: one Ray Train run that trains its teachers in turn."""
    pack = config["teacher"]
    cfg = parse_config(config["sweep"])
    name = pack["pack_id"]
    ids = [t["teacher_id"] for t in pack["teachers"]]
    if len(ids) > 1:
        _write_manifest(config, name, PACK_MANIFEST, {"pack_id": name, "teachers": ids})
    outcome = _fit(teacher_worker, name, cfg, config, cfg.resources.teacher_workers)
    final = _final_report(ids, outcome)
    if all(outcome.get("status", {}).get(tid) == "ok" for tid in ids):  # all stored: checkpoints done
        delete_run(config["ray_storage"], name)
    ray.tune.report(final)
