"""Distilling one student from frozen teachers: the training epoch and its evaluations.

Per batch the teachers (eval mode, no grad) see the student's augmented batch — in the
``split`` view only their own strip — and the student is trained on the SPEC §1 loss. Attention
maps come from hooks on these same forward passes, and every metric of SPEC §2 streams into one
accumulator per split, reduced across DDP workers before it is reported.
"""

from __future__ import annotations

import contextlib
import math
import time
from collections.abc import Callable, Sequence

import torch
from torch import nn

from kd_ray.config import SweepConfig
from kd_ray.data import VIEWS, ImageDatasets
from kd_ray.data.device_resize import resize_batch
from kd_ray.data.streams import build_loaders
from kd_ray.losses import LOSSES
from kd_ray.metrics import SplitMetrics
from kd_ray.metrics.names import report_key
from kd_ray.models import capture_attention, create_model
from kd_ray.plan import StudentTrial
from kd_ray.seeding import stream_seed
from kd_ray.train.checkpoint import unwrap
from kd_ray.train.optim import build_optimizer, build_scheduler
from kd_ray.train.runtime import Runtime
from kd_ray.train.teacher import dataset_config


class Diverged(RuntimeError):
    """The training loss stopped being finite; the trial is recorded as failed."""


class DistillationRun:
    """The epochs of one student trial; the caller reports and checkpoints between them.

    The student's initial weights and its whole data stream are seeded by
    ``stream_seed(dataset, student_aug, view, seed)`` only, so trials that differ in teachers or
    loss are paired (SPEC §1).
    """

    def __init__(
        self,
        cfg: SweepConfig,
        trial: StudentTrial,
        datasets: ImageDatasets,
        teachers: Sequence[nn.Module],
        runtime: Runtime,
        *,
        rank: int = 0,
        world_size: int = 1,
        wrap: Callable[[nn.Module], nn.Module] = lambda m: m,
    ) -> None:
        self.cfg = cfg
        self.trial = trial
        self.runtime = runtime
        self.num_classes = datasets.num_classes
        self.image_size = dataset_config(cfg, trial.dataset).image_size
        # SPEC §2: attention maps are compared at the input resolution.
        self.input_size = self.image_size or datasets.native_size
        seed = stream_seed(trial.dataset, trial.student_aug, trial.view, trial.seed)
        torch.manual_seed(seed)
        student = create_model(
            cfg.student.arch,
            num_classes=datasets.num_classes,
            in_channels=datasets.channels,
            image_size=self.input_size,
        )
        self.student = runtime.compiled(wrap(runtime.model(student)))
        self.teachers = [runtime.model(t).eval().requires_grad_(False) for t in teachers]
        self.optimizer = build_optimizer(self.student, cfg.student.train)
        self.scheduler = build_scheduler(self.optimizer, cfg.student.train)
        self.loss_fn = LOSSES.get(trial.loss)
        self.view = VIEWS.get(trial.view)
        self.loaders = build_loaders(
            datasets,
            student_aug=trial.student_aug,
            global_batch_size=cfg.student.train.batch_size,
            stream_seed=seed,
            rank=rank,
            world_size=world_size,
            loader_workers=cfg.runtime.loader_workers,
            pin_memory=cfg.runtime.pin_memory,
        )

    def _metrics(self) -> SplitMetrics:
        m = self.cfg.metrics
        return SplitMetrics(
            self.num_classes,
            len(self.teachers),
            ece_bins=m.ece_bins,
            iou_threshold=m.iou_threshold,
            map_size=(self.input_size, self.input_size),
        )

    def _pass(self, loader, train: bool) -> SplitMetrics:
        """One pass over ``loader``: forward teachers and student, train if asked, accumulate."""
        metrics = self._metrics()
        k = len(self.teachers)
        distill = self.cfg.distill
        target = self.cfg.metrics.cam_target
        self.student.train(train)
        with contextlib.ExitStack() as hooks:
            s_cap = hooks.enter_context(capture_attention(self.student, cam_target=target))
            t_caps = [hooks.enter_context(capture_attention(t, cam_target=target)) for t in self.teachers]
            for x, y in loader:
                x, y = self.runtime.batch(x, y)
                if self.image_size:
                    x = resize_batch(x, self.image_size)
                t_logits, t_maps = [], []
                with torch.no_grad(), self.runtime.autocast():
                    for slot, (teacher, cap) in enumerate(zip(self.teachers, t_caps, strict=True), 1):
                        logits = teacher(self.view(x, slot, k)).float()
                        t_logits.append(logits)
                        t_maps.append(cap.maps(logits, y))
                with torch.set_grad_enabled(train), self.runtime.autocast():
                    s_logits = self.student(x).float()
                loss = self.loss_fn(
                    s_logits, t_logits, y, temperature=distill.temperature, alpha=distill.alpha
                )
                if train:
                    if not math.isfinite(loss.item()):
                        raise Diverged(f"training loss became {loss.item()}")
                    self.optimizer.zero_grad(set_to_none=True)
                    loss.backward()
                    self.optimizer.step()
                with torch.no_grad():
                    metrics.update(
                        s_logits.detach(),
                        t_logits,
                        y,
                        student_maps=s_cap.maps(s_logits, y),
                        teacher_maps=t_maps,
                        loss=loss.detach(),
                    )
        metrics.all_reduce()
        return metrics

    def run_epoch(self, epoch: int) -> tuple[dict[str, float], dict[str, list[dict]]]:
        """Train 1-based ``epoch``, then evaluate on ``val`` and ``val_aug``.

        Returns:
            The flat report (``split/metric``, plus ``lr`` and ``seconds``) and the calibration
            bins of each split.

        Raises:
            Diverged: the training loss was not finite.
        """
        start = time.perf_counter()
        self.loaders.set_epoch(epoch)
        lr = self.optimizer.param_groups[0]["lr"]
        results = {"train": self._pass(self.loaders.train, train=True)}
        self.scheduler.step()
        with torch.no_grad():
            results["val"] = self._pass(self.loaders.val, train=False)
            results["val_aug"] = self._pass(self.loaders.val_aug, train=False)
        report: dict[str, float] = {"lr": lr}
        for split, metrics in results.items():
            report.update({report_key(split, name): value for name, value in metrics.compute().items()})
        report["seconds"] = time.perf_counter() - start
        return report, {split: m.calibration() for split, m in results.items()}

    def state_dict(self) -> dict:
        return {
            "model": unwrap(self.student).state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
        }

    def load_state_dict(self, state: dict) -> None:
        unwrap(self.student).load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
