"""CPU-sized CNNs for 8x8 (digits) and 16x16 images: conv stages → global average pool → linear.

The shape is the one Class Activation Maps need (Zhou et al. 2016): the classifier reads the
global average of the last conv stage, so each class weight vector applied to that stage's
feature map gives a spatial map of the class score.

Normalisation is GroupNorm, not BatchNorm, and there is no dropout: a BatchNorm layer normalises
with per-worker batch statistics, so a 2-worker DDP step on CPU is not the same computation as a
1-worker step over the same global batch (SyncBatchNorm, which would fix that, needs CUDA), and
kd_ray tests that equality. GroupNorm is per-sample, so the sharded step is exactly the whole one;
dropout would make it depend on which worker drew which mask.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from kd_ray.models._builder import no_pretrained
from kd_ray.models._registry import MODELS
from kd_ray.models.attention import AttentionSpec


def _groups(channels: int) -> int:
    # 8 groups keeps GroupNorm between LayerNorm-like (1) and InstanceNorm-like (C) at every width.
    return 8 if channels % 8 == 0 else 1


def _conv_block(in_ch: int, out_ch: int, stride: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(in_ch, out_ch, kernel_size=3, stride=stride, padding=1, bias=False),
        nn.GroupNorm(_groups(out_ch), out_ch),
        nn.ReLU(inplace=True),
    )


class SmallCNN(nn.Module):
    """Stem conv, then stages of 3x3 conv blocks (each stage after the first halves the side).

    Args:
        widths: Channels of each stage.
        depth: Conv blocks per stage.
        num_classes: Classifier outputs.
        in_channels: Input image channels.
    """

    #: Where ``capture_attention`` finds the CAM inputs: the last stage and the classifier.
    attention_spec = AttentionSpec(kind="cam", features="stages.-1", classifier="head")

    def __init__(self, widths: Sequence[int], depth: int, num_classes: int, in_channels: int = 3) -> None:
        super().__init__()
        self.stem = _conv_block(in_channels, widths[0], stride=1)
        stages: list[nn.Module] = []
        prev = widths[0]
        for i, width in enumerate(widths):
            blocks = [_conv_block(prev, width, stride=1 if i == 0 else 2)]
            blocks += [_conv_block(width, width, stride=1) for _ in range(depth - 1)]
            stages.append(nn.Sequential(*blocks))
            prev = width
        self.stages = nn.Sequential(*stages)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.head = nn.Linear(prev, num_classes)
        self._init_weights()

    def _init_weights(self) -> None:
        # Explicit init (not PyTorch's layer defaults) so the weights depend only on the seed and
        # this file, not on defaults that have changed between torch releases.
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(module, nn.GroupNorm):
                nn.init.ones_(module.weight)
                nn.init.zeros_(module.bias)
            elif isinstance(module, nn.Linear):
                nn.init.normal_(module.weight, std=0.01)
                nn.init.zeros_(module.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits ``(N, num_classes)`` of images ``(N, in_channels, H, W)``."""
        features = self.stages(self.stem(x))
        return self.head(torch.flatten(self.pool(features), 1))


def _build(
    name: str,
    widths: Sequence[int],
    depth: int,
    num_classes: int,
    in_channels: int,
    pretrained: bool | str,
) -> SmallCNN:
    no_pretrained(name, pretrained)
    return SmallCNN(widths, depth, num_classes=num_classes, in_channels=in_channels)


@MODELS.register("cnn_tiny")
def cnn_tiny(
    *, num_classes: int, in_channels: int = 3, pretrained: bool | str = False, image_size: int | None = None
) -> SmallCNN:
    """Two stages (16, 32 channels), one block each: CAM grid 4x4 on 8x8 digits, 8x8 on 16x16.

    ``image_size`` is accepted for a uniform factory signature and ignored (global pooling).
    """
    return _build("cnn_tiny", (16, 32), 1, num_classes, in_channels, pretrained)


@MODELS.register("cnn_small")
def cnn_small(
    *, num_classes: int, in_channels: int = 3, pretrained: bool | str = False, image_size: int | None = None
) -> SmallCNN:
    """Two stages (32, 64 channels), two blocks each; the same CAM grid as ``cnn_tiny``.

    Only two stages, so an 8x8 digit still gives a 4x4 map worth intersecting.
    """
    return _build("cnn_small", (32, 64), 2, num_classes, in_channels, pretrained)


@MODELS.register("cnn_medium")
def cnn_medium(
    *, num_classes: int, in_channels: int = 3, pretrained: bool | str = False, image_size: int | None = None
) -> SmallCNN:
    """Three stages (32, 64, 128 channels), two blocks each: CAM 2x2 on 8x8, 4x4 on 16x16.

    Meant for 16x16 and larger inputs, where the extra stage still leaves a spatial map.
    """
    return _build("cnn_medium", (32, 64, 128), 2, num_classes, in_channels, pretrained)
