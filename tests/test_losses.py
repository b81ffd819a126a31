"""Distillation losses against a hand-written reference of docs/experiments.md#distillation-loss."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from kd_ray import losses
from kd_ray.errors import ConfigError
from kd_ray.losses import LOSSES, distillation_loss

C = 7


def reference_loss(s, teachers, y, tau, alpha, standardize):
    """docs/experiments.md#distillation-loss written out sample by sample in float64 numpy."""
    s = np.asarray(s, dtype=np.float64)
    y = np.asarray(y)

    def zscore(v):
        return (v - v.mean()) / (v.std(ddof=1) + 1e-7)

    def log_softmax(v):
        v = v - v.max()
        return v - math.log(np.exp(v).sum())

    n = len(s)
    ce = -sum(log_softmax(s[i])[y[i]] for i in range(n)) / n
    kd = 0.0
    for t in teachers:
        t = np.asarray(t, dtype=np.float64)
        kl = 0.0
        for i in range(n):
            sv, tv = (zscore(s[i]), zscore(t[i])) if standardize else (s[i], t[i])
            log_q, log_p = log_softmax(sv / tau), log_softmax(tv / tau)
            kl += float((np.exp(log_p) * (log_p - log_q)).sum())
        kd += tau**2 * kl / n
    return alpha * ce + (1 - alpha) * kd / len(teachers)


def _batch(k, n=5, seed=0):
    g = torch.Generator().manual_seed(seed)
    s = torch.randn(n, C, generator=g, dtype=torch.float64) * 3
    ts = [torch.randn(n, C, generator=g, dtype=torch.float64) * 4 + 1 for _ in range(k)]
    y = torch.randint(0, C, (n,), generator=g)
    return s, ts, y


@pytest.mark.parametrize("standardize", [False, True])
@pytest.mark.parametrize("k", [1, 2, 3])
@pytest.mark.parametrize(("tau", "alpha"), [(10.0, 0.2), (4.0, 0.5), (1.0, 0.0)])
def test_matches_reference(k, standardize, tau, alpha):
    s, ts, y = _batch(k, seed=k)
    got = distillation_loss(s, ts, y, temperature=tau, alpha=alpha, standardize=standardize)
    want = reference_loss(s.numpy(), [t.numpy() for t in ts], y.numpy(), tau, alpha, standardize)
    assert got.ndim == 0
    assert float(got) == pytest.approx(want, rel=1e-10, abs=1e-12)


def test_defaults_are_spec_values():
    s, ts, y = _batch(2)
    assert float(distillation_loss(s, ts, y)) == pytest.approx(
        reference_loss(s.numpy(), [t.numpy() for t in ts], y.numpy(), 10.0, 0.2, False), rel=1e-10
    )


def test_hand_computed_tiny_case():
    # One sample, two classes, tau = 1: s = [0, 0] gives q = [1/2, 1/2];
    # t = [ln 3, 0] gives p = [3/4, 1/4]; label 0.
    s = torch.tensor([[0.0, 0.0]], dtype=torch.float64)
    t = torch.tensor([[math.log(3.0), 0.0]], dtype=torch.float64)
    y = torch.tensor([0])
    ce = math.log(2.0)
    kl = 0.75 * math.log(0.75 / 0.5) + 0.25 * math.log(0.25 / 0.5)
    got = distillation_loss(s, [t], y, temperature=1.0, alpha=0.3)
    assert float(got) == pytest.approx(0.3 * ce + 0.7 * kl, rel=1e-12)
    # Identical teacher and student: only the CE term remains.
    assert float(distillation_loss(s, [s], y, temperature=10.0, alpha=0.3)) == pytest.approx(0.3 * ce)


def test_teachers_are_averaged_not_summed():
    s, (t1, t2), y = _batch(2)
    kd1 = float(distillation_loss(s, [t1], y, alpha=0.0))
    kd2 = float(distillation_loss(s, [t2], y, alpha=0.0))
    assert float(distillation_loss(s, [t1, t2], y, alpha=0.0)) == pytest.approx((kd1 + kd2) / 2)


def test_zscore_invariant_to_teacher_shift_and_scale():
    s, ts, y = _batch(2)
    n = s.shape[0]
    g = torch.Generator().manual_seed(3)
    moved = [t * (torch.rand(n, 1, generator=g) * 5 + 0.1) + torch.randn(n, 1, generator=g) * 9 for t in ts]
    base = distillation_loss(s, ts, y, standardize=True)
    assert float(distillation_loss(s, moved, y, standardize=True)) == pytest.approx(float(base), rel=1e-6)
    # Vanilla KD is not invariant: the test above is not vacuous.
    assert float(distillation_loss(s, moved, y)) != pytest.approx(
        float(distillation_loss(s, ts, y)), rel=1e-3
    )


def test_zscore_ce_term_uses_raw_student_logits():
    s, ts, y = _batch(1)
    ce = float(torch.nn.functional.cross_entropy(s, y))
    # alpha = 1 leaves only the CE term, which must not see standardisation.
    assert float(distillation_loss(s, ts, y, alpha=1.0, standardize=True)) == pytest.approx(ce, rel=1e-12)
    # Scaling the student changes CE but not the standardised KD term.
    kd = float(distillation_loss(s, ts, y, alpha=0.0, standardize=True))
    assert float(distillation_loss(s * 3 + 2, ts, y, alpha=0.0, standardize=True)) == pytest.approx(
        kd, rel=1e-6
    )
    assert float(distillation_loss(s * 3 + 2, ts, y, alpha=1.0, standardize=True)) != pytest.approx(ce)


def test_gradient_flows_to_student_only():
    s, ts, y = _batch(2)
    s = s.clone().requires_grad_(True)
    distillation_loss(s, ts, y, standardize=True).backward()
    assert s.grad is not None and torch.isfinite(s.grad).all() and s.grad.abs().sum() > 0


def test_accepts_numpy_and_stacked_teachers():
    s, ts, y = _batch(2)
    want = float(distillation_loss(s, ts, y))
    assert float(distillation_loss(s.numpy(), [t.numpy() for t in ts], y.numpy())) == pytest.approx(want)
    assert float(distillation_loss(s, torch.stack(ts), y)) == pytest.approx(want)
    assert float(distillation_loss(s, ts[0], y)) == pytest.approx(float(distillation_loss(s, [ts[0]], y)))


def test_rejects_no_teachers_and_bad_shapes():
    s, ts, y = _batch(1)
    with pytest.raises(ValueError):
        distillation_loss(s, [], y)
    with pytest.raises(ValueError):
        distillation_loss(s, [ts[0][:, :3]], y)


def test_registry_lists_both_losses():
    assert LOSSES.names() == ["kd", "zscore_kd"]
    assert losses.LOSSES is LOSSES


@pytest.mark.parametrize("name", LOSSES.names())
@pytest.mark.parametrize("k", [1, 2, 3])
def test_registered_losses_match_distillation_loss(name, k):
    s, ts, y = _batch(k)
    got = LOSSES.get(name)(temperature=4.0, alpha=0.3)(s, ts, y)
    want = distillation_loss(s, ts, y, temperature=4.0, alpha=0.3, standardize=name == "zscore_kd")
    assert float(got) == pytest.approx(float(want), rel=1e-12)


def test_unknown_loss_lists_known_names():
    with pytest.raises(ConfigError, match=r"kd, zscore_kd"):
        LOSSES.get("dkd")


def test_a_registered_loss_takes_its_hyper_parameters_at_construction_only():
    s, ts, y = _batch(2)
    loss = LOSSES.get("kd")(temperature=4.0, alpha=0.3)
    assert float(loss(s, ts, y)) == float(loss(s, ts, y))  # bound, no state between batches
    with pytest.raises(TypeError):
        LOSSES.get("kd")(4.0, 0.3)  # keywords only: a swapped τ and α cannot pass unseen
    with pytest.raises(TypeError):
        loss(s, ts, y, temperature=10.0)


def test_the_loss_of_docs_extending_is_a_loss_factory():
    """The example of docs/extending.md#add-a-loss, as written there (not registered): built with
    τ and α, called per batch; against one teacher the mean of probabilities is that teacher's,
    so it equals ``kd``, and against two it matches a numpy reference."""
    from dataclasses import dataclass

    import torch.nn.functional as F

    @dataclass(frozen=True, kw_only=True)
    class KDProbMean:
        temperature: float
        alpha: float

        def __call__(self, student_logits, teacher_logits, targets):
            tau = self.temperature
            p_bar = torch.stack([F.softmax(t / tau, dim=-1) for t in teacher_logits]).mean(dim=0)
            kd = F.kl_div(F.log_softmax(student_logits / tau, dim=-1), p_bar, reduction="batchmean")
            return (
                self.alpha * F.cross_entropy(student_logits, targets.long()) + (1 - self.alpha) * tau**2 * kd
            )

    s, ts, y = _batch(1)
    got = KDProbMean(temperature=4.0, alpha=0.3)(s, ts, y)
    assert float(got) == pytest.approx(
        float(LOSSES.get("kd")(temperature=4.0, alpha=0.3)(s, ts, y)), rel=1e-12
    )
    s, ts, y = _batch(2)
    p = np.mean(
        [np.exp(t.numpy() / 4 - np.log(np.exp(t.numpy() / 4).sum(1, keepdims=True))) for t in ts], axis=0
    )
    log_q = s.numpy() / 4 - np.log(np.exp(s.numpy() / 4).sum(1, keepdims=True))
    ce = -np.mean((s.numpy() - np.log(np.exp(s.numpy()).sum(1, keepdims=True)))[np.arange(5), y.numpy()])
    want = 0.3 * ce + 0.7 * 16 * np.mean((p * (np.log(p) - log_q)).sum(1))
    assert float(KDProbMean(temperature=4.0, alpha=0.3)(s, ts, y)) == pytest.approx(want, rel=1e-10)
