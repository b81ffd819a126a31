"""Augmentation pipelines of every family × policy, and the teacher views."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch
from torchvision.transforms import v2

from kd_ray import data
from kd_ray.config import DatasetConfig
from kd_ray.data.augment import AUGMENTATIONS, POLICIES, build_transform
from kd_ray.data.base import ImageDatasets, TensorImageSource
from kd_ray.data.views import VIEWS, strip_bounds
from kd_ray.errors import ConfigError

NATIVE = 24  # small, so the ImageNet policies run fast


def _fake(family: str) -> ImageDatasets:
    """Random images shaped like the family's sources (ImageNet ones larger than native)."""
    gen = torch.Generator().manual_seed(0)
    if family == "digits":
        return data.DATASETS.get("digits")(DatasetConfig(name="digits"))
    if family == "synthetic":
        return data.DATASETS.get("synthetic")(DatasetConfig(name="synthetic"))
    h, w = (NATIVE, NATIVE) if family == "cifar" else (30, 41)
    images = torch.randint(0, 256, (4, 3, h, w), dtype=torch.uint8, generator=gen)
    source = TensorImageSource(images, np.arange(4) % 2)
    return ImageDatasets(source, source, 2, 3, NATIVE, (0.5, 0.4, 0.3), (0.2, 0.25, 0.3), family)


FAKES = {family: _fake(family) for family in POLICIES}


@pytest.mark.parametrize("aug", AUGMENTATIONS.names())
@pytest.mark.parametrize("family", sorted(POLICIES))
def test_shape_dtype_and_determinism(family: str, aug: str) -> None:
    ds = FAKES[family]
    transform = build_transform(aug, ds)
    image = ds.train[1][0]
    torch.manual_seed(5)
    first = transform(image)
    torch.manual_seed(5)
    again = transform(image)
    size = ds.native_size
    assert first.dtype == torch.float32 and tuple(first.shape) == (ds.channels, size, size)
    assert torch.isfinite(first).all()
    assert torch.equal(first, again)
    if aug != "none":
        draws = {transform(image).numpy().tobytes() for _ in range(8)}
        assert len(draws) > 1


@pytest.mark.parametrize("family", ["cifar", "digits", "synthetic"])
def test_none_only_normalises_small_images(family: str) -> None:
    ds = FAKES[family]
    image = ds.val[0][0]
    mean = torch.tensor(ds.mean).view(-1, 1, 1)
    std = torch.tensor(ds.std).view(-1, 1, 1)
    expected = (image.float() / 255 - mean) / std
    assert torch.allclose(build_transform("none", ds)(image), expected, atol=1e-5)


@pytest.mark.parametrize("family", ["imagenet", "imagenet_lt"])
def test_none_is_resize_then_center_crop(family: str) -> None:
    ds = FAKES[family]
    pipeline = build_transform("none", ds)
    kinds = [type(t) for t in pipeline.transforms]
    assert kinds[:2] == [v2.Resize, v2.CenterCrop]
    assert pipeline.transforms[0].size == [round(NATIVE / 0.875)]


def test_digits_never_flip_and_strong_policies_per_family() -> None:
    def kinds(aug: str, family: str) -> list[type]:
        return [type(t) for t in build_transform(aug, FAKES[family]).transforms]

    for aug in ("w", "s"):
        assert v2.RandomHorizontalFlip not in kinds(aug, "digits")
        assert v2.RandomHorizontalFlip in kinds(aug, "cifar")
    assert build_transform("s", FAKES["cifar"]).transforms[2].policy == v2.AutoAugmentPolicy.CIFAR10
    assert build_transform("s", FAKES["imagenet"]).transforms[2].policy == v2.AutoAugmentPolicy.IMAGENET
    assert v2.RandAugment in kinds("s", "imagenet_lt")
    for family in ("cifar", "digits", "synthetic"):
        assert kinds("s", family)[-1] is v2.RandomErasing
    assert v2.RandomErasing not in kinds("s", "imagenet")


def test_cutout_blanks_a_quarter_to_the_mean() -> None:
    ds = FAKES["cifar"]
    torch.manual_seed(0)
    out = build_transform("s", ds)(ds.train[0][0])
    blank = (out == 0).all(dim=0)
    assert int(blank.sum()) >= (NATIVE // 2) ** 2


def test_unknown_names_list_the_known_ones() -> None:
    with pytest.raises(ConfigError, match="known: none, s, w"):
        build_transform("x", FAKES["cifar"])
    odd = dataclasses.replace(FAKES["cifar"], family="mnist")
    with pytest.raises(ValueError, match="family 'mnist'"):
        build_transform("w", odd)


@pytest.mark.parametrize("k", [1, 2, 3])
@pytest.mark.parametrize("width", [8, 32, 16])
def test_split_view_keeps_only_own_strip(k: int, width: int) -> None:
    x = torch.randn(5, 3, 7, width) + 10  # no accidental zeros
    split = VIEWS.get("split")
    covered = torch.zeros(width, dtype=torch.int64)
    for slot in range(1, k + 1):
        out = split(x, slot, k)
        start, end = strip_bounds(width, slot, k)
        assert out.shape == x.shape
        assert torch.equal(out[..., start:end], x[..., start:end])
        assert (out[..., :start] == 0).all() and (out[..., end:] == 0).all()
        assert abs((end - start) - width / k) < 1
        covered[start:end] += 1
    assert (covered == 1).all()
    assert VIEWS.get("full")(x, 1, k) is x


def test_split_view_halves_for_two_teachers() -> None:
    x = torch.ones(1, 1, 2, 4)
    assert VIEWS.get("split")(x, 1, 2)[0, 0, 0].tolist() == [1, 1, 0, 0]
    assert VIEWS.get("split")(x, 2, 2)[0, 0, 0].tolist() == [0, 0, 1, 1]
    with pytest.raises(ValueError, match="slot"):
        VIEWS.get("split")(x, 3, 2)
