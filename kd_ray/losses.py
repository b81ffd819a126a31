"""Student distillation losses (docs/experiments.md#distillation-loss) and the ``LOSSES`` registry.

A registered loss is a :class:`LossFactory`: built once per student trial with the trial's KD
hyper-parameters, ``LOSSES.get(name)(temperature=τ, alpha=α)``, it gives the trial's
:class:`DistillationLoss`, called once per batch as ``loss(student_logits, teacher_logits,
targets)`` and returning the scalar to minimise. The hyper-parameters are a trial's, fixed for
its whole run, so they are bound where the run builds the student, not passed with every batch;
the train loop looks the factory up by the trial's ``loss`` name. :func:`distillation_loss` is the
formula itself, a plain function with every argument given per call.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from kd_ray.registry import Registry

ArrayLike = Tensor | np.ndarray


class DistillationLoss(Protocol):
    """One trial's loss, its hyper-parameters bound: what the train loop calls on every batch.

    Args:
        student_logits: ``(N, C)`` student logits.
        teacher_logits: the k teachers' ``(N, C)`` logits in slot order, computed by the frozen
            teachers under ``torch.no_grad()`` on the batch as they saw it under the trial's view.
        targets: ``(N,)`` integer labels.

    Returns:
        The scalar loss, differentiable with respect to ``student_logits``.
    """

    def __call__(
        self, student_logits: Tensor, teacher_logits: Sequence[Tensor], targets: Tensor
    ) -> Tensor: ...


class LossFactory(Protocol):
    """Signature every registered loss has: a trial's KD hyper-parameters in, its loss out.

    ``temperature`` is τ and ``alpha`` the hard-label weight α of
    docs/experiments.md#kd-hyper-parameters (the trial's ``grid.temperatures`` / ``grid.alphas``
    value, else ``distill.temperature`` / ``distill.alpha``); a loss that has no use for one
    ignores it.
    """

    def __call__(self, *, temperature: float, alpha: float) -> DistillationLoss: ...


LOSSES: Registry[LossFactory] = Registry("loss")

# Sun et al. (2024) add this to the standard deviation so that a constant logit vector
# standardises to zeros instead of NaN.
ZSCORE_EPS = 1e-7


def distillation_loss(
    student_logits: ArrayLike,
    teacher_logits_list: Sequence[ArrayLike] | ArrayLike,
    targets: ArrayLike,
    *,
    temperature: float = 10.0,
    alpha: float = 0.2,
    standardize: bool = False,
) -> Tensor:
    r"""Ensemble knowledge-distillation loss of a student against k teachers.

    .. math::

        L = \alpha \, \mathrm{CE}(s, y) + (1 - \alpha) \frac{1}{k} \sum_{i=1}^{k}
            \tau^2 \, \mathrm{KL}\big(\mathrm{softmax}(t_i/\tau) \,\|\, \mathrm{softmax}(s/\tau)\big)

    with the KL divergence averaged over the batch ("batchmean"), as in Hinton et al. (2015),
    "Distilling the Knowledge in a Neural Network", and the paper's eqs. 6-8. With
    ``standardize=True`` (logit standardisation, Sun et al. 2024, "Logit Standardization in
    Knowledge Distillation"), every logit vector inside the KD term, the student's and each
    teacher's, is replaced by :math:`(v - \bar v) / (\mathrm{std}(v) + 10^{-7})` over classes
    (unbiased std); the cross-entropy term always sees the raw student logits.

    Teacher logits are used as given: run the frozen teachers under ``torch.no_grad()`` so no
    gradient reaches them.

    Args:
        student_logits: ``(N, C)`` student logits.
        teacher_logits_list: the k >= 1 teachers' ``(N, C)`` logits, as a sequence, a single
            ``(N, C)`` array (k = 1) or a stacked ``(k, N, C)`` array.
        targets: ``(N,)`` integer class labels.
        temperature: softening temperature :math:`\tau` of the KD term.
        alpha: weight :math:`\alpha` of the hard-label cross-entropy term.
        standardize: apply z-score logit standardisation inside the KD term.

    Returns:
        The scalar loss, differentiable with respect to ``student_logits``.

    Raises:
        ValueError: if no teacher logits are given or shapes disagree.
    """
    student = torch.as_tensor(student_logits)
    if not student.is_floating_point():
        student = student.float()
    teachers = [
        torch.as_tensor(t).to(device=student.device, dtype=student.dtype)
        for t in _teacher_list(teacher_logits_list)
    ]
    for t in teachers:
        if t.shape != student.shape:
            raise ValueError(f"teacher logits shape {tuple(t.shape)} != student {tuple(student.shape)}")
    labels = torch.as_tensor(targets, device=student.device).long()

    ce = F.cross_entropy(student, labels)
    kd_student = _zscore(student) if standardize else student
    log_p_student = F.log_softmax(kd_student / temperature, dim=-1)
    kd = torch.stack(
        [
            F.kl_div(
                log_p_student,
                F.log_softmax((_zscore(t) if standardize else t) / temperature, dim=-1),
                reduction="batchmean",
                log_target=True,
            )
            for t in teachers
        ]
    ).mean()
    return alpha * ce + (1.0 - alpha) * temperature**2 * kd


def _teacher_list(teacher_logits: Sequence[ArrayLike] | ArrayLike) -> list[Any]:
    """Teacher logits as a list of ``(N, C)`` arrays, whatever container they came in."""
    if isinstance(teacher_logits, (Tensor, np.ndarray)):
        if teacher_logits.ndim == 2:
            return [teacher_logits]
        if teacher_logits.ndim == 3:
            return list(teacher_logits)
        raise ValueError(
            f"teacher logits must be (N, C) or (k, N, C), got shape {tuple(teacher_logits.shape)}"
        )
    teachers = list(teacher_logits)
    if not teachers:
        raise ValueError("distillation needs at least one teacher's logits")
    return teachers


def _zscore(logits: Tensor) -> Tensor:
    """Standardise each logit vector over classes (Sun et al. 2024, unbiased std)."""
    mean = logits.mean(dim=-1, keepdim=True)
    std = logits.std(dim=-1, keepdim=True)
    return (logits - mean) / (std + ZSCORE_EPS)


@dataclass(frozen=True, kw_only=True)
class EnsembleKD:
    """:func:`distillation_loss` with a trial's τ and α (and the standardisation switch) bound."""

    temperature: float
    alpha: float
    standardize: bool = False

    def __call__(self, student_logits: Tensor, teacher_logits: Sequence[Tensor], targets: Tensor) -> Tensor:
        return distillation_loss(
            student_logits,
            teacher_logits,
            targets,
            temperature=self.temperature,
            alpha=self.alpha,
            standardize=self.standardize,
        )


# The registered losses are one class, with or without logit standardisation: "kd" and
# "zscore_kd" cannot drift apart in anything but that switch.
kd_loss: LossFactory = LOSSES.register("kd")(functools.partial(EnsembleKD, standardize=False))
"""Vanilla ensemble KD (Hinton et al. 2015): :func:`distillation_loss` on raw logits."""
zscore_kd_loss: LossFactory = LOSSES.register("zscore_kd")(functools.partial(EnsembleKD, standardize=True))
"""Ensemble KD with logit standardisation (Sun et al. 2024) inside the KD term only."""
