"""From a sweep config to the work it implies: the distinct teachers and the student trials.

Pure Python, no Ray and no training: ``kd-ray sweep --dry-run`` prints this plan, and the
orchestrator runs it. Names follow docs/experiments.md#trial-names: a permutation is
``T1s_T2w_Ss`` (teacher slots in order, then the student); loss, view and seed are separate
fields, and so are KD's own hyper-parameters (τ, α, the student's lr), which enter a trial's id
only when the grid sweeps them.
"""

from __future__ import annotations

import hashlib
import itertools
import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from kd_ray.config import KD_AXES, DatasetConfig, SweepConfig
from kd_ray.errors import ConfigError

AUGS: tuple[str, ...] = ("w", "s")

# Where and how the data is fetched, not what it is: moving a dataset directory must neither
# retrain teachers nor count as a changed config on --resume.
DATA_LOCATION_FIELDS: frozenset[str] = frozenset({"root", "download", "verify_checksums"})


@dataclass(frozen=True)
class TeacherSpec:
    """One distinct teacher: trained once, shared by every student trial that names it.

    ``teacher_id`` is a content hash of everything that changes its weights (dataset, arch,
    slot, augmentation, seed, pretraining, training hyper-parameters), so a teacher trained by
    an earlier sweep with the same content is found and reused.
    """

    teacher_id: str
    name: str  # e.g. "T1w"
    dataset: str
    arch: str
    slot: int
    aug: str
    seed: int
    pretrained: bool | str  # or a torchvision weights name


@dataclass(frozen=True)
class StudentTrial:
    """One student distillation run of the grid.

    ``temperature``, ``alpha`` and ``lr`` are the values this trial distils with: the grid's
    value where it sweeps that axis, else the config's single setting. A trial carries them
    itself because the students of one run (a stream group) may differ in them.
    """

    trial_id: str
    dataset: str
    perm: str  # e.g. "T1s_T2w_Ss"
    teacher_augs: str  # e.g. "sw"
    student_aug: str
    loss: str
    view: str
    seed: int
    teacher_ids: tuple[str, ...]
    temperature: float
    alpha: float
    lr: float  # the student's base learning rate (before the schedule)

    @property
    def n_teachers(self) -> int:
        return len(self.teacher_ids)

    @classmethod
    def from_dict(cls, data: dict) -> StudentTrial:
        """Rebuild a trial from its ``__dict__`` (as it travels through Ray configs)."""
        return cls(**{**data, "teacher_ids": tuple(data["teacher_ids"])})


def stream_key(trial: StudentTrial) -> tuple[str, str, int]:
    """What decides a student trial's data stream and initial weights
    (docs/experiments.md#paired-randomness): dataset, student augmentation and seed. Not the
    teachers, the loss, the view or the KD hyper-parameters: the view decides what the teachers
    see, so a full-view and a split-view trial share their stream, and trials that differ only in
    τ, α or lr start from the same weights on the same batches (paired)."""
    return (trial.dataset, trial.student_aug, trial.seed)


def stream_groups(
    trials: Sequence[StudentTrial], max_size: int | None = None
) -> list[tuple[StudentTrial, ...]]:
    """Trials that share a data stream, in plan order, in chunks of at most ``max_size``.

    Such trials see identical batches, so one run can augment each batch once and run each
    teacher once per distinct input for all of them, whatever their views (the orchestrator
    trains a group per Ray Train run).
    """
    groups: dict[tuple, list[StudentTrial]] = {}
    for trial in trials:
        groups.setdefault(stream_key(trial), []).append(trial)
    size = max_size or max((len(g) for g in groups.values()), default=1)
    return [tuple(g[i : i + size]) for g in groups.values() for i in range(0, len(g), size)]


def group_id(group: Sequence[StudentTrial]) -> str:
    """A stable name for a group of trials (its Ray Train run name): stream plus member hash."""
    dataset, aug, seed = stream_key(group[0])
    return f"{dataset}-S{aug}-s{seed}-{len(group)}x-{_members_digest(t.trial_id for t in group)}"


def _members_digest(ids: Iterable[str]) -> str:
    """A short hash of a run's member ids, whatever their order."""
    return hashlib.sha256("\n".join(sorted(ids)).encode()).hexdigest()[:8]


def pack_id(pack: Sequence[TeacherSpec]) -> str:
    """A stable name for a teacher pack (its Ray Train run name): ``teacher-<id>`` for one
    teacher, else how many teachers and a hash of their ids."""
    if len(pack) == 1:
        return f"teacher-{pack[0].teacher_id}"
    return f"teachers-{len(pack)}x-{_members_digest(t.teacher_id for t in pack)}"


@dataclass(frozen=True)
class SweepPlan:
    teachers: tuple[TeacherSpec, ...]
    trials: tuple[StudentTrial, ...]

    def teacher(self, teacher_id: str) -> TeacherSpec:
        return next(t for t in self.teachers if t.teacher_id == teacher_id)


def perm_name(teacher_augs: str, student_aug: str) -> str:
    """``perm_name("sw", "s") == "T1s_T2w_Ss"``."""
    return "_".join([f"T{i}{a}" for i, a in enumerate(teacher_augs, 1)] + [f"S{student_aug}"])


def parse_perm(perm: str) -> tuple[str, str]:
    """Inverse of :func:`perm_name`: ``(teacher_augs, student_aug)``; ConfigError if malformed."""
    parts = perm.split("_")
    ok = 2 <= len(parts) <= 4 and parts[-1] in ("Sw", "Ss")
    ok = ok and all(p == f"T{i}{p[-1]}" and p[-1] in AUGS for i, p in enumerate(parts[:-1], 1))
    if not ok:
        raise ConfigError(f"grid.permutations: {perm!r} is not a permutation like 'T1s_T2w_Ss'")
    return "".join(p[-1] for p in parts[:-1]), parts[-1][-1]


def permutations(k: int) -> list[tuple[str, str]]:
    """All 2^(k+1) assignments of weak/strong to T1..Tk and S, in a stable order."""
    return [("".join(t), s) for t in itertools.product(AUGS, repeat=k) for s in AUGS]


def axis_text(value: float) -> str:
    """A KD hyper-parameter as it appears in a trial id: ``4.0`` -> ``4``, ``0.05`` -> ``0.05``.

    Exact: two different floats never give the same text (``%g`` where it round-trips, else the
    shortest repr), and no ``+`` (``1e+20`` -> ``1e20``), so the id stays a safe file name.
    """
    short = f"{value:g}"
    text = short if float(short) == value else repr(float(value))
    return text.replace("+", "")


# How each swept axis is written in a trial id, by trials column: ``-tau4-alpha0.5-lr0.05``.
_ID_PREFIX: dict[str, str] = {"temperature": "tau", "alpha": "alpha", "lr": "lr"}


def kd_axis_values(cfg: SweepConfig) -> dict[str, tuple[float, ...]]:
    """The values of each KD hyper-parameter, by trials column (``temperature``, ``alpha``, ``lr``).

    A grid list where the config gives one, else the single config value.
    """
    single = {
        "temperature": cfg.distill.temperature,
        "alpha": cfg.distill.alpha,
        "lr": cfg.student.train.lr,
    }
    out = {}
    for field, (_, column) in KD_AXES.items():
        listed = getattr(cfg.grid, field)
        out[column] = tuple(listed) if listed is not None else (single[column],)
    return out


def swept_kd_axes(cfg: SweepConfig) -> tuple[str, ...]:
    """The trials columns of the KD axes the grid lists (these, and only these, name trial ids).

    Listed even with one value: a config that names an axis in its grid asks for it in the ids.
    """
    return tuple(column for field, (_, column) in KD_AXES.items() if getattr(cfg.grid, field) is not None)


def _id_suffix(values: dict[str, float], swept: tuple[str, ...]) -> str:
    return "".join(f"-{_ID_PREFIX[c]}{axis_text(values[c])}" for c in swept)


def _digest(payload: dict) -> str:
    text = json.dumps(payload, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:10]


def teacher_spec(cfg: SweepConfig, dataset: DatasetConfig, slot: int, aug: str, seed: int) -> TeacherSpec:
    """The teacher in ``slot`` with augmentation ``aug`` for ``dataset`` and ``seed``.

    Its id hashes everything that changes its weights: the dataset's content, the teacher
    section (with ``pretrained`` resolved to the exact torchvision checkpoint, so ``true`` does
    not silently follow a new DEFAULT), slot, augmentation, seed, and the numerics it is trained
    with (:func:`numerics`: workers, threads, device, bf16, channels-last, compile). The spec
    carries the resolved weights name, so the workers load the checkpoint the id names.
    """
    arch = cfg.teacher.arch
    pretrained = resolved_pretrained(arch, cfg.teacher.pretrained)
    content = {
        "dataset": dataset.model_dump(exclude=DATA_LOCATION_FIELDS | {"label"}),
        "teacher": {**cfg.teacher.model_dump(), "pretrained": pretrained_identity(arch, pretrained)},
        "slot": slot,
        "aug": aug,
        "seed": seed,
        "numerics": numerics(cfg, "teacher"),
    }
    name = f"T{slot}{aug}"
    tid = f"{dataset.key}-{arch}-{name}-s{seed}-{_digest(content)}"
    return TeacherSpec(tid, name, dataset.key, arch, slot, aug, seed, pretrained)


def _check_names(cfg: SweepConfig) -> None:
    """Check every registry name in the config, naming the field on error."""
    from kd_ray.data import DATASETS, VIEWS
    from kd_ray.losses import LOSSES
    from kd_ray.models import MODELS

    checks = [(f"datasets.{i}.name", DATASETS, d.name) for i, d in enumerate(cfg.datasets)]
    checks += [("teacher.arch", MODELS, cfg.teacher.arch), ("student.arch", MODELS, cfg.student.arch)]
    checks += [("grid.losses", LOSSES, name) for name in cfg.grid.losses]
    checks += [("grid.views", VIEWS, name) for name in cfg.grid.views]
    for field, registry, name in checks:
        try:
            registry.get(name)
        except ConfigError as err:
            raise ConfigError(f"{field}: {err}") from None


def plan_sweep(cfg: SweepConfig, *, check_names: bool = True) -> SweepPlan:
    """Enumerate the sweep: datasets × seeds × k × permutations × losses × views × τ × α × lr.

    Trial ids are ``{dataset}-{perm}-{loss}-{view}-s{seed}``; each KD axis the grid lists adds
    its value before the seed (``...-full-tau4-s0``), so configs that sweep none keep the ids
    they always had.

    Raises:
        ConfigError: an unknown registry name or a malformed/unreachable permutation filter.
    """
    if check_names:
        _check_names(cfg)
    wanted = None
    if cfg.grid.permutations is not None:
        wanted = set(cfg.grid.permutations)
        for perm in wanted:
            teacher_augs, _ = parse_perm(perm)
            if len(teacher_augs) not in cfg.grid.teacher_counts:
                raise ConfigError(
                    f"grid.permutations: {perm!r} has {len(teacher_augs)} teachers, "
                    f"but grid.teacher_counts is {list(cfg.grid.teacher_counts)}"
                )
    axes = kd_axis_values(cfg)
    swept = swept_kd_axes(cfg)
    kd_points = [dict(zip(axes, point, strict=True)) for point in itertools.product(*axes.values())]
    teachers: dict[str, TeacherSpec] = {}
    trials: list[StudentTrial] = []
    for dataset in cfg.datasets:
        for seed in cfg.grid.seeds:
            for k in sorted(cfg.grid.teacher_counts):
                for teacher_augs, student_aug in permutations(k):
                    perm = perm_name(teacher_augs, student_aug)
                    if wanted is not None and perm not in wanted:
                        continue
                    specs = [teacher_spec(cfg, dataset, i, a, seed) for i, a in enumerate(teacher_augs, 1)]
                    for spec in specs:
                        teachers.setdefault(spec.teacher_id, spec)
                    for loss, view, point in itertools.product(cfg.grid.losses, cfg.grid.views, kd_points):
                        trials.append(
                            StudentTrial(
                                trial_id=f"{dataset.key}-{perm}-{loss}-{view}{_id_suffix(point, swept)}-s{seed}",
                                dataset=dataset.key,
                                perm=perm,
                                teacher_augs=teacher_augs,
                                student_aug=student_aug,
                                loss=loss,
                                view=view,
                                seed=seed,
                                teacher_ids=tuple(s.teacher_id for s in specs),
                                **point,
                            )
                        )
    ordered = sorted(teachers.values(), key=lambda t: (t.dataset, t.seed, t.slot, AUGS.index(t.aug)))
    return SweepPlan(tuple(ordered), tuple(trials))


# --- What changes a model's numbers: ids of teachers, fingerprints of checkpoints ----------------


def torch_threads(cfg: SweepConfig) -> int:
    """Intra-op threads of each Train worker: ``runtime.torch_threads``, else its whole CPUs."""
    return cfg.runtime.torch_threads or max(1, int(cfg.resources.cpus_per_worker))


def numerics(cfg: SweepConfig, role: str) -> dict[str, object]:
    """The execution settings of a ``role`` ("teacher" or "student") run that change its numbers.

    The DDP worker count (batch-norm statistics are per shard), torch threads (reduction order),
    the device, and the runtime switches that change arithmetic. bf16 counts only where it acts
    (CUDA); loader workers and pinned memory change speed only.
    """
    res, rt = cfg.resources, cfg.runtime
    device = "cuda" if res.gpus_per_worker > 0 else "cpu"
    return {
        "workers": res.teacher_workers if role == "teacher" else res.num_workers,
        "threads": torch_threads(cfg),
        "device": device,
        "bf16": bool(rt.bf16 and device == "cuda"),
        "channels_last": rt.channels_last,
        "compile": rt.compile,
    }


# How each numerics key is set in a config, for messages.
NUMERICS_FIELDS: dict[str, str] = {
    "workers": "resources.num_workers / resources.teacher_workers",
    "threads": "runtime.torch_threads / resources.cpus_per_worker (torch threads)",
    "device": "resources.gpus_per_worker (device)",
    "bf16": "runtime.bf16",
    "channels_last": "runtime.channels_last",
    "compile": "runtime.compile",
}


def _weights_enum(arch: str):
    """torchvision's weights enum of ``arch``, or None if torchvision has no such model."""
    try:
        from torchvision.models import get_model_weights

        return get_model_weights(arch)
    except (ImportError, ValueError, KeyError):
        return None


def resolved_pretrained(arch: str, pretrained: bool | str) -> bool | str:
    """``pretrained`` as the weights member it loads: ``True`` becomes e.g. ``"IMAGENET1K_V2"``.

    ``True`` means "the DEFAULT of this torchvision", which a torchvision upgrade may change;
    resolved once on the driver, the name pins the checkpoint for ids and workers alike. Values
    torchvision cannot resolve are returned as they are (model creation rejects them).
    """
    if pretrained is False:
        return False
    enum = _weights_enum(arch)
    if enum is None:
        return pretrained
    if pretrained is True:
        return enum.DEFAULT.name
    if isinstance(pretrained, str) and pretrained in enum.__members__:
        return enum[pretrained].name
    return pretrained


def pretrained_identity(arch: str, pretrained: bool | str) -> bool | str:
    """What identifies pretrained weights in a hash: enum, member and file (its URL names its hash)."""
    enum = _weights_enum(arch) if pretrained is not False else None
    if enum is None or not isinstance(pretrained, str) or pretrained not in enum.__members__:
        return pretrained
    member = enum[pretrained]
    return f"{type(member).__name__}.{member.name}:{member.url}"


# The trial's KD hyper-parameters are fingerprinted where the config holds them (below), not
# as trial fields, so the fingerprints of sweeps that do not sweep them stay what they were.
_KD_TRIAL_FIELDS = frozenset({"temperature", "alpha", "lr"})


def trial_fingerprint_content(cfg: SweepConfig, trial: StudentTrial) -> dict[str, object]:
    """Everything that changes a student trial's numbers, by config section.

    The trial (perm, loss, view, seed and its teachers, whose ids hash the teachers' content),
    the dataset's content, the student section, distillation, metrics and the numerics of its
    run. The trial's own τ, α and lr stand in the distillation and student sections in place of
    the config's single values, which they replace: with no KD axis swept the content is exactly
    what it was before trials carried them, so existing checkpoints still resume. A training
    checkpoint carries this, so one made under other settings is never resumed.
    """
    dataset = cfg.dataset(trial.dataset)
    own = {k: v for k, v in trial.__dict__.items() if k not in _KD_TRIAL_FIELDS}
    student = cfg.student.model_copy(update={"train": cfg.student.train.model_copy(update={"lr": trial.lr})})
    distill = cfg.distill.model_copy(update={"temperature": trial.temperature, "alpha": trial.alpha})
    return {
        "trial": {**own, "teacher_ids": list(trial.teacher_ids)},
        "dataset": dataset.model_dump(mode="json", exclude=DATA_LOCATION_FIELDS | {"label"}),
        "student": student.model_dump(mode="json"),
        "distill": distill.model_dump(mode="json"),
        "metrics": cfg.metrics.model_dump(mode="json"),
        "numerics": numerics(cfg, "student"),
    }


def fingerprint(content: dict) -> str:
    """A short hash of a fingerprint's content."""
    return _digest(content)
