"""SyncBatchNorm for multi-GPU students and teachers (kd_ray.distributed.sync_batchnorm).

Two GPU workers of batch B/2 compute what one worker of batch B does only if BatchNorm
normalises over the global batch; the conversion is checked here on the module tree (it needs
no GPU). Its numerics need two GPUs and NCCL, which no machine of this project has had: the GPU
check (benchmarks/gpu_check.sh) runs on one.
"""

from __future__ import annotations

import logging

import pytest
import torch
from torch import nn

from kd_ray.distributed import sync_batchnorm
from kd_ray.models import create_model

CUDA = torch.device("cuda")  # only the device's type is read: nothing is moved
CPU = torch.device("cpu")


def _batchnorms(model: nn.Module) -> tuple[int, int]:
    plain = sum(type(m) in (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d) for m in model.modules())
    synced = sum(isinstance(m, nn.SyncBatchNorm) for m in model.modules())
    return plain, synced


def test_several_gpu_workers_get_syncbatchnorm_with_the_same_state_dict_keys() -> None:
    model = create_model("resnet18", num_classes=10)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    plain, _ = _batchnorms(model)
    assert plain > 0
    synced = sync_batchnorm(model, CUDA, world_size=2)
    assert _batchnorms(synced) == (0, plain)
    after = synced.state_dict()
    assert list(after) == list(before)  # a checkpoint loads into the plain model, and back
    assert all(torch.equal(after[k], before[k]) for k in before)
    create_model("resnet18", num_classes=10).load_state_dict(after, strict=True)


@pytest.mark.parametrize(
    ("arch", "device", "world_size"),
    [("resnet18", CUDA, 1), ("cnn_tiny", CUDA, 2)],
    ids=["one-worker", "groupnorm-model"],
)
def test_one_worker_or_no_batchnorm_is_left_as_it_is(arch, device, world_size) -> None:
    model = create_model(arch, num_classes=4)
    assert sync_batchnorm(model, device, world_size) is model


def test_several_cpu_workers_keep_batchnorm_and_say_so(caplog) -> None:
    model = create_model("resnet18", num_classes=10)
    with caplog.at_level(logging.WARNING, logger="kd_ray.distributed"):
        assert sync_batchnorm(model, CPU, world_size=2) is model
    assert _batchnorms(model)[1] == 0
    assert "2 cpu workers" in caplog.text and "SyncBatchNorm needs CUDA" in caplog.text
