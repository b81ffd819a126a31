"""Training one teacher with its own augmentation (cross-entropy, SGD, the paper's schedule)."""

from __future__ import annotations

import math
import time
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

from kd_ray.config import SweepConfig
from kd_ray.data import ImageDatasets
from kd_ray.data.device_resize import resize_batch
from kd_ray.data.streams import teacher_loaders
from kd_ray.metrics.functional import top_k_correct
from kd_ray.metrics.names import computes_top5
from kd_ray.models import create_model, unwrap_model
from kd_ray.plan import TeacherSpec
from kd_ray.seeding import stable_seed
from kd_ray.train.optim import build_optimizer, build_scheduler
from kd_ray.train.runtime import Runtime, sum_across_workers


class TeacherRun:
    """The epochs of one teacher; the caller reports and checkpoints between them.

    Its initial weights and data stream are seeded by the teacher's id, so a teacher is the same
    model whichever sweep or worker count trains it. Like a student in
    :class:`~kd_ray.train.distill.DistillationRun`, it stops when its training loss over an
    epoch, summed across workers, is not finite: ``failure`` then says why (the same on every
    rank), and the caller ends the run.
    """

    def __init__(
        self,
        cfg: SweepConfig,
        spec: TeacherSpec,
        datasets: ImageDatasets,
        runtime: Runtime,
        *,
        rank: int = 0,
        world_size: int = 1,
        wrap: Callable[[nn.Module], nn.Module] = lambda m: m,
    ) -> None:
        self.train_cfg = cfg.teacher.train
        self.image_size = cfg.dataset(spec.dataset).image_size
        self.top5 = computes_top5(datasets.family)  # docs/metrics.md#acc_top5: ImageNet family only
        self.runtime = runtime
        self.failure: str | None = None  # why it stopped (diverged); None while it trains
        torch.manual_seed(stable_seed("teacher-init", spec.teacher_id))
        model = create_model(
            cfg.teacher.arch,
            num_classes=datasets.num_classes,
            in_channels=datasets.channels,
            pretrained=spec.pretrained,
            image_size=self.image_size or datasets.native_size,
        )
        self.model = runtime.compiled(wrap(runtime.to_device(model)))
        self.optimizer = build_optimizer(self.model, self.train_cfg)
        self.scheduler = build_scheduler(self.optimizer, self.train_cfg)
        self.loaders = teacher_loaders(
            datasets,
            aug=spec.aug,
            global_batch_size=self.train_cfg.batch_size,
            seed=stable_seed("teacher-stream", spec.teacher_id),
            rank=rank,
            world_size=world_size,
            loader_workers=cfg.runtime.loader_workers,
            pin_memory=cfg.runtime.pin_memory,
        )

    def _inputs(self, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x, y = self.runtime.batch(x, y)
        return (resize_batch(x, self.image_size) if self.image_size else x), y

    def run_epoch(self, epoch: int) -> dict[str, float]:
        """Train 1-based ``epoch`` and evaluate; returns flat ``split/metric`` values and sets
        ``failure`` if the teacher diverged."""
        start = time.perf_counter()
        self.loaders.set_epoch(epoch)
        lr = self.optimizer.param_groups[0]["lr"]
        self.model.train()
        train = torch.zeros(3, dtype=torch.float64)  # loss sum, correct, count
        for x, y in self.loaders.train:
            x, y = self._inputs(x, y)
            with self.runtime.autocast():
                logits = self.model(x)
            loss = F.cross_entropy(logits.float(), y)
            self.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            self.optimizer.step()
            train += torch.tensor(
                [loss.item() * len(y), (logits.argmax(1) == y).sum().item(), len(y)], dtype=torch.float64
            )
        self.scheduler.step()
        self.model.eval()
        val = torch.zeros(3, dtype=torch.float64)  # correct, count, top-5 correct
        with torch.no_grad():
            for x, y in self.loaders.val:
                x, y = self._inputs(x, y)
                with self.runtime.autocast():
                    logits = self.model(x)
                top5 = top_k_correct(logits, y, 5).sum().item() if self.top5 else 0
                val += torch.tensor([(logits.argmax(1) == y).sum().item(), len(y), top5], dtype=torch.float64)
        train, val = sum_across_workers(train), sum_across_workers(val)
        report = {
            "train/loss": (train[0] / train[2]).item(),
            "train/acc": (train[1] / train[2]).item(),
            "val/acc": (val[0] / val[1]).item(),
            "lr": lr,
            "seconds": time.perf_counter() - start,
        }
        if self.top5:
            report["val/acc_top5"] = (val[2] / val[1]).item()
        if not math.isfinite(report["train/loss"]):
            self.failure = f"teacher diverged at epoch {epoch}: loss {report['train/loss']}"
        return report

    def state_dict(self) -> dict:
        return {
            "model": unwrap_model(self.model).state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
        }

    def load_state_dict(self, state: dict) -> None:
        unwrap_model(self.model).load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
