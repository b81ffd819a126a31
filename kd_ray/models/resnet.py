"""torchvision ResNets: ImageNet-style ``resnet18``/``resnet50`` and CIFAR-stem variants.

The paper distils ResNet50 teachers (ImageNet-pretrained) into a ResNet18 student at 224 px.
``*_cifar`` variants replace the 7x7/stride-2 stem and the max-pool with one 3x3/stride-1 conv,
the usual CIFAR recipe, so 32x32 inputs keep a 4x4 final map (instead of 1x1) for CAMs and
accuracy. CAMs read ``layer4`` and ``fc`` (see :mod:`kd_ray.models.attention`).
"""

from __future__ import annotations

import functools
from collections.abc import Callable

import torchvision
from torch import nn
from torchvision.models import ResNet, ResNet18_Weights, ResNet50_Weights, WeightsEnum

from kd_ray.models._builder import adapt_input_conv, load_state, load_weights, no_pretrained, resolve_weights
from kd_ray.models._registry import MODELS, ModelFactory


def _replace_head(model: ResNet, num_classes: int) -> None:
    if model.fc.out_features != num_classes:
        model.fc = nn.Linear(model.fc.in_features, num_classes)


def _imagenet_resnet(
    name: str,
    builder: Callable[..., ResNet],
    enum: type[WeightsEnum],
    num_classes: int,
    in_channels: int,
    pretrained: bool | str,
) -> ResNet:
    weights = resolve_weights(name, enum, pretrained)
    if weights is None:
        model = builder(weights=None, num_classes=num_classes)
    else:
        # Built with the checkpoint's 1000-way head, loaded, then given a fresh head: the
        # torchvision builder would refuse num_classes != 1000 together with weights.
        state = load_weights(name, weights)  # first: a missing file fails before a slow build
        model = builder(weights=None, num_classes=len(weights.meta["categories"]))
        load_state(name, model, state)
        _replace_head(model, num_classes)
    if in_channels != model.conv1.in_channels:
        model.conv1 = adapt_input_conv(model.conv1, in_channels, pretrained=weights is not None)
        if weights is None:
            nn.init.kaiming_normal_(model.conv1.weight, mode="fan_out", nonlinearity="relu")
    return model


def _cifar_resnet(
    name: str,
    builder: Callable[..., ResNet],
    *,
    num_classes: int,
    in_channels: int = 3,
    pretrained: bool | str = False,
    image_size: int | None = None,
) -> ResNet:
    """``builder``'s ResNet with a 3x3/stride-1 stem and no max-pool, for 32x32 inputs; from scratch.

    A model factory once ``name`` and ``builder`` are bound (:func:`_register_cifar_resnet`).
    There is no checkpoint for this stem, so ``pretrained`` must be false; ``image_size`` is ignored.
    """
    no_pretrained(name, pretrained)
    model = builder(weights=None, num_classes=num_classes)
    model.conv1 = nn.Conv2d(in_channels, model.conv1.out_channels, 3, stride=1, padding=1, bias=False)
    nn.init.kaiming_normal_(model.conv1.weight, mode="fan_out", nonlinearity="relu")
    model.maxpool = nn.Identity()
    return model


@MODELS.register("resnet18")
def resnet18(
    *, num_classes: int, in_channels: int = 3, pretrained: bool | str = False, image_size: int | None = None
) -> ResNet:
    """torchvision ResNet18; ``pretrained=True`` loads ``ResNet18_Weights.IMAGENET1K_V1``.

    ``image_size`` is ignored (global pooling makes the model resolution-agnostic).
    """
    return _imagenet_resnet(
        "resnet18", torchvision.models.resnet18, ResNet18_Weights, num_classes, in_channels, pretrained
    )


@MODELS.register("resnet50")
def resnet50(
    *, num_classes: int, in_channels: int = 3, pretrained: bool | str = False, image_size: int | None = None
) -> ResNet:
    """torchvision ResNet50; ``pretrained=True`` loads ``ResNet50_Weights.IMAGENET1K_V2``.

    Pass ``pretrained="IMAGENET1K_V1"`` for the older checkpoint (torchvision's legacy
    ``pretrained=True``, which the paper's code used). ``image_size`` is ignored.
    """
    return _imagenet_resnet(
        "resnet50", torchvision.models.resnet50, ResNet50_Weights, num_classes, in_channels, pretrained
    )


def _register_cifar_resnet(depth: int, builder: Callable[..., ResNet]) -> ModelFactory:
    """Register ``resnet<depth>_cifar``; the 18- and 50-layer variants differ only in ``builder``."""
    name = f"resnet{depth}_cifar"
    return MODELS.register(name)(functools.partial(_cifar_resnet, name, builder))


resnet18_cifar = _register_cifar_resnet(18, torchvision.models.resnet18)
resnet50_cifar = _register_cifar_resnet(50, torchvision.models.resnet50)
