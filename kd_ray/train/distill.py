"""Distilling students from frozen teachers: the training epoch and its evaluations.

One run trains every student trial of a *stream group* (docs/experiments.md#stream-groups):
trials that share (dataset, student augmentation, seed) see the same batches in the same order
(docs/experiments.md#paired-randomness), whatever their teachers, loss or view, so the batch is
augmented once, each teacher runs once per batch and distinct input, and every student trains on
it. Each student is exactly the model its trial would be if run alone: the same initial weights
(seeded by the stream) and the same batches; only the work is shared.

Per batch the teachers (eval mode, no grad) see the students' augmented batch through each
trial's view — in the ``split`` view only their own strip — and each student is trained on its
loss (docs/experiments.md#distillation-loss) with its own temperature, α and learning rate: a
group may hold trials that differ only in these, since they do not change the stream. Attention maps come from hooks on these same
forward passes, and every metric of docs/metrics.md streams into one accumulator per student and
split, reduced across DDP workers before it is reported.
"""

from __future__ import annotations

import contextlib
import math
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import NamedTuple

import torch
from torch import nn

from kd_ray.config import SweepConfig
from kd_ray.data import VIEWS, ImageDatasets
from kd_ray.data.device_resize import resize_batch
from kd_ray.data.streams import build_loaders
from kd_ray.losses import LOSSES, DistillationLoss
from kd_ray.metrics import SplitMetrics
from kd_ray.metrics.names import computes_top5, report_key
from kd_ray.models import AttentionCapture, capture_attention, create_model, unwrap_model
from kd_ray.plan import StudentTrial, kd_axis_values, stream_key
from kd_ray.seeding import stream_seed
from kd_ray.train.optim import build_optimizer, build_scheduler
from kd_ray.train.runtime import Runtime

# A teacher forward pass is keyed by what the teacher sees: ``(teacher_id,)`` for the whole
# batch, ``(teacher_id, view, slot, k)`` for a view's transform of it. The ``full`` view is the
# whole batch whatever the slot and k; so is the ``split`` view's only strip when k = 1.
TeacherKey = tuple


class TeacherOutput(NamedTuple):
    """What one teacher input gives on one batch: the teacher's logits and attention maps."""

    logits: torch.Tensor
    maps: torch.Tensor


def teacher_key(teacher_id: str, view: str, slot: int, k: int) -> TeacherKey:
    """The unit of teacher work: one forward pass per batch for each distinct key."""
    if view == "full" or (view == "split" and k == 1):
        return (teacher_id,)
    return (teacher_id, view, slot, k)


@dataclass
class _Student:
    """One student trial's model, optimiser, loss (with the trial's τ and α bound), and the keys
    of its teachers' outputs."""

    trial: StudentTrial
    model: nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    loss_fn: DistillationLoss
    teacher_keys: list[TeacherKey]  # in slot order
    failure: str | None = None  # why it stopped (diverged, or its loss raised); None while it trains
    raised: str | None = None  # what its own loss raised, if it did (it then fails like a divergence)


def _check_kd_values(cfg: SweepConfig, trials: Sequence[StudentTrial]) -> None:
    """Refuse trials whose τ, α or lr the config does not give: a trial trains with its own
    values, so a trial planned from another config would silently not be the config's."""
    allowed = kd_axis_values(cfg)
    for trial in trials:
        for column, values in allowed.items():
            value = getattr(trial, column)
            if value not in values:
                raise ValueError(
                    f"trial {trial.trial_id} has {column} {value}, but the config gives {list(values)}; "
                    "plan the trials from the config that runs them"
                )


@dataclass
class EpochResult:
    """One epoch of a run: per trial, the flat report and calibration bins, or why it stopped
    (``failures``: trial id -> message, for the trials that stopped this epoch)."""

    reports: dict[str, dict[str, float]] = field(default_factory=dict)
    calibration: dict[str, dict[str, list[dict]]] = field(default_factory=dict)
    failures: dict[str, str] = field(default_factory=dict)


class DistillationRun:
    """The epochs of the student trials of one stream group; the caller reports between them.

    Args:
        cfg: the sweep.
        trials: student trials sharing one data stream (:func:`kd_ray.plan.stream_key`), with
            any mix of teachers, losses and views.
        datasets: the dataset's splits.
        teachers: trained teachers by id (at least every id the trials name).
        runtime: device and speed switches.
        rank, world_size: this DDP rank and the number of ranks.
        wrap: DDP wrapper for each student (identity in one process).
    """

    def __init__(
        self,
        cfg: SweepConfig,
        trials: Sequence[StudentTrial],
        datasets: ImageDatasets,
        teachers: Mapping[str, nn.Module],
        runtime: Runtime,
        *,
        rank: int = 0,
        world_size: int = 1,
        wrap: Callable[[nn.Module], nn.Module] = lambda m: m,
    ) -> None:
        streams = {stream_key(t) for t in trials}
        if len(streams) != 1:
            raise ValueError(f"a run trains trials of one data stream, got {sorted(streams)}")
        _check_kd_values(cfg, trials)
        first = trials[0]
        self.cfg = cfg
        self.runtime = runtime
        self.num_classes = datasets.num_classes
        self.top5 = computes_top5(datasets.family)  # docs/metrics.md#acc_top5: ImageNet family only
        self.image_size = cfg.dataset(first.dataset).image_size
        # docs/metrics.md#attention-iou: attention maps are compared at the input resolution.
        self.input_size = self.image_size or datasets.native_size
        self.views = {t.view: VIEWS.get(t.view) for t in trials}
        self.teachers = {
            tid: runtime.to_device(teachers[tid]).eval().requires_grad_(False)
            for t in trials
            for tid in t.teacher_ids
        }
        seed = stream_seed(first.dataset, first.student_aug, first.seed)
        self.students = [self._student(trial, datasets, seed, wrap) for trial in trials]
        self.loaders = build_loaders(
            datasets,
            student_aug=first.student_aug,
            global_batch_size=cfg.student.train.batch_size,
            stream_seed=seed,
            rank=rank,
            world_size=world_size,
            loader_workers=cfg.runtime.loader_workers,
            pin_memory=cfg.runtime.pin_memory,
        )

    def _student(self, trial: StudentTrial, datasets: ImageDatasets, seed: int, wrap) -> _Student:
        # Re-seeding per student gives every trial the initial weights it would have alone.
        torch.manual_seed(seed)
        model = create_model(
            self.cfg.student.arch,
            num_classes=datasets.num_classes,
            in_channels=datasets.channels,
            image_size=self.input_size,
        )
        model = self.runtime.compiled(wrap(self.runtime.to_device(model)))
        # The trial's own base lr (grid.student_lrs), under the config's schedule.
        train = self.cfg.student.train.model_copy(update={"lr": trial.lr})
        optimizer = build_optimizer(model, train)
        return _Student(
            trial,
            model,
            optimizer,
            build_scheduler(optimizer, train),
            LOSSES.get(trial.loss)(temperature=trial.temperature, alpha=trial.alpha),
            [
                teacher_key(tid, trial.view, slot, trial.n_teachers)
                for slot, tid in enumerate(trial.teacher_ids, 1)
            ],
        )

    @property
    def active(self) -> list[_Student]:
        return [s for s in self.students if s.failure is None]

    def _metrics(self, n_teachers: int) -> SplitMetrics:
        m = self.cfg.metrics
        return SplitMetrics(
            self.num_classes,
            n_teachers,
            ece_bins=m.ece_bins,
            iou_threshold=m.iou_threshold,
            map_size=(self.input_size, self.input_size),
            top5=self.top5,
        )

    def _teacher_input(self, x: torch.Tensor, key: TeacherKey) -> torch.Tensor:
        if len(key) == 1:
            return x
        _, view, slot, k = key
        return self.views[view](x, slot, k)

    def _inputs(self, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """A loader's batch on the device, resized there to the config's image size."""
        x, y = self.runtime.batch(x, y)
        return (resize_batch(x, self.image_size) if self.image_size else x), y

    @contextlib.contextmanager
    def _attention_hooks(
        self, students: Sequence[_Student]
    ) -> Iterator[tuple[list[AttentionCapture], dict[str, AttentionCapture]]]:
        """Attention captures on every student (in order) and every teacher (by id), for a pass:
        maps come from the forward passes the pass makes anyway (docs/metrics.md#attention-maps)."""
        target = self.cfg.metrics.cam_target
        with contextlib.ExitStack() as hooks:
            students_maps = [
                hooks.enter_context(capture_attention(s.model, cam_target=target)) for s in students
            ]
            teachers_maps = {
                tid: hooks.enter_context(capture_attention(t, cam_target=target))
                for tid, t in self.teachers.items()
            }
            yield students_maps, teachers_maps

    def _teacher_outputs(
        self,
        x: torch.Tensor,
        y: torch.Tensor,
        keys: Sequence[TeacherKey],
        captures: Mapping[str, AttentionCapture],
    ) -> dict[TeacherKey, TeacherOutput]:
        """The teacher step, once per batch: one forward pass for each distinct teacher input
        (``keys``), whichever and however many students use it."""
        outputs = {}
        for key in keys:
            with torch.no_grad(), self.runtime.autocast():
                logits = self.teachers[key[0]](self._teacher_input(x, key)).float()
            outputs[key] = TeacherOutput(logits, captures[key[0]].maps(logits, y))
        return outputs

    def _loss(
        self, s: _Student, s_logits: torch.Tensor, t_logits: list[torch.Tensor], y: torch.Tensor
    ) -> torch.Tensor:
        """The student's own loss on the batch; NaN if computing it raised (it then fails alone)."""
        try:
            return s.loss_fn(s_logits, t_logits, y)
        except Exception as err:  # this student's own loss: it fails alone, like a divergence
            s.raised = s.raised or f"{type(err).__name__}: {err}".splitlines()[0][:300]
            # A NaN loss keeps DDP's backward in step on every rank and makes the all-reduced
            # training loss non-finite, so every rank drops this student at the epoch's end.
            return s_logits.sum() * math.nan

    def _student_step(
        self,
        s: _Student,
        capture: AttentionCapture,
        x: torch.Tensor,
        y: torch.Tensor,
        outputs: Mapping[TeacherKey, TeacherOutput],
        metrics: SplitMetrics,
        train: bool,
    ) -> None:
        """The student step, once per student and batch: its forward pass, its loss against its
        own teachers' outputs (picked from the batch's by its keys), a step when training, and
        its metrics."""
        teachers = [outputs[key] for key in s.teacher_keys]
        t_logits = [t.logits for t in teachers]
        with torch.set_grad_enabled(train), self.runtime.autocast():
            s_logits = s.model(x).float()
        loss = self._loss(s, s_logits, t_logits, y)
        if train:
            s.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            s.optimizer.step()
        with torch.no_grad():
            metrics.update(
                s_logits.detach(),
                t_logits,
                y,
                student_maps=capture.maps(s_logits, y),
                teacher_maps=[t.maps for t in teachers],
                loss=loss.detach(),
            )

    def _pass(self, loader, train: bool) -> dict[str, SplitMetrics]:
        """One pass over ``loader``: per batch the teacher step once, then every active student's
        step on its outputs; the metrics, reduced across workers, by trial id."""
        students = self.active
        metrics = {s.trial.trial_id: self._metrics(s.trial.n_teachers) for s in students}
        for s in students:
            s.model.train(train)
        # The distinct teacher inputs of the students: each runs once per batch, not per student.
        keys = sorted({key for s in students for key in s.teacher_keys})
        with self._attention_hooks(students) as (students_maps, teachers_maps):
            for x, y in loader:
                x, y = self._inputs(x, y)
                outputs = self._teacher_outputs(x, y, keys, teachers_maps)
                for s, capture in zip(students, students_maps, strict=True):
                    self._student_step(s, capture, x, y, outputs, metrics[s.trial.trial_id], train)
        for m in metrics.values():
            m.all_reduce()
        return metrics

    def run_epoch(self, epoch: int) -> EpochResult:
        """Train 1-based ``epoch``, then evaluate on ``val`` and ``val_aug``.

        A student whose all-reduced training loss is not finite stops here (every rank sees the
        same reduced loss, so all ranks drop it at the same epoch); the others go on.
        """
        start = time.perf_counter()
        self.loaders.set_epoch(epoch)
        lrs = {s.trial.trial_id: s.optimizer.param_groups[0]["lr"] for s in self.active}
        result = EpochResult()
        train = self._pass(self.loaders.train, train=True)
        for s in self.active:
            s.scheduler.step()
            loss = train[s.trial.trial_id].compute()["loss"]
            if not math.isfinite(loss):
                s.failure = f"diverged at epoch {epoch}: training loss became {loss}"
                if s.raised:
                    s.failure = f"its loss raised at epoch {epoch}: {s.raised}"
                result.failures[s.trial.trial_id] = s.failure
        with torch.no_grad():
            val = self._pass(self.loaders.val, train=False)
            val_aug = self._pass(self.loaders.val_aug, train=False)
        # Per run, not per trial: the whole group's epoch, reported alike for every student.
        seconds = time.perf_counter() - start
        for s in self.active:
            tid = s.trial.trial_id
            splits = {"train": train[tid], "val": val[tid], "val_aug": val_aug[tid]}
            report: dict[str, float] = {"lr": lrs[tid], "seconds": seconds}
            for split, m in splits.items():
                report.update({report_key(split, name): value for name, value in m.compute().items()})
            result.reports[tid] = report
            result.calibration[tid] = {split: m.calibration() for split, m in splits.items()}
        return result

    def state_dict(self) -> dict:
        return {
            s.trial.trial_id: {
                "model": unwrap_model(s.model).state_dict(),
                "optimizer": s.optimizer.state_dict(),
                "scheduler": s.scheduler.state_dict(),
                # The key stays "diverged" (it holds the failure message, "" if none) so that
                # checkpoints written before the attribute was renamed still load.
                "diverged": s.failure or "",
            }
            for s in self.students
        }

    def load_state_dict(self, state: dict) -> None:
        for s in self.students:
            own = state[s.trial.trial_id]
            unwrap_model(s.model).load_state_dict(own["model"])
            s.optimizer.load_state_dict(own["optimizer"])
            s.scheduler.load_state_dict(own["scheduler"])
            s.failure = own["diverged"] or None  # the failure message, under its old key
