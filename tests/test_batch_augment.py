"""Batched augmentation against torchvision's per-image operations, and per-sample draws.

Every batched kernel must give, for each sample, the bytes torchvision's per-image operation gives
with that sample's parameters; every stage must draw its parameters as the torchvision transform
does (distributions, not streams), from the sample's own uniforms only.
"""

from __future__ import annotations

import math

import pytest
import torch
from torchvision.transforms import v2
from torchvision.transforms.v2 import AutoAugmentPolicy
from torchvision.transforms.v2 import functional as TF

from kd_ray.data import batch_autoaugment as AA
from kd_ray.data import batch_colour, batch_geometry, batch_stages
from kd_ray.data.batch_pipeline import BatchPipeline, PerSampleTransform, as_batch_transform
from kd_ray.data.draws import sample_seeds, sample_uniforms


def _images(n: int, channels: int = 3, h: int = 32, w: int = 32, seed: int = 0) -> torch.Tensor:
    return torch.randint(
        0, 256, (n, channels, h, w), dtype=torch.uint8, generator=torch.Generator().manual_seed(seed)
    )


def _uniforms(n: int, count: int, seed: int = 0) -> torch.Tensor:
    return sample_uniforms(sample_seeds(seed, 0, range(n)), count)


# --- draws -------------------------------------------------------------------------------------


def test_a_sample_draws_the_same_uniforms_in_any_batch() -> None:
    seeds = sample_seeds(7, 3, [5, 9, 2, 40])
    batch = sample_uniforms(seeds, 12)
    assert batch.dtype == torch.float64 and batch.shape == (4, 12)
    assert ((batch >= 0) & (batch < 1)).all()
    assert torch.equal(sample_uniforms(seeds[2:3], 12)[0], batch[2])
    assert torch.equal(sample_uniforms(seeds[::-1], 12), batch.flip(0))
    assert not torch.equal(batch[0], batch[1])
    assert sample_seeds(7, 4, [5]) != seeds[:1] and sample_seeds(8, 3, [5]) != seeds[:1]


def test_draws_leave_the_global_rng_alone() -> None:
    torch.manual_seed(3)
    state = torch.get_rng_state()
    sample_uniforms(sample_seeds(1, 0, range(8)), 5)
    assert torch.equal(torch.get_rng_state(), state)


# --- geometry ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("channels", "h", "w", "size", "scale"),
    [(3, 32, 32, 32, (0.5, 1.0)), (1, 8, 8, 8, (0.7, 1.0)), (3, 16, 16, 16, (0.5, 1.0)), (3, 30, 41, 24, (0.08, 1.0)),
     (3, 96, 128, 40, (0.3, 1.0))],
)  # fmt: skip
def test_resized_crop_is_torchvisions_resized_crop(
    channels: int, h: int, w: int, size: int, scale: tuple[float, float]
) -> None:
    n = 48
    x = _images(n, channels, h, w)
    boxes = batch_geometry.random_resized_crop_boxes(
        _uniforms(n, 22), torch.full((n,), h), torch.full((n,), w), scale, (3 / 4, 4 / 3)
    )
    out = batch_geometry.resized_crop(x, boxes, size)
    expected = torch.stack(
        [TF.resized_crop(x[i], *boxes[i].tolist(), [size, size], antialias=True) for i in range(n)]
    )
    assert out.dtype == torch.uint8 and torch.equal(out, expected)
    assert torch.equal(batch_geometry.resized_crop(x[3:4], boxes[3:4], size)[0], out[3])


def test_resized_crop_stays_exact_when_float32_matmuls_may_round() -> None:
    x = _images(16, 3, 64, 80)
    boxes = batch_geometry.random_resized_crop_boxes(
        _uniforms(16, 22), torch.full((16,), 64), torch.full((16,), 80), (0.5, 1.0), (3 / 4, 4 / 3)
    )
    expected = torch.stack(
        [TF.resized_crop(x[i], *boxes[i].tolist(), [24, 24], antialias=True) for i in range(16)]
    )
    before = torch.get_float32_matmul_precision()
    torch.set_float32_matmul_precision("medium")
    try:
        assert torch.equal(batch_geometry.resized_crop(x, boxes, 24), expected)
    finally:
        torch.set_float32_matmul_precision(before)


@pytest.mark.parametrize(("scale", "ratio"), [((0.5, 1.0), (3 / 4, 4 / 3)), ((0.08, 1.0), (3 / 4, 4 / 3)),
                                              ((0.7, 1.0), (0.9, 1.1))])  # fmt: skip
def test_crop_boxes_follow_random_resized_crop(
    scale: tuple[float, float], ratio: tuple[float, float]
) -> None:
    n, h, w = 4000, 32, 32
    u = _uniforms(n, 22)
    top, left, bh, bw = batch_geometry.random_resized_crop_boxes(
        u, torch.full((n,), h), torch.full((n,), w), scale, ratio
    ).unbind(1)
    assert ((top >= 0) & (left >= 0) & (top + bh <= h) & (left + bw <= w) & (bh > 0) & (bw > 0)).all()
    area = (bh * bw).double() / (h * w)
    aspect = bw.double() / bh.double()
    # Sides are rounded to pixels: allow half a pixel on each.
    assert area.min() >= scale[0] * (1 - 1 / 16) ** 2 - 1e-9 and area.max() <= scale[1] + 1e-9
    assert aspect.min() >= ratio[0] * (1 - 2 / 15) and aspect.max() <= ratio[1] * (1 + 2 / 15)
    # The placement is uniform: crops at the left and at the right edge are about as frequent.
    slack = w - bw
    movable = slack > 0
    assert (
        abs((left[movable] == 0).double().mean() - (left[movable] == slack[movable]).double().mean()) < 0.03
    )


def test_crop_falls_back_to_torchvisions_central_crop() -> None:
    # A very wide image: no crop of 90-100 % of the area has a near-square ratio, as in torchvision.
    n = 6
    boxes = batch_geometry.random_resized_crop_boxes(
        _uniforms(n, 22), torch.full((n,), 10), torch.full((n,), 100), (0.9, 1.0), (3 / 4, 4 / 3)
    )
    reference = v2.RandomResizedCrop(8, scale=(0.9, 1.0), ratio=(3 / 4, 4 / 3))
    params = reference.make_params([torch.zeros(3, 10, 100)])
    expected = [params["top"], params["left"], params["height"], params["width"]]
    assert boxes.tolist() == [expected] * n == [[0, 43, 10, 13]] * n


def test_flip_and_erase_are_exact() -> None:
    x = _images(6)
    flip = torch.tensor([True, False, True, True, False, False])
    out = batch_geometry.horizontal_flip(x, flip)
    for i in range(6):
        assert torch.equal(out[i], TF.horizontal_flip(x[i]) if flip[i] else x[i])
    z = torch.randn(6, 3, 32, 32)
    top, left = torch.tensor([0, 16, 3, 7, 16, 1]), torch.tensor([16, 0, 9, 2, 16, 0])
    erased = batch_geometry.erase(z, top, left, 16)
    for i in range(6):
        assert torch.equal(erased[i], TF.erase(z[i], int(top[i]), int(left[i]), 16, 16, torch.tensor(0.0)))


@pytest.mark.parametrize("channels", [3, 1])
def test_affine_warps_are_torchvisions(channels: int) -> None:
    n, side = 40, 32
    x = _images(n, channels)
    gen = torch.Generator().manual_seed(1)
    zeros = torch.zeros(n, 2, dtype=torch.float64)
    angle = torch.rand(n, generator=gen, dtype=torch.float64) * 60 - 30
    rotated = batch_geometry.affine(x, batch_geometry.inverse_affine_matrices(-angle, zeros, zeros, zeros))
    assert torch.equal(rotated, torch.stack([TF.rotate(x[i], float(angle[i])) for i in range(n)]))
    shear = torch.rand(n, generator=gen, dtype=torch.float64) * 34 - 17
    corner = torch.full((n, 2), -side / 2, dtype=torch.float64)
    sheared = batch_geometry.affine(
        x, batch_geometry.inverse_affine_matrices(torch.zeros(n, dtype=torch.float64), zeros,
                                                  torch.stack([shear, torch.zeros_like(shear)], 1), corner)
    )  # fmt: skip
    expected = [
        TF.affine(x[i], angle=0.0, translate=[0, 0], scale=1.0, shear=[float(shear[i]), 0.0], center=[0, 0])
        for i in range(n)
    ]
    assert torch.equal(sheared, torch.stack(expected))


# --- colour --------------------------------------------------------------------------------------


def _autoaugment_factors(n: int) -> torch.Tensor:
    """1 ± AutoAugment's magnitudes: factors whose blends land exactly on integers, where only the
    same float arithmetic (fused multiply-add included) gives torchvision's bytes."""
    gen = torch.Generator().manual_seed(2)
    bins = torch.linspace(0.0, 0.9, 10).tolist()
    signs = torch.randint(0, 2, (n,), generator=gen) * 2 - 1
    picks = torch.randint(0, 10, (n,), generator=gen)
    return torch.tensor(
        [1.0 + s * bins[b] for s, b in zip(signs.tolist(), picks.tolist(), strict=True)], dtype=torch.float64
    )


@pytest.mark.parametrize("channels", [3, 1])
@pytest.mark.parametrize(
    ("kernel", "reference"),
    [(batch_colour.brightness, TF.adjust_brightness), (batch_colour.contrast, TF.adjust_contrast),
     (batch_colour.saturation, TF.adjust_saturation), (batch_colour.sharpness, TF.adjust_sharpness)],
)  # fmt: skip
def test_colour_ops_are_torchvisions(kernel, reference, channels: int) -> None:
    n = 64
    x = _images(n, channels, seed=4)
    random = 0.5 + torch.rand(n, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    for factors in (random, _autoaugment_factors(n)):
        out = kernel(x, factors)
        assert out.dtype == torch.uint8
        assert torch.equal(out, torch.stack([reference(x[i], float(factors[i])) for i in range(n)]))
        assert torch.equal(kernel(x[5:6], factors[5:6])[0], out[5])


def test_posterize_and_solarize_are_torchvisions() -> None:
    n = 30
    x = _images(n, seed=5)
    bits = torch.arange(n) % 9
    assert torch.equal(
        batch_colour.posterize(x, bits), torch.stack([TF.posterize(x[i], int(bits[i])) for i in range(n)])
    )
    # 255 · float32(1/3) is 85.0000017 in float64 but 85 in float32, where torchvision compares.
    thresholds = torch.tensor(
        [255.0 * v for v in torch.linspace(1.0, 0.0, 10).tolist()] * 3, dtype=torch.float64
    )
    assert torch.equal(
        batch_colour.solarize(x, thresholds),
        torch.stack([TF.solarize(x[i], float(thresholds[i])) for i in range(n)]),
    )


def test_normalise_is_to_dtype_then_normalize() -> None:
    x = _images(5)
    mean, std = (0.5, 0.4, 0.3), (0.2, 0.25, 0.3)
    reference = v2.Compose([v2.ToDtype(torch.float32, scale=True), v2.Normalize(list(mean), list(std))])
    out = batch_stages.Normalise(mean, std)(x, torch.empty(5, 0))
    assert torch.equal(out, torch.stack([reference(im) for im in x]))


# --- AutoAugment / RandAugment ------------------------------------------------------------------


def test_policies_and_magnitudes_are_torchvisions() -> None:
    for policy, steps in AA.AUTOAUGMENT_POLICIES.items():
        assert [tuple(sub) for sub in v2.AutoAugment(policy)._policies] == list(steps)
    assert tuple(v2.RandAugment._AUGMENTATION_SPACE) == AA.RANDAUGMENT_OPS
    for space, bins in ((v2.AutoAugment._AUGMENTATION_SPACE, 10), (v2.RandAugment._AUGMENTATION_SPACE, 31)):
        for name, (values, signed) in space.items():
            expected = values(bins, 24, 40)
            ours = AA.magnitudes(name, bins, 24, 40)
            assert (name in AA.SIGNED) == signed
            assert ours is None if expected is None else ours == [float(v) for v in expected]


@pytest.mark.parametrize("channels", [3, 1])
def test_every_op_at_every_magnitude_is_torchvisions(channels: int) -> None:
    x = _images(3, channels, 24, 24, seed=6)
    tv = v2.AutoAugment()
    for name, kernel in AA.KERNELS.items():
        if kernel is None:
            continue
        values = AA.magnitudes(name, 10, 24, 24) or [0.0]
        signs = (1.0, -1.0) if name in AA.SIGNED else (1.0,)
        for magnitude in (s * v for v in values for s in signs):
            out = kernel(x, torch.full((3,), magnitude, dtype=torch.float64))
            for i in range(3):
                expected = tv._apply_image_or_video_transform(
                    x[i], name, magnitude, interpolation=v2.InterpolationMode.NEAREST, fill={}
                )
                assert torch.equal(out[i], expected), (name, magnitude)


@pytest.mark.parametrize("stage", [AA.AutoAugment(AutoAugmentPolicy.CIFAR10),
                                   AA.AutoAugment(AutoAugmentPolicy.IMAGENET), AA.RandAugment(2, 9)])  # fmt: skip
def test_auto_augment_stages_apply_their_plan_as_torchvision_would(stage) -> None:
    n = 96
    x = _images(n, 3, 24, 24, seed=7)
    u = _uniforms(n, stage.draws, seed=8)
    out = stage(x, u)
    plan = stage.plan(u, 24, 24)
    tv = v2.AutoAugment()
    for i in range(n):
        expected = x[i]
        for op, magnitude in plan:
            expected = tv._apply_image_or_video_transform(
                expected,
                AA.OPS[int(op[i])],
                float(magnitude[i]),
                interpolation=v2.InterpolationMode.NEAREST,
                fill={},
            )
        assert torch.equal(out[i], expected)


def test_autoaugment_plan_draws_as_torchvision_does() -> None:
    n = 20000
    stage = AA.AutoAugment(AutoAugmentPolicy.CIFAR10)
    u = _uniforms(n, stage.draws, seed=9)
    (first, m1), (second, _) = stage.plan(u, 32, 32)
    sub = torch.floor(u[:, 0] * 25).long()
    # Sub-policy 14 is (Solarize p=0.5 bin 2, Invert p=0.0): half of its samples solarize, none inverts.
    chosen = sub == 14
    assert abs(chosen.double().mean() - 1 / 25) < 0.006
    solarized = first[chosen] == AA.OPS.index("Solarize")
    assert abs(solarized.double().mean() - 0.5) < 0.05
    assert (second[chosen] == AA.OPS.index("Identity")).all()
    # Sub-policy 6 starts with Color p=0.4 bin 3 (0.3): signed, so ±0.3, about half each.
    colour = (sub == 6) & (first == AA.OPS.index("Color"))
    assert sorted({round(v, 6) for v in m1[colour].tolist()}) == [-0.3, 0.3]
    assert abs((m1[colour] > 0).double().mean() - 0.5) < 0.08


def test_randaugment_draws_each_op_uniformly() -> None:
    n = 28000
    stage = AA.RandAugment(2, 9)
    plan = stage.plan(_uniforms(n, stage.draws, seed=10), 32, 32)
    assert len(plan) == 2
    for op, magnitude in plan:
        counts = torch.bincount(op, minlength=len(AA.OPS)).double() / n
        used = [AA.OPS.index(name) for name in AA.RANDAUGMENT_OPS]
        assert (counts[used] - 1 / 14).abs().max() < 0.01
        rotate = op == AA.OPS.index("Rotate")
        assert set(magnitude[rotate].abs().tolist()) == {9.0}  # bin 9 of 31 over 0..30 degrees


# --- the other stages ---------------------------------------------------------------------------


def test_colour_jitter_applies_its_factors_in_its_order() -> None:
    n = 60
    stage = batch_stages.ColourJitter(0.4)
    x = _images(n, seed=11)
    u = _uniforms(n, stage.draws, seed=12)
    factors, order = stage.plan(u)
    assert ((factors >= 0.6) & (factors <= 1.4)).all()
    assert all(sorted(row) == [0, 1, 2] for row in order.tolist())
    out = stage(x, u)
    reference = (TF.adjust_brightness, TF.adjust_contrast, TF.adjust_saturation)
    for i in range(n):
        expected = x[i]
        for k in order[i].tolist():
            expected = reference[k](expected, float(factors[i, k]))
        assert torch.equal(out[i], expected)
    many = stage.plan(_uniforms(6000, 6, seed=13))[1]
    perms = torch.unique(many, dim=0, return_counts=True)[1].double() / 6000
    assert len(perms) == 6 and (perms - 1 / 6).abs().max() < 0.02


def test_rotation_flip_and_cutout_stages() -> None:
    n = 400
    x = _images(n, 1, 8, 8, seed=14)
    u = _uniforms(n, 1, seed=15)
    rotated = batch_stages.Rotation(10.0)(x, u)
    angles = -10.0 + u[:, 0] * 20.0
    assert angles.abs().max() <= 10 and angles.min() < -9 and angles.max() > 9
    assert torch.equal(rotated, torch.stack([TF.rotate(x[i], float(angles[i])) for i in range(n)]))
    flipped = batch_stages.HorizontalFlip()(x, u)
    mirrored = (flipped != x).flatten(1).any(1)
    assert abs(mirrored.double().mean() - 0.5) < 0.1
    z = torch.randn(n, 3, 32, 32) + 10  # no zeros of its own
    erased = batch_stages.Cutout(0.25)(z, _uniforms(n, 2, seed=16))
    blank = (erased == 0).all(dim=1)
    assert (blank.flatten(1).sum(1) == 256).all()  # a 16×16 square, always inside the image
    rows, cols = blank.any(2), blank.any(1)
    assert (rows.sum(1) == 16).all() and (cols.sum(1) == 16).all()
    assert rows[:, 0].any() and rows[:, -1].any() and cols[:, 0].any() and cols[:, -1].any()


def test_list_of_images_is_cropped_as_a_batch_is() -> None:
    stage = batch_stages.RandomResizedCrop(24, scale=(0.08, 1.0), ratio=(3 / 4, 4 / 3))
    x = _images(10, 3, 30, 41, seed=17)
    u = _uniforms(10, stage.draws, seed=18)
    assert torch.equal(stage(list(x), u), stage(x, u))
    sizes = [_images(1, 3, 28 + i, 40 - i, seed=i)[0] for i in range(5)]
    out = stage(sizes, u[:5])
    assert out.shape == (5, 3, 24, 24)
    for i in range(5):
        assert torch.equal(out[i], stage([sizes[i]], u[i : i + 1])[0])


def test_pipeline_reads_fixed_columns_and_needs_seeds() -> None:
    pipeline = BatchPipeline(
        [batch_stages.RandomResizedCrop(16, (0.5, 1.0), (3 / 4, 4 / 3)), batch_stages.HorizontalFlip(),
         batch_stages.Normalise((0.5,) * 3, (0.25,) * 3)]
    )  # fmt: skip
    assert pipeline.draws == 23
    x = _images(8, 3, 16, 16)
    seeds = sample_seeds(1, 2, range(8))
    out = pipeline(x, seeds)
    assert out.dtype == torch.float32 and out.shape == (8, 3, 16, 16)
    assert torch.equal(pipeline(x[4:6], seeds[4:6]), out[4:6])
    with pytest.raises(ValueError, match="needs seeds"):
        pipeline(x, None)


def test_per_image_transforms_run_seeded_sample_by_sample() -> None:
    per_image = v2.Compose([v2.RandomResizedCrop(8, antialias=True), v2.ToDtype(torch.float32, scale=True)])
    wrapped = as_batch_transform(per_image)
    assert isinstance(wrapped, PerSampleTransform)
    x = _images(4, 3, 12, 12)
    seeds = [11, 12, 13, 14]
    torch.manual_seed(0)
    state = torch.get_rng_state()
    out = wrapped(x, seeds)
    assert torch.equal(torch.get_rng_state(), state)
    for i, seed in enumerate(seeds):
        torch.manual_seed(seed)
        assert torch.equal(out[i], per_image(x[i]))
    assert math.isfinite(float(out.sum()))
