"""Weak, strong and clean image pipelines per dataset family (docs/experiments.md#augmentations).

Every pipeline maps one uint8 ``C×H×W`` image to a float32 ``C×S×S`` image normalised with the
dataset's mean/std, ``S`` being ``datasets.native_size``; the train loop resizes whole batches
to the config's ``image_size`` on the device. All randomness comes from torch's global RNG (as in
torchvision), which :mod:`kd_ray.data.streams` seeds per sample for paired randomness.

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

import torch
from torchvision.transforms import v2

from kd_ray.data.base import ImageDatasets
from kd_ray.registry import Registry

Transform = Callable[[torch.Tensor], torch.Tensor]
TransformFactory = Callable[[ImageDatasets], Transform]

AUGMENTATIONS: Registry[TransformFactory] = Registry("augmentation")

EVAL_CROP_FRACTION = 0.875  # ImageNet evaluation: resize to 256, center-crop 224
CUTOUT_AREA = 0.25  # 16×16 on a 32×32 image, DeVries & Taylor's CIFAR setting


@dataclass(frozen=True)
class _Policy:
    """What differs between families; the pipelines below assemble these parts."""

    crop_scale: tuple[float, float]
    crop_ratio: tuple[float, float]
    flip: bool
    weak_extra: Callable[[], list[v2.Transform]]
    strong_op: Callable[[], v2.Transform]
    cutout: bool
    eval_resize: bool


def _colour_jitter(strength: float) -> Callable[[], list[v2.Transform]]:
    return lambda: [v2.ColorJitter(brightness=strength, contrast=strength, saturation=strength)]


def _rotation(degrees: float) -> Callable[[], list[v2.Transform]]:
    return lambda: [v2.RandomRotation(degrees)]


def _autoaugment(policy: v2.AutoAugmentPolicy) -> Callable[[], v2.Transform]:
    return lambda: v2.AutoAugment(policy)


_SQUAREISH = (3.0 / 4.0, 4.0 / 3.0)


def _small_image_policy(
    crop_scale: tuple[float, float],
    crop_ratio: tuple[float, float],
    flip: bool,
    weak_extra: Callable[[], list[v2.Transform]],
) -> _Policy:
    """A policy for small images (CIFAR, digits, synthetic), which share their strong recipe:
    AutoAugment's CIFAR-10 policy then Cutout; they are evaluated as they are (no resize)."""
    return _Policy(
        crop_scale=crop_scale,
        crop_ratio=crop_ratio,
        flip=flip,
        weak_extra=weak_extra,
        strong_op=_autoaugment(v2.AutoAugmentPolicy.CIFAR10),
        cutout=True,
        eval_resize=False,
    )


_IMAGENET = _Policy(
    crop_scale=(0.08, 1.0),
    crop_ratio=_SQUAREISH,
    flip=True,
    weak_extra=_colour_jitter(0.4),
    strong_op=_autoaugment(v2.AutoAugmentPolicy.IMAGENET),
    cutout=False,
    eval_resize=True,
)

POLICIES: dict[str, _Policy] = {
    "cifar": _small_image_policy((0.5, 1.0), _SQUAREISH, flip=True, weak_extra=_colour_jitter(0.2)),
    "digits": _small_image_policy((0.7, 1.0), (0.9, 1.1), flip=False, weak_extra=_rotation(10.0)),
    "synthetic": _small_image_policy((0.5, 1.0), _SQUAREISH, flip=True, weak_extra=_rotation(10.0)),
    "imagenet": _IMAGENET,
    # ImageNet-LT differs from ImageNet only in its strong augmentation.
    "imagenet_lt": dataclasses.replace(_IMAGENET, strong_op=lambda: v2.RandAugment(num_ops=2, magnitude=9)),
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


def _geometry(policy: _Policy, size: int) -> list[v2.Transform]:
    steps: list[v2.Transform] = [v2.RandomResizedCrop(size, scale=policy.crop_scale, ratio=policy.crop_ratio)]
    if policy.flip:
        steps.append(v2.RandomHorizontalFlip())
    return steps


def _normalise(datasets: ImageDatasets) -> list[v2.Transform]:
    return [v2.ToDtype(torch.float32, scale=True), v2.Normalize(list(datasets.mean), list(datasets.std))]


@AUGMENTATIONS.register("w")
def weak(datasets: ImageDatasets) -> Transform:
    """Weak augmentation: random-resized-crop, flip (not digits), rotation or colour jitter."""
    policy = _policy(datasets)
    return v2.Compose(_geometry(policy, datasets.native_size) + policy.weak_extra() + _normalise(datasets))


@AUGMENTATIONS.register("s")
def strong(datasets: ImageDatasets) -> Transform:
    """Strong augmentation: crop and flip, then AutoAugment or RandAugment, then Cutout."""
    policy = _policy(datasets)
    steps = _geometry(policy, datasets.native_size) + [policy.strong_op()] + _normalise(datasets)
    if policy.cutout:
        steps.append(v2.RandomErasing(p=1.0, scale=(CUTOUT_AREA, CUTOUT_AREA), ratio=(1.0, 1.0), value=0.0))
    return v2.Compose(steps)


@AUGMENTATIONS.register("none")
def clean(datasets: ImageDatasets) -> Transform:
    """No augmentation: the evaluation transform (ImageNet: resize + center crop)."""
    policy = _policy(datasets)
    steps: list[v2.Transform] = []
    if policy.eval_resize:
        size = datasets.native_size
        steps += [v2.Resize(round(size / EVAL_CROP_FRACTION)), v2.CenterCrop(size)]
    return v2.Compose(steps + _normalise(datasets))


def build_transform(aug: str, datasets: ImageDatasets) -> Transform:
    """The pipeline ``aug`` (``w``, ``s`` or ``none``) for ``datasets``' family.

    Returns:
        A callable mapping a uint8 ``C×H×W`` tensor to a normalised float32 ``C×S×S`` tensor,
        ``S = datasets.native_size``; it draws from torch's global RNG.

    Raises:
        ConfigError: unknown ``aug`` (the message lists the registered names).
    """
    return AUGMENTATIONS.get(aug)(datasets)
