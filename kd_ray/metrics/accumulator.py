"""Streaming, DDP-reducible metrics of one split of one epoch (docs/metrics.md).

:class:`SplitMetrics` keeps only sums (counts, correct predictions, KL and entropy sums against
both ensemble targets, the ensemble-vs-student contingency table, calibration bins, IoU sums) in
one flat float64 buffer.
Sums are what makes the two promises cheap: mutual information and ECE come from the tables
accumulated over the whole split, not from averages of per-batch values, and ``all_reduce()``
is a single ``SUM`` collective after which a 2-worker epoch reports what a 1-worker epoch over
the same samples reports. Every formula comes from :mod:`kd_ray.metrics.functional`.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from itertools import combinations

import torch
from torch import Tensor

from kd_ray.distributed import all_reduce_sum_
from kd_ray.metrics import functional as fn
from kd_ray.metrics.functional import NAN
from kd_ray.metrics.names import TOP5_METRIC, teacher_metric


class SplitMetrics:
    """Accumulates one split's metrics batch by batch; ``compute()`` gives the flat dict.

    Attention maps of the teachers and the student may come on different grids (a CAM on the
    last conv stage, a ViT's patch grid): each batch's maps are resized, bilinearly, to
    ``map_size`` when given (docs/metrics.md#attention-iou: the input image size), otherwise to
    the largest grid among that batch's maps, then normalised, binarised and compared as in
    :func:`~kd_ray.metrics.functional.attention_iou`. Per image, ``iou_teachers`` is the mean IoU
    over teacher pairs and ``iou_student`` the mean IoU of the student with each teacher; both are
    then averaged over the images that had maps.

    Two ensemble targets are tracked (docs/metrics.md#the-teacher-ensemble): the mean of the
    teachers' logits (``agreement``, ``kl``, ``mi``, ``acc_ensemble``) and the mean of their τ = 1
    probabilities (:func:`~kd_ray.metrics.functional.ensemble_log_probs`: ``agreement_probmean``,
    ``kl_probmean``), which is what the KD loss pulls towards. The teacher logits are the ones
    the teachers produced on the batch as they saw it, i.e. under the trial's view.

    Args:
        num_classes: number of classes C (size of the contingency table).
        n_teachers: number of teachers k (>= 1) passed to every ``update``.
        ece_bins: number of equal-width confidence bins of the ECE and reliability diagram.
        iou_threshold: binarisation threshold of the normalised attention maps.
        map_size: ``(H, W)`` grid on which maps are compared; None uses the largest given grid.
        top5: also count the student's top-5 accuracy (``acc_top5``, docs/metrics.md#acc_top5);
            runs switch it on for the ImageNet family (:func:`kd_ray.metrics.names.computes_top5`).
    """

    def __init__(
        self,
        num_classes: int,
        n_teachers: int,
        *,
        ece_bins: int = 15,
        iou_threshold: float = 0.4,
        map_size: tuple[int, int] | None = None,
        top5: bool = False,
    ) -> None:
        if n_teachers < 1:
            raise ValueError(f"n_teachers must be >= 1, got {n_teachers}")
        self.num_classes = num_classes
        self.n_teachers = n_teachers
        self.ece_bins = ece_bins
        self.iou_threshold = iou_threshold
        self.map_size = map_size
        k, c = n_teachers, num_classes
        self._layout: dict[str, tuple[int, ...]] = {
            "n": (),
            "correct": (),
            # Counted only when asked: the buffer holds what this split measures.
            **({"correct_top5": ()} if top5 else {}),
            "agree": (),
            "kl": (),
            "agree_probmean": (),
            "kl_probmean": (),
            "ensemble_correct": (),
            "entropy": (),
            "loss": (),
            "loss_n": (),
            "iou_teachers": (),
            "iou_teachers_n": (),
            "iou_student": (),
            "iou_student_n": (),
            "teacher_correct": (k,),
            "teacher_entropy": (k,),
            "contingency": (c, c),
            "bins": (3, ece_bins),
        }
        self._state = torch.zeros(sum(math.prod(s) for s in self._layout.values()), dtype=torch.float64)
        self._bind_views()

    @property
    def top5(self) -> bool:
        """Whether this split counts the student's top-5 accuracy (``acc_top5``)."""
        return "correct_top5" in self._layout

    def _bind_views(self) -> None:
        """Named views into the flat buffer, so updates write where ``all_reduce`` reads."""
        self._views: dict[str, Tensor] = {}
        start = 0
        for name, shape in self._layout.items():
            size = math.prod(shape)
            self._views[name] = self._state[start : start + size].view(shape)
            start += size

    def _to_device(self, device: torch.device) -> None:
        # float64 is unavailable on MPS; elsewhere keep the sums where the logits live, so an
        # update never forces a device-to-host sync.
        if device.type != "mps" and self._state.device != device:
            self._state = self._state.to(device)
            self._bind_views()

    @torch.no_grad()
    def update(
        self,
        student_logits: Tensor,
        teacher_logits: Sequence[Tensor],
        targets: Tensor,
        *,
        student_maps: Tensor | None = None,
        teacher_maps: Sequence[Tensor] | None = None,
        loss: float | Tensor | None = None,
    ) -> None:
        """Add one batch.

        Args:
            student_logits: ``(N, C)`` student logits.
            teacher_logits: the k teachers' ``(N, C)`` logits, in slot order.
            targets: ``(N,)`` labels.
            student_maps: ``(N, h, w)`` student attention maps, or None.
            teacher_maps: the k teachers' ``(N, h', w')`` attention maps, or None.
            loss: the batch's mean loss; weighted by N so the epoch value is a per-sample mean.
        """
        if len(teacher_logits) != self.n_teachers:
            raise ValueError(f"expected {self.n_teachers} teacher logits, got {len(teacher_logits)}")
        student = student_logits.detach()
        self._to_device(student.device)
        v = self._views
        labels = targets.detach().to(student.device).long()
        n = labels.numel()
        if n == 0:
            return
        teachers = [t.detach().to(student.device) for t in teacher_logits]
        ensemble = fn.ensemble_logits(teachers)
        probmean = fn.ensemble_log_probs(teachers)
        student_pred = fn.predictions(student)
        ensemble_pred = fn.predictions(ensemble)

        v["n"] += n
        v["correct"] += (student_pred == labels).sum()
        if self.top5:
            v["correct_top5"] += fn.top_k_correct(student, labels, 5).sum()
        v["agree"] += (student_pred == ensemble_pred).sum()
        v["kl"] += fn.kl_per_sample(ensemble, student).sum()
        v["agree_probmean"] += (student_pred == fn.predictions(probmean)).sum()
        v["kl_probmean"] += fn.kl_per_sample(probmean, student).sum()
        v["ensemble_correct"] += (ensemble_pred == labels).sum()
        v["entropy"] += fn.entropy_per_sample(student).sum()
        for i, t in enumerate(teachers):
            v["teacher_correct"][i] += (fn.predictions(t) == labels).sum()
            v["teacher_entropy"][i] += fn.entropy_per_sample(t).sum()
        v["contingency"] += fn.contingency_table(ensemble_pred, student_pred, self.num_classes)
        v["bins"] += fn.calibration_bins(student, labels, self.ece_bins)
        if loss is not None:
            v["loss"] += float(loss) * n
            v["loss_n"] += n
        if teacher_maps is not None:
            self._update_maps(teacher_maps, student_maps)
        elif student_maps is not None:
            raise ValueError("student_maps without teacher_maps: no attention IoU to compute")

    def _update_maps(self, teacher_maps: Sequence[Tensor], student_maps: Tensor | None) -> None:
        if len(teacher_maps) != self.n_teachers:
            raise ValueError(f"expected {self.n_teachers} teacher maps, got {len(teacher_maps)}")
        all_maps = [*teacher_maps, *([student_maps] if student_maps is not None else [])]
        size = self.map_size or fn.common_size(*all_maps)
        masks = [fn.binarize_maps(m, self.iou_threshold, size) for m in all_maps]
        teacher_masks = masks[: self.n_teachers]
        n_images = teacher_masks[0].shape[0]
        v = self._views
        if self.n_teachers > 1:
            pairs = torch.stack([fn.iou_per_image(a, b) for a, b in combinations(teacher_masks, 2)])
            v["iou_teachers"] += pairs.mean(dim=0).sum().to(self._state.device)
            v["iou_teachers_n"] += n_images
        if student_maps is not None:
            per_teacher = torch.stack([fn.iou_per_image(t, masks[-1]) for t in teacher_masks])
            v["iou_student"] += per_teacher.mean(dim=0).sum().to(self._state.device)
            v["iou_student_n"] += n_images

    def all_reduce(self) -> None:
        """Sum the state over the default process group (no-op when none is initialised).

        Every rank must call it, at the same point; afterwards every rank holds the totals.
        """
        all_reduce_sum_(self._state)

    def compute(self) -> dict[str, float]:
        """The split's metrics under the names of :mod:`kd_ray.metrics.names`.

        ``acc``, ``agreement``, ``kl``, ``agreement_probmean``, ``kl_probmean``,
        ``acc_ensemble``, ``entropy`` and the per-teacher ``acc_t{i}``, ``entropy_t{i}`` are means
        over samples; ``mi`` (plug-in), ``mi_mm`` (Miller–Madow) and ``ece`` come from the
        accumulated contingency table and bins. NaN marks what is undefined: every metric of an empty split,
        ``loss`` when no loss was given, ``iou_teachers`` for k = 1 or without maps,
        ``iou_student`` without student maps. ``acc_top5`` is there only when counted (``top5``).
        """
        s = {name: t.cpu() for name, t in self._views.items()}
        n = float(s["n"])

        def mean(total: Tensor | float, count: float) -> float:
            return float(total) / count if count else NAN

        out = {
            "acc": mean(s["correct"], n),
            "loss": mean(s["loss"], float(s["loss_n"])),
            "agreement": mean(s["agree"], n),
            "kl": mean(s["kl"], n),
            "mi": fn.mutual_information_from_table(s["contingency"]),
            "mi_mm": fn.mutual_information_from_table(s["contingency"], correction="miller_madow"),
            "agreement_probmean": mean(s["agree_probmean"], n),
            "kl_probmean": mean(s["kl_probmean"], n),
            "acc_ensemble": mean(s["ensemble_correct"], n),
            "entropy": mean(s["entropy"], n),
            "ece": fn.ece_from_bins(s["bins"]),
            "iou_teachers": mean(s["iou_teachers"], float(s["iou_teachers_n"])),
            "iou_student": mean(s["iou_student"], float(s["iou_student_n"])),
        }
        if self.top5:
            out[TOP5_METRIC] = mean(s["correct_top5"], n)
        for i in range(self.n_teachers):
            out[teacher_metric("acc", i + 1)] = mean(s["teacher_correct"][i], n)
            out[teacher_metric("entropy", i + 1)] = mean(s["teacher_entropy"][i], n)
        return out

    def calibration(self) -> list[dict[str, float]]:
        """Reliability-diagram rows ``{bin, count, acc, conf}`` of the student
        (docs/results.md#calibration)."""
        return fn.reliability_from_bins(self._views["bins"].cpu())
