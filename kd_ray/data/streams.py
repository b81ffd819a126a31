"""Seeded data streams: paired randomness that survives DDP sharding and loader workers.

Every random draw of a stream is a pure function of its seed (docs/experiments.md#paired-randomness):

* the epoch's sample order is ``randperm(n)`` seeded by ``(seed, epoch)``;
* sample ``i``'s augmentation parameters come from its own generator seeded by
  ``stable_seed(seed, epoch, i)`` (:mod:`kd_ray.data.draws`); torch's global RNG is never used.

The loader fetches the raw images of a whole (shard of a) batch and augments them together, in
the loader worker or, without workers, in the training process; each sample is transformed by
its own parameters, so nothing depends on which process draws a sample or which samples share
its batch. A global batch has the same samples and the same augmented pixels whatever the number
of DDP ranks or ``DataLoader`` workers, and two student trials with the same stream seed see
identical batches whatever their teachers or loss. A global batch of ``B`` samples is cut into
``world_size`` equal contiguous shards (training drops the last partial batch, so every rank makes
the same number of steps); evaluation splits each batch ``rank::world_size`` without padding or
dropping, so every sample is counted once.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from kd_ray.data.augment import build_transform
from kd_ray.data.base import ImageDatasets, ImageSource, TensorImageSource
from kd_ray.data.batch_pipeline import BatchTransform, Images
from kd_ray.data.draws import sample_seeds
from kd_ray.errors import ConfigError
from kd_ray.seeding import stable_seed

Batch = tuple[torch.Tensor, torch.Tensor]
"""Normalised float32 images ``(B, C, S, S)`` and int64 labels ``(B,)``."""


@contextmanager
def _single_thread() -> Iterator[None]:
    """Augment a batch on one intra-op thread, as ``DataLoader`` workers do.

    A 32-pixel batch is too small to gain from threads: in-process loading (``loader_workers = 0``,
    the CPU default) would otherwise pay the thread pool's synchronisation on every op of a busy
    machine. It also makes the pixels independent of the process's thread count (the order of a
    reduction such as a contrast mean), so workers never change them.
    """
    threads = torch.get_num_threads()
    if threads == 1:
        yield
        return
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def _raw_batch(source: ImageSource, indices: Sequence[int]) -> tuple[Images, torch.Tensor]:
    """The raw images and labels at ``indices``: one tensor from an in-memory split (one gather),
    else a list of the source's images (decoded files, of any size)."""
    if isinstance(source, TensorImageSource):
        rows = np.asarray(indices, dtype=np.int64)
        return source.images.index_select(0, torch.from_numpy(rows)), torch.from_numpy(source.labels[rows])
    pairs = [source[i] for i in indices]
    return [image for image, _ in pairs], torch.tensor([int(label) for _, label in pairs], dtype=torch.int64)


def _collated(batch: Batch) -> Batch:
    """``DataLoader``'s collate function: :meth:`AugmentedSplit.__getitems__` already returns a batch."""
    return batch


class AugmentedSplit(Dataset[tuple[torch.Tensor, int]]):
    """A split whose samples are augmented a batch at a time, sample ``i`` under draws seeded by
    ``(seed, epoch, i)``.

    ``DataLoader`` calls :meth:`__getitems__` with the indices of a (shard of a) batch; indexing
    one sample augments a batch of one, with the same result.

    Args:
        source: the raw split.
        transform: raw images and per-sample seeds → normalised float images.
        seed: base seed of the augmentation draws; ``None`` for a deterministic transform.
        cache: keep each transformed sample after its first draw; for evaluation splits, whose
            draw does not change between epochs (their epoch stays 0).
    """

    def __init__(
        self, source: ImageSource, transform: BatchTransform, seed: int | None, *, cache: bool = False
    ) -> None:
        self.source = source
        self.transform = transform
        self.seed = seed
        self.epoch = 0
        # Evaluation splits draw the same pixels every epoch; small ones are transformed once.
        self._cache: dict[int, tuple[torch.Tensor, torch.Tensor]] | None = {} if cache else None

    def set_epoch(self, epoch: int) -> None:
        """Draw epoch ``epoch``'s augmentations (loader workers pick it up at the next epoch)."""
        if self._cache is not None and epoch != self.epoch:
            raise ValueError("a cached split draws the same pixels every epoch; it has no epochs")
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.source)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        images, labels = self.__getitems__([index])
        return images[0], int(labels[0])

    def __getitems__(self, indices: Sequence[int]) -> Batch:
        if self._cache is None:
            return self._draw(indices)
        missing = [i for i in dict.fromkeys(indices) if i not in self._cache]
        if missing:
            images, labels = self._draw(missing)
            self._cache.update(zip(missing, zip(images, labels, strict=True), strict=True))
        cached = [self._cache[i] for i in indices]
        return torch.stack([image for image, _ in cached]), torch.stack([label for _, label in cached])

    def _draw(self, indices: Sequence[int]) -> Batch:
        images, labels = _raw_batch(self.source, indices)
        seeds = None if self.seed is None else sample_seeds(self.seed, self.epoch, indices)
        with _single_thread():
            return self.transform(images, seeds), labels


class ShardedBatchSampler(Sampler[list[int]]):
    """Global batches of a seeded epoch order, of which this rank yields its shard.

    Training (``shuffle=True``): each epoch's order is a permutation seeded by
    ``(seed, epoch)``; global batch ``b`` is ``order[b·B:(b+1)·B]`` and rank ``r`` of ``w`` takes
    its ``r``-th contiguous ``B/w`` slice. With ``drop_last`` every rank gets equal shards and
    the same number of steps, which DDP needs. Without it the last partial batch is cut into
    near-equal contiguous slices and a rank whose slice is empty skips it (fine on one rank; under
    DDP that rank would make one step fewer, so training uses ``drop_last``).

    Evaluation (``shuffle=False``): the order is ``0..n-1`` and rank ``r`` takes ``batch[r::w]``
    of every global batch, last partial one included, so the ranks together cover each sample
    exactly once and metric sums reduced across ranks equal the one-rank sums.

    Raises:
        ConfigError: ``global_batch_size`` is not a multiple of ``world_size``, or ``drop_last``
            would leave no batch at all.
    """

    def __init__(
        self,
        n: int,
        global_batch_size: int,
        *,
        seed: int = 0,
        rank: int = 0,
        world_size: int = 1,
        shuffle: bool = True,
        drop_last: bool = True,
    ) -> None:
        if global_batch_size < 1 or global_batch_size % world_size:
            raise ConfigError(
                f"batch size {global_batch_size} must be a positive multiple of the {world_size} workers, "
                "so every rank gets an equal shard"
            )
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} is outside 0..{world_size - 1}")
        if drop_last and n < global_batch_size:
            raise ConfigError(
                f"batch size {global_batch_size} exceeds the {n} samples of the split, "
                "so dropping the last partial batch leaves no batch"
            )
        self.n = n
        self.global_batch_size = global_batch_size
        self.seed = seed
        self.rank = rank
        self.world_size = world_size
        self.shuffle = shuffle
        self.drop_last = drop_last
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        """Use epoch ``epoch``'s permutation from the next iteration on."""
        self.epoch = epoch

    def _order(self) -> torch.Tensor:
        if not self.shuffle:
            return torch.arange(self.n)
        generator = torch.Generator().manual_seed(stable_seed(self.seed, "permutation", self.epoch))
        return torch.randperm(self.n, generator=generator)

    def _shard(self, batch: torch.Tensor) -> torch.Tensor:
        if not self.shuffle:
            return batch[self.rank :: self.world_size]
        m = len(batch)
        return batch[self.rank * m // self.world_size : (self.rank + 1) * m // self.world_size]

    def global_batches(self) -> list[torch.Tensor]:
        """This epoch's global batches (the same on every rank)."""
        batches = list(torch.split(self._order(), self.global_batch_size))
        if self.drop_last and batches and len(batches[-1]) < self.global_batch_size:
            batches.pop()
        return batches

    def __iter__(self) -> Iterator[list[int]]:
        for batch in self.global_batches():
            shard = self._shard(batch)
            if len(shard):
                yield shard.tolist()

    def __len__(self) -> int:
        full, rest = divmod(self.n, self.global_batch_size)
        if self.drop_last or rest == 0:
            return full
        return full + int(len(self._shard(torch.arange(rest))) > 0)


@dataclass(frozen=True)
class SplitLoaders:
    """The loaders of one trial on one rank.

    Attributes:
        train: training batches through the trial's augmentation, reshuffled every epoch.
        val: the clean validation set (``none`` transform).
        val_aug: the validation set through the trial's training augmentation, drawn once and
            identical every epoch, so epoch-to-epoch changes of ``val_aug`` accuracy (and of
            the affinity) reflect the model, not a new augmentation draw.
    """

    train: DataLoader
    val: DataLoader
    val_aug: DataLoader

    def set_epoch(self, epoch: int) -> None:
        """Select epoch ``epoch``'s order and augmentations; call before iterating ``train``."""
        self.train.dataset.set_epoch(epoch)
        self.train.batch_sampler.set_epoch(epoch)


def _loader(
    split: AugmentedSplit, sampler: ShardedBatchSampler, seed: int, loader_workers: int, pin_memory: bool
) -> DataLoader:
    # Workers are not persistent, so each epoch's iterator forks them with the current epoch. A
    # worker fetches and augments whole batches (``__getitems__``), so collation is the identity.
    # The explicit generator keeps the DataLoader from drawing its worker base seed from the
    # caller's global RNG (our per-sample seeding makes that seed irrelevant anyway).
    return DataLoader(
        split,
        batch_sampler=sampler,
        num_workers=loader_workers,
        collate_fn=_collated,
        pin_memory=pin_memory,
        generator=torch.Generator().manual_seed(stable_seed(seed, "loader")),
    )


# Per-rank memory allowed for each cached evaluation split (float32 pixels after transform).
EVAL_CACHE_BYTES = 256 * 2**20


def _eval_cache_fits(datasets: ImageDatasets) -> bool:
    side = datasets.native_size
    return len(datasets.val) * datasets.channels * side * side * 4 <= EVAL_CACHE_BYTES


def build_loaders(
    datasets: ImageDatasets,
    *,
    student_aug: str,
    global_batch_size: int,
    stream_seed: int,
    rank: int = 0,
    world_size: int = 1,
    loader_workers: int = 0,
    pin_memory: bool = False,
) -> SplitLoaders:
    """Train / val / val_aug loaders of a student trial on rank ``rank`` of ``world_size``.

    Args:
        datasets: the dataset's splits.
        student_aug: the student's augmentation (``w``, ``s`` or ``none``); it decides the batch
            that the student and the frozen teachers see.
        global_batch_size: samples per optimiser step summed over ranks; also the global batch
            size of ``val`` and ``val_aug``.
        stream_seed: :func:`kd_ray.seeding.stream_seed` of the trial; the order and every
            augmentation draw derive from it (``val_aug`` from ``stable_seed(stream_seed,
            "val_aug")`` at a fixed epoch 0).
        rank, world_size: this DDP rank and the number of ranks.
        loader_workers, pin_memory: passed to ``DataLoader``; they change speed, never batches.
    """
    train_tf = build_transform(student_aug, datasets)
    train = AugmentedSplit(datasets.train, train_tf, stream_seed)
    cache = _eval_cache_fits(datasets)
    val = AugmentedSplit(datasets.val, build_transform("none", datasets), None, cache=cache)
    val_aug = AugmentedSplit(datasets.val, train_tf, stable_seed(stream_seed, "val_aug"), cache=cache)

    def sampler(n: int, *, train: bool) -> ShardedBatchSampler:
        # Training: a seeded order and equal shards (drop_last); evaluation: every sample once.
        return ShardedBatchSampler(
            n,
            global_batch_size,
            seed=stream_seed,
            rank=rank,
            world_size=world_size,
            shuffle=train,
            drop_last=train,
        )

    n_train, n_val = len(datasets.train), len(datasets.val)
    return SplitLoaders(
        train=_loader(train, sampler(n_train, train=True), stream_seed, loader_workers, pin_memory),
        val=_loader(val, sampler(n_val, train=False), stream_seed, loader_workers, pin_memory),
        val_aug=_loader(val_aug, sampler(n_val, train=False), stream_seed, loader_workers, pin_memory),
    )


def teacher_loaders(datasets: ImageDatasets, *, aug: str, seed: int, **options: Any) -> SplitLoaders:
    """Loaders of a teacher's own training: :func:`build_loaders` under a teacher's argument names,
    nothing more: ``aug`` is passed as ``student_aug`` and ``seed`` as ``stream_seed``.

    ``seed`` should identify the teacher (e.g. ``stable_seed`` of its id): ``T1w`` and ``T2w``
    are different models with different data orders (docs/experiments.md#teachers). ``val`` is
    clean; ``val_aug`` goes through the teacher's augmentation, fixed across epochs. ``options``
    are :func:`build_loaders`' batch and sharding keywords (``global_batch_size``, ``rank``,
    ``world_size``, ...), passed on unchanged: a teacher's batches are built as a student's are.
    """
    return build_loaders(datasets, student_aug=aug, stream_seed=seed, **options)
