"""Augmentation pipelines of every family × policy, and the teacher views."""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from torchvision.transforms import v2

from kd_ray import data
from kd_ray.config import DatasetConfig
from kd_ray.data import augment
from kd_ray.data import batch_stages as stages
from kd_ray.data.augment import AUGMENTATIONS, POLICIES, build_transform
from kd_ray.data.base import ImageDatasets, TensorImageSource
from kd_ray.data.batch_autoaugment import AutoAugment, RandAugment
from kd_ray.data.batch_pipeline import BatchPipeline, BatchTransform, PerSampleTransform
from kd_ray.data.draws import sample_seeds
from kd_ray.data.views import VIEWS, strip_bounds
from kd_ray.errors import ConfigError
from kd_ray.registry import Registry

NATIVE = 24  # small, so the ImageNet policies run fast


def _fake(family: str) -> ImageDatasets:
    """Random images shaped like the family's sources (ImageNet ones larger than native)."""
    gen = torch.Generator().manual_seed(0)
    if family == "digits":
        return data.DATASETS.get("digits")(DatasetConfig(name="digits"))
    if family == "synthetic":
        return data.DATASETS.get("synthetic")(DatasetConfig(name="synthetic"))
    h, w = (NATIVE, NATIVE) if family == "cifar" else (30, 41)
    images = torch.randint(0, 256, (6, 3, h, w), dtype=torch.uint8, generator=gen)
    source = TensorImageSource(images, np.arange(6) % 2)
    return ImageDatasets(source, source, 2, 3, NATIVE, (0.5, 0.4, 0.3), (0.2, 0.25, 0.3), family)


FAKES = {family: _fake(family) for family in POLICIES}


def _batch(ds: ImageDatasets, n: int = 6) -> torch.Tensor:
    return torch.stack([ds.train[i][0] for i in range(n)])


def _kinds(aug: str, family: str) -> list[type]:
    return [type(stage) for stage in build_transform(aug, FAKES[family]).stages]


def _check_contract(transform: BatchTransform, ds: ImageDatasets, *, random: bool) -> torch.Tensor:
    """The contract of every augmentation: float32 ``(B, C, S, S)``, finite, a function of each
    sample's image and seed alone (docs/experiments.md#paired-randomness). Returns the batch."""
    images = _batch(ds)
    seeds = sample_seeds(5, 0, range(6)) if random else None
    first = transform(images, seeds)
    size = ds.native_size
    assert first.dtype == torch.float32 and tuple(first.shape) == (6, ds.channels, size, size)
    assert torch.isfinite(first).all()
    assert torch.equal(first, transform(images, seeds))
    # A sample's pixels depend on its image and seed only, not on the rest of its batch.
    assert torch.equal(transform(images[2:3], None if seeds is None else seeds[2:3])[0], first[2])
    assert torch.equal(transform(list(images), seeds), first)
    if random:
        order = [4, 1, 5, 0, 3]
        assert torch.equal(transform(images[order], [seeds[i] for i in order]), first[order])
        draws = {transform(images[:1], sample_seeds(5, epoch, [0])).numpy().tobytes() for epoch in range(8)}
        assert len(draws) > 1
    return first


@pytest.mark.parametrize("aug", AUGMENTATIONS.names())
@pytest.mark.parametrize("family", sorted(POLICIES))
def test_shape_dtype_determinism_and_batch_independence(family: str, aug: str) -> None:
    _check_contract(build_transform(aug, FAKES[family]), FAKES[family], random=aug != "none")


def _docs_example(heading: str) -> str:
    """The first python code block under ``heading`` in docs/extending.md."""
    text = (Path(__file__).resolve().parents[1] / "docs" / "extending.md").read_text()
    section = text.split(f"\n{heading}\n", 1)[1].split("\n## ", 1)[0]
    return re.search(r"```python\n(.*?)```", section, re.DOTALL).group(1)


@pytest.fixture
def registry_copy(monkeypatch: pytest.MonkeyPatch) -> Registry:
    """A copy of ``AUGMENTATIONS`` that ``build_transform`` reads during the test, so what a test
    registers never reaches the real registry (and the tests parametrised over it)."""
    copy: Registry = Registry("augmentation")
    for name in AUGMENTATIONS:
        copy.register(name)(AUGMENTATIONS.get(name))
    monkeypatch.setattr(augment, "AUGMENTATIONS", copy)
    return copy


@pytest.mark.parametrize("family", sorted(POLICIES))
def test_the_augmentation_of_docs_extending(family: str, registry_copy: Registry) -> None:
    """The example of docs/extending.md#add-an-augmentation, run as written there (in augment.py's
    namespace, registering into a copy of the registry): it keeps the contract and paired
    randomness, and its new stage reads only its own columns, so the geometry stages before it
    draw what they draw in ``w``."""
    namespace = dict(vars(augment), AUGMENTATIONS=registry_copy)
    exec(compile(_docs_example("## Add an augmentation"), "docs/extending.md", "exec"), namespace)
    assert "m" in registry_copy and "m" not in AUGMENTATIONS
    ds = FAKES[family]
    pipeline = build_transform("m", ds)
    assert isinstance(pipeline, BatchPipeline)
    assert isinstance(pipeline.stages[-2], namespace["RandomSolarize"])
    out = _check_contract(pipeline, ds, random=True)
    if family == "cifar":  # random bright images: some samples solarized, some not
        without = BatchPipeline([*pipeline.stages[:-2], pipeline.stages[-1]])
        plain = without(_batch(ds), sample_seeds(5, 0, range(6)))
        same = [torch.equal(a, b) for a, b in zip(out, plain, strict=True)]
        assert any(same) and not all(same)


def test_a_per_image_transform_runs_seeded_image_by_image(registry_copy: Registry) -> None:
    """docs/extending.md#add-an-augmentation's slow path: a factory returning a per-image transform
    is wrapped by build_transform and keeps the contract."""

    @registry_copy.register("per_image")
    def per_image(datasets: ImageDatasets) -> v2.Compose:
        size = datasets.native_size
        return v2.Compose(
            [v2.RandomResizedCrop(size, antialias=True), v2.ToDtype(torch.float32, scale=True),
             v2.Normalize(list(datasets.mean), list(datasets.std))]
        )  # fmt: skip

    transform = build_transform("per_image", FAKES["cifar"])
    assert isinstance(transform, PerSampleTransform)
    _check_contract(transform, FAKES["cifar"], random=True)


@pytest.mark.parametrize("family", ["cifar", "digits", "synthetic"])
def test_none_only_normalises_small_images(family: str) -> None:
    ds = FAKES[family]
    images = _batch(ds)
    mean = torch.tensor(ds.mean).view(-1, 1, 1)
    std = torch.tensor(ds.std).view(-1, 1, 1)
    expected = (images.float() / 255 - mean) / std
    assert _kinds("none", family) == [stages.AsIs, stages.Normalise]
    assert torch.allclose(build_transform("none", ds)(images, None), expected, atol=1e-5)


@pytest.mark.parametrize("family", ["imagenet", "imagenet_lt"])
def test_none_is_resize_then_center_crop(family: str) -> None:
    ds = FAKES[family]
    pipeline = build_transform("none", ds)
    assert pipeline.stages[0] == stages.ResizeCentreCrop(round(NATIVE / 0.875), NATIVE)
    reference = v2.Compose(
        [v2.Resize(round(NATIVE / 0.875)), v2.CenterCrop(NATIVE), v2.ToDtype(torch.float32, scale=True),
         v2.Normalize(list(ds.mean), list(ds.std))]
    )  # fmt: skip
    # Images of different sizes, as decoded ImageNet files are.
    images = [ds.train[0][0], ds.train[1][0][:, :28, :], ds.train[2][0][:, :, 5:]]
    out = pipeline(images, None)
    assert torch.equal(out, torch.stack([reference(image) for image in images]))


def test_digits_never_flip_and_strong_policies_per_family() -> None:
    for aug in ("w", "s"):
        assert stages.HorizontalFlip not in _kinds(aug, "digits")
        for family in ("cifar", "synthetic", "imagenet", "imagenet_lt"):
            assert _kinds(aug, family)[:2] == [stages.RandomResizedCrop, stages.HorizontalFlip]
    assert (
        _kinds("w", "cifar")[2] is stages.ColourJitter and _kinds("w", "imagenet")[2] is stages.ColourJitter
    )
    assert build_transform("w", FAKES["cifar"]).stages[2].strength == 0.2
    assert build_transform("w", FAKES["imagenet"]).stages[2].strength == 0.4
    assert build_transform("w", FAKES["digits"]).stages[1] == stages.Rotation(10.0)
    assert _kinds("w", "synthetic")[2] is stages.Rotation
    assert build_transform("s", FAKES["cifar"]).stages[2] == AutoAugment(v2.AutoAugmentPolicy.CIFAR10)
    assert build_transform("s", FAKES["digits"]).stages[1] == AutoAugment(v2.AutoAugmentPolicy.CIFAR10)
    assert build_transform("s", FAKES["imagenet"]).stages[2] == AutoAugment(v2.AutoAugmentPolicy.IMAGENET)
    assert build_transform("s", FAKES["imagenet_lt"]).stages[2] == RandAugment(num_ops=2, magnitude=9)
    for family in ("cifar", "digits", "synthetic"):
        assert _kinds("s", family)[-2:] == [
            stages.Normalise,
            stages.Cutout,
        ]  # Cutout after normalising
    for family in ("imagenet", "imagenet_lt"):
        assert stages.Cutout not in _kinds("s", family)
    crops = {f: build_transform("w", FAKES[f]).stages[0] for f in POLICIES}
    assert (crops["cifar"].scale, crops["digits"].scale, crops["imagenet"].scale) == (
        (0.5, 1),
        (0.7, 1),
        (0.08, 1),
    )
    assert crops["digits"].ratio == (0.9, 1.1) and crops["cifar"].ratio == (3 / 4, 4 / 3)
    assert all(crop.size == FAKES[f].native_size for f, crop in crops.items())


def test_cutout_blanks_a_quarter_to_the_mean() -> None:
    ds = FAKES["cifar"]
    out = build_transform("s", ds)(_batch(ds), sample_seeds(0, 0, range(6)))
    blank = (out == 0).all(dim=1)
    assert (blank.flatten(1).sum(1) >= (NATIVE // 2) ** 2).all()


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
