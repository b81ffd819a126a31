"""Colour operations on a batch of uint8 images, each sample with its own factor
(docs/experiments.md#augmentations).

Each kernel is bit-exact torchvision's per-image operation (``torchvision.transforms.v2.functional``)
on every sample, with the factor a ``(B,)`` tensor instead of a Python float: the same float32
arithmetic in the same order, including the fused multiply-add of torchvision's blends
(``add_(..., alpha=...)``, reproduced by ``addcmul``), then the same truncation to uint8 (the
sharpness smoothing is an exact integer sum, see :func:`sharpness`). Each sample is computed on
its own (per-sample means and sums), so its output does not depend on the rest of the batch.
Operations without a parameter (autocontrast, equalize, invert) are torchvision's own kernels,
which already work image by image on a batch.
"""

from __future__ import annotations

import torch

_MAX = 255


def _per_sample(values: torch.Tensor) -> torch.Tensor:
    """float32 ``(B, 1, 1, 1)`` of per-sample float64 parameters: the value torchvision's kernels
    compute with when given the same Python float."""
    return values.to(torch.float32).view(-1, 1, 1, 1)


def _grayscale(images: torch.Tensor) -> torch.Tensor:
    """Floored luma ``(B, 1, H, W)`` float32 of RGB uint8 images, as torchvision's colour ops use it."""
    r, g, b = images.unbind(dim=-3)
    luma = r.mul(0.2989).add_(g, alpha=0.587).add_(b, alpha=0.114)
    return luma.unsqueeze(dim=-3).floor_()


def _blend(images: torch.Tensor, other: torch.Tensor, ratio: torch.Tensor) -> torch.Tensor:
    """``ratio · images + (1 - ratio) · other``, clamped and truncated to uint8 (torchvision's ``_blend``)."""
    blended = images.mul(_per_sample(ratio)).addcmul_(other, _per_sample(1.0 - ratio))
    return blended.clamp_(0, _MAX).to(torch.uint8)


def brightness(images: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    """``F.adjust_brightness`` per sample: scale the pixels by ``factor`` (B,)."""
    return images.mul(_per_sample(factor)).clamp_(0, _MAX).to(torch.uint8)


def saturation(images: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    """``F.adjust_saturation`` per sample: blend with the grayscale image (grey images unchanged)."""
    if images.shape[-3] == 1:
        return images
    return _blend(images, _grayscale(images), factor)


def contrast(images: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    """``F.adjust_contrast`` per sample: blend with the image's mean grey level."""
    grey = _grayscale(images) if images.shape[-3] == 3 else images.to(torch.float32)
    mean = torch.mean(grey, dim=(-3, -2, -1), keepdim=True)
    return _blend(images, mean, factor)


def sharpness(images: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    """``F.adjust_sharpness`` per sample: blend the interior with a 3×3 smoothing (border kept).

    torchvision smooths with a float convolution by ``[[1, 1, 1], [1, 5, 1], [1, 1, 1]] / 13`` and
    rounds. Here the smoothing is the exact integer sum (3×3 box sum + 4 × centre) divided by 13,
    which rounds to the same integer: a sum over 13 is never a half-integer, and never closer to
    one than 1/26, far beyond the convolution's float error.
    """
    height, width = images.shape[-2:]
    if images.numel() == 0 or height <= 2 or width <= 2:
        return images
    output = images.to(dtype=torch.float32, copy=True)
    rows = output[..., :, :-2] + output[..., :, 1:-1] + output[..., :, 2:]
    box = rows[..., :-2, :] + rows[..., 1:-1, :] + rows[..., 2:, :]
    interior = output[..., 1:-1, 1:-1]
    smoothed = box.add_(interior, alpha=4.0).div_(13.0).round_()
    interior.addcmul_(smoothed.sub_(interior), _per_sample(1.0 - factor))
    return output.clamp_(0, _MAX).to(torch.uint8)


def posterize(images: torch.Tensor, bits: torch.Tensor) -> torch.Tensor:
    """``F.posterize`` per sample: keep the top ``bits`` (B,) int bits of every pixel."""
    kept = torch.clamp(bits.to(torch.int64), 0, 8)
    mask = (((1 << kept) - 1) << (8 - kept)).to(torch.uint8)
    return images & mask.view(-1, 1, 1, 1)


def solarize(images: torch.Tensor, threshold: torch.Tensor) -> torch.Tensor:
    """``F.solarize`` per sample: invert the pixels at or above ``threshold`` (B,), compared in float32."""
    return torch.where(images >= _per_sample(threshold), images.bitwise_not(), images)


def to_normalised_float(images: torch.Tensor, mean: torch.Tensor, std: torch.Tensor) -> torch.Tensor:
    """uint8 → float32 in [0, 1] → ``(x - mean) / std`` per channel (``ToDtype(scale=True)`` + ``Normalize``)."""
    scaled = images.to(torch.float32).mul_(1.0 / _MAX)
    return scaled.sub_(mean.view(-1, 1, 1)).div_(std.view(-1, 1, 1))
