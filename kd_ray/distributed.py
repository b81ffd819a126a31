"""What makes a DDP run of several workers compute what one worker would.

- Tallies: metric sums and epoch tallies live on the CPU (float64, so a long epoch does not
  lose counts), but Ray Train opens NCCL for GPU workers even with a single worker, and NCCL
  reduces only CUDA tensors. :func:`all_reduce_sum_` moves the buffer to where the backend wants
  it, reduces, and copies back.
- BatchNorm: under DDP each worker normalises with its own shard's batch statistics, so two
  workers of batch B/2 are not one worker of batch B. :func:`sync_batchnorm` makes BatchNorm
  layers all-reduce their statistics on GPU workers. torch has no SyncBatchNorm for CPU (gloo)
  workers; kd_ray's CPU models use GroupNorm, which is per-sample (kd_ray/models/small_cnn.py).
"""

from __future__ import annotations

import logging

import torch
import torch.distributed as dist
from torch import nn

log = logging.getLogger(__name__)

_BATCHNORMS = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)


def all_reduce_sum_(t: torch.Tensor) -> torch.Tensor:
    """Sum ``t`` in place over the default process group; a no-op in one process.

    Every rank must call it at the same point; afterwards every rank holds the totals.
    """
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return t
    wants_cuda = dist.get_backend() == "nccl"
    buf = t
    if (buf.device.type == "cuda") != wants_cuda:
        buf = buf.to(torch.device("cuda", torch.cuda.current_device()) if wants_cuda else "cpu")
    dist.all_reduce(buf, op=dist.ReduceOp.SUM)
    if buf is not t:
        t.copy_(buf)
    return t


def sync_batchnorm(model: nn.Module, device: torch.device, world_size: int) -> nn.Module:
    """``model`` with SyncBatchNorm in place of BatchNorm when several GPU workers train it.

    One worker, or a model without BatchNorm, is returned as it is. Several CPU workers keep
    per-worker statistics (torch has no CPU SyncBatchNorm): said once in the log, since such a
    run is not the computation of one worker over the same global batch. The state dict keeps
    BatchNorm's keys, so checkpoints load into the plain model.
    """
    if world_size <= 1 or not any(isinstance(m, _BATCHNORMS) for m in model.modules()):
        return model
    if device.type == "cuda":
        return nn.SyncBatchNorm.convert_sync_batchnorm(model)
    log.warning(
        "%s has BatchNorm layers and trains on %d %s workers: each normalises with its own "
        "shard's batch statistics (SyncBatchNorm needs CUDA), so the run differs from one worker "
        "over the same global batch",
        type(model).__name__,
        world_size,
        device.type,
    )
    return model
