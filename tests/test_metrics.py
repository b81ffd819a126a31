"""The metric functions of docs/metrics.md#python-api: hand-computed cases and independent
implementations."""

from __future__ import annotations

import math

import numpy as np
import pytest
import scipy.stats
import torch
from sklearn.metrics import mutual_info_score

from kd_ray import metrics
from kd_ray.metrics import functional as fn

C = 5


def _logits(n=64, c=C, seed=0, scale=3.0):
    return torch.randn(n, c, generator=torch.Generator().manual_seed(seed), dtype=torch.float64) * scale


def _softmax(x):
    e = np.exp(x - x.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


# --- agreement, KL, entropy, MI ---------------------------------------------------------------


def test_top1_agreement_hand_computed():
    a = [[2.0, 1.0, 0.0], [0.0, 3.0, 1.0], [1.0, 0.0, 5.0], [0.0, 0.0, 1.0]]
    b = [[9.0, 1.0, 0.0], [4.0, 3.0, 1.0], [1.0, 0.0, 5.0], [3.0, 0.0, 1.0]]
    assert metrics.top1_agreement(np.array(a), np.array(b)) == pytest.approx(0.5)
    assert metrics.top1_agreement(torch.tensor(a), torch.tensor(b)) == pytest.approx(0.5)
    # Labels work as well as logits.
    assert metrics.top1_agreement(np.array([0, 1, 2, 2]), np.array(b)) == pytest.approx(0.5)
    assert isinstance(metrics.top1_agreement(np.array(a), np.array(a)), float)


def test_mean_kl_hand_computed():
    # p = [3/4, 1/4], q = [1/2, 1/2]; the second sample is identical (KL 0).
    t = np.array([[math.log(3.0), 0.0], [1.0, 2.0]])
    s = np.array([[0.0, 0.0], [1.0, 2.0]])
    kl = 0.75 * math.log(1.5) + 0.25 * math.log(0.5)
    assert metrics.mean_kl(t, s) == pytest.approx(kl / 2, rel=1e-12)
    assert metrics.mean_kl(torch.tensor(t), torch.tensor(s)) == pytest.approx(kl / 2, rel=1e-12)


def test_mean_kl_matches_scipy_and_direction():
    t, s = _logits(seed=1), _logits(seed=2)
    want = np.mean(
        [scipy.stats.entropy(p, q) for p, q in zip(_softmax(t.numpy()), _softmax(s.numpy()), strict=True)]
    )
    assert metrics.mean_kl(t, s) == pytest.approx(want, rel=1e-10)
    assert metrics.mean_kl(s, t) != pytest.approx(want, rel=1e-3)


def test_mean_entropy_hand_computed_and_scipy():
    uniform, peaked = np.zeros((1, 4)), np.array([[0.0, -1e4, -1e4, -1e4]])
    assert metrics.mean_entropy(uniform) == pytest.approx(math.log(4))
    assert metrics.mean_entropy(peaked) == pytest.approx(0.0, abs=1e-12)
    assert metrics.mean_entropy(np.vstack([uniform, peaked])) == pytest.approx(math.log(4) / 2)
    x = _logits(seed=3)
    want = scipy.stats.entropy(_softmax(x.numpy()), axis=1).mean()
    assert metrics.mean_entropy(x) == pytest.approx(want, rel=1e-10)
    assert metrics.mean_entropy(x.float()) == pytest.approx(want, rel=1e-5)


def test_mutual_information_hand_computed():
    # Perfectly dependent over 2 equiprobable labels: MI = ln 2; independent: 0.
    assert metrics.mutual_information([0, 1, 0, 1], [1, 0, 1, 0], 2) == pytest.approx(math.log(2))
    assert metrics.mutual_information([0, 0, 1, 1], [0, 1, 0, 1], 2) == pytest.approx(0.0, abs=1e-15)
    # Constant prediction carries no information, whatever the other does.
    assert metrics.mutual_information([0, 1, 2, 3], [2, 2, 2, 2], 4) == pytest.approx(0.0, abs=1e-15)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_mutual_information_matches_sklearn(seed):
    rng = np.random.default_rng(seed)
    a = rng.integers(0, 7, 300)
    b = np.where(rng.random(300) < 0.6, a, rng.integers(0, 7, 300))
    want = mutual_info_score(a, b)
    assert metrics.mutual_information(a, b, 7) == pytest.approx(want, rel=1e-10)
    assert metrics.mutual_information(torch.as_tensor(a), torch.as_tensor(b), 7) == pytest.approx(
        want, rel=1e-10
    )


def test_mutual_information_accepts_logits():
    a, b = _logits(seed=4), _logits(seed=5)
    want = mutual_info_score(a.argmax(1).numpy(), b.argmax(1).numpy())
    assert metrics.mutual_information(a, b, C) == pytest.approx(want, rel=1e-10)


def test_mutual_information_miller_madow_hand_computed():
    # Pairs (a, b): (0,0) x3, (0,1), (1,1) x2, (2,2); N = 7. Rows 4, 2, 1; columns 3, 3, 1.
    a, b = [0, 0, 0, 0, 1, 1, 2], [0, 0, 0, 1, 1, 1, 2]
    plug_in = (
        3 / 7 * math.log((3 / 7) / (4 / 7 * 3 / 7))
        + 1 / 7 * math.log((1 / 7) / (4 / 7 * 3 / 7))
        + 2 / 7 * math.log((2 / 7) / (2 / 7 * 3 / 7))
        + 1 / 7 * math.log((1 / 7) / (1 / 7 * 1 / 7))
    )
    # Non-empty cells: 3 rows, 3 columns, 4 joint: ((3-1) + (3-1) - (4-1)) / (2 * 7) = 1/14.
    assert metrics.mutual_information(a, b, 3) == pytest.approx(plug_in, rel=1e-12)
    assert metrics.mutual_information(a, b, 3, correction="miller_madow") == pytest.approx(
        plug_in + 1 / 14, rel=1e-12
    )
    # Perfect dependence over 2 labels, N = 4: (1 + 1 - 1) / 8 on top of ln 2.
    mm = metrics.mutual_information([0, 1, 0, 1], [1, 0, 1, 0], 2, correction="miller_madow")
    assert mm == pytest.approx(math.log(2) + 1 / 8, rel=1e-12)
    assert fn.miller_madow_bias(torch.tensor([3.0, 0.0, 1.0])) == pytest.approx(1 / 8)
    assert math.isnan(metrics.mutual_information([], [], 3, correction="miller_madow"))
    with pytest.raises(ValueError, match="correction"):
        metrics.mutual_information(a, b, 3, correction="jackknife")


@pytest.mark.parametrize("seed", [0, 1])
def test_mutual_information_miller_madow_matches_scipy_entropies(seed):
    # Independent route: H(X) + H(Y) - H(X, Y) from scipy's entropies of the counts, each plus
    # its own (non-empty cells - 1) / (2N).
    rng = np.random.default_rng(seed)
    n, c = 150, 9
    a = rng.integers(0, c, n)
    b = np.where(rng.random(n) < 0.5, a, rng.integers(0, c, n))
    joint = np.zeros((c, c))
    np.add.at(joint, (a, b), 1)

    def h_mm(counts):
        counts = counts[counts > 0]
        return scipy.stats.entropy(counts) + (len(counts) - 1) / (2 * n)

    want = h_mm(joint.sum(axis=1)) + h_mm(joint.sum(axis=0)) - h_mm(joint.ravel())
    got = metrics.mutual_information(a, b, c, correction="miller_madow")
    assert got == pytest.approx(want, rel=1e-10)
    # The correction lowers the estimate here: the joint table has more non-empty cells.
    plug_in = metrics.mutual_information(a, b, c)
    assert plug_in == pytest.approx(mutual_info_score(a, b), rel=1e-10) and got < plug_in


# --- the probability-mean ensemble --------------------------------------------------------------


def test_probability_mean_ensemble_hand_computed():
    # Sample 1: the mean of logits [0, -4, 1/4] picks class 2, the mean of probabilities class 1.
    # Sample 2: both teachers say [1, 0, 0].
    t1 = np.array([[0.0, 2.0, 0.0], [1.0, 0.0, 0.0]])
    t2 = np.array([[0.0, -10.0, 0.5], [1.0, 0.0, 0.0]])
    s = np.array([[0.0, 1.0, 0.0], [0.0, 0.0, 1.0]])
    e = math.e
    p1 = [1 / (e**2 + 2), e**2 / (e**2 + 2), 1 / (e**2 + 2)]
    z2 = 1 + e**-10 + e**0.5
    p2 = [1 / z2, e**-10 / z2, e**0.5 / z2]
    pbar = [(x + y) / 2 for x, y in zip(p1, p2, strict=True)]  # ~[0.242, 0.394, 0.365]
    q = [1 / (e + 2), e / (e + 2), 1 / (e + 2)]  # softmax of the first student row
    kl_1 = sum(p * math.log(p / qq) for p, qq in zip(pbar, q, strict=True))
    p_second = [e / (e + 2), 1 / (e + 2), 1 / (e + 2)]
    q_second = [1 / (e + 2), 1 / (e + 2), e / (e + 2)]
    kl_2 = sum(p * math.log(p / qq) for p, qq in zip(p_second, q_second, strict=True))

    log_pbar = metrics.ensemble_log_probs([t1, t2])
    assert torch.allclose(log_pbar.exp()[0], torch.tensor(pbar, dtype=torch.float64), rtol=1e-12)
    assert fn.predictions(log_pbar).tolist() == [1, 0]
    assert fn.predictions(metrics.ensemble_logits([t1, t2])).tolist() == [2, 0]
    assert metrics.top1_agreement(log_pbar, s) == pytest.approx(0.5)
    assert metrics.top1_agreement(metrics.ensemble_logits([t1, t2]), s) == pytest.approx(0.0)
    assert metrics.mean_kl(log_pbar, s) == pytest.approx((kl_1 + kl_2) / 2, rel=1e-12)


def test_probability_mean_ensemble_of_one_teacher_is_the_teacher():
    t, s = _logits(seed=6), _logits(seed=7)
    log_p = metrics.ensemble_log_probs([t])
    assert torch.equal(log_p, torch.log_softmax(t, dim=-1))
    assert metrics.top1_agreement(log_p, s) == metrics.top1_agreement(metrics.ensemble_logits([t]), s)
    assert metrics.mean_kl(log_p, s) == pytest.approx(metrics.mean_kl(t, s), rel=1e-12)


# --- calibration ------------------------------------------------------------------------------


def test_ece_hand_computed():
    # Confidences 0.75 (correct), 0.75 (wrong), 1/2+ (correct) with 2 bins:
    # bin 1 holds both 0.75 samples: |1/2 - 3/4|, weight 2/3; bin 1 also holds the third (>0.5).
    logits = np.array([[math.log(3.0), 0.0], [math.log(3.0), 0.0], [0.1, 0.0]])
    targets = np.array([0, 1, 0])
    conf3 = 1 / (1 + math.exp(-0.1))
    acc, conf = 2 / 3, (0.75 + 0.75 + conf3) / 3
    assert metrics.expected_calibration_error(logits, targets, n_bins=2) == pytest.approx(abs(acc - conf))
    # With 4 bins, 0.75 sits on the boundary of (1/2, 3/4] (bin 2) and conf3 ≈ 0.525 in bin 2 too.
    rows = metrics.calibration_curve(logits, targets, n_bins=4)
    assert [r["count"] for r in rows] == [0, 0, 3, 0]
    assert math.isnan(rows[0]["acc"]) and math.isnan(rows[0]["conf"])
    assert rows[2]["acc"] == pytest.approx(2 / 3) and rows[2]["conf"] == pytest.approx(conf)


def test_ece_bins_are_closed_on_the_right():
    # Confidence exactly 1/2 (two equal logits) belongs to bin (0, 1/2], not (1/2, 1].
    rows = metrics.calibration_curve(np.zeros((1, 2)), np.array([0]), n_bins=2)
    assert [r["count"] for r in rows] == [1, 0]
    # Confidence 1 belongs to the last bin.
    rows = metrics.calibration_curve(np.array([[0.0, -1e4]]), np.array([0]), n_bins=3)
    assert [r["count"] for r in rows] == [0, 0, 1]


def test_ece_perfect_and_worst():
    sure = np.array([[0.0, -1e4], [-1e4, 0.0]])
    assert metrics.expected_calibration_error(sure, np.array([0, 1])) == pytest.approx(0.0, abs=1e-12)
    assert metrics.expected_calibration_error(sure, np.array([1, 0])) == pytest.approx(1.0)


@pytest.mark.parametrize("n_bins", [10, 15])
@pytest.mark.parametrize("seed", [0, 1])
def test_ece_matches_torchmetrics(n_bins, seed):
    # torchmetrics bins [m/M, (m+1)/M) (and confidence 1.0 in an extra bin) while we follow
    # Guo et al.'s (m/M, (m+1)/M]; they agree whenever no confidence sits on a boundary,
    # which holds almost surely for continuous random logits. torchmetrics sums in float32.
    tm = pytest.importorskip("torchmetrics.functional.classification")
    logits = _logits(n=500, c=10, seed=seed, scale=2.0)
    targets = torch.randint(0, 10, (500,), generator=torch.Generator().manual_seed(seed))
    conf = logits.softmax(1).max(1).values * n_bins
    assert not torch.isclose(conf, conf.round(), atol=1e-9).any()
    want = tm.multiclass_calibration_error(
        logits.softmax(1), targets, num_classes=10, n_bins=n_bins, norm="l1"
    )
    assert metrics.expected_calibration_error(logits, targets, n_bins) == pytest.approx(float(want), rel=1e-6)
    assert metrics.expected_calibration_error(logits.numpy(), targets.numpy(), n_bins) == pytest.approx(
        float(want)
    )


def test_ece_boundary_convention_differs_from_torchmetrics():
    tm = pytest.importorskip("torchmetrics.functional.classification")
    # Confidence exactly 0.5, wrong, plus a confident correct sample: Guo puts 0.5 in (0, 1/2].
    probs = torch.tensor([[0.5, 0.5, 0.0], [0.9, 0.05, 0.05]], dtype=torch.float64)
    targets = torch.tensor([1, 0])
    ours = metrics.expected_calibration_error(probs.log(), targets, n_bins=2)
    assert ours == pytest.approx((0.5 + 0.1) / 2)
    theirs = float(tm.multiclass_calibration_error(probs, targets, num_classes=3, n_bins=2, norm="l1"))
    assert theirs == pytest.approx(abs(0.5 - 0.7))


# --- attention IoU ----------------------------------------------------------------------------


def numpy_iou(a, b, threshold):
    """Reference: loop over images, min-max normalise, binarise, IoU (1.0 when both empty)."""
    out = []
    for x, y in zip(np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64), strict=True):
        masks = []
        for m in (x, y):
            span = m.max() - m.min()
            norm = (m - m.min()) / span if span > 0 else np.zeros_like(m)
            masks.append(norm > threshold)
        union = (masks[0] | masks[1]).sum()
        out.append((masks[0] & masks[1]).sum() / union if union else 1.0)
    return float(np.mean(out))


def test_attention_iou_hand_computed():
    a = np.array([[[0.0, 1.0], [0.0, 1.0]]])  # right column
    b = np.array([[[0.0, 0.0], [1.0, 1.0]]])  # bottom row
    assert metrics.attention_iou(a, b) == pytest.approx(1 / 3)
    assert metrics.attention_iou(a, a) == pytest.approx(1.0)
    assert metrics.attention_iou(torch.tensor(a), torch.tensor(b)) == pytest.approx(1 / 3)
    # Constant maps are empty masks: two of them have IoU 1, one against a non-empty mask 0.
    const = np.full((1, 2, 2), 7.0)
    assert metrics.attention_iou(const, const) == pytest.approx(1.0)
    assert metrics.attention_iou(const, a) == pytest.approx(0.0)
    # Mean over images, and the threshold is strict (> 0.5 excludes exactly 0.5).
    half = np.array([[[0.0, 0.5], [1.0, 1.0]]])
    assert metrics.attention_iou(np.vstack([a, a]), np.vstack([b, a])) == pytest.approx((1 / 3 + 1) / 2)
    assert metrics.attention_iou(half, b, threshold=0.5) == pytest.approx(1.0)


@pytest.mark.parametrize("threshold", [0.2, 0.4, 0.7])
def test_attention_iou_matches_numpy_reference(threshold):
    g = torch.Generator().manual_seed(6)
    a = torch.rand(16, 7, 7, generator=g) ** 2
    b = torch.rand(16, 7, 7, generator=g) * 5 - 2
    a[3] = 0.25  # a constant map
    want = numpy_iou(a.numpy(), b.numpy(), threshold)
    assert metrics.attention_iou(a, b, threshold) == pytest.approx(want, rel=1e-12)
    assert metrics.attention_iou(a.numpy(), b.numpy(), threshold) == pytest.approx(want, rel=1e-12)


def test_attention_iou_resizes_bilinearly():
    g = torch.Generator().manual_seed(7)
    small, big = torch.rand(4, 7, 7, generator=g), torch.rand(4, 14, 14, generator=g)

    def up(m, size):
        return torch.nn.functional.interpolate(m[:, None], size=size, mode="bilinear", align_corners=False)[
            :, 0
        ]

    # Different grids meet on the larger one unless a size is given.
    assert metrics.attention_iou(small, big) == pytest.approx(numpy_iou(up(small, (14, 14)), big, 0.4))
    want = numpy_iou(up(small, (32, 32)), up(big, (32, 32)), 0.4)
    assert metrics.attention_iou(small, big, size=(32, 32)) == pytest.approx(want)


def test_attention_iou_rejects_bad_shape():
    with pytest.raises(ValueError, match=r"\(N, H, W\)"):
        metrics.attention_iou(np.zeros((2, 2)), np.zeros((2, 2)))


def test_affinity():
    assert metrics.affinity(0.45, 0.5) == pytest.approx(0.9)
    assert math.isnan(metrics.affinity(0.3, 0.0))


# --- helpers shared with the accumulator ------------------------------------------------------


def test_ensemble_is_mean_of_teacher_logits():
    ts = [_logits(seed=s) for s in range(3)]
    assert torch.allclose(metrics.ensemble_logits(ts), (ts[0] + ts[1] + ts[2]) / 3)


def test_empty_inputs_are_nan():
    empty = np.zeros((0, C))
    for value in (
        metrics.top1_agreement(empty, empty),
        metrics.mean_kl(empty, empty),
        metrics.mean_entropy(empty),
        metrics.mutual_information(empty, empty, C),
        metrics.expected_calibration_error(empty, np.zeros(0, dtype=int)),
        metrics.attention_iou(np.zeros((0, 3, 3)), np.zeros((0, 3, 3))),
    ):
        assert math.isnan(value)


def test_contingency_table_counts_pairs():
    table = fn.contingency_table(np.array([0, 0, 1, 2]), np.array([0, 1, 1, 1]), 3)
    assert table.tolist() == [[1, 1, 0], [0, 1, 0], [0, 1, 0]]
    assert table.dtype == torch.float64
