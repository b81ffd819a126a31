"""Datasets, augmentations, teacher views and seeded, sharded data streams.

Importing this package imports every dataset module, so :data:`DATASETS`, :data:`AUGMENTATIONS`
and :data:`VIEWS` are complete. Python API (README.md#python-api): ``data.long_tail_counts(n_max,
num_classes, imbalance)`` (docs/experiments.md#datasets).
"""

from __future__ import annotations

from kd_ray.data import cifar, digits, imagenet, synthetic  # noqa: F401  (register their datasets)
from kd_ray.data.augment import AUGMENTATIONS, build_transform
from kd_ray.data.base import DATASETS, ImageDatasets, ImageSource, TensorImageSource
from kd_ray.data.device_resize import resize_batch
from kd_ray.data.long_tail import long_tail_counts, long_tail_indices
from kd_ray.data.streams import (
    AugmentedSplit,
    ShardedBatchSampler,
    SplitLoaders,
    build_loaders,
    teacher_loaders,
)
from kd_ray.data.views import VIEWS

__all__ = [
    "AUGMENTATIONS",
    "DATASETS",
    "VIEWS",
    "AugmentedSplit",
    "ImageDatasets",
    "ImageSource",
    "ShardedBatchSampler",
    "SplitLoaders",
    "TensorImageSource",
    "build_loaders",
    "build_transform",
    "long_tail_counts",
    "long_tail_indices",
    "resize_batch",
    "teacher_loaders",
]
