"""The stages of the augmentation pipelines (docs/experiments.md#augmentations).

Each stage is one torchvision transform made batch-wide: it turns its uniforms into the
parameters that transform would draw, with the same distributions, and applies the matching
batched kernel (:mod:`kd_ray.data.batch_geometry`, :mod:`kd_ray.data.batch_colour`), bit-exact
the torchvision operation with those parameters. The draws themselves differ from torchvision's
(one row of uniforms per sample instead of torch's global RNG), so the same seed gives other
crops, flips and factors than the per-image pipelines of earlier versions did.

Sizing stages come first and accept raw images of any size (:data:`~kd_ray.data.batch_pipeline.Images`);
the others take a uint8 ``(B, C, S, S)`` batch, except :class:`Cutout`, which erases after
normalisation.
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass

import torch
from torchvision.transforms.v2 import functional as TF

from kd_ray.data import batch_colour, batch_geometry
from kd_ray.data.batch_pipeline import Images, apply_grouped


def _sizes(images: Images) -> tuple[torch.Tensor, torch.Tensor]:
    """Height and width (B,) of each raw image."""
    if isinstance(images, torch.Tensor):
        n, _, h, w = images.shape
        return torch.full((n,), h), torch.full((n,), w)
    return torch.tensor([im.shape[-2] for im in images]), torch.tensor([im.shape[-1] for im in images])


def _stack(images: Images) -> torch.Tensor:
    return images if isinstance(images, torch.Tensor) else torch.stack(images)


@dataclass(frozen=True)
class RandomResizedCrop:
    """``v2.RandomResizedCrop(size, scale, ratio)`` (bilinear, antialiased) per sample.

    A batch tensor is cropped and resized in one call; a list of images of different sizes (decoded
    ImageNet files) image by image with torchvision's ``F.resized_crop``, which gives the same bytes.
    """

    size: int
    scale: tuple[float, float]
    ratio: tuple[float, float]
    attempts: int = 10
    draws: int = 22  # two per attempt (area, ratio) and two for the placement

    def __call__(self, images: Images, u: torch.Tensor) -> torch.Tensor:
        heights, widths = _sizes(images)
        boxes = batch_geometry.random_resized_crop_boxes(
            u, heights, widths, self.scale, self.ratio, attempts=self.attempts
        )
        if isinstance(images, torch.Tensor):
            return batch_geometry.resized_crop(images, boxes, self.size)
        size = [self.size, self.size]
        return torch.stack(
            [
                TF.resized_crop(im, *box.tolist(), size, antialias=True)
                for im, box in zip(images, boxes, strict=True)
            ]
        )


@dataclass(frozen=True)
class AsIs:
    """The raw images as one batch (small images are evaluated at their own size)."""

    draws: int = 0

    def __call__(self, images: Images, u: torch.Tensor) -> torch.Tensor:
        return _stack(images)


@dataclass(frozen=True)
class ResizeCentreCrop:
    """``v2.Resize(resize)`` of the shorter side then ``v2.CenterCrop(size)``, image by image
    (evaluation of images of any size; deterministic)."""

    resize: int
    size: int
    draws: int = 0

    def __call__(self, images: Images, u: torch.Tensor) -> torch.Tensor:
        return torch.stack(
            [TF.center_crop(TF.resize(im, [self.resize], antialias=True), [self.size]) for im in images]
        )


@dataclass(frozen=True)
class HorizontalFlip:
    """``v2.RandomHorizontalFlip()``: each sample mirrored with probability ½."""

    draws: int = 1

    def __call__(self, images: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
        return batch_geometry.horizontal_flip(images, u[:, 0] < 0.5)


JITTER_KERNELS = (batch_colour.brightness, batch_colour.contrast, batch_colour.saturation)
"""The operations of :class:`ColourJitter`, in the order of its factors."""

_ORDERS = torch.tensor(list(itertools.permutations(range(3))))
"""The six orders in which :class:`ColourJitter` may apply its three operations."""


@dataclass(frozen=True)
class ColourJitter:
    """``v2.ColorJitter(brightness=s, contrast=s, saturation=s)``: three factors uniform in
    ``[max(0, 1 - s), 1 + s]``, applied in a random order of the three operations per sample."""

    strength: float
    draws: int = 6  # three factors, then three keys whose ranks give the order

    def plan(self, u: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Each sample's factors ``(B, 3)`` (brightness, contrast, saturation) and the order ``(B, 3)``
        in which it applies them (column ``t``: the operation applied ``t``-th)."""
        low = max(0.0, 1.0 - self.strength)
        factors = low + u[:, :3] * (1.0 + self.strength - low)
        return factors, torch.argsort(u[:, 3:6], dim=1)

    def __call__(self, images: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
        factors, order = self.plan(u)
        # Samples with the same order are transformed together: their three operations in turn.
        choice = (order[:, None, :] == _ORDERS).all(dim=2).to(torch.int64).argmax(dim=1)

        def run(sequence: tuple[int, ...]):
            def apply(group: torch.Tensor, members: torch.Tensor) -> torch.Tensor:
                for k in sequence:
                    group = JITTER_KERNELS[k](group, factors[members, k])
                return group

            return apply

        return apply_grouped(images, choice, [run(tuple(seq)) for seq in _ORDERS.tolist()])


@dataclass(frozen=True)
class Rotation:
    """``v2.RandomRotation(degrees)``: an angle uniform in ±``degrees``, nearest neighbour, fill 0."""

    degrees: float
    draws: int = 1

    def __call__(self, images: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
        angle = -self.degrees + u[:, 0] * (2.0 * self.degrees)
        zeros = torch.zeros(len(images), 2, dtype=torch.float64)
        # torchvision's rotate passes -angle to the inverse matrix (its angles are anticlockwise).
        return batch_geometry.affine(
            images, batch_geometry.inverse_affine_matrices(-angle, zeros, zeros, zeros)
        )


@dataclass(frozen=True)
class Normalise:
    """``v2.ToDtype(float32, scale=True)`` then ``v2.Normalize(mean, std)``."""

    mean: tuple[float, ...]
    std: tuple[float, ...]
    draws: int = 0

    def __call__(self, images: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
        mean = torch.tensor(self.mean, dtype=torch.float32)
        std = torch.tensor(self.std, dtype=torch.float32)
        return batch_colour.to_normalised_float(images, mean, std)


@dataclass(frozen=True)
class Cutout:
    """``v2.RandomErasing(p=1, scale=(area, area), ratio=(1, 1), value=0)`` on normalised images:
    a square of ``area`` of the image, placed uniformly inside it, set to 0, i.e. the mean colour."""

    area: float
    draws: int = 2

    def __call__(self, images: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
        h, w = images.shape[-2:]
        side = int(round(math.sqrt(self.area * h * w)))
        if not (side < h and side < w):  # torchvision erases nothing when the square cannot fit
            return images
        top = torch.floor(u[:, 0] * (h - side + 1)).to(torch.int64)
        left = torch.floor(u[:, 1] * (w - side + 1)).to(torch.int64)
        return batch_geometry.erase(images, top, left, side)
