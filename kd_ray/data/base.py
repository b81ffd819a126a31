"""What every dataset builder returns, and the dataset registry.

A builder turns a :class:`~kd_ray.config.DatasetConfig` into :class:`ImageDatasets`: raw uint8
images (``C×H×W``) with integer labels for a train and a validation split, plus what the
augmentations and models need to know (classes, channels, normalisation, policy family).
Augmentation, shuffling and sharding happen later (``kd_ray.data.streams``), so a builder is
only about reading the data faithfully.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

import numpy as np
import torch

from kd_ray.registry import Registry

if TYPE_CHECKING:
    from kd_ray.config import DatasetConfig


class ImageSource(Protocol):
    """An indexable split: ``source[i] -> (uint8 tensor C×H×W, label)``; ``labels`` holds all."""

    labels: np.ndarray

    def __len__(self) -> int: ...

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]: ...


class TensorImageSource:
    """A split held in memory as one uint8 tensor ``(N, C, H, W)`` and its labels."""

    def __init__(self, images: torch.Tensor, labels: np.ndarray | list[int]) -> None:
        if images.dtype != torch.uint8 or images.ndim != 4:
            raise ValueError(f"images must be uint8 (N, C, H, W), got {images.dtype} {tuple(images.shape)}")
        self.images = images
        self.labels = np.asarray(labels, dtype=np.int64)
        if len(self.labels) != len(images):
            raise ValueError(f"{len(images)} images but {len(self.labels)} labels")

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        return self.images[index], int(self.labels[index])

    def subset(self, indices: np.ndarray) -> TensorImageSource:
        """The images at ``indices``, in that order."""
        idx = torch.as_tensor(np.asarray(indices, dtype=np.int64))
        return TensorImageSource(self.images[idx], self.labels[np.asarray(indices, dtype=np.int64)])


@dataclass(frozen=True)
class ImageDatasets:
    """Train and validation splits of one dataset, with the facts the pipeline needs.

    Attributes:
        train, val: the splits (raw uint8 images).
        num_classes: number of classes C; labels are ``0..C-1``.
        channels: image channels (1 for digits, 3 otherwise).
        native_size: side of the square images the augmentations output; the train loop resizes
            whole batches to the config's ``image_size`` on the device when it differs.
        mean, std: per-channel normalisation applied after augmentation (on [0, 1] pixels).
        family: which augmentation policies apply (``digits``, ``cifar``, ``imagenet``,
            ``imagenet_lt``, ``synthetic``).
    """

    train: ImageSource
    val: ImageSource
    num_classes: int
    channels: int
    native_size: int
    mean: tuple[float, ...]
    std: tuple[float, ...]
    family: str


DatasetBuilder = Callable[["DatasetConfig"], ImageDatasets]

DATASETS: Registry[DatasetBuilder] = Registry("dataset")
