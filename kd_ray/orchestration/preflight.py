"""Driver-side checks of a sweep's inputs, run before Ray starts.

Inside Ray a missing data directory, a batch larger than the dataset, pretrained weights that
cannot be had or a corrupt teacher file surfaces as a failed trial, after cluster start-up and
only in a log; checked here, it is one line naming the field or path, in seconds, and nothing
already finished is touched. No Ray import here: :func:`wait_until_placeable` checks the
cluster's nodes that the caller reads from Ray.
"""

from __future__ import annotations

import json
import logging
import math
import os
import sys
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass

from kd_ray.config import DatasetConfig, SweepConfig
from kd_ray.errors import CheckpointError, ClusterError, ConfigError, DataError, KdRayError
from kd_ray.orchestration.teacher_store import TeacherStore
from kd_ray.plan import StudentTrial, SweepPlan

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class _DatasetFacts:
    """What the driver learnt from building a dataset, for the checks that follow."""

    num_classes: int
    channels: int
    native_size: int
    num_train: int


_FACTS: dict[DatasetConfig, _DatasetFacts] = {}


def _facts(dataset: DatasetConfig) -> _DatasetFacts:
    """Build ``dataset`` (once per process) and keep what the checks need."""
    if dataset not in _FACTS:
        from kd_ray.data import DATASETS

        built = DATASETS.get(dataset.name)(dataset)
        _FACTS[dataset] = _DatasetFacts(
            built.num_classes, built.channels, built.native_size, len(built.train)
        )
    return _FACTS[dataset]


def check_datasets(cfg: SweepConfig) -> None:
    """Build every dataset of the sweep once on the driver, so a data error stops the sweep early.

    The builders are the workers' own, so whatever they would reject is rejected here. This
    assumes the driver sees the data where the workers do (a shared filesystem on a cluster).

    A training batch larger than a dataset's training split is refused too: training drops
    the last partial batch, so no step would run.

    Raises:
        DataError: names the dataset entry and the path or file that is wrong.
        ConfigError: a ``train.batch_size`` larger than a training split.
    """
    data_log = logging.getLogger("kd_ray.data")
    level = data_log.level
    data_log.setLevel(logging.WARNING)  # the workers say what they load; here it would be noise
    try:
        for i, dataset in enumerate(cfg.datasets):
            try:
                facts = _facts(dataset)
            except DataError as err:
                raise DataError(f"datasets.{i} ({dataset.key}): {err}") from None
            for role, train in (("teacher", cfg.teacher.train), ("student", cfg.student.train)):
                if train.batch_size > facts.num_train:
                    raise ConfigError(
                        f"{role}.train.batch_size: {train.batch_size} is larger than the "
                        f"{facts.num_train} training images of datasets.{i} ({dataset.key}); "
                        "training drops the last partial batch, so no step would run"
                    )
    finally:
        data_log.setLevel(level)


def _dataset_of(cfg: SweepConfig, key: str) -> DatasetConfig:
    return cfg.dataset(key)


def _teacher_model(cfg: SweepConfig, dataset: DatasetConfig, *, pretrained: bool | str = False):
    """The teacher model a worker builds for ``dataset`` (the workers' own factory)."""
    from kd_ray.models import create_model

    facts = _facts(dataset)
    return create_model(
        cfg.teacher.arch,
        num_classes=facts.num_classes,
        in_channels=facts.channels,
        pretrained=pretrained,
        image_size=dataset.image_size or facts.native_size,
    )


def check_pretrained(cfg: SweepConfig, store: TeacherStore, plan: SweepPlan) -> None:
    """Load the pretrained weights of the teachers still to be trained, as their workers will.

    On a private local cluster the workers share this machine's torch.hub cache, so the file
    fetched here is the one they load. Nothing is loaded when every teacher is already trained.

    Raises:
        ConfigError: ``teacher.pretrained`` names no weights of ``teacher.arch``.
        CheckpointError: the weights are neither cached nor downloadable, or do not fit.
    """
    if cfg.teacher.pretrained is False:
        return
    keys = sorted({t.dataset for t in plan.teachers if not store.has(t.teacher_id)})
    models_log = logging.getLogger("kd_ray.models")
    level = models_log.level
    models_log.setLevel(logging.WARNING)  # a failed download is said once, by the error below
    try:
        for key in keys:
            try:
                _teacher_model(cfg, _dataset_of(cfg, key), pretrained=cfg.teacher.pretrained)
            except KdRayError as err:
                raise type(err)(f"teacher.pretrained: {err}") from None
    finally:
        models_log.setLevel(level)


def check_teachers(
    store: TeacherStore,
    plan: SweepPlan,
    trials: Iterable[StudentTrial],
    cfg: SweepConfig | None = None,
) -> None:
    """Check the stored teachers that ``trials`` will distil from.

    Only teachers already in the store are checked (the others are about to be trained). A file
    that is not a kd_ray teacher, holds another teacher, or (given ``cfg``) weights of another
    shape than the model the students load it into, is refused instead of retrained: the store
    is shared by sweeps, so a bad file there is worth a person's look. The JSON record of every
    stored teacher of the plan is checked as well.

    Raises:
        CheckpointError: names the file and what is wrong with it.
    """
    needed = sorted({tid for trial in trials for tid in trial.teacher_ids})
    for spec in plan.teachers:  # the sweep writes a teachers row from every stored record
        if store.has(spec.teacher_id):
            check_teacher_record(store, spec.teacher_id)
    for teacher_id in needed:
        if store.has(teacher_id):
            spec = plan.teacher(teacher_id)
            store.check(spec)
            if cfg is not None:  # weights of the shape the students' teacher models have
                model = _teacher_model(cfg, _dataset_of(cfg, spec.dataset))
                try:
                    store.load_into(model, spec)
                except CheckpointError as err:
                    raise CheckpointError(_misfit(store, spec, model) or str(err)) from None
    log.debug("checked %d stored teacher(s)", len(needed))


def _misfit(store: TeacherStore, spec, model) -> str | None:
    """Which tensor of a stored teacher has another shape than ``model``'s, as one line."""
    from kd_ray.train.checkpoint import from_bytes

    path = store.weights_path(spec.teacher_id)
    try:
        saved = from_bytes(store.storage.read_bytes(f"{spec.teacher_id}.pt"), path)["state_dict"]
    except (KdRayError, KeyError, TypeError):
        return None
    want = model.state_dict()
    for key, tensor in want.items():
        got = saved.get(key)
        if got is not None and tuple(got.shape) != tuple(tensor.shape):
            return (
                f"{path}: weights do not fit the {spec.arch} built for dataset {spec.dataset!r}: {key} "
                f"is {tuple(got.shape)} there, {tuple(tensor.shape)} here (did the data at its root "
                "change, e.g. its classes?); delete the file to train that teacher again"
            )
    missing = sorted(set(want) ^ set(saved))
    if missing:
        return f"{path}: weights do not fit {spec.arch}: {len(missing)} tensor name(s) differ, e.g. {missing[0]!r}"
    return None


# The fields of a teacher record that the teachers table reads, and the JSON types they may have.
_RECORD_FIELDS = {
    "epochs": (int,),
    "train_acc": (int, float),
    "val_acc": (int, float),
    "wall_s": (int, float),
}


def check_teacher_record(store: TeacherStore, teacher_id: str) -> None:
    """Check that ``_teachers/<id>.json`` is a teacher record the sweep can read.

    Raises:
        CheckpointError: names the file and what is wrong with it.
    """
    path = store.storage.path(f"{teacher_id}.json")
    try:
        record = json.loads(store.storage.read_bytes(f"{teacher_id}.json"))
    except ValueError as err:  # also UnicodeDecodeError
        problem = f"not JSON ({type(err).__name__}: {str(err).splitlines()[0][:120]})"
    else:
        problem = None
        if not isinstance(record, Mapping):
            problem = f"holds a JSON {type(record).__name__}, not an object"
        else:
            for key, types in _RECORD_FIELDS.items():
                value = record.get(key)
                if value is not None and (isinstance(value, bool) or not isinstance(value, types)):
                    problem = f"its {key!r} is {value!r}, not a number"
                    break
    if problem:
        raise CheckpointError(
            f"{path}: not a kd_ray teacher record ({problem}); delete it and "
            f"{teacher_id}.pt beside it to train that teacher again"
        )


def require_trained(store: TeacherStore, trial: StudentTrial) -> str | None:
    """The first teacher of ``trial`` that is not in the store, or None."""
    return next((tid for tid in trial.teacher_ids if not store.has(tid)), None)


# --- cluster -------------------------------------------------------------------------------


def check_ray_address(address: str | None) -> None:
    """Refuse a ``RAY_ADDRESS`` where no Ray cluster answers, in seconds.

    ``ray.init`` retries an unreachable GCS address for many minutes before it gives up; a
    TCP connection to it tells in seconds. ``auto`` is left to Ray (it fails at once).

    Raises:
        ClusterError: the address is a dashboard URL, malformed, or nothing listens there.
    """
    import socket

    if not address or address.strip() in ("auto", "local"):
        return
    address = address.strip()
    hint = "start a cluster there (ray start --head) or unset RAY_ADDRESS to run on this machine"
    if address.startswith(("http://", "https://")):
        raise ClusterError(
            f"RAY_ADDRESS={address}: that is a dashboard/job API address; a sweep joins a cluster "
            "by its GCS address HOST:PORT (ray job submit sets it), or unset RAY_ADDRESS"
        )
    hostport = address.removeprefix("ray://").split("/")[0]
    host, sep, port = hostport.rpartition(":")
    if not sep or not host or not port.isdigit():
        raise ClusterError(f"RAY_ADDRESS={address}: expected HOST:PORT of a Ray cluster's GCS; {hint}")
    try:
        socket.create_connection((host.strip("[]"), int(port)), timeout=5).close()
    except OSError as err:
        reason = err.strerror or str(err) or type(err).__name__
        raise ClusterError(
            f"RAY_ADDRESS={address}: no Ray cluster answers there ({reason}); {hint}"
        ) from None


# --- cluster resources -------------------------------------------------------------------


def _slots(node: Mapping[str, float], per_worker: Mapping[str, float]) -> int:
    return min(math.floor(node.get(k, 0.0) / v + 1e-9) for k, v in per_worker.items())


def unplaceable(cfg: SweepConfig, nodes: list[Mapping[str, float]], *, trial_cpu: float = 0.0) -> str | None:
    """Why the cluster of ``nodes`` (each node's total resources) can never run a trial, or None.

    A run needs all its Train workers at once (each on one node) plus ``trial_cpu`` for the
    Tune function that drives it, on some node.
    """
    res = cfg.resources
    per_worker = {"CPU": res.cpus_per_worker}
    if res.gpus_per_worker:
        per_worker["GPU"] = res.gpus_per_worker
    have = (
        ", ".join("{" + ", ".join(f"{k}: {node.get(k, 0.0):g}" for k in per_worker) + "}" for node in nodes)
        or "none"
    )
    for role, workers, field in (
        ("student", res.num_workers, "num_workers"),
        ("teacher", res.teacher_workers, "teacher_workers"),
    ):
        total = sum(_slots(n, per_worker) for n in nodes)
        best = max(
            (
                total
                - _slots(n, per_worker)
                + _slots({**n, "CPU": n.get("CPU", 0.0) - trial_cpu}, per_worker)
                for n in nodes
                if n.get("CPU", 0.0) >= trial_cpu
            ),
            default=0,
        )
        if best < workers:
            want = ", ".join(f"{k}: {v:g}" for k, v in per_worker.items())
            fields = "cpus_per_worker" + (", gpus_per_worker" if res.gpus_per_worker else "")
            return (
                f"resources: a {role} run needs {workers} worker(s) of {{{want}}} at once "
                f"(resources.{field}, {fields}), but the cluster's nodes have {have} and hold "
                f"{best}; ask for less or add nodes"
            )
    return None


def _this_machine() -> dict[str, float]:
    """The CPUs and GPUs a private local Ray cluster gets on this machine, as Ray counts them."""
    import torch

    from kd_ray.orchestration._ray_compat import local_cpu_count

    cpus = local_cpu_count()
    return {"CPU": cpus, "GPU": float(torch.cuda.device_count())}


def check_local_resources(cfg: SweepConfig, *, trial_cpu: float = 0.0) -> None:
    """Refuse, before Ray starts, runs that the private local cluster (this machine) cannot hold.

    Nothing is checked when the sweep joins a cluster (``RAY_ADDRESS``) or Ray already runs in
    this process: then the cluster's own nodes are checked once it is joined.

    Raises:
        ClusterError: e.g. ``gpus_per_worker: 1`` on a machine without a GPU.
    """
    ray = sys.modules.get("ray")
    if os.environ.get("RAY_ADDRESS") or (ray is not None and ray.is_initialized()):
        return
    reason = unplaceable(cfg, [_this_machine()], trial_cpu=trial_cpu)
    if reason:
        raise ClusterError(
            f"{reason} (without RAY_ADDRESS the sweep runs on a private Ray cluster of this machine)"
        )


def wait_until_placeable(
    cfg: SweepConfig,
    nodes: Callable[[], list[Mapping[str, float]]],
    *,
    autoscaling: bool,
    trial_cpu: float = 0.0,
    clock: Callable[[], float] = time.monotonic,
    sleep: Callable[[float], None] = time.sleep,
    poll_s: float = 5.0,
    say_every_s: float = 30.0,
) -> None:
    """Return once the cluster can run the sweep's trials; never hang on a request it cannot meet.

    Ray Train retries a worker group that cannot be placed without end. On a fixed cluster a
    request no node can fit fails here at once; an autoscaling cluster is given
    ``resources.node_wait_s`` to add nodes, and is told what is being waited for.

    Raises:
        ClusterError: the request cannot be met (after the wait, when autoscaling).
    """
    reason = unplaceable(cfg, nodes(), trial_cpu=trial_cpu)
    if reason is None:
        return
    limit = cfg.resources.node_wait_s
    if not autoscaling or limit <= 0:
        raise ClusterError(f"{reason} (this cluster does not add nodes)" if not autoscaling else reason)
    start = clock()
    said = -math.inf
    while reason is not None:
        waited = clock() - start
        if waited >= limit:
            raise ClusterError(f"{reason}; gave up after waiting {waited:.0f} s (resources.node_wait_s)")
        if clock() - said >= say_every_s:
            log.warning(
                "waiting for the cluster to add nodes (%.0f of %.0f s, resources.node_wait_s): %s",
                waited,
                limit,
                reason,
            )
            said = clock()
        sleep(poll_s)
        reason = unplaceable(cfg, nodes(), trial_cpu=trial_cpu)
    log.info("the cluster can now hold the sweep's runs")
