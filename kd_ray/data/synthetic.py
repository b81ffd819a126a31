"""A generated dataset for fast tests: class-coded coloured blobs on noise, 3×16×16.

Class ``c`` of ``C`` draws a Gaussian blob whose *row* lies in band ``c`` of ``C`` horizontal bands
and whose *colour* has hue ``c / C``; the blob's column, size and the background noise are
random. Two redundant cues make a tiny CNN learn it in a couple of epochs, and both survive the
weak augmentation (a horizontal flip keeps the row and colour; a mild crop or rotation keeps the
band order). Because the column is random, a teacher that sees only its vertical strip
(``split`` view) sees the blob in some images only, as on real data. Three channels exercise the
colour operations of the strong policy.
"""

from __future__ import annotations

import logging

import numpy as np
import torch

from kd_ray.config import DatasetConfig
from kd_ray.data.base import DATASETS, ImageDatasets, TensorImageSource
from kd_ray.errors import ConfigError

logger = logging.getLogger(__name__)

NATIVE_SIZE = 16
DEFAULT_CLASSES = 4
DEFAULT_TRAIN = 256
DEFAULT_VAL = 128
MAX_CLASSES = NATIVE_SIZE  # one row band per class needs at least one pixel row each


def _hue_to_rgb(hue: np.ndarray) -> np.ndarray:
    """Fully saturated RGB in [0, 1] for hues in [0, 1), shape ``(..., 3)``."""
    k = (np.array([5.0, 3.0, 1.0]) + hue[..., None] * 6.0) % 6.0
    return 1.0 - np.clip(np.minimum(k, 4.0 - k), 0.0, 1.0)


def _generate(n: int, num_classes: int, rng: np.random.Generator) -> tuple[torch.Tensor, np.ndarray]:
    """``n`` images with balanced labels in a random order, uint8 ``(n, 3, 16, 16)``."""
    labels = rng.permutation(np.arange(n) % num_classes)
    band = NATIVE_SIZE / num_classes
    rows = (labels + 0.5) * band + rng.normal(0.0, 0.15 * band, n)
    cols = rng.uniform(3.0, NATIVE_SIZE - 3.0, n)
    sigma = rng.uniform(1.5, 2.5, n)
    grid = np.arange(NATIVE_SIZE, dtype=np.float64)
    dy = (grid[None, :] - rows[:, None]) ** 2  # (n, H)
    dx = (grid[None, :] - cols[:, None]) ** 2  # (n, W)
    blob = np.exp(-(dy[:, :, None] + dx[:, None, :]) / (2.0 * sigma[:, None, None] ** 2))  # (n, H, W)
    colour = _hue_to_rgb(labels / num_classes)  # (n, 3)
    pixels = 0.1 + 0.85 * colour[:, :, None, None] * blob[:, None, :, :]
    pixels += rng.normal(0.0, 0.08, pixels.shape)
    images = np.round(np.clip(pixels, 0.0, 1.0) * 255.0).astype(np.uint8)
    return torch.from_numpy(images), labels.astype(np.int64)


@DATASETS.register("synthetic")
def build_synthetic(cfg: DatasetConfig) -> ImageDatasets:
    """Train and validation splits fully determined by ``cfg.split_seed``.

    Sizes come from ``num_classes`` (default 4), ``num_train`` (256) and ``num_val`` (128).
    Normalisation statistics are measured on the training images: generated data has no
    canonical mean/std, and the training split is what a user would measure them on.

    Raises:
        ConfigError: fewer than 2 or more than 16 classes, or ``imbalance`` set.
    """
    num_classes = cfg.num_classes or DEFAULT_CLASSES
    if not 2 <= num_classes <= MAX_CLASSES:
        raise ConfigError(
            f"dataset.num_classes must be between 2 and {MAX_CLASSES} for synthetic, got {num_classes}"
        )
    if cfg.imbalance is not None:
        raise ConfigError("dataset.imbalance applies to *_lt datasets only, not 'synthetic'")
    num_train = cfg.num_train or DEFAULT_TRAIN
    num_val = cfg.num_val or DEFAULT_VAL
    # Separate streams per split, so changing num_val never changes the training images.
    train_x, train_y = _generate(num_train, num_classes, np.random.default_rng([cfg.split_seed, 0]))
    val_x, val_y = _generate(num_val, num_classes, np.random.default_rng([cfg.split_seed, 1]))
    scaled = train_x.double() / 255.0
    mean = tuple(float(v) for v in scaled.mean(dim=(0, 2, 3)))
    std = tuple(float(v) for v in scaled.std(dim=(0, 2, 3)))
    logger.info("synthetic: %d classes, %d train / %d val images", num_classes, num_train, num_val)
    return ImageDatasets(
        train=TensorImageSource(train_x, train_y),
        val=TensorImageSource(val_x, val_y),
        num_classes=num_classes,
        channels=3,
        native_size=NATIVE_SIZE,
        mean=mean,
        std=std,
        family="synthetic",
    )
