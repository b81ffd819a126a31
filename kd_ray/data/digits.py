"""scikit-learn's 8×8 handwritten digits: a real, download-free dataset for CPU sweeps.

1797 grey images of 10 classes (UCI optdigits, shipped inside scikit-learn), small enough that a
whole teacher/student grid runs on a laptop, yet real enough (handwriting, unequal classes) that
the paper's metrics behave as on natural images. ``digits_lt`` keeps a long-tailed training
subset, the small-scale analogue of CIFAR-100-LT.
"""

from __future__ import annotations

import logging

import numpy as np
import torch

from kd_ray.config import DatasetConfig
from kd_ray.data.base import DATASETS, ImageDatasets, TensorImageSource
from kd_ray.data.long_tail import long_tail_indices
from kd_ray.errors import ConfigError

logger = logging.getLogger(__name__)

NUM_CLASSES = 10
NATIVE_SIZE = 8
DEFAULT_IMBALANCE = 10.0

# Pixel statistics of all 1797 images after scaling to [0, 1]. Fixed rather than taken from each
# training split, so every split seed, LT subset and DDP worker normalises identically (and a
# test pins them against the data).
MEAN = (0.3053,)
STD = (0.3759,)


def _all_digits() -> tuple[torch.Tensor, np.ndarray]:
    """Every image as uint8 ``(N, 1, 8, 8)`` in 0..255, and the labels."""
    # scikit-learn costs a second of imports; only processes that build digits pay it.
    from sklearn.datasets import load_digits

    bunch = load_digits()
    # The source has 17 grey levels (0..16); map them onto the full uint8 range so the
    # augmentations (AutoAugment's posterize, solarize, ...) see ordinary 8-bit images.
    pixels = np.round(bunch.images * (255.0 / 16.0)).astype(np.uint8)
    return torch.from_numpy(pixels).unsqueeze(1).contiguous(), bunch.target.astype(np.int64)


def _split(cfg: DatasetConfig) -> tuple[TensorImageSource, TensorImageSource]:
    from sklearn.model_selection import train_test_split

    images, labels = _all_digits()
    train_idx, val_idx = train_test_split(
        np.arange(len(labels)),
        test_size=cfg.val_fraction,
        stratify=labels,
        random_state=cfg.split_seed,
    )
    # Sorted, so a split is the same set in the same order whatever sklearn's internal shuffle.
    source = TensorImageSource(images, labels)
    return source.subset(np.sort(train_idx)), source.subset(np.sort(val_idx))


def _datasets(train: TensorImageSource, val: TensorImageSource) -> ImageDatasets:
    return ImageDatasets(
        train=train,
        val=val,
        num_classes=NUM_CLASSES,
        channels=1,
        native_size=NATIVE_SIZE,
        mean=MEAN,
        std=STD,
        family="digits",
    )


@DATASETS.register("digits")
def build_digits(cfg: DatasetConfig) -> ImageDatasets:
    """Balanced digits: a stratified ``val_fraction`` validation split seeded by ``split_seed``.

    Raises:
        ConfigError: ``imbalance`` is set (it only applies to ``digits_lt``).
    """
    if cfg.imbalance is not None:
        raise ConfigError(f"dataset.imbalance applies to *_lt datasets only, not {cfg.name!r}")
    train, val = _split(cfg)
    logger.info("digits: %d train / %d val images", len(train), len(val))
    return _datasets(train, val)


@DATASETS.register("digits_lt")
def build_digits_lt(cfg: DatasetConfig) -> ImageDatasets:
    """Digits with a long-tailed training split (imbalance 10 unless ``cfg.imbalance`` says).

    The split is the one :func:`build_digits` makes with the same seed; then the training part
    keeps ``floor(n_max * imbalance**(-i/9))`` images of class ``i``, ``n_max`` being the smallest
    training class, chosen by :func:`~kd_ray.data.long_tail.long_tail_indices` with the split
    seed. Validation stays balanced, as in CIFAR-100-LT, so accuracy weighs every class equally.
    """
    imbalance = DEFAULT_IMBALANCE if cfg.imbalance is None else cfg.imbalance
    train, val = _split(cfg)
    keep = long_tail_indices(train.labels, imbalance, num_classes=NUM_CLASSES, seed=cfg.split_seed)
    train = train.subset(keep)
    logger.info(
        "digits_lt (imbalance %g): %d train (%s per class) / %d val images",
        imbalance,
        len(train),
        np.bincount(train.labels, minlength=NUM_CLASSES).tolist(),
        len(val),
    )
    return _datasets(train, val)
