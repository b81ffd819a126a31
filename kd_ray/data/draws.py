"""Per-sample random draws of a batch, the paired-randomness half of batched augmentation
(docs/experiments.md#paired-randomness).

A batch is augmented in one pass, yet every random parameter of sample ``i`` (crop box, flip bit,
colour factors and their order, rotation angle, AutoAugment ops, Cutout square) comes from the
sample's own generator, seeded by ``stable_seed(seed, epoch, i)``: one row of uniforms per sample,
drawn once, of which each augmentation stage reads fixed columns. A sample's parameters, and so its
pixels, therefore do not depend on the batch it is in, its position there, the DDP rank or the
loader worker that draws it.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from kd_ray.seeding import stable_seed


def sample_seeds(seed: int, epoch: int, indices: Sequence[int]) -> list[int]:
    """The seed of each sample's draws: ``stable_seed(seed, epoch, index)``."""
    return [stable_seed(seed, epoch, int(i)) for i in indices]


def sample_uniforms(seeds: Sequence[int], count: int) -> torch.Tensor:
    """``count`` uniforms in [0, 1) per sample, row ``b`` from a CPU generator seeded by ``seeds[b]``.

    float64, so integer draws made from them (``floor(u · n)``) are unbiased for any image size. One
    generator is re-seeded per row, which is the same stream as a fresh generator per sample and
    leaves torch's global RNG untouched.
    """
    out = torch.empty(len(seeds), count, dtype=torch.float64)
    if count == 0:
        return out
    generator = torch.Generator()
    for row, seed in zip(out, seeds, strict=True):
        generator.manual_seed(seed)
        torch.rand(count, generator=generator, dtype=torch.float64, out=row)
    return out
