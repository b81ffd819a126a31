"""Paired randomness of the data streams: DDP-invariant batches, common random numbers."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from kd_ray import data
from kd_ray.config import DatasetConfig
from kd_ray.data.streams import ShardedBatchSampler, build_loaders, teacher_loaders
from kd_ray.errors import ConfigError
from kd_ray.seeding import stream_seed

SEED = stream_seed("synthetic", "s", 0)


@pytest.fixture(scope="module")
def synthetic() -> data.ImageDatasets:
    return data.DATASETS.get("synthetic")(DatasetConfig(name="synthetic", num_train=100, num_val=35))


def _batches(loader: torch.utils.data.DataLoader) -> list[tuple[torch.Tensor, torch.Tensor]]:
    return [(x.clone(), y.clone()) for x, y in loader]


def _epoch(ds: data.ImageDatasets, epoch: int, *, aug: str = "w", seed: int = SEED, **kw: object):
    loaders = build_loaders(ds, student_aug=aug, global_batch_size=32, stream_seed=seed, **kw)
    loaders.set_epoch(epoch)
    return {name: _batches(getattr(loaders, name)) for name in ("train", "val", "val_aug")}


@pytest.mark.parametrize(("epoch", "aug"), [(0, "w"), (3, "s")])
def test_two_ranks_see_the_one_rank_batches(synthetic: data.ImageDatasets, epoch: int, aug: str) -> None:
    single = _epoch(synthetic, epoch, aug=aug)
    ranks = [_epoch(synthetic, epoch, aug=aug, rank=r, world_size=2) for r in range(2)]
    assert len(single["train"]) == 3  # 100 // 32, last partial batch dropped
    for split in ("train", "val", "val_aug"):
        assert len(ranks[0][split]) == len(single[split])
        for b, (x, y) in enumerate(single[split]):
            (x0, y0), (x1, y1) = ranks[0][split][b], ranks[1][split][b]
            if split == "train":  # contiguous equal shards, pixels included
                assert len(y0) == len(y1) == 16
                assert torch.equal(torch.cat([x0, x1]), x) and torch.equal(torch.cat([y0, y1]), y)
            else:  # evaluation: rank::world_size
                assert torch.equal(x[0::2], x0) and torch.equal(x[1::2], x1)
                assert torch.equal(y[0::2], y0) and torch.equal(y[1::2], y1)


def test_same_stream_seed_same_batches_and_global_rng_untouched(synthetic: data.ImageDatasets) -> None:
    torch.manual_seed(1)
    state = torch.get_rng_state()
    first = _epoch(synthetic, 1)
    assert torch.equal(torch.get_rng_state(), state)
    torch.manual_seed(2)  # whatever the caller did to its RNG (teachers' init, dropout, ...)
    again = _epoch(synthetic, 1)
    for split in first:
        for (x, y), (x2, y2) in zip(first[split], again[split], strict=True):
            assert torch.equal(x, x2) and torch.equal(y, y2)


def test_epochs_and_seeds_differ_but_val_aug_is_fixed(synthetic: data.ImageDatasets) -> None:
    e0, e1 = _epoch(synthetic, 0), _epoch(synthetic, 1)
    other = _epoch(synthetic, 0, seed=SEED + 1)
    assert not torch.equal(e0["train"][0][1], e1["train"][0][1])  # new order
    assert not torch.equal(e0["train"][0][0], other["train"][0][0])
    for split in ("val", "val_aug"):
        for (x, _), (x1, _) in zip(e0[split], e1[split], strict=True):
            assert torch.equal(x, x1)
    assert not torch.equal(e0["val"][0][0], e0["val_aug"][0][0])


@pytest.mark.parametrize("aug", ["w", "s"])
def test_same_sample_same_pixels_across_positions(synthetic: data.ImageDatasets, aug: str) -> None:
    """A sample's augmentation depends on (seed, epoch, index), not on its batch or rank."""
    loaders = build_loaders(synthetic, student_aug=aug, global_batch_size=8, stream_seed=SEED)
    loaders.set_epoch(2)
    batches = loaders.train.batch_sampler.global_batches()
    x, _ = next(iter(loaders.train))
    for position in (0, 3, 7):
        alone, _ = loaders.train.dataset[batches[0][position].item()]
        assert torch.equal(x[position], alone)
    # The same samples drawn in another grouping (a batch of their own, reversed).
    shuffled = loaders.train.dataset.__getitems__(batches[0].flip(0).tolist())[0]
    assert torch.equal(shuffled.flip(0), x)


@pytest.mark.parametrize("aug", ["w", "s"])
def test_loader_workers_do_not_change_batches(synthetic: data.ImageDatasets, aug: str) -> None:
    plain = _epoch(synthetic, 1, aug=aug)
    workers = _epoch(synthetic, 1, aug=aug, loader_workers=2)
    for split in plain:
        for (x, y), (x2, y2) in zip(plain[split], workers[split], strict=True):
            assert torch.equal(x, x2) and torch.equal(y, y2)


class _PerSampleSource:
    """A split read image by image (as decoded files are), holding the same images as ``source``."""

    def __init__(self, source: data.TensorImageSource) -> None:
        self.source = source
        self.labels = source.labels

    def __len__(self) -> int:
        return len(self.source)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        return self.source[index]


@pytest.mark.parametrize("aug", ["w", "s"])
def test_a_per_sample_source_gives_the_in_memory_batches(synthetic: data.ImageDatasets, aug: str) -> None:
    files = dataclasses.replace(
        synthetic, train=_PerSampleSource(synthetic.train), val=_PerSampleSource(synthetic.val)
    )
    in_memory, per_sample = _epoch(synthetic, 1, aug=aug), _epoch(files, 1, aug=aug)
    for split in in_memory:
        for (x, y), (x2, y2) in zip(in_memory[split], per_sample[split], strict=True):
            assert torch.equal(x, x2) and torch.equal(y, y2)


@pytest.mark.parametrize(("n", "batch", "world"), [(250, 64, 2), (100, 30, 3), (64, 64, 4)])
def test_training_shards_are_equal_with_equal_steps(n: int, batch: int, world: int) -> None:
    samplers = [ShardedBatchSampler(n, batch, seed=7, rank=r, world_size=world) for r in range(world)]
    shards = [list(s) for s in samplers]
    assert {len(s) for s in shards} == {n // batch} == {len(s) for s in samplers}
    assert all(len(b) == batch // world for s in shards for b in s)
    union = [i for b in range(n // batch) for s in shards for i in s[b]]
    assert len(set(union)) == len(union) == (n // batch) * batch


@pytest.mark.parametrize(("n", "batch", "world"), [(130, 64, 2), (100, 30, 3), (5, 8, 4), (2, 3, 3)])
def test_eval_sharding_covers_every_sample_once(n: int, batch: int, world: int) -> None:
    samplers = [
        ShardedBatchSampler(n, batch, rank=r, world_size=world, shuffle=False, drop_last=False)
        for r in range(world)
    ]
    seen = [i for s in samplers for b in s for i in b]
    assert sorted(seen) == list(range(n))
    assert all(len(list(s)) == len(s) for s in samplers)


def test_permutation_depends_on_seed_and_epoch() -> None:
    sampler = ShardedBatchSampler(100, 10, seed=1)
    first = [b for b in sampler]
    sampler.set_epoch(1)
    assert [b for b in sampler] != first
    sampler.set_epoch(0)
    assert [b for b in sampler] == first
    assert [b for b in ShardedBatchSampler(100, 10, seed=2)] != first


def test_bad_batch_sizes_raise_config_errors(synthetic: data.ImageDatasets) -> None:
    with pytest.raises(ConfigError, match="multiple of the 2 workers"):
        ShardedBatchSampler(100, 15, world_size=2)
    with pytest.raises(ConfigError, match="exceeds the 100 samples"):
        build_loaders(synthetic, student_aug="w", global_batch_size=128, stream_seed=0)


def test_teacher_loaders_use_their_own_augmentation(synthetic: data.ImageDatasets) -> None:
    loaders = teacher_loaders(synthetic, aug="w", global_batch_size=20, seed=11)
    loaders.set_epoch(0)
    x, y = next(iter(loaders.train))
    assert tuple(x.shape) == (20, 3, 16, 16) and y.dtype == torch.int64
    clean, _ = next(iter(loaders.val))
    expected, _ = build_loaders(synthetic, student_aug="s", global_batch_size=20, stream_seed=0).val.dataset[
        0
    ]
    assert torch.equal(clean[0], expected)
