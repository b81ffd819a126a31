"""What a student run costs: FLOPs counted on the models, seconds on one slot.

Every choice the planner makes compares runs by this cost alone, so it lives apart from the
cuts: :class:`CostModel` (built by :meth:`CostModel.from_config` from :func:`dataset_facts` and
:func:`forward_flops`) and :func:`teacher_inputs`, the teacher forwards per image of one run.

**Cost model** (docs/cohorts.md). A run trains the students of one stream together
(``kd_ray.train.distill``): per image, each distinct teacher *input* runs once -- one forward per
teacher in the full view, one per (teacher, slot, k) in the split view, where k = 1's only strip
is the full image -- and each student takes one training step (:data:`TRAIN_STEP_FORWARDS` = 3
forwards); every epoch then evaluates teachers and students on ``val`` and ``val_aug``
(:data:`EVAL_PASSES` = 2, forward only). A run of ``n`` students with ``K`` distinct teacher
inputs costs ``K·a + n·b`` FLOPs, with ``a = E·(N_train + 2·N_val)·F_teacher`` and
``b = E·(3·N_train + 2·N_val)·F_student``: ``E`` student epochs, ``N`` split sizes, ``F`` the
FLOPs of one image's forward at the training resolution. Seconds are FLOPs × ``seconds_per_flop``
(one slot's rate: measure it, or take :func:`default_seconds_per_flop`) plus ``run_overhead_s``
to start a run. A teacher's run costs ``E_teacher·(3·N_train + N_val)·F_teacher``.

"""

from __future__ import annotations

import functools
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

from kd_ray.config import DatasetConfig, SweepConfig
from kd_ray.errors import ConfigError
from kd_ray.plan import StudentTrial, TeacherSpec

TRAIN_STEP_FORWARDS = 3.0  # one training step ≈ a forward and a backward of twice its cost
EVAL_PASSES = 2  # each epoch evaluates on ``val`` and ``val_aug``
# Sustained FLOP rates, per GPU and per CPU core, when no measured one is given. GPU: an
# A100-class GPU training ResNets at 224 px under bf16 autocast and channels_last (~2600
# ResNet-50 training images/s). CPU: the demo's small CNNs in plain processes (issue 10: 1.7
# TFLOP in 56 s on 2 cores); large convolutions run a few times faster per core.
GPU_FLOPS_PER_SECOND = 64e12
CPU_FLOPS_PER_SECOND = 15e9
# Starting one Ray Train run (controller, workers, imports), measured on the demo (issue 10).
DEFAULT_RUN_OVERHEAD_S = 30.0


# --- What a dataset costs per epoch ----------------------------------------------------------


@dataclass(frozen=True)
class DatasetFacts:
    """What the cost model needs of a dataset: its shape and split sizes."""

    num_classes: int
    channels: int
    input_size: int  # side of the images the models see (after any device-side resize)
    train_images: int
    val_images: int


def dataset_facts(dataset: DatasetConfig) -> DatasetFacts:
    """Sizes of ``dataset``; the file datasets without reading them.

    CIFAR-100 (-LT) and ImageNet (-LT) are known from their published splits (``imagenet_lt``
    assumes the published split files). Other datasets (digits, synthetic: generated in memory,
    or a third-party registration) are built and measured, which may read their files.
    """
    from kd_ray.data.long_tail import long_tail_counts

    name, size = dataset.name, dataset.image_size
    if name in ("cifar100", "cifar100_lt"):
        train = 50000
        if name == "cifar100_lt":
            imbalance = 100.0 if dataset.imbalance is None else dataset.imbalance
            train = sum(long_tail_counts(500, 100, imbalance))
        return DatasetFacts(100, 3, size or 32, train, 10000)
    if name == "imagenet":
        return DatasetFacts(1000, 3, size or 224, 1281167, 50000)
    if name == "imagenet_lt":
        return DatasetFacts(1000, 3, size or 224, 115846, 50000)
    from kd_ray.data import DATASETS

    built = DATASETS.get(name)(dataset)
    return DatasetFacts(
        built.num_classes, built.channels, size or built.native_size, len(built.train), len(built.val)
    )


@functools.cache
def forward_flops(arch: str, *, num_classes: int, in_channels: int, image_size: int) -> int:
    """FLOPs of one forward pass of one image through ``arch`` (a multiply-add counts 2).

    Counted by ``torch.utils.flop_counter.FlopCounterMode`` on a model built on the meta device
    (no weights are allocated; resnet50 at 224 takes ~0.1 s), on CPU if the model cannot be
    built there; cached per (arch, classes, channels, size).
    """
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    from kd_ray.models import create_model

    def count(device: str) -> int:
        with torch.device(device):
            model = create_model(
                arch, num_classes=num_classes, in_channels=in_channels, image_size=image_size
            )
        model.eval()
        x = torch.zeros(1, in_channels, image_size, image_size, device=device)
        with FlopCounterMode(display=False) as counter, torch.no_grad():
            model(x)
        return int(counter.get_total_flops())

    # The meta device allocates nothing, but some operators have no meta kernel (they raise
    # NotImplementedError or RuntimeError); those models are counted on the CPU at batch 1.
    try:
        return count("meta")
    except (NotImplementedError, RuntimeError):
        return count("cpu")


def _teacher_key(teacher_id: str, view: str, slot: int, k: int) -> tuple:
    # Same rule as kd_ray.train.distill.teacher_key (a test holds them equal), kept here so the
    # planner does not import the training loop.
    if view == "full" or (view == "split" and k == 1):
        return (teacher_id,)
    return (teacher_id, view, slot, k)


@functools.lru_cache(maxsize=65536)
def _inputs_of(trial: StudentTrial) -> frozenset[tuple]:
    return frozenset(
        _teacher_key(tid, trial.view, slot, trial.n_teachers) for slot, tid in enumerate(trial.teacher_ids, 1)
    )


def teacher_inputs(trials: Iterable[StudentTrial]) -> frozenset[tuple]:
    """The distinct teacher inputs of ``trials`` trained in one run: teacher forwards per image."""
    return frozenset().union(*(_inputs_of(t) for t in trials))


@dataclass(frozen=True)
class CostModel:
    """FLOPs and seconds of runs: ``K·key_flops + n·student_flops`` per dataset (module docstring).

    Build it with :meth:`from_config`; the per-dataset figures are plain numbers, so a test or a
    calibration can also construct one directly.
    """

    key_flops: Mapping[str, float]  # dataset key → FLOPs of one teacher input over a whole run
    student_flops: Mapping[str, float]  # dataset key → FLOPs of one student over a whole run
    teacher_run_flops: Mapping[str, float]  # dataset key → FLOPs of training one teacher
    seconds_per_flop: float = 1.0 / GPU_FLOPS_PER_SECOND
    run_overhead_s: float = DEFAULT_RUN_OVERHEAD_S

    @classmethod
    def from_config(
        cls,
        cfg: SweepConfig,
        *,
        seconds_per_flop: float | None = None,
        run_overhead_s: float = DEFAULT_RUN_OVERHEAD_S,
        facts: Mapping[str, DatasetFacts] | None = None,
    ) -> CostModel:
        """The cost model of ``cfg``'s datasets and models.

        Args:
            seconds_per_flop: one slot's measured seconds per FLOP (default: :func:`default_seconds_per_flop`).
            run_overhead_s: fixed seconds to start a run.
            facts: dataset key → :class:`DatasetFacts`, to override :func:`dataset_facts`.
        """
        if seconds_per_flop is None:
            seconds_per_flop = default_seconds_per_flop(cfg)
        if seconds_per_flop <= 0 or run_overhead_s < 0:
            raise ConfigError("cost model: seconds_per_flop must be > 0 and run_overhead_s >= 0")
        key_flops, student_flops, teacher_flops = {}, {}, {}
        s_epochs, t_epochs = cfg.student.train.epochs, cfg.teacher.train.epochs
        for dataset in cfg.datasets:
            f = (facts or {}).get(dataset.key) or dataset_facts(dataset)
            shape = {"num_classes": f.num_classes, "in_channels": f.channels, "image_size": f.input_size}
            f_t = forward_flops(cfg.teacher.arch, **shape)
            f_s = forward_flops(cfg.student.arch, **shape)
            key_flops[dataset.key] = s_epochs * (f.train_images + EVAL_PASSES * f.val_images) * f_t
            student_flops[dataset.key] = (
                s_epochs * (TRAIN_STEP_FORWARDS * f.train_images + EVAL_PASSES * f.val_images) * f_s
            )
            # A teacher trains on its split and evaluates once per epoch on ``val``.
            teacher_flops[dataset.key] = (
                t_epochs * (TRAIN_STEP_FORWARDS * f.train_images + f.val_images) * f_t
            )
        return cls(key_flops, student_flops, teacher_flops, seconds_per_flop, run_overhead_s)

    def run_flops(self, trials: Sequence[StudentTrial]) -> float:
        """FLOPs of one run training ``trials`` (one stream) together."""
        dataset = trials[0].dataset
        return (
            len(teacher_inputs(trials)) * self.key_flops[dataset] + len(trials) * self.student_flops[dataset]
        )

    def seconds(self, flops: float) -> float:
        """Seconds of a run of ``flops`` on one slot, start-up included."""
        return flops * self.seconds_per_flop + self.run_overhead_s

    def run_seconds(self, trials: Sequence[StudentTrial]) -> float:
        return self.seconds(self.run_flops(trials))

    def teacher_flops(self, teacher: TeacherSpec) -> float:
        """FLOPs of training ``teacher`` (its own run)."""
        return self.teacher_run_flops[teacher.dataset]


def default_seconds_per_flop(cfg: SweepConfig) -> float:
    """One student slot's seconds per FLOP when none is measured: :data:`GPU_FLOPS_PER_SECOND`
    per GPU (or :data:`CPU_FLOPS_PER_SECOND` per CPU) of a run, DDP taken as scaling linearly."""
    res = cfg.resources
    if res.gpus_per_worker > 0:
        return 1.0 / (GPU_FLOPS_PER_SECOND * res.num_workers * res.gpus_per_worker)
    return 1.0 / (CPU_FLOPS_PER_SECOND * res.num_workers * res.cpus_per_worker)
