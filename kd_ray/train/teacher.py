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
from kd_ray.metrics.functional import NAN, top_k_correct
from kd_ray.metrics.names import computes_top5
from kd_ray.models import create_model, unwrap_model
from kd_ray.plan import TeacherSpec
from kd_ray.seeding import stable_seed
from kd_ray.train.optim import build_optimizer, build_scheduler
from kd_ray.train.runtime import Runtime, sum_across_workers


class _Sums:
    """Named float64 sums of one pass (a loss sum, correct predictions, samples), summed across
    DDP workers as one tensor in one collective, so a 2-worker epoch reports what one worker
    over the same samples does; means are taken only after the sum."""

    def __init__(self, *names: str) -> None:
        self._names = names
        self._values = torch.zeros(len(names), dtype=torch.float64)

    def add(self, **amounts: float) -> None:
        """Add one batch's amounts; a name not given adds 0."""
        if unknown := set(amounts) - set(self._names):
            raise KeyError(f"no sums named {sorted(unknown)}; this pass keeps {list(self._names)}")
        self._values += torch.tensor([amounts.get(n, 0.0) for n in self._names], dtype=torch.float64)

    def across_workers(self) -> dict[str, float]:
        """The sums over every worker (every rank must call it, at the same point)."""
        return dict(zip(self._names, sum_across_workers(self._values).tolist(), strict=True))


def _mean(total: float, count: float) -> float:
    return total / count if count else NAN


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
        train = _Sums("loss", "correct", "count")
        for x, y in self.loaders.train:
            x, y = self._inputs(x, y)
            with self.runtime.autocast():
                logits = self.model(x)
            loss = F.cross_entropy(logits.float(), y)
            self.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            self.optimizer.step()
            train.add(loss=loss.item() * len(y), correct=(logits.argmax(1) == y).sum().item(), count=len(y))
        self.scheduler.step()
        self.model.eval()
        val = _Sums("correct", "count", "correct_top5")
        with torch.no_grad():
            for x, y in self.loaders.val:
                x, y = self._inputs(x, y)
                with self.runtime.autocast():
                    logits = self.model(x)
                top5 = top_k_correct(logits, y, 5).sum().item() if self.top5 else 0
                val.add(correct=(logits.argmax(1) == y).sum().item(), count=len(y), correct_top5=top5)
        train, val = train.across_workers(), val.across_workers()
        report = {
            "train/loss": _mean(train["loss"], train["count"]),
            "train/acc": _mean(train["correct"], train["count"]),
            "val/acc": _mean(val["correct"], val["count"]),
            "lr": lr,
            "seconds": time.perf_counter() - start,
        }
        if self.top5:
            report["val/acc_top5"] = _mean(val["correct_top5"], val["count"])
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
