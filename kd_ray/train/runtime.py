"""Per-worker device and speed switches (docs/experiments.md#runtime-switches: bf16,
channels_last, torch.compile).

One object holds the decisions so the loops stay plain: where tensors go, whether to autocast,
in which memory format, and whether models are compiled. Defaults are right for CPU; each
switch is a config field (``runtime.*``) with the reason it is off or on by default there.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass

import torch
from torch import nn

from kd_ray.config import RuntimeConfig
from kd_ray.distributed import all_reduce_sum_


@dataclass(frozen=True)
class Runtime:
    device: torch.device
    bf16: bool = False
    channels_last: bool = False
    compile: bool = False

    @classmethod
    def from_config(cls, cfg: RuntimeConfig, device: torch.device) -> Runtime:
        # bf16 autocast only pays off on GPUs with bf16 tensor cores; on CPU it is slower.
        return cls(
            device,
            bf16=cfg.bf16 and device.type == "cuda",
            channels_last=cfg.channels_last,
            compile=cfg.compile,
        )

    def autocast(self) -> contextlib.AbstractContextManager:
        if not self.bf16:
            return contextlib.nullcontext()
        return torch.autocast(device_type=self.device.type, dtype=torch.bfloat16)

    def to_device(self, model: nn.Module) -> nn.Module:
        """Move a model to the device, in channels_last memory format if asked. It does not
        compile: :meth:`compiled` does, after the DDP wrapping."""
        model = model.to(self.device)
        if self.channels_last:
            model = model.to(memory_format=torch.channels_last)
        return model

    def compiled(self, model: nn.Module) -> nn.Module:
        # Compile after DDP wrapping so DDP's hooks see the compiled graph's buckets.
        return torch.compile(model) if self.compile else model

    def batch(self, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x = x.to(self.device, non_blocking=True)
        if self.channels_last and x.ndim == 4:
            x = x.contiguous(memory_format=torch.channels_last)
        return x, y.to(self.device, non_blocking=True)


def sum_across_workers(t: torch.Tensor) -> torch.Tensor:
    """All-reduce a tensor of sums across the DDP process group (no-op in one process); a host
    tensor is reduced on the device when the backend is NCCL."""
    return all_reduce_sum_(t)
