"""Geometric operations on a batch of uint8 images, each sample with its own parameters
(docs/experiments.md#augmentations).

Each kernel is torchvision's per-image operation applied to a whole ``(B, C, H, W)`` batch in a
few tensor calls, where torchvision would dispatch a dozen calls per image:

* :func:`resized_crop`: torchvision's antialiased bilinear resize of each sample's crop box
  (``F.resized_crop(..., antialias=True)``: the triangle filter of ``interpolate(mode="bilinear",
  antialias=True)``, widened by the scale factor when downsampling), bit-exact: the same
  fixed-point weights and integer sums as torch's uint8 kernel, computed as exact matmuls.
* :func:`affine`: torchvision's inverse-matrix sampling grid and nearest-neighbour
  ``grid_sample`` with zero fill (rotation, shear, translation).
* :func:`horizontal_flip`, :func:`erase`: exact.

Every operation works on each sample separately (exact integer sums, ``grid_sample``, masks), so
a sample's output does not depend on the other samples of its batch.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F


def random_resized_crop_boxes(
    u: torch.Tensor,
    heights: torch.Tensor,
    widths: torch.Tensor,
    scale: tuple[float, float],
    ratio: tuple[float, float],
    attempts: int = 10,
) -> torch.Tensor:
    """Crop boxes ``(top, left, height, width)``, int64 ``(B, 4)``, drawn as ``RandomResizedCrop`` draws them.

    Up to ``attempts`` tries of an area fraction uniform in ``scale`` and a log-uniform aspect ratio
    in ``ratio``; the first box that fits is placed uniformly; if none fits, the central crop of the
    ratio nearest the image's. ``u`` holds ``2 · attempts + 2`` uniforms per sample (area and ratio
    of each try, then the row and column of the placement); ``heights``/``widths`` are each image's.
    """
    h_img = heights.to(torch.float64)
    w_img = widths.to(torch.float64)
    area = (h_img * w_img)[:, None]
    target = area * (scale[0] + u[:, :attempts] * (scale[1] - scale[0]))
    log_lo, log_hi = math.log(ratio[0]), math.log(ratio[1])
    aspect = torch.exp(log_lo + u[:, attempts : 2 * attempts] * (log_hi - log_lo))
    w = torch.round(torch.sqrt(target * aspect))
    h = torch.round(torch.sqrt(target / aspect))
    fits = (w > 0) & (w <= w_img[:, None]) & (h > 0) & (h <= h_img[:, None])
    first = fits.to(torch.int8).argmax(dim=1, keepdim=True)  # the first try that fits
    found = fits.any(dim=1)
    w = w.gather(1, first).squeeze(1)
    h = h.gather(1, first).squeeze(1)
    top = torch.floor(u[:, 2 * attempts] * (h_img - h + 1))
    left = torch.floor(u[:, 2 * attempts + 1] * (w_img - w + 1))
    if not bool(found.all()):
        fb_h, fb_w = _central_fallback(h_img, w_img, ratio)
        h = torch.where(found, h, fb_h)
        w = torch.where(found, w, fb_w)
        top = torch.where(found, top, torch.div(h_img - fb_h, 2, rounding_mode="floor"))
        left = torch.where(found, left, torch.div(w_img - fb_w, 2, rounding_mode="floor"))
    return torch.stack([top, left, h, w], dim=1).to(torch.int64)


def _central_fallback(
    h_img: torch.Tensor, w_img: torch.Tensor, ratio: tuple[float, float]
) -> tuple[torch.Tensor, torch.Tensor]:
    """``RandomResizedCrop``'s fallback box size: the whole image clipped to the ratio range."""
    in_ratio = w_img / h_img
    lo, hi = min(ratio), max(ratio)
    h = torch.where(in_ratio < lo, torch.round(w_img / lo), h_img)
    w = torch.where(in_ratio > hi, torch.round(h_img * hi), w_img)
    return h, w


def _filter_weights(
    start: torch.Tensor, length: torch.Tensor, out_size: int, in_size: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Each sample's resampling matrix ``(B, out_size, in_size)`` along one axis, in fixed point, and
    its precision ``(B,)``.

    The weights of ``interpolate(mode="bilinear", align_corners=False, antialias=True)``: output
    pixel ``o`` is centred at ``scale · (o + ½)`` in the crop (``scale = length / out_size``), the
    triangle filter has support ``max(scale, 1)``, and the weights sum to one. Like torch's uint8
    kernel they are then scaled by ``2^precision`` and rounded to integers, the precision being the
    largest (≤ 22) at which the sample's largest weight still fits in int16; the matrix holds those
    integers (below 2^15, so exact in float32).
    """
    scale = length.to(torch.float64) / out_size
    support = torch.clamp(scale, min=1.0)[:, None]
    center = scale[:, None] * (torch.arange(out_size, dtype=torch.float64) + 0.5)
    lo = torch.clamp(torch.trunc(center - support + 0.5), min=0)
    hi = torch.minimum(torch.trunc(center + support + 0.5), length[:, None].to(torch.float64))
    taps = int((hi - lo).max())
    pos = lo[..., None] + torch.arange(taps, dtype=torch.float64)
    weights = torch.clamp(1.0 - ((pos - center[..., None] + 0.5) / support[..., None]).abs(), min=0.0)
    weights = torch.where(pos < hi[..., None], weights, 0.0)
    weights = weights / weights.sum(dim=-1, keepdim=True)
    precision = _weight_precision(weights.amax(dim=(1, 2)))
    fixed = torch.trunc(weights * torch.exp2(precision.to(torch.float64))[:, None, None] + 0.5)
    # Taps past a sample's support have weight 0; clamp their index into the crop.
    index = start[:, None, None] + torch.minimum(pos, (length - 1)[:, None, None].to(torch.float64)).long()
    matrix = torch.zeros(len(start), out_size, in_size, dtype=torch.float32)
    return matrix.scatter_add_(2, index, fixed.to(torch.float32)), precision


_PRECISION_BITS = torch.arange(22, dtype=torch.float64)


def _weight_precision(largest: torch.Tensor) -> torch.Tensor:
    """Bits of fixed-point precision per sample, torch's rule: the first ``p`` (< 22) at which
    ``round(largest · 2^(p+1))`` would overflow int16, so that ``largest · 2^p`` still fits."""
    overflows = torch.trunc(0.5 + largest[:, None] * torch.exp2(_PRECISION_BITS + 1)) >= 2**15
    first = overflows.to(torch.int8).argmax(dim=1)
    return torch.where(overflows.any(dim=1), first, 22).to(torch.int64)


def _exact_dtype(matrices: tuple[torch.Tensor, ...]) -> torch.dtype:
    """float32 where it computes the fixed-point sums exactly, else float64.

    Every product and partial sum of ``Σ weight · pixel`` is an integer at most 255 times a row's
    weight sum; float32 holds such integers exactly below 2^24, whatever order a matmul adds them
    in (and unless a lower matmul precision is allowed), so the result is the integer result.
    """
    largest_row = max(float(m.sum(dim=-1).max()) for m in matrices)
    fits = 255 * largest_row < 2**24 and torch.get_float32_matmul_precision() == "highest"
    return torch.float32 if fits else torch.float64


def _round_shift_(total: torch.Tensor, precision: torch.Tensor) -> torch.Tensor:
    """``(total + 2^(p-1)) >> p`` clamped to 0..255, in place, on exact integer-valued floats."""
    scale = torch.exp2(precision.to(total.dtype)).view(-1, *([1] * (total.dim() - 1)))
    return total.add_(scale * 0.5).div_(scale).floor_().clamp_(0, 255)


def resized_crop(images: torch.Tensor, boxes: torch.Tensor, size: int) -> torch.Tensor:
    """Crop each sample's box ``(top, left, height, width)`` and resize it to ``size × size``.

    Bit-exact ``F.resized_crop(image, *box, [size, size], antialias=True)`` of torchvision on uint8
    images: the same antialiased bilinear weights in the same fixed point, horizontal pass first,
    rounded to uint8 in between. Each pass is one batched matmul of the images with the
    samples' resampling matrices, exact (:func:`_exact_dtype`).

    Args:
        images: uint8 ``(B, C, H, W)``.
        boxes: int64 ``(B, 4)``, inside the images.
        size: output side.

    Returns:
        uint8 ``(B, C, size, size)``.
    """
    b, c, h, w = images.shape
    top, left, height, width = boxes.unbind(1)
    # Both axes' matrices in one call: (2B, size, max(H, W)), columns past an axis' length unused.
    matrices, bits = _filter_weights(torch.cat([left, top]), torch.cat([width, height]), size, max(h, w))
    across, down = matrices[:b, :, :w], matrices[b:, :, :h]  # (B, size, W), (B, size, H)
    across_bits, down_bits = bits[:b], bits[b:]
    dtype = _exact_dtype((across, down))
    pixels = images.reshape(b, c * h, w).to(dtype)
    horizontal = torch.matmul(pixels, across.to(dtype).transpose(1, 2))
    _round_shift_(horizontal, across_bits)
    # The vertical pass writes into the first buffer when it is large enough (fewer fresh pages).
    out = pixels.view(-1)[: b * c * size * size].view(b, c, size, size) if h * w >= size * size else None
    vertical = torch.matmul(down.to(dtype)[:, None], horizontal.view(b, c, h, size), out=out)
    return _round_shift_(vertical, down_bits).to(torch.uint8)


def horizontal_flip(images: torch.Tensor, flip: torch.Tensor) -> torch.Tensor:
    """Mirror the samples where the bool ``flip`` (B,) is set (``F.horizontal_flip``), others unchanged."""
    return torch.where(flip[:, None, None, None], images.flip(-1), images)


def inverse_affine_matrices(
    angle: torch.Tensor,
    translate: torch.Tensor,
    shear: torch.Tensor,
    center: torch.Tensor,
) -> torch.Tensor:
    """torchvision's inverse affine matrices ``(B, 6)`` (float64), scale 1, of each sample's parameters.

    Args:
        angle: degrees (B,), clockwise-positive as ``F.affine``'s angle.
        translate: pixels ``(B, 2)`` (x, y).
        shear: degrees ``(B, 2)`` (x, y).
        center: the pivot ``(B, 2)`` relative to the image centre (``F.affine``'s ``center`` minus
            half the size; zeros for the image centre).
    """
    rot = torch.deg2rad(angle)
    sx, sy = torch.deg2rad(shear).unbind(1)
    cx, cy = center.unbind(1)
    tx, ty = translate.unbind(1)
    a = torch.cos(rot - sy) / torch.cos(sy)
    b = -(a * torch.tan(sx) + torch.sin(rot))
    c = torch.sin(rot - sy) / torch.cos(sy)
    d = torch.cos(rot) - c * torch.tan(sx)
    m0, m1, m3, m4 = d, -b, -c, a
    m2 = cx - m0 * (cx + tx) - m1 * (cy + ty)
    m5 = cy - m3 * (cx + tx) - m4 * (cy + ty)
    return torch.stack([m0, m1, m2, m3, m4, m5], dim=1)


def affine(images: torch.Tensor, matrices: torch.Tensor) -> torch.Tensor:
    """Warp each sample by its inverse matrix (``inverse_affine_matrices``), nearest neighbour, fill 0.

    The sampling grid is torchvision's ``_affine_grid``: output pixel centres relative to the
    image centre, times the matrix, over half the size; ``grid_sample`` then picks the nearest
    pixel, or 0 outside the image.
    """
    b, _, h, w = images.shape
    theta = matrices.to(torch.float32).reshape(b, 2, 3)
    base = torch.empty(h, w, 3, dtype=torch.float32)
    base[..., 0].copy_(torch.linspace((1.0 - w) * 0.5, (w - 1.0) * 0.5, steps=w))
    base[..., 1].copy_(torch.linspace((1.0 - h) * 0.5, (h - 1.0) * 0.5, steps=h).unsqueeze(-1))
    base[..., 2].fill_(1)
    rescaled = theta.transpose(1, 2).div(torch.tensor([0.5 * w, 0.5 * h], dtype=torch.float32))
    grid = torch.bmm(base.reshape(1, h * w, 3).expand(b, -1, -1), rescaled).reshape(b, h, w, 2)
    warped = F.grid_sample(
        images.to(torch.float32), grid, mode="nearest", padding_mode="zeros", align_corners=False
    )
    return warped.round_().to(torch.uint8)


def erase(images: torch.Tensor, top: torch.Tensor, left: torch.Tensor, side: int) -> torch.Tensor:
    """Set each sample's ``side × side`` square at (``top``, ``left``) to 0 (``F.erase`` with value 0)."""
    h, w = images.shape[-2:]
    rows = torch.arange(h)
    cols = torch.arange(w)
    in_rows = (rows >= top[:, None]) & (rows < (top + side)[:, None])
    in_cols = (cols >= left[:, None]) & (cols < (left + side)[:, None])
    square = in_rows[:, None, :, None] & in_cols[:, None, None, :]
    return images.masked_fill(square, 0)
