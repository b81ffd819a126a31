"""Long-tailed subsets with an exponential class profile (Cui et al. 2019; Cao et al. 2019).

Class ``i`` of ``C`` keeps ``n_i = floor(n_max * imbalance**(-i / (C - 1)))`` training images,
so class 0 is the head (``n_max`` images) and class ``C-1`` the tail (``n_max / imbalance``).
This is the profile of the CIFAR-100-LT reference code (LDAM-DRW, Cao et al. 2019), and the
subset chosen by :func:`long_tail_indices` is the one that code chooses.
"""

from __future__ import annotations

import math

import numpy as np

from kd_ray.errors import ConfigError, DataError


def _check_imbalance(imbalance: float) -> None:
    if not math.isfinite(imbalance) or imbalance < 1:
        raise ConfigError(f"dataset.imbalance must be a number >= 1 (n_max / n_min), got {imbalance}")


def long_tail_counts(n_max: int, num_classes: int, imbalance: float) -> list[int]:
    """Images kept per class: ``n_i = floor(n_max * imbalance**(-i / (C - 1)))``.

    The power is evaluated directly (not as ``exp(-log(imbalance) * i / (C-1))``, whose rounding
    loses one image at exact integers such as the tail ``500 / 100 = 5``), and the product is
    rounded to 9 decimals before the floor so that an exact integer computed as ``4.9999999999``
    still counts as 5. With CIFAR-100 (``n_max=500``) this keeps 10847 images for imbalance 100,
    12608 for 50 and 19573 for 10, as in the literature.

    Args:
        n_max: images of the head class (class 0).
        num_classes: number of classes C; a single class keeps ``n_max``.
        imbalance: ``n_max / n_min``, at least 1 (1 keeps every class at ``n_max``).

    Raises:
        ConfigError: ``imbalance`` below 1, or a non-positive ``n_max`` / ``num_classes``.
    """
    _check_imbalance(imbalance)
    if n_max < 1:
        raise ConfigError(f"long-tail n_max must be a positive number of images, got {n_max}")
    if num_classes < 1:
        raise ConfigError(f"long-tail num_classes must be positive, got {num_classes}")
    if num_classes == 1:
        return [int(n_max)]
    last = num_classes - 1
    return [math.floor(round(n_max * imbalance ** (-i / last), 9)) for i in range(num_classes)]


def long_tail_indices(
    labels: np.ndarray | list[int],
    imbalance: float,
    *,
    num_classes: int | None = None,
    seed: int = 0,
) -> np.ndarray:
    """Indices of a long-tailed subset of a split, in ascending (file) order.

    ``n_max`` is the size of the *smallest* class, so every class can supply its ``n_i``
    (for balanced sources such as CIFAR-100, 500, the size of every class). Class order decides
    the head: class 0 keeps ``n_max`` images, the last class ``n_max / imbalance``.

    Selection follows Cao et al.'s reference code: a ``np.random.RandomState(seed)`` shuffles
    the indices of each class in turn (class 0 first) and the first ``n_i`` are kept, so with
    ``seed=0`` CIFAR-100-LT gets the same images as LDAM-DRW. The result is then sorted, so
    the subset keeps the source's order and is a pure function of (labels, imbalance, seed).

    Args:
        labels: integer label of every image of the split.
        imbalance: ``n_max / n_min``, at least 1.
        num_classes: number of classes; defaults to ``max(labels) + 1``.
        seed: seed of the per-class shuffle.

    Raises:
        ConfigError: ``imbalance`` below 1, or so large that a class would keep no image.
        DataError: a class has no image in ``labels``.
    """
    _check_imbalance(imbalance)
    labels = np.asarray(labels, dtype=np.int64)
    if labels.ndim != 1 or labels.size == 0:
        raise DataError(f"long-tail selection needs a non-empty 1-D label array, got shape {labels.shape}")
    if num_classes is None:
        num_classes = int(labels.max()) + 1
    per_class = [np.flatnonzero(labels == c) for c in range(num_classes)]
    sizes = [len(idx) for idx in per_class]
    if min(sizes) == 0:
        raise DataError(f"class {sizes.index(0)} has no images, so no long-tailed subset can be drawn")
    counts = long_tail_counts(min(sizes), num_classes, imbalance)
    if counts[-1] == 0:
        raise ConfigError(
            f"dataset.imbalance {imbalance} leaves the last class with no image "
            f"(the smallest class has {min(sizes)}); use an imbalance of at most {min(sizes)}"
        )
    rng = np.random.RandomState(seed)
    chosen = []
    for idx, n in zip(per_class, counts, strict=True):
        idx = idx.copy()
        rng.shuffle(idx)
        chosen.append(idx[:n])
    return np.sort(np.concatenate(chosen))
