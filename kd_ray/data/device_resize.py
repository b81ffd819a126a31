"""Resize whole batches on the training device.

The paper trains on CIFAR upsampled to 224×224. Augmenting at 224 on the CPU would make the data
loader, not the GPU, bound the run (49× the pixels per image for every crop, flip, AutoAugment
op and Cutout). The augmentations are instead applied at the native 32×32 — where a crop, flip or
colour op followed by an upsample is what the paper's upsample-then-augment pipeline does, up to
interpolation detail — and the train loop calls :func:`resize_batch` once per batch, after the
batch is on the device, when ``DatasetConfig.image_size`` differs from ``native_size``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def resize_batch(x: torch.Tensor, size: int | tuple[int, int]) -> torch.Tensor:
    """Bilinearly resize a batch ``N×C×H×W`` to ``size`` (an int is a square side).

    Antialiased when either side shrinks (as torchvision's ``Resize`` on tensors), so a
    downsampled batch does not alias; upsampling is plain bilinear with ``align_corners=False``,
    which equals resizing each image on its own with torchvision. Floating batches (normalised
    images, any float dtype the device supports) keep their dtype; integer batches are
    interpolated in float32 and rounded back, clamped to their dtype's range.

    Args:
        x: the batch, on any device.
        size: output side, or ``(height, width)``.

    Returns:
        The resized batch on ``x``'s device; ``x`` itself when it already has that size.

    Raises:
        ValueError: ``x`` is not 4-D, or ``size`` is not positive.
    """
    if x.ndim != 4:
        raise ValueError(f"resize_batch expects an N×C×H×W batch, got shape {tuple(x.shape)}")
    out_h, out_w = (size, size) if isinstance(size, int) else size
    if out_h <= 0 or out_w <= 0:
        raise ValueError(f"resize_batch size must be positive, got {size}")
    in_h, in_w = x.shape[-2:]
    if (in_h, in_w) == (out_h, out_w):
        return x
    antialias = out_h < in_h or out_w < in_w
    if x.is_floating_point():
        return F.interpolate(
            x, size=(out_h, out_w), mode="bilinear", align_corners=False, antialias=antialias
        )
    info = torch.iinfo(x.dtype)
    y = F.interpolate(
        x.float(), size=(out_h, out_w), mode="bilinear", align_corners=False, antialias=antialias
    )
    return y.round_().clamp_(info.min, info.max).to(x.dtype)
