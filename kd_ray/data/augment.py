"""Weak, strong and clean image pipelines per dataset family (docs/experiments.md#augmentations).

Every pipeline is a :class:`~kd_ray.data.batch_pipeline.BatchPipeline`: it maps the raw uint8
images of a batch to float32 ``(B, C, S, S)`` images normalised with the dataset's mean/std, ``S``
being ``datasets.native_size``; the train loop resizes whole batches to the config's
``image_size`` on the device. Each stage is a torchvision transform made batch-wide
(:mod:`kd_ray.data.batch_stages`): the same distributions of parameters, and with given
parameters the same bytes as torchvision's per-image operation. Every sample's parameters come
from its own seeded draws, which :mod:`kd_ray.data.streams` seeds per sample for paired
randomness.

Policies per family, and why:

* ``cifar``: weak = random-resized-crop (scale 0.5-1: a 32-pixel image cannot lose 92 % of its
  area as on ImageNet) + horizontal flip + mild colour jitter; strong = the same crop and flip
  + AutoAugment (CIFAR-10 policy) + Cutout, the standard strong CIFAR recipe.
* ``digits``: weak = random-resized-crop (scale 0.7-1, near-square so strokes keep their shape)
  + ±10° rotation, never a flip (a mirrored 2, 3, 5, 7 or 9 is not that digit); strong = the
  same crop + AutoAugment (CIFAR-10 policy) + Cutout, the "cifar-style" recipe on 8×8 images.
* ``synthetic``: weak = crop (0.5-1) + flip + ±10° rotation (class cues, blob row and colour,
  survive all three; no colour jitter, colour is a cue); strong = crop + flip + AutoAugment
  (CIFAR-10 policy) + Cutout, so tests exercise the same operations as CIFAR.
* ``imagenet``: weak = random-resized-crop (scale 0.08-1) + flip + colour jitter 0.4, the
  standard ImageNet training transform; strong = crop + flip + AutoAugment (ImageNet policy).
* ``imagenet_lt``: as ``imagenet`` but strong uses RandAugment (2 ops, magnitude 9), the
  strong augmentation of the ImageNet-LT literature (e.g. PaCo, Cui et al. 2021).

Cutout (DeVries & Taylor 2017) is ``RandomErasing`` of a square of a quarter of the image
(16×16 on CIFAR) set to 0 *after* normalisation, i.e. to the mean colour, as the original; unlike
the original the square always lies fully inside the image. ``none`` only normalises small
images; ImageNet images (any size) have their shorter side resized to ``S / 0.875`` and are
center-cropped to ``S`` (the 256 → 224 evaluation transform).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass

from torchvision.transforms.v2 import AutoAugmentPolicy

from kd_ray.data.base import ImageDatasets
from kd_ray.data.batch_autoaugment import AutoAugment, RandAugment
from kd_ray.data.batch_pipeline import BatchPipeline, BatchTransform, Stage, Transform, as_batch_transform
from kd_ray.data.batch_stages import (
    AsIs,
    ColourJitter,
    Cutout,
    HorizontalFlip,
    Normalise,
    RandomResizedCrop,
    ResizeCentreCrop,
    Rotation,
)
from kd_ray.registry import Registry

TransformFactory = Callable[[ImageDatasets], "BatchTransform | Transform"]
"""Builds an augmentation for a dataset: a batch transform, or a per-image transform (slow path)."""

AUGMENTATIONS: Registry[TransformFactory] = Registry("augmentation")

EVAL_CROP_FRACTION = 0.875  # ImageNet evaluation: resize to 256, center-crop 224
CUTOUT_AREA = 0.25  # 16×16 on a 32×32 image, DeVries & Taylor's CIFAR setting


@dataclass(frozen=True)
class _Policy:
    """What differs between families; the pipelines below assemble these parts."""

    crop_scale: tuple[float, float]
    crop_ratio: tuple[float, float]
    flip: bool
    weak_extra: Stage
    strong_op: Stage
    cutout: bool
    eval_resize: bool


_SQUAREISH = (3.0 / 4.0, 4.0 / 3.0)


def _small_image_policy(
    crop_scale: tuple[float, float],
    crop_ratio: tuple[float, float],
    flip: bool,
    weak_extra: Stage,
) -> _Policy:
    """A policy for small images (CIFAR, digits, synthetic), which share their strong recipe:
    AutoAugment's CIFAR-10 policy then Cutout; they are evaluated as they are (no resize)."""
    return _Policy(
        crop_scale=crop_scale,
        crop_ratio=crop_ratio,
        flip=flip,
        weak_extra=weak_extra,
        strong_op=AutoAugment(AutoAugmentPolicy.CIFAR10),
        cutout=True,
        eval_resize=False,
    )


_IMAGENET = _Policy(
    crop_scale=(0.08, 1.0),
    crop_ratio=_SQUAREISH,
    flip=True,
    weak_extra=ColourJitter(0.4),
    strong_op=AutoAugment(AutoAugmentPolicy.IMAGENET),
    cutout=False,
    eval_resize=True,
)

POLICIES: dict[str, _Policy] = {
    "cifar": _small_image_policy((0.5, 1.0), _SQUAREISH, flip=True, weak_extra=ColourJitter(0.2)),
    "digits": _small_image_policy((0.7, 1.0), (0.9, 1.1), flip=False, weak_extra=Rotation(10.0)),
    "synthetic": _small_image_policy((0.5, 1.0), _SQUAREISH, flip=True, weak_extra=Rotation(10.0)),
    "imagenet": _IMAGENET,
    # ImageNet-LT differs from ImageNet only in its strong augmentation.
    "imagenet_lt": dataclasses.replace(_IMAGENET, strong_op=RandAugment(num_ops=2, magnitude=9)),
}
"""Augmentation policy of each dataset family (``ImageDatasets.family``)."""


def _policy(datasets: ImageDatasets) -> _Policy:
    try:
        return POLICIES[datasets.family]
    except KeyError:
        known = ", ".join(sorted(POLICIES))
        raise ValueError(
            f"no augmentation policy for dataset family {datasets.family!r}; known: {known}"
        ) from None


def _geometry(policy: _Policy, size: int) -> list[Stage]:
    steps: list[Stage] = [RandomResizedCrop(size, scale=policy.crop_scale, ratio=policy.crop_ratio)]
    if policy.flip:
        steps.append(HorizontalFlip())
    return steps


def _normalise(datasets: ImageDatasets) -> Normalise:
    return Normalise(tuple(datasets.mean), tuple(datasets.std))


@AUGMENTATIONS.register("w")
def weak(datasets: ImageDatasets) -> BatchPipeline:
    """Weak augmentation: random-resized-crop, flip (not digits), rotation or colour jitter."""
    policy = _policy(datasets)
    return BatchPipeline([*_geometry(policy, datasets.native_size), policy.weak_extra, _normalise(datasets)])


@AUGMENTATIONS.register("s")
def strong(datasets: ImageDatasets) -> BatchPipeline:
    """Strong augmentation: crop and flip, then AutoAugment or RandAugment, then Cutout."""
    policy = _policy(datasets)
    steps = [*_geometry(policy, datasets.native_size), policy.strong_op, _normalise(datasets)]
    if policy.cutout:
        steps.append(Cutout(CUTOUT_AREA))
    return BatchPipeline(steps)


@AUGMENTATIONS.register("none")
def clean(datasets: ImageDatasets) -> BatchPipeline:
    """No augmentation: the evaluation transform (ImageNet: resize + center crop)."""
    policy = _policy(datasets)
    size = datasets.native_size
    sizing = ResizeCentreCrop(round(size / EVAL_CROP_FRACTION), size) if policy.eval_resize else AsIs()
    return BatchPipeline([sizing, _normalise(datasets)])


def build_transform(aug: str, datasets: ImageDatasets) -> BatchTransform:
    """The pipeline ``aug`` (``w``, ``s`` or ``none``) for ``datasets``' family.

    Returns:
        A :class:`~kd_ray.data.batch_pipeline.BatchTransform`: the raw uint8 images of a batch
        (a ``(B, C, H, W)`` tensor or a list of ``C×H×W`` images) and each sample's seed (``None``
        for ``none``) → normalised float32 ``(B, C, S, S)``, ``S = datasets.native_size``. A
        registered per-image transform is wrapped to run image by image under torch's global RNG
        seeded per sample.

    Raises:
        ConfigError: unknown ``aug`` (the message lists the registered names).
    """
    return as_batch_transform(AUGMENTATIONS.get(aug)(datasets))
