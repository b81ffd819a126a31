"""SplitMetrics: streaming equals one-shot functional metrics; DDP reduction equals one worker."""

from __future__ import annotations

import math
import socket
from itertools import combinations

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from kd_ray import metrics
from kd_ray.metrics import SplitMetrics
from kd_ray.metrics.names import SPLIT_METRICS, teacher_metric

C = 6
BATCHES = (13, 20, 1, 16)


def make_data(k, seed=0):
    """Logits correlated with the labels (so accuracy and MI are not trivial) and CAM-sized
    teacher maps on a larger grid than the student's."""
    g = torch.Generator().manual_seed(seed)
    n = sum(BATCHES)
    y = torch.randint(0, C, (n,), generator=g)
    onehot = torch.nn.functional.one_hot(y, C).double()
    student = torch.randn(n, C, generator=g, dtype=torch.float64) * 2 + 2 * onehot
    teachers = [torch.randn(n, C, generator=g, dtype=torch.float64) * 2 + 3 * onehot for _ in range(k)]
    teacher_maps = [torch.rand(n, 7, 7, generator=g) for _ in range(k)]
    student_maps = torch.rand(n, 4, 4, generator=g)
    student_maps[0] = 1.0  # a constant map, whose mask is empty
    losses = torch.rand(len(BATCHES), generator=g)
    return student, teachers, y, student_maps, teacher_maps, losses


def stream(acc, data, rows=None, *, maps=True, student_maps=True, loss=True):
    """Feed ``data`` (restricted to ``rows``) to ``acc`` in the uneven BATCHES."""
    student, teachers, y, s_maps, t_maps, losses = data
    rows = torch.arange(len(y)) if rows is None else rows
    start = 0
    for b, size in enumerate(BATCHES):
        idx = rows[(rows >= start) & (rows < start + size)]
        start += size
        acc.update(
            student[idx],
            [t[idx] for t in teachers],
            y[idx],
            student_maps=s_maps[idx] if maps and student_maps else None,
            teacher_maps=[m[idx] for m in t_maps] if maps else None,
            loss=losses[b] if loss else None,
        )
    return acc


def functional_metrics(data):
    student, teachers, y, s_maps, t_maps, losses = data
    ens = metrics.ensemble_logits(teachers)
    probmean = metrics.ensemble_log_probs(teachers)
    size = (7, 7)
    pairs = [metrics.attention_iou(a, b, size=size) for a, b in combinations(t_maps, 2)]
    out = {
        "acc": metrics.top1_agreement(student, y),
        "loss": float(sum(b * n for b, n in zip(losses.tolist(), BATCHES, strict=True)) / sum(BATCHES)),
        "agreement": metrics.top1_agreement(ens, student),
        "kl": metrics.mean_kl(ens, student),
        "mi": metrics.mutual_information(ens, student, C),
        "entropy": metrics.mean_entropy(student),
        "ece": metrics.expected_calibration_error(student, y),
        "iou_teachers": sum(pairs) / len(pairs) if pairs else math.nan,
        "iou_student": sum(metrics.attention_iou(t, s_maps, size=size) for t in t_maps) / len(t_maps),
        "mi_mm": metrics.mutual_information(ens, student, C, correction="miller_madow"),
        "agreement_probmean": metrics.top1_agreement(probmean, student),
        "kl_probmean": metrics.mean_kl(probmean, student),
        "acc_ensemble": metrics.top1_agreement(ens, y),
    }
    for i, t in enumerate(teachers, start=1):
        out[teacher_metric("acc", i)] = metrics.top1_agreement(t, y)
        out[teacher_metric("entropy", i)] = metrics.mean_entropy(t)
    return out


def assert_same(got, want, rel=1e-12):
    assert set(got) == set(want)
    for name, value in want.items():
        if math.isnan(value):
            assert math.isnan(got[name]), name
        else:
            assert got[name] == pytest.approx(value, rel=rel, abs=1e-15), name


@pytest.mark.parametrize("k", [1, 2, 3])
def test_streaming_equals_functional_on_concatenated_data(k):
    data = make_data(k, seed=k)
    acc = stream(SplitMetrics(C, k), data)
    got = acc.compute()
    assert set(got) == set(SPLIT_METRICS) | {
        teacher_metric(m, i) for m in ("acc", "entropy") for i in range(1, k + 1)
    }
    assert all(type(v) is float for v in got.values())
    assert_same(got, functional_metrics(data))
    for row, want in zip(acc.calibration(), metrics.calibration_curve(data[0], data[2]), strict=True):
        assert row == pytest.approx(want, nan_ok=True)


def test_ensemble_targets_and_corrected_mi_hand_computed():
    # Two samples in two batches. Sample 1: the teachers' mean logits [0, -4, 1/4] pick class 2,
    # their mean probabilities (~[0.242, 0.394, 0.365]) class 1, the student and the label 1.
    # Sample 2: both teachers and the label say 0, the student 2.
    t1 = torch.tensor([[0.0, 2.0, 0.0], [1.0, 0.0, 0.0]], dtype=torch.float64)
    t2 = torch.tensor([[0.0, -10.0, 0.5], [1.0, 0.0, 0.0]], dtype=torch.float64)
    s = torch.tensor([[0.0, 1.0, 0.0], [0.0, 0.0, 1.0]], dtype=torch.float64)
    y = torch.tensor([1, 0])
    acc = SplitMetrics(3, 2)
    for i in (0, 1):
        acc.update(s[i : i + 1], [t1[i : i + 1], t2[i : i + 1]], y[i : i + 1])
    got = acc.compute()
    assert got["acc"] == 0.5 and got["agreement"] == 0.0
    assert got["agreement_probmean"] == 0.5  # sample 1 only
    assert got["acc_ensemble"] == 0.5  # mean of logits: wrong on sample 1, right on sample 2
    # Contingency (ensemble, student): (2, 1) and (0, 2): MI = ln 2; 2 rows, 2 columns and
    # 2 joint cells non-empty, N = 2: Miller-Madow adds (1 + 1 - 1) / 4.
    assert got["mi"] == pytest.approx(math.log(2), rel=1e-12)
    assert got["mi_mm"] == pytest.approx(math.log(2) + 0.25, rel=1e-12)
    e = math.e
    z2 = 1 + e**-10 + e**0.5
    pbar = [(1 / (e**2 + 2) + 1 / z2) / 2, (e**2 / (e**2 + 2) + e**-10 / z2) / 2]
    pbar.append(1 - sum(pbar))
    q1 = [1 / (e + 2), e / (e + 2), 1 / (e + 2)]
    kl_1 = sum(p * math.log(p / q) for p, q in zip(pbar, q1, strict=True))
    kl_2 = (e - 1) / (e + 2)  # p = (e, 1, 1)/(e+2), q = (1, 1, e)/(e+2): (e·1 + 1·(-1)) / (e+2)
    assert got["kl_probmean"] == pytest.approx((kl_1 + kl_2) / 2, rel=1e-12)


def test_one_teacher_both_ensemble_targets_agree():
    got = stream(SplitMetrics(C, 1), make_data(1, seed=5)).compute()
    assert got["agreement_probmean"] == got["agreement"]
    assert got["kl_probmean"] == pytest.approx(got["kl"], rel=1e-12)
    assert got["acc_ensemble"] == got["acc_t1"]


def test_maps_on_a_given_grid():
    data = make_data(2)
    student, teachers, y, s_maps, t_maps, _ = data
    acc = stream(SplitMetrics(C, 2, map_size=(12, 12), iou_threshold=0.3), data)
    got = acc.compute()
    assert got["iou_teachers"] == pytest.approx(metrics.attention_iou(*t_maps, 0.3, size=(12, 12)))
    want = sum(metrics.attention_iou(t, s_maps, 0.3, size=(12, 12)) for t in t_maps) / 2
    assert got["iou_student"] == pytest.approx(want)


def test_ece_bins_option():
    data = make_data(1)
    acc = stream(SplitMetrics(C, 1, ece_bins=4), data)
    assert acc.compute()["ece"] == pytest.approx(metrics.expected_calibration_error(data[0], data[2], 4))
    assert len(acc.calibration()) == 4
    assert sum(r["count"] for r in acc.calibration()) == sum(BATCHES)


def test_nan_rules():
    one = stream(SplitMetrics(C, 1), make_data(1)).compute()
    assert math.isnan(one["iou_teachers"]) and not math.isnan(one["iou_student"])

    no_maps = stream(SplitMetrics(C, 2), make_data(2), maps=False, loss=False).compute()
    assert math.isnan(no_maps["iou_teachers"]) and math.isnan(no_maps["iou_student"])
    assert math.isnan(no_maps["loss"]) and not math.isnan(no_maps["acc"])

    teachers_only = stream(SplitMetrics(C, 2), make_data(2), student_maps=False).compute()
    assert not math.isnan(teachers_only["iou_teachers"]) and math.isnan(teachers_only["iou_student"])

    empty = SplitMetrics(C, 3).compute()
    assert all(math.isnan(v) for v in empty.values())


def test_argument_checks():
    data = make_data(2)
    acc = stream(SplitMetrics(C, 2), data)
    with pytest.raises(ValueError, match="teacher logits"):
        acc.update(data[0], data[1][:1], data[2])
    with pytest.raises(ValueError, match="student_maps"):
        acc.update(data[0], data[1], data[2], student_maps=data[3])
    with pytest.raises(ValueError):
        SplitMetrics(C, 0)


def test_all_reduce_without_process_group_is_a_no_op():
    data = make_data(2)
    acc = stream(SplitMetrics(C, 2), data)
    before = acc.compute()
    acc.all_reduce()
    assert_same(acc.compute(), before)


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _ddp_worker(rank, world_size, port, k, out_dir):
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world_size)
    try:
        data = make_data(k, seed=11)
        # Validation-style sharding rank::world_size, batches of the same global positions.
        acc = stream(SplitMetrics(C, k, top5=True), data, rows=torch.arange(rank, len(data[2]), world_size))
        acc.all_reduce()
        torch.save((acc.compute(), acc._state), f"{out_dir}/rank{rank}.pt")
    finally:
        dist.destroy_process_group()


@pytest.mark.parametrize("k", [2])
def test_two_worker_gloo_all_reduce_equals_one_worker(k, tmp_path):
    mp.start_processes(_ddp_worker, args=(2, _free_port(), k, tmp_path), nprocs=2, start_method="spawn")
    results = {r: torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in (0, 1)}
    data = make_data(k, seed=11)
    single = stream(SplitMetrics(C, k, top5=True), data)
    # Top-5 counts are summed like the top-1 ones (C = 6 classes: not trivially 1).
    assert single.compute()["acc_top5"] == metrics.top_k_accuracy(data[0], data[2], 5) < 1
    for rank in (0, 1):
        got, state = results[rank]
        # Sums of counts are exact; float sums differ only by summation order.
        torch.testing.assert_close(state, single._state, rtol=1e-12, atol=1e-12)
        assert_same(got, single.compute())
    assert results[0][1].equal(results[1][1])
