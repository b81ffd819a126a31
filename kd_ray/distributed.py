"""Summing host-side tallies across DDP workers, whatever backend Ray Train opened.

Metric sums and epoch tallies live on the CPU (float64, so a long epoch does not lose counts),
but Ray Train opens NCCL for GPU workers even with a single worker, and NCCL reduces only CUDA
tensors. The one rule lives here: move the buffer to where the backend wants it, reduce, copy
back.
"""

from __future__ import annotations

import torch
import torch.distributed as dist


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
