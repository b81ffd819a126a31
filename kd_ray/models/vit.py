"""torchvision Vision Transformers: ``vit_b_16``/``vit_b_32`` (paper Appendix E) and ``vit_tiny``.

Appendix E distils two ViT-B/32 teachers into a ViT-B/16 student and reads attention maps from
the last block's CLS attention (see :mod:`kd_ray.models.attention`). A ViT's position embeddings
fix its token grid, so ``image_size`` must equal the training resolution; pretrained 224-px
position embeddings are resized to it with torchvision's ``interpolate_embeddings`` (bicubic).
``vit_tiny`` is a two-block, 64-wide ViT with 4-px patches, small enough for CPU tests and
digits-scale studies.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass

from torch import nn
from torchvision.models import ViT_B_16_Weights, ViT_B_32_Weights, WeightsEnum
from torchvision.models.vision_transformer import VisionTransformer, interpolate_embeddings

from kd_ray.errors import ConfigError
from kd_ray.models._builder import adapt_input_conv, load_state, load_weights, no_pretrained, resolve_weights
from kd_ray.models._registry import MODELS, ModelFactory


@dataclass(frozen=True)
class _ViTSize:
    """What sets one ViT apart from another: its patch side and transformer sizes."""

    patch_size: int
    num_layers: int
    num_heads: int
    hidden_dim: int
    mlp_dim: int


def _vit(
    name: str,
    size: _ViTSize,
    *,
    num_classes: int,
    in_channels: int,
    image_size: int,
    weights: WeightsEnum | None,
) -> VisionTransformer:
    patch_size = size.patch_size
    if image_size % patch_size:
        raise ConfigError(
            f"model {name!r}: image_size {image_size} must be a multiple of the patch size {patch_size}"
        )
    width = dict(
        num_layers=size.num_layers, num_heads=size.num_heads, hidden_dim=size.hidden_dim, mlp_dim=size.mlp_dim
    )
    if weights is None:
        model = VisionTransformer(image_size, patch_size, num_classes=num_classes, **width)
    else:
        # Weights first: a missing file fails before an 86M-parameter build.
        state = interpolate_embeddings(image_size, patch_size, load_weights(name, weights))
        model = VisionTransformer(
            image_size, patch_size, num_classes=len(weights.meta["categories"]), **width
        )
        load_state(name, model, state)
        if num_classes != model.heads.head.out_features:
            model.heads.head = nn.Linear(size.hidden_dim, num_classes)
            # Zero head, as torchvision initialises it: the pretrained features start unperturbed.
            nn.init.zeros_(model.heads.head.weight)
            nn.init.zeros_(model.heads.head.bias)
            model.num_classes = num_classes
    if in_channels != model.conv_proj.in_channels:
        model.conv_proj = adapt_input_conv(model.conv_proj, in_channels, pretrained=weights is not None)
        if weights is None:
            # torchvision's patchify-stem init, recomputed for the new fan-in.
            fan_in = in_channels * patch_size * patch_size
            nn.init.trunc_normal_(model.conv_proj.weight, std=math.sqrt(1 / fan_in))
            nn.init.zeros_(model.conv_proj.bias)
    return model


def _vit_factory(
    name: str,
    size: _ViTSize,
    weights_enum: type[WeightsEnum] | None,
    default_image_size: int,
    *,
    num_classes: int,
    in_channels: int = 3,
    pretrained: bool | str = False,
    image_size: int | None = None,
) -> VisionTransformer:
    """The ViT ``name`` of ``size``: a model factory once the first four are bound (:func:`_register_vit`).

    ``weights_enum`` is the torchvision checkpoint enum, or None where no checkpoint exists (then
    ``pretrained`` must be false). ``image_size`` must be a multiple of the patch side and
    defaults to ``default_image_size``; ``in_channels`` other than 3 adapts the patch projection.
    """
    if weights_enum is None:
        no_pretrained(name, pretrained)
        weights = None
    else:
        weights = resolve_weights(name, weights_enum, pretrained)
    return _vit(
        name,
        size,
        num_classes=num_classes,
        in_channels=in_channels,
        image_size=image_size or default_image_size,
        weights=weights,
    )


def _register_vit(
    name: str, size: _ViTSize, weights_enum: type[WeightsEnum] | None, default_image_size: int
) -> ModelFactory:
    """Register the ViT ``name``: every ViT size is built by the one :func:`_vit_factory`."""
    return MODELS.register(name)(
        functools.partial(_vit_factory, name, size, weights_enum, default_image_size)
    )


def _register_vit_b(patch_size: int, weights_enum: type[WeightsEnum]) -> ModelFactory:
    """Register ``vit_b_<patch_size>``: ViT-B (12 blocks, 12 heads, 768 wide, 3072-wide MLP) at 224 px.

    The paper's two ViT-B sizes differ only in the patch side and the checkpoint;
    ``pretrained=True`` loads ``weights_enum.IMAGENET1K_V1``.
    """
    size = _ViTSize(patch_size, num_layers=12, num_heads=12, hidden_dim=768, mlp_dim=3072)
    return _register_vit(f"vit_b_{patch_size}", size, weights_enum, 224)


vit_b_16 = _register_vit_b(16, ViT_B_16_Weights)
vit_b_32 = _register_vit_b(32, ViT_B_32_Weights)
# Two blocks, 4 heads, 64 wide, 4-px patches: an attention grid of image_size / 4 (8x8 at 32 px).
vit_tiny = _register_vit(
    "vit_tiny", _ViTSize(patch_size=4, num_layers=2, num_heads=4, hidden_dim=64, mlp_dim=128), None, 32
)
