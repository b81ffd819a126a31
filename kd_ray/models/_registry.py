"""The model registry and ``create_model``, the one way the rest of kd_ray builds a network.

Every family module registers factories with ``@MODELS.register("name")``. A factory takes only
keyword arguments, all of them with the same meaning across families::

    factory(*, num_classes, in_channels=3, pretrained=False, image_size=None) -> nn.Module

``image_size`` matters to ViTs (their position embeddings fix the token grid); convolutional
families are resolution-agnostic (global average pooling) and ignore it, so a caller can always
pass the dataset's training resolution without knowing the family.
"""

from __future__ import annotations

from typing import Protocol

from torch import nn

from kd_ray.errors import ConfigError
from kd_ray.registry import Registry


class ModelFactory(Protocol):
    """Signature every registered model factory has."""

    def __call__(
        self,
        *,
        num_classes: int,
        in_channels: int = 3,
        pretrained: bool | str = False,
        image_size: int | None = None,
    ) -> nn.Module: ...


MODELS: Registry[ModelFactory] = Registry("model")


def create_model(
    name: str,
    *,
    num_classes: int,
    in_channels: int = 3,
    pretrained: bool | str = False,
    image_size: int | None = None,
) -> nn.Module:
    """Build the registered model ``name``.

    The weights are a deterministic function of the torch RNG state at the call (seed with
    ``torch.manual_seed`` first) and, when ``pretrained``, of the checkpoint.

    Args:
        name: Registered model name (see :func:`list_models`).
        num_classes: Size of the classification head; a pretrained head is replaced when it differs.
        in_channels: Input image channels (1 for greyscale digits); the stem conv is adapted.
        pretrained: ``True`` for the architecture's default ImageNet weights, a weights-enum member
            name (``"IMAGENET1K_V1"``) to pin one, ``False`` for random init.
        image_size: Training resolution; needed by ViTs, ignored by convolutional models.
            ``None`` means the family's default (224 for ViT-B, 32 for ``vit_tiny``).

    Returns:
        The model, on CPU, in training mode.

    Raises:
        ConfigError: Unknown name (the message lists the known ones) or an invalid argument.
        CheckpointError: Pretrained weights were asked for but cannot be loaded.
    """
    factory = MODELS.get(name)
    if not isinstance(num_classes, int) or num_classes < 1:
        raise ConfigError(f"model {name!r}: num_classes must be a positive integer, got {num_classes!r}")
    if not isinstance(in_channels, int) or in_channels < 1:
        raise ConfigError(f"model {name!r}: in_channels must be a positive integer, got {in_channels!r}")
    if image_size is not None and (not isinstance(image_size, int) or image_size < 1):
        raise ConfigError(f"model {name!r}: image_size must be a positive integer, got {image_size!r}")
    return factory(
        num_classes=num_classes, in_channels=in_channels, pretrained=pretrained, image_size=image_size
    )


def list_models(pattern: str = "*") -> list[str]:
    """Registered model names matching a shell-style ``pattern`` (``"resnet*"``), sorted."""
    return MODELS.names(pattern)
