"""SGD and the paper's learning-rate schedules (Appendix A), stepped once per epoch."""

from __future__ import annotations

import math

import torch
from torch import nn

from kd_ray.config import ScheduleConfig, TrainConfig


def build_optimizer(model: nn.Module, train: TrainConfig) -> torch.optim.Optimizer:
    """SGD with momentum, as in every experiment of the paper."""
    return torch.optim.SGD(
        model.parameters(), lr=train.lr, momentum=train.momentum, weight_decay=train.weight_decay
    )


def lr_factor(schedule: ScheduleConfig, epoch: int, epochs: int, base_lr: float) -> float:
    """Multiplier of the base lr during 0-based ``epoch`` of ``epochs``.

    ``step`` is the paper's lambda scheduler: a linear warm-up over ``warmup_epochs`` epochs,
    then ×``gamma`` from each milestone epoch on (milestones count epochs from 0, so
    ``milestones: [25]`` trains epochs 0..24 at the base lr). ``cosine`` anneals from the base lr
    to ``eta_min`` over ``t_max`` epochs after the warm-up (default: the remaining epochs), as
    the paper does for balanced ImageNet.
    """
    warm = schedule.warmup_epochs
    if warm and epoch < warm:
        return (epoch + 1) / warm
    if schedule.kind == "step":
        return schedule.gamma ** sum(epoch >= m for m in schedule.milestones)
    if schedule.kind == "cosine":
        t_max = schedule.t_max or max(epochs - warm, 1)
        cos = 0.5 * (1 + math.cos(math.pi * min(epoch - warm, t_max) / t_max))
        floor = schedule.eta_min / base_lr
        return floor + (1 - floor) * cos
    return 1.0


def build_scheduler(
    optimizer: torch.optim.Optimizer, train: TrainConfig
) -> torch.optim.lr_scheduler.LambdaLR:
    """A per-epoch ``LambdaLR`` following :func:`lr_factor`."""
    return torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda epoch: lr_factor(train.schedule, epoch, train.epochs, train.lr)
    )
