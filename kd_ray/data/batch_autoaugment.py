"""AutoAugment and RandAugment on a batch, each sample with its own ops and magnitudes
(docs/experiments.md#augmentations).

The policies, operation spaces and magnitude bins are torchvision's (``v2.AutoAugment``,
``v2.RandAugment``), and so are the operations: every sample's op, with its magnitude and sign, is
the torchvision operation with those arguments, bit for bit (:mod:`kd_ray.data.batch_colour`,
:mod:`kd_ray.data.batch_geometry`). Samples that drew the same op are transformed together, one
call per op and step, each with its own magnitude; the geometric ops (shears, translations,
rotations) share one warp per step.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torchvision.transforms.v2 import AutoAugmentPolicy
from torchvision.transforms.v2 import functional as TF

from kd_ray.data import batch_colour, batch_geometry
from kd_ray.data.batch_pipeline import apply_grouped

OpKernel = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
"""An operation on a group of uint8 images with one signed magnitude (float64) per image."""


AFFINE_OPS = ("ShearX", "ShearY", "TranslateX", "TranslateY", "Rotate")
"""The geometric operations: all warps by a per-sample affine matrix, applied in one call."""


def affine_ops(images: torch.Tensor, ops: torch.Tensor, magnitude: torch.Tensor) -> torch.Tensor:
    """Each sample's geometric op (``AFFINE_OPS[ops[b]]``) at its magnitude, in one warp.

    As torchvision's AutoAugment calls them: ``ShearX``/``ShearY`` are ``F.affine`` with a shear of
    ``degrees(atan(m))`` about the top-left corner (``center=[0, 0]``), ``TranslateX``/``Y`` shift
    by ``int(m)`` pixels, ``Rotate`` is ``F.rotate(angle=m)``; all nearest neighbour, fill 0. Each
    sample's matrix is torchvision's inverse matrix of those arguments.
    """
    n, _, h, w = images.shape
    zero = torch.zeros(n, dtype=torch.float64)
    slope = torch.rad2deg(torch.atan(magnitude))
    shift = torch.trunc(magnitude)
    sheared = ops <= 1
    shear = torch.stack([torch.where(ops == 0, slope, zero), torch.where(ops == 1, slope, zero)], dim=1)
    translate = torch.stack([torch.where(ops == 2, shift, zero), torch.where(ops == 3, shift, zero)], dim=1)
    corner = torch.stack([torch.where(sheared, -0.5 * w, zero), torch.where(sheared, -0.5 * h, zero)], dim=1)
    angle = torch.where(ops == 4, -magnitude, zero)  # rotate's matrix takes the opposite angle
    return batch_geometry.affine(
        images, batch_geometry.inverse_affine_matrices(angle, translate, shear, corner)
    )


def _affine_kernel(name: str) -> OpKernel:
    index = AFFINE_OPS.index(name)
    return lambda x, m: affine_ops(x, torch.full((len(x),), index), m)


KERNELS: dict[str, OpKernel | None] = {
    "Identity": None,
    **{name: _affine_kernel(name) for name in AFFINE_OPS},
    "Brightness": lambda x, m: batch_colour.brightness(x, 1.0 + m),
    "Color": lambda x, m: batch_colour.saturation(x, 1.0 + m),
    "Contrast": lambda x, m: batch_colour.contrast(x, 1.0 + m),
    "Sharpness": lambda x, m: batch_colour.sharpness(x, 1.0 + m),
    "Posterize": lambda x, m: batch_colour.posterize(x, m.to(torch.int64)),
    "Solarize": lambda x, m: batch_colour.solarize(x, 255.0 * m),
    "AutoContrast": lambda x, m: TF.autocontrast(x),
    "Equalize": lambda x, m: TF.equalize(x),
    "Invert": lambda x, m: TF.invert(x),
}
"""Each operation's batched kernel (``None``: leave the image as it is)."""


def magnitudes(op: str, bins: int, height: int, width: int) -> list[float] | None:
    """torchvision's magnitude of each bin of ``op`` (computed as it does, in float32), or ``None``."""
    if op in ("ShearX", "ShearY"):
        values = torch.linspace(0.0, 0.3, bins)
    elif op == "TranslateX":
        values = torch.linspace(0.0, 150.0 / 331.0 * width, bins)
    elif op == "TranslateY":
        values = torch.linspace(0.0, 150.0 / 331.0 * height, bins)
    elif op == "Rotate":
        values = torch.linspace(0.0, 30.0, bins)
    elif op in ("Brightness", "Color", "Contrast", "Sharpness"):
        values = torch.linspace(0.0, 0.9, bins)
    elif op == "Posterize":
        values = (8 - (torch.arange(bins) / ((bins - 1) / 4))).round().int()
    elif op == "Solarize":
        values = torch.linspace(1.0, 0.0, bins)
    else:
        return None
    return [float(v) for v in values]


SIGNED = frozenset(
    {"ShearX", "ShearY", "TranslateX", "TranslateY", "Rotate", "Brightness", "Color", "Contrast", "Sharpness"}
)
"""Operations whose magnitude is negated with probability ½."""

AUTOAUGMENT_POLICIES: dict[AutoAugmentPolicy, tuple[tuple[tuple[str, float, int | None], ...], ...]] = {
    AutoAugmentPolicy.IMAGENET: (
        (("Posterize", 0.4, 8), ("Rotate", 0.6, 9)),
        (("Solarize", 0.6, 5), ("AutoContrast", 0.6, None)),
        (("Equalize", 0.8, None), ("Equalize", 0.6, None)),
        (("Posterize", 0.6, 7), ("Posterize", 0.6, 6)),
        (("Equalize", 0.4, None), ("Solarize", 0.2, 4)),
        (("Equalize", 0.4, None), ("Rotate", 0.8, 8)),
        (("Solarize", 0.6, 3), ("Equalize", 0.6, None)),
        (("Posterize", 0.8, 5), ("Equalize", 1.0, None)),
        (("Rotate", 0.2, 3), ("Solarize", 0.6, 8)),
        (("Equalize", 0.6, None), ("Posterize", 0.4, 6)),
        (("Rotate", 0.8, 8), ("Color", 0.4, 0)),
        (("Rotate", 0.4, 9), ("Equalize", 0.6, None)),
        (("Equalize", 0.0, None), ("Equalize", 0.8, None)),
        (("Invert", 0.6, None), ("Equalize", 1.0, None)),
        (("Color", 0.6, 4), ("Contrast", 1.0, 8)),
        (("Rotate", 0.8, 8), ("Color", 1.0, 2)),
        (("Color", 0.8, 8), ("Solarize", 0.8, 7)),
        (("Sharpness", 0.4, 7), ("Invert", 0.6, None)),
        (("ShearX", 0.6, 5), ("Equalize", 1.0, None)),
        (("Color", 0.4, 0), ("Equalize", 0.6, None)),
        (("Equalize", 0.4, None), ("Solarize", 0.2, 4)),
        (("Solarize", 0.6, 5), ("AutoContrast", 0.6, None)),
        (("Invert", 0.6, None), ("Equalize", 1.0, None)),
        (("Color", 0.6, 4), ("Contrast", 1.0, 8)),
        (("Equalize", 0.8, None), ("Equalize", 0.6, None)),
    ),
    AutoAugmentPolicy.CIFAR10: (
        (("Invert", 0.1, None), ("Contrast", 0.2, 6)),
        (("Rotate", 0.7, 2), ("TranslateX", 0.3, 9)),
        (("Sharpness", 0.8, 1), ("Sharpness", 0.9, 3)),
        (("ShearY", 0.5, 8), ("TranslateY", 0.7, 9)),
        (("AutoContrast", 0.5, None), ("Equalize", 0.9, None)),
        (("ShearY", 0.2, 7), ("Posterize", 0.3, 7)),
        (("Color", 0.4, 3), ("Brightness", 0.6, 7)),
        (("Sharpness", 0.3, 9), ("Brightness", 0.7, 9)),
        (("Equalize", 0.6, None), ("Equalize", 0.5, None)),
        (("Contrast", 0.6, 7), ("Sharpness", 0.6, 5)),
        (("Color", 0.7, 7), ("TranslateX", 0.5, 8)),
        (("Equalize", 0.3, None), ("AutoContrast", 0.4, None)),
        (("TranslateY", 0.4, 3), ("Sharpness", 0.2, 6)),
        (("Brightness", 0.9, 6), ("Color", 0.2, 8)),
        (("Solarize", 0.5, 2), ("Invert", 0.0, None)),
        (("Equalize", 0.2, None), ("AutoContrast", 0.6, None)),
        (("Equalize", 0.2, None), ("Equalize", 0.6, None)),
        (("Color", 0.9, 9), ("Equalize", 0.6, None)),
        (("AutoContrast", 0.8, None), ("Solarize", 0.2, 8)),
        (("Brightness", 0.1, 3), ("Color", 0.7, 0)),
        (("Solarize", 0.4, 5), ("AutoContrast", 0.9, None)),
        (("TranslateY", 0.9, 9), ("TranslateY", 0.7, 9)),
        (("AutoContrast", 0.9, None), ("Solarize", 0.8, 3)),
        (("Equalize", 0.8, None), ("Invert", 0.1, None)),
        (("TranslateY", 0.7, 9), ("AutoContrast", 0.9, None)),
    ),
}
"""torchvision's AutoAugment sub-policies: two (op, probability, magnitude bin) steps each."""

RANDAUGMENT_OPS = (
    "Identity", "ShearX", "ShearY", "TranslateX", "TranslateY", "Rotate", "Brightness", "Color",
    "Contrast", "Sharpness", "Posterize", "Solarize", "AutoContrast", "Equalize",
)  # fmt: skip
"""RandAugment's operation space, in torchvision's order (an op is drawn uniformly from it)."""

OPS = tuple(KERNELS)
"""Operation indices of a plan (:meth:`AutoAugment.plan`) refer to this order."""

Plan = list[tuple[torch.Tensor, torch.Tensor]]
"""Per step: each sample's op (an index into :data:`OPS`) and its signed magnitude (float64)."""


_AFFINE_INDEX = torch.tensor([AFFINE_OPS.index(name) if name in AFFINE_OPS else -1 for name in OPS])


def apply_ops(images: torch.Tensor, op: torch.Tensor, magnitude: torch.Tensor) -> torch.Tensor:
    """Apply op ``OPS[op[b]]`` with ``magnitude[b]`` to each sample: one call per op drawn, and one
    warp for all the geometric ops (:func:`affine_ops`)."""
    geometric = _AFFINE_INDEX[op]
    group = torch.where(geometric >= 0, len(OPS), op)

    def kernel(name: str):
        run = KERNELS[name]
        return None if run is None or name in AFFINE_OPS else lambda g, members: run(g, magnitude[members])

    def warp(g: torch.Tensor, members: torch.Tensor) -> torch.Tensor:
        return affine_ops(g, geometric[members], magnitude[members])

    return apply_grouped(images, group, [*(kernel(name) for name in OPS), warp])


@functools.lru_cache(maxsize=64)
def _policy_table(
    policy: AutoAugmentPolicy, height: int, width: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """An AutoAugment policy as ``(2, 25)`` tables (step × sub-policy): op index, probability,
    unsigned magnitude (0 for ops without one) and whether the op is signed."""
    steps = [[sub[step] for sub in AUTOAUGMENT_POLICIES[policy]] for step in range(2)]
    ops = torch.tensor([[OPS.index(name) for name, _, _ in row] for row in steps])
    probability = torch.tensor([[p for _, p, _ in row] for row in steps], dtype=torch.float64)
    values = torch.tensor(
        [
            [0.0 if b is None else magnitudes(name, 10, height, width)[b] for name, _, b in row]
            for row in steps
        ],
        dtype=torch.float64,
    )
    signed = torch.tensor([[name in SIGNED for name, _, _ in row] for row in steps])
    return ops, probability, values, signed


@functools.lru_cache(maxsize=64)
def _randaugment_table(
    magnitude: int, bins: int, height: int, width: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """RandAugment's ops as tables over :data:`RANDAUGMENT_OPS`: op index, unsigned magnitude at bin
    ``magnitude``, whether the op is signed."""
    table = [magnitudes(name, bins, height, width) for name in RANDAUGMENT_OPS]
    values = torch.tensor([0.0 if m is None else m[magnitude] for m in table], dtype=torch.float64)
    signed = torch.tensor([name in SIGNED for name in RANDAUGMENT_OPS])
    return torch.tensor([OPS.index(name) for name in RANDAUGMENT_OPS]), values, signed


def _signed(values: torch.Tensor, signed: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
    """Negate the signed ops' magnitudes where the uniform is ≤ ½ (torchvision's coin)."""
    return torch.where(signed & (u <= 0.5), -values, values)


@dataclass(frozen=True)
class AutoAugment:
    """``v2.AutoAugment(policy)``: a sub-policy uniform over the policy's 25, then each of its two
    steps with its probability, its magnitude bin and (signed ops) a random sign."""

    policy: AutoAugmentPolicy
    draws: int = 5  # the sub-policy, then per step: whether it applies, its sign

    def plan(self, u: torch.Tensor, height: int, width: int) -> Plan:
        """Each sample's two steps drawn from its uniforms; a step that does not apply is Identity."""
        ops, probability, values, signed = _policy_table(self.policy, height, width)
        chosen = torch.floor(u[:, 0] * ops.shape[1]).to(torch.int64)
        steps = []
        for step in range(2):
            applies = u[:, 1 + 2 * step] <= probability[step, chosen]
            op = torch.where(applies, ops[step, chosen], OPS.index("Identity"))
            steps.append((op, _signed(values[step, chosen], signed[step, chosen], u[:, 2 + 2 * step])))
        return steps

    def __call__(self, images: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
        for op, magnitude in self.plan(u, *images.shape[-2:]):
            images = apply_ops(images, op, magnitude)
        return images


@dataclass(frozen=True)
class RandAugment:
    """``v2.RandAugment(num_ops, magnitude)`` (31 bins): ``num_ops`` ops drawn uniformly from
    :data:`RANDAUGMENT_OPS`, each at bin ``magnitude`` with a random sign for signed ops."""

    num_ops: int
    magnitude: int
    bins: int = 31

    @property
    def draws(self) -> int:
        return 2 * self.num_ops  # per op: which one, its sign

    def plan(self, u: torch.Tensor, height: int, width: int) -> Plan:
        """Each sample's ``num_ops`` ops and signed magnitudes, drawn from its uniforms."""
        ops, values, signed = _randaugment_table(self.magnitude, self.bins, height, width)
        steps = []
        for k in range(self.num_ops):
            chosen = torch.floor(u[:, 2 * k] * len(ops)).to(torch.int64)
            steps.append((ops[chosen], _signed(values[chosen], signed[chosen], u[:, 2 * k + 1])))
        return steps

    def __call__(self, images: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
        for op, magnitude in self.plan(u, *images.shape[-2:]):
            images = apply_ops(images, op, magnitude)
        return images
