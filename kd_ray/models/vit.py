"""torchvision Vision Transformers: ``vit_b_16``/``vit_b_32`` (paper Appendix E) and ``vit_tiny``.

Appendix E distils two ViT-B/32 teachers into a ViT-B/16 student and reads attention maps from
the last block's CLS attention (see :mod:`kd_ray.models.attention`). A ViT's position embeddings
fix its token grid, so ``image_size`` must equal the training resolution; pretrained 224-px
position embeddings are resized to it with torchvision's ``interpolate_embeddings`` (bicubic).
``vit_tiny`` is a two-block, 64-wide ViT with 4-px patches, small enough for CPU tests and
digits-scale studies.
"""

from __future__ import annotations

import math

from torch import nn
from torchvision.models import ViT_B_16_Weights, ViT_B_32_Weights, WeightsEnum
from torchvision.models.vision_transformer import VisionTransformer, interpolate_embeddings

from kd_ray.errors import ConfigError
from kd_ray.models._builder import adapt_input_conv, load_state, load_weights, no_pretrained, resolve_weights
from kd_ray.models._registry import MODELS


def _vit(
    name: str,
    *,
    patch_size: int,
    num_layers: int,
    num_heads: int,
    hidden_dim: int,
    mlp_dim: int,
    num_classes: int,
    in_channels: int,
    image_size: int,
    weights: WeightsEnum | None,
) -> VisionTransformer:
    if image_size % patch_size:
        raise ConfigError(
            f"model {name!r}: image_size {image_size} must be a multiple of the patch size {patch_size}"
        )
    width = dict(num_layers=num_layers, num_heads=num_heads, hidden_dim=hidden_dim, mlp_dim=mlp_dim)
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
            model.heads.head = nn.Linear(hidden_dim, num_classes)
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


@MODELS.register("vit_b_16")
def vit_b_16(
    *, num_classes: int, in_channels: int = 3, pretrained: bool | str = False, image_size: int | None = None
) -> VisionTransformer:
    """ViT-B/16 (12 blocks, 768 wide); ``pretrained=True`` loads ``ViT_B_16_Weights.IMAGENET1K_V1``.

    Args:
        num_classes: Head size.
        in_channels: Input channels; the patch projection is adapted.
        pretrained: ``True``, ``False`` or a ``ViT_B_16_Weights`` member name.
        image_size: Input side in pixels, a multiple of 16; default 224.
    """
    return _vit(
        "vit_b_16",
        patch_size=16,
        num_layers=12,
        num_heads=12,
        hidden_dim=768,
        mlp_dim=3072,
        num_classes=num_classes,
        in_channels=in_channels,
        image_size=image_size or 224,
        weights=resolve_weights("vit_b_16", ViT_B_16_Weights, pretrained),
    )


@MODELS.register("vit_b_32")
def vit_b_32(
    *, num_classes: int, in_channels: int = 3, pretrained: bool | str = False, image_size: int | None = None
) -> VisionTransformer:
    """ViT-B/32 (12 blocks, 768 wide); ``pretrained=True`` loads ``ViT_B_32_Weights.IMAGENET1K_V1``.

    Args:
        num_classes: Head size.
        in_channels: Input channels; the patch projection is adapted.
        pretrained: ``True``, ``False`` or a ``ViT_B_32_Weights`` member name.
        image_size: Input side in pixels, a multiple of 32; default 224.
    """
    return _vit(
        "vit_b_32",
        patch_size=32,
        num_layers=12,
        num_heads=12,
        hidden_dim=768,
        mlp_dim=3072,
        num_classes=num_classes,
        in_channels=in_channels,
        image_size=image_size or 224,
        weights=resolve_weights("vit_b_32", ViT_B_32_Weights, pretrained),
    )


@MODELS.register("vit_tiny")
def vit_tiny(
    *, num_classes: int, in_channels: int = 3, pretrained: bool | str = False, image_size: int | None = None
) -> VisionTransformer:
    """Two blocks, 4 heads, 64 wide, 4-px patches: an attention grid of ``image_size / 4``.

    Args:
        num_classes: Head size.
        in_channels: Input channels.
        pretrained: Must be false (no checkpoint exists).
        image_size: Input side in pixels, a multiple of 4; default 32 (8x8 patch grid).
    """
    no_pretrained("vit_tiny", pretrained)
    return _vit(
        "vit_tiny",
        patch_size=4,
        num_layers=2,
        num_heads=4,
        hidden_dim=64,
        mlp_dim=128,
        num_classes=num_classes,
        in_channels=in_channels,
        image_size=image_size or 32,
        weights=None,
    )
