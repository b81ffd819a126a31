"""What each frozen teacher sees of the student's batch (docs/experiments.md#teacher-views).

``full`` (vKD): every teacher sees the whole augmented image. ``split`` (hKD, the paper's A/B
test): teacher ``i`` of ``k`` sees only its own vertical strip; the other strips are set to 0
*after* normalisation (the mean colour, i.e. no evidence) and the geometry is unchanged, so the
teacher's receptive fields and attention maps stay aligned with the student's image.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from kd_ray.registry import Registry

View = Callable[[torch.Tensor, int, int], torch.Tensor]

VIEWS: Registry[View] = Registry("view")


def _check(x: torch.Tensor, slot: int, k: int) -> None:
    if x.ndim != 4:
        raise ValueError(f"a view takes a batch (N, C, H, W), got shape {tuple(x.shape)}")
    if not 1 <= slot <= k:
        raise ValueError(f"teacher slot must be in 1..{k}, got {slot}")


def strip_bounds(width: int, slot: int, k: int) -> tuple[int, int]:
    """Columns ``[start, end)`` of strip ``slot`` (1-based) of ``k`` near-equal strips.

    ``start = (slot-1)·W // k`` and ``end = slot·W // k``: the strips are disjoint, cover the
    width, and differ in width by at most one column (32 px, k=3 → 10, 11, 11).
    """
    if not 1 <= slot <= k:
        raise ValueError(f"teacher slot must be in 1..{k}, got {slot}")
    if k > width:
        raise ValueError(f"cannot split {width} columns into {k} strips")
    return (slot - 1) * width // k, slot * width // k


@VIEWS.register("full")
def full_view(x: torch.Tensor, slot: int, k: int) -> torch.Tensor:
    """The whole image, unchanged (vanilla ensemble KD)."""
    _check(x, slot, k)
    return x


@VIEWS.register("split")
def split_view(x: torch.Tensor, slot: int, k: int) -> torch.Tensor:
    """Only teacher ``slot``'s vertical strip of the (normalised) batch; the rest is 0."""
    _check(x, slot, k)
    start, end = strip_bounds(x.shape[-1], slot, k)
    columns = torch.arange(x.shape[-1], device=x.device)
    keep = (columns >= start) & (columns < end)
    return torch.where(keep, x, torch.zeros((), dtype=x.dtype, device=x.device))
