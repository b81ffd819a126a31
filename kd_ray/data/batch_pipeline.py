"""Batch transforms: a whole batch of raw images in, normalised float images out, each sample under
its own seeded draws (docs/experiments.md#augmentations, docs/experiments.md#paired-randomness).

A :class:`BatchPipeline` is a sequence of stages. Every stage reads a fixed number of uniforms per
sample (its ``draws``) from the sample's row of :func:`kd_ray.data.draws.sample_uniforms`, turns
them into per-sample parameters and applies one batched kernel. The first stage brings raw images
(a uint8 ``(B, C, H, W)`` tensor, or a list of ``C×H×W`` images of any sizes) to a uint8
``(B, C, S, S)`` batch; the last ones normalise (and may erase after normalising).

A per-image transform (torchvision's ``v2.Compose`` and the like, drawing from torch's global RNG)
still works: :func:`as_batch_transform` wraps it in a :class:`PerSampleTransform`, which runs it
image by image under the global RNG seeded with each sample's seed. That is the slow path, for
augmentations registered by extensions (docs/extending.md#add-an-augmentation).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from typing import Protocol

import torch

from kd_ray.data.draws import sample_uniforms

Images = torch.Tensor | list[torch.Tensor]
"""Raw images of a batch: uint8 ``(B, C, H, W)``, or a list of uint8 ``C×H×W`` of any sizes."""

Transform = Callable[[torch.Tensor], torch.Tensor]
"""A per-image transform: uint8 ``C×H×W`` → float32 ``C×S×S``, drawing from torch's global RNG."""


class BatchTransform(ABC):
    """Raw images of a batch and each sample's seed → float32 ``(B, C, S, S)``.

    ``seeds`` is ``None`` for a deterministic transform (no draws).
    """

    @abstractmethod
    def __call__(self, images: Images, seeds: Sequence[int] | None) -> torch.Tensor: ...


class Stage(Protocol):
    """One step of a :class:`BatchPipeline`: ``draws`` uniforms per sample → parameters → one kernel."""

    draws: int

    def __call__(self, images: Images, u: torch.Tensor) -> Images: ...


class BatchPipeline(BatchTransform):
    """Stages applied in order; stage ``k`` reads its own fixed columns of each sample's uniforms.

    The columns are fixed by the stage order, so a sample's parameters are a function of its seed
    alone, whatever batch it is drawn in.
    """

    def __init__(self, stages: Sequence[Stage]) -> None:
        self.stages = tuple(stages)
        self.draws = sum(stage.draws for stage in self.stages)

    def __call__(self, images: Images, seeds: Sequence[int] | None) -> torch.Tensor:
        n = len(images)
        if self.draws and seeds is None:
            raise ValueError(f"this pipeline draws {self.draws} random numbers per sample; it needs seeds")
        u = sample_uniforms(seeds, self.draws) if self.draws else torch.empty(n, 0, dtype=torch.float64)
        start = 0
        for stage in self.stages:
            images = stage(images, u[:, start : start + stage.draws])
            start += stage.draws
        if not isinstance(images, torch.Tensor):
            raise TypeError(
                "a pipeline must end with a batch tensor; its first stage should stack the images"
            )
        return images

    def __repr__(self) -> str:
        return f"BatchPipeline({', '.join(repr(s) for s in self.stages)})"


class PerSampleTransform(BatchTransform):
    """A per-image transform run image by image, under torch's global RNG seeded by each sample's seed.

    The RNG is forked, so the caller's global RNG is left as it was.
    """

    def __init__(self, transform: Transform) -> None:
        self.transform = transform

    def __call__(self, images: Images, seeds: Sequence[int] | None) -> torch.Tensor:
        if seeds is None:
            return torch.stack([self.transform(image) for image in images])
        out = []
        with torch.random.fork_rng(devices=[]):
            # Only the CPU generator: torchvision draws from it, and ``torch.manual_seed`` would
            # also seed every accelerator, ~100x slower per sample.
            for image, seed in zip(images, seeds, strict=True):
                torch.default_generator.manual_seed(seed)
                out.append(self.transform(image))
        return torch.stack(out)


def as_batch_transform(transform: BatchTransform | Transform) -> BatchTransform:
    """``transform`` itself if it is a batch transform, else wrapped in a :class:`PerSampleTransform`."""
    return transform if isinstance(transform, BatchTransform) else PerSampleTransform(transform)


def apply_grouped(
    images: torch.Tensor,
    choice: torch.Tensor,
    ops: Sequence[Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None],
) -> torch.Tensor:
    """Apply op ``choice[b]`` to sample ``b``: each op once, on the group of samples that chose it.

    ``ops[k](group_images, group_indices)`` returns the group's new images (``group_indices`` lets
    the op pick its per-sample parameters); ``None`` leaves the group unchanged.
    """
    out = images
    for k in torch.unique(choice).tolist():
        op = ops[k]
        if op is None:
            continue
        members = torch.nonzero(choice == k).squeeze(1)
        if len(members) == len(images):
            out = op(out, members)
        else:
            if out is images:
                out = images.clone()
            out.index_copy_(0, members, op(out.index_select(0, members), members))
    return out
