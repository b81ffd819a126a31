"""digits / digits_lt builders: sizes, stratification, determinism, LT profile, label fidelity."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from sklearn.datasets import load_digits

from kd_ray import data
from kd_ray.config import DatasetConfig
from kd_ray.data import digits as digits_module
from kd_ray.data.long_tail import long_tail_counts
from kd_ray.errors import ConfigError


def _build(name: str, **kw: object):
    return data.DATASETS.get(name)(DatasetConfig(name=name, **kw))


@pytest.fixture(scope="module")
def digits() -> data.ImageDatasets:
    return _build("digits")


def test_sizes_and_format(digits: data.ImageDatasets) -> None:
    assert len(digits.train) + len(digits.val) == 1797
    assert len(digits.val) == pytest.approx(0.2 * 1797, abs=1)
    image, label = digits.train[0]
    assert image.dtype == torch.uint8 and tuple(image.shape) == (1, 8, 8)
    assert isinstance(label, int) and 0 <= label < 10
    assert (digits.num_classes, digits.channels, digits.native_size, digits.family) == (10, 1, 8, "digits")
    assert int(digits.train.images.max()) == 255


def test_stratified(digits: data.ImageDatasets) -> None:
    train = np.bincount(digits.train.labels, minlength=10)
    val = np.bincount(digits.val.labels, minlength=10)
    fraction = val / (train + val)
    assert np.all(np.abs(fraction - 0.2) < 0.02)


def test_images_keep_their_labels(digits: data.ImageDatasets) -> None:
    bunch = load_digits()
    reference = {
        np.round(img * 255 / 16).astype(np.uint8).tobytes(): int(t)
        for img, t in zip(bunch.images, bunch.target, strict=True)
    }
    for split in (digits.train, digits.val):
        for i in range(0, len(split), 37):
            image, label = split[i]
            assert reference[image.numpy()[0].tobytes()] == label


def test_deterministic_and_seeded(digits: data.ImageDatasets) -> None:
    again = _build("digits")
    assert torch.equal(digits.train.images, again.train.images)
    assert np.array_equal(digits.val.labels, again.val.labels)
    other = _build("digits", split_seed=1)
    assert not np.array_equal(digits.val.labels, other.val.labels) or not torch.equal(
        digits.val.images, other.val.images
    )
    assert len(_build("digits", val_fraction=0.5).val) == pytest.approx(1797 / 2, abs=1)


def test_normalisation_constants_match_the_data() -> None:
    pixels = np.round(load_digits().images * 255 / 16) / 255
    assert digits_module.MEAN[0] == pytest.approx(pixels.mean(), abs=1e-3)
    assert digits_module.STD[0] == pytest.approx(pixels.std(), abs=1e-3)


@pytest.mark.parametrize("imbalance", [None, 5.0])
def test_long_tail_profile(digits: data.ImageDatasets, imbalance: float | None) -> None:
    lt = _build("digits_lt", imbalance=imbalance)
    counts = np.bincount(lt.train.labels, minlength=10).tolist()
    n_max = int(np.bincount(digits.train.labels).min())
    assert counts == long_tail_counts(n_max, 10, imbalance or 10.0)
    assert counts[0] / counts[-1] == pytest.approx(imbalance or 10.0, rel=0.1)
    # validation stays the balanced split; the LT train set is a subset of the balanced one
    assert torch.equal(lt.val.images, digits.val.images)
    train_rows = {img.numpy().tobytes() for img in digits.train.images}
    assert all(img.numpy().tobytes() in train_rows for img in lt.train.images)
    assert lt.family == "digits"


def test_bad_config_names_the_field() -> None:
    with pytest.raises(ConfigError, match=r"dataset\.imbalance"):
        _build("digits", imbalance=10.0)
    with pytest.raises(ConfigError, match=r"dataset\.imbalance"):
        _build("digits_lt", imbalance=0.5)
    with pytest.raises(ConfigError, match=r"dataset\.imbalance"):
        _build("digits_lt", imbalance=10_000.0)


def test_synthetic_builder() -> None:
    syn = _build("synthetic")
    assert (len(syn.train), len(syn.val), syn.num_classes, syn.channels, syn.native_size) == (
        256,
        128,
        4,
        3,
        16,
    )
    assert np.bincount(syn.train.labels).tolist() == [64] * 4
    again = _build("synthetic", num_val=10)
    assert torch.equal(syn.train.images, again.train.images)  # val size never changes train
    assert not torch.equal(syn.train.images, _build("synthetic", split_seed=1).train.images)
    custom = _build("synthetic", num_classes=10, num_train=50)
    assert custom.num_classes == 10 and len(custom.train) == 50 and set(custom.train.labels) == set(range(10))
    with pytest.raises(ConfigError, match=r"dataset\.num_classes"):
        _build("synthetic", num_classes=40)
