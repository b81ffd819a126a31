"""The paper's metrics as plain functions (docs/metrics.md; API: docs/metrics.md#python-api).

Public functions take torch tensors or numpy arrays and return python floats. Each formula is
implemented once, in a vectorised helper that returns per-sample values or sufficient statistics
(sums, tables, bins); both the public functions here and the streaming
:class:`~kd_ray.metrics.accumulator.SplitMetrics` are built from those helpers, so a streamed
epoch and a one-shot call agree. Probabilities are computed in float64; an empty input gives NaN.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

ArrayLike = Tensor | np.ndarray

# What a metric is where it is undefined (an empty split, a zero denominator): the one
# definition, used by the accumulator and the result rows too.
NAN = float("nan")


def _tensor(x: ArrayLike | Sequence[float]) -> Tensor:
    return x if isinstance(x, Tensor) else torch.as_tensor(np.asarray(x))


def _logits(x: ArrayLike) -> Tensor:
    return _tensor(x).detach().to(torch.float64)


def predictions(x: ArrayLike) -> Tensor:
    """Top-1 class per sample: ``argmax`` over the last axis of ``(N, C)`` logits or
    probabilities (first index on ties), or ``x`` itself when it is already ``(N,)`` labels."""
    t = _tensor(x).detach()
    return t.long() if t.ndim == 1 else t.argmax(dim=-1)


def top_k_correct(logits: ArrayLike, targets: ArrayLike, k: int) -> Tensor:
    """Per sample, whether the label is among the ``k`` highest of ``(N, C)`` logits (bool ``(N,)``).

    Ties are ranked as :func:`predictions` ranks them, the lower class index first
    (docs/metrics.md#acc_top5): the label's rank is the number of classes with a higher logit
    plus the classes of lower index with an equal one, and it is correct when that rank is
    below ``k``. This is a stable descending sort, so ``k = 1`` is exactly ``predictions ==
    targets``, top-k never falls below top-1, and ``k >= C`` counts every sample.
    """
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    scores = _logits(logits)
    labels = _tensor(targets).to(scores.device).long()
    label_score = scores.gather(1, labels[:, None])
    classes = torch.arange(scores.shape[-1], device=scores.device)
    higher = (scores > label_score).sum(dim=1)
    tied_before = ((scores == label_score) & (classes < labels[:, None])).sum(dim=1)
    return higher + tied_before < k


def ensemble_logits(teacher_logits: Sequence[ArrayLike]) -> Tensor:
    """The teacher ensemble's logits: the mean of the teachers' ``(N, C)`` logits (paper §4.2)."""
    return torch.stack([_logits(t) for t in teacher_logits]).mean(dim=0)


def ensemble_log_probs(teacher_logits: Sequence[ArrayLike]) -> Tensor:
    r"""The probability-mean ensemble: :math:`\log \frac{1}{k} \sum_i \mathrm{softmax}(t_i)` at
    τ = 1, ``(N, C)`` float64.

    These are valid logits (their softmax is the mean of the teachers' probabilities), so
    :func:`top1_agreement` and :func:`mean_kl` take them as they take :func:`ensemble_logits`.
    The KD loss pulls the student towards a mean of (τ-softened) probabilities, while the
    paper's fidelity metrics use the mean of logits; on disagreeing teachers the two differ.
    For one teacher it is ``log_softmax(t)``, with the same argmax and KL as ``t``.
    """
    log_p = torch.stack([F.log_softmax(_logits(t), dim=-1) for t in teacher_logits])
    return torch.logsumexp(log_p, dim=0) - math.log(len(teacher_logits))


# --- per-sample helpers ---------------------------------------------------------------------


def kl_per_sample(teacher_logits: ArrayLike, student_logits: ArrayLike) -> Tensor:
    r""":math:`\mathrm{KL}(\mathrm{softmax}(t) \| \mathrm{softmax}(s))` per sample, nats (eq. 2)."""
    log_p_t = F.log_softmax(_logits(teacher_logits), dim=-1)
    log_p_s = F.log_softmax(_logits(student_logits).to(log_p_t.device), dim=-1)
    return (log_p_t.exp() * (log_p_t - log_p_s)).sum(dim=-1)


def entropy_per_sample(logits: ArrayLike) -> Tensor:
    r"""Predictive entropy :math:`-\sum_c p_c \log p_c` per sample, nats (eq. H.1)."""
    log_p = F.log_softmax(_logits(logits), dim=-1)
    # xlogy-style: a probability that underflows to 0 contributes 0, not 0 * -inf = NaN.
    return -(log_p.exp() * log_p).nan_to_num(nan=0.0).sum(dim=-1)


# --- mutual information ---------------------------------------------------------------------


def contingency_table(pred_a: ArrayLike, pred_b: ArrayLike, num_classes: int) -> Tensor:
    """``(C, C)`` float64 counts of label pairs: entry ``[i, j]`` counts samples with
    ``pred_a == i`` and ``pred_b == j``. Accepts labels or logits (see :func:`predictions`)."""
    a = predictions(pred_a)
    b = predictions(pred_b).to(a.device)
    flat = torch.bincount(a * num_classes + b, minlength=num_classes * num_classes)
    return flat.to(torch.float64).view(num_classes, num_classes)


MI_CORRECTIONS: tuple[str | None, ...] = (None, "miller_madow")


def miller_madow_bias(counts: Tensor) -> float:
    r"""The Miller–Madow first-order bias of the plug-in entropy of ``counts``:
    :math:`(m - 1) / (2N)`, with m the non-empty cells and N the total (NaN when N = 0).
    The plug-in entropy underestimates H by about this much (Miller 1955)."""
    total = float(counts.sum())
    return (int((counts > 0).sum()) - 1) / (2 * total) if total else NAN


def mutual_information_from_table(table: Tensor, correction: str | None = None) -> float:
    r"""Mutual information (nats) of a contingency table of counts (eq. 4).

    ``correction=None`` is the plug-in estimate

    .. math:: MI = \sum_{i,j} P_{ij} \log \frac{P_{ij}}{P_{i\cdot} P_{\cdot j}}, \quad P = n / N,

    which equals :math:`H(X) + H(Y) - H(X, Y)` of the plug-in entropies and is biased upward by
    about (non-empty cells - 1) / (2N). ``correction="miller_madow"`` gives that same sum with
    each entropy Miller–Madow corrected (:func:`miller_madow_bias` of the row marginal, the
    column marginal and the joint table):

    .. math:: MI_{MM} = MI + \frac{(m_X - 1) + (m_Y - 1) - (m_{XY} - 1)}{2N}.
    """
    if correction not in MI_CORRECTIONS:
        raise ValueError(f"correction must be one of {MI_CORRECTIONS}, got {correction!r}")
    table = table.to(torch.float64)
    total = float(table.sum())
    if total == 0:
        return NAN
    joint = table / total
    outer = joint.sum(dim=1, keepdim=True) * joint.sum(dim=0, keepdim=True)
    nz = joint > 0
    mi = float((joint[nz] * (joint[nz].log() - outer[nz].log())).sum())
    if correction == "miller_madow":
        mi += miller_madow_bias(table.sum(dim=1)) + miller_madow_bias(table.sum(dim=0))
        mi -= miller_madow_bias(table)
    return mi


# --- calibration ----------------------------------------------------------------------------


def calibration_bins(logits: ArrayLike, targets: ArrayLike, n_bins: int = 15) -> Tensor:
    """Sufficient statistics of a reliability diagram: a ``(3, n_bins)`` float64 tensor of
    per-bin sample counts, correct predictions and summed confidences.

    Confidence is the max softmax probability; bin ``m`` (0-based) holds confidences in
    ``(m/M, (m+1)/M]`` (Guo et al. 2017, "On Calibration of Modern Neural Networks").
    """
    probs = F.softmax(_logits(logits), dim=-1)
    conf, pred = probs.max(dim=-1)
    correct = (pred == _tensor(targets).to(pred.device).long()).to(torch.float64)
    inner = torch.linspace(0.0, 1.0, n_bins + 1, dtype=torch.float64, device=conf.device)[1:-1]
    # right=False: boundaries[i-1] < conf <= boundaries[i], i.e. bins closed on the right.
    idx = torch.bucketize(conf, inner, right=False)
    bins = torch.zeros(3, n_bins, dtype=torch.float64, device=conf.device)
    bins[0].index_add_(0, idx, torch.ones_like(conf))
    bins[1].index_add_(0, idx, correct)
    bins[2].index_add_(0, idx, conf)
    return bins


def ece_from_bins(bins: Tensor) -> float:
    r"""Expected calibration error from :func:`calibration_bins` statistics (eq. H.2):
    :math:`\sum_m \frac{|B_m|}{N} |\mathrm{Acc}(B_m) - \mathrm{Conf}(B_m)|`, which equals
    :math:`\frac{1}{N} \sum_m |\mathrm{correct}_m - \mathrm{conf\_sum}_m|`."""
    total = float(bins[0].sum())
    if total == 0:
        return NAN
    return float((bins[1] - bins[2]).abs().sum() / total)


def reliability_from_bins(bins: Tensor) -> list[dict[str, float]]:
    """Rows ``{bin, count, acc, conf}`` of a reliability diagram, the ``calibration.parquet``
    grain of docs/results.md#calibration; ``count`` is an int, ``acc`` and ``conf`` are NaN for an
    empty bin."""
    count, correct, conf = bins.tolist()
    return [
        {
            "bin": m,
            "count": int(n),
            "acc": c / n if n else NAN,
            "conf": s / n if n else NAN,
        }
        for m, (n, c, s) in enumerate(zip(count, correct, conf, strict=True))
    ]


def calibration_curve(logits: ArrayLike, targets: ArrayLike, n_bins: int = 15) -> list[dict[str, float]]:
    """Per-bin ``{bin, count, acc, conf}`` rows of the reliability diagram (Guo et al. 2017)."""
    return reliability_from_bins(calibration_bins(logits, targets, n_bins))


# --- attention maps -------------------------------------------------------------------------


def binarize_maps(maps: ArrayLike, threshold: float = 0.4, size: tuple[int, int] | None = None) -> Tensor:
    """Attention masks of docs/metrics.md#attention-iou: resize ``(N, h, w)`` maps to ``size``
    (bilinear, skipped when None or already that size), min-max normalise each image's map to
    [0, 1] (a constant map becomes all zeros), and keep the pixels ``> threshold``. Returns a bool
    ``(N, H, W)`` tensor."""
    m = _tensor(maps).detach()
    if not m.is_floating_point():
        m = m.float()
    if m.ndim != 3:
        raise ValueError(f"attention maps must be (N, H, W), got shape {tuple(m.shape)}")
    if size is not None and tuple(m.shape[-2:]) != tuple(size):
        m = F.interpolate(m[:, None], size=tuple(size), mode="bilinear", align_corners=False)[:, 0]
    flat = m.flatten(1)
    lo = flat.min(dim=1, keepdim=True).values
    span = flat.max(dim=1, keepdim=True).values - lo
    # A constant map carries no spatial preference: all zeros, hence an empty mask.
    norm = torch.where(span > 0, (flat - lo) / span.clamp_min(torch.finfo(flat.dtype).tiny), 0.0)
    return (norm > threshold).view_as(m)


def iou_per_image(mask_a: Tensor, mask_b: Tensor) -> Tensor:
    """IoU ``|A ∩ B| / |A ∪ B|`` of each image's pair of bool masks (eq. 1), 1.0 when both
    are empty; float64 ``(N,)``."""
    inter = (mask_a & mask_b).flatten(1).sum(dim=1).to(torch.float64)
    union = (mask_a | mask_b).flatten(1).sum(dim=1).to(torch.float64)
    return torch.where(union > 0, inter / union.clamp_min(1), 1.0)


def common_size(*maps: ArrayLike) -> tuple[int, int]:
    """The largest ``(H, W)`` among maps, the grid they are compared on when no size is given."""
    shapes = [tuple(_tensor(m).shape[-2:]) for m in maps]
    return max(s[0] for s in shapes), max(s[1] for s in shapes)


# --- public metrics (docs/metrics.md#python-api) --------------------------------------------


def top1_agreement(logits_a: ArrayLike, logits_b: ArrayLike) -> float:
    r"""Top-1 agreement, the paper's fidelity (eq. 3; Stanton et al. 2021):
    :math:`\frac{1}{N} \sum_i \mathbb{1}\{\arg\max_c a_{ic} = \arg\max_c b_{ic}\}`.

    Args:
        logits_a: ``(N, C)`` logits (or probabilities, or ``(N,)`` labels), e.g. the ensemble's.
        logits_b: the same for the other model, e.g. the student.
    """
    a, b = predictions(logits_a), predictions(logits_b)
    return float((a == b.to(a.device)).double().mean()) if a.numel() else NAN


def top_k_accuracy(logits: ArrayLike, targets: ArrayLike, k: int = 5) -> float:
    r"""Top-k accuracy: the fraction of samples whose label is among the k highest logits,
    ties ranked by lower class index first (:func:`top_k_correct`, docs/metrics.md#acc_top5).

    Args:
        logits: ``(N, C)`` logits (or probabilities) of one model.
        targets: ``(N,)`` labels.
        k: how many of the highest classes count (5 for ``acc_top5``).
    """
    correct = top_k_correct(logits, targets, k)
    return float(correct.double().mean()) if correct.numel() else NAN


def mean_kl(teacher_logits: ArrayLike, student_logits: ArrayLike) -> float:
    r"""Mean over samples of :math:`\mathrm{KL}(\mathrm{softmax}(t) \| \mathrm{softmax}(s))`
    at temperature 1, in nats (eq. 2; Stanton et al. 2021). For an ensemble pass
    :func:`ensemble_logits` of the teachers."""
    kl = kl_per_sample(teacher_logits, student_logits)
    return float(kl.mean()) if kl.numel() else NAN


def mutual_information(
    pred_a: ArrayLike, pred_b: ArrayLike, num_classes: int, *, correction: str | None = None
) -> float:
    r"""Mutual information (nats) between two models' top-1 predictions (eq. 4), from their
    ``(C, C)`` contingency table: by default the plug-in :math:`\sum_{ij} P_{ij} \log (P_{ij} /
    P_i P_j)`, as in the paper.

    Args:
        pred_a: ``(N,)`` labels or ``(N, C)`` logits of one model (e.g. the ensemble).
        pred_b: the same for the other model (e.g. the student).
        num_classes: number of classes C.
        correction: None (plug-in) or ``"miller_madow"``: :math:`H(X) + H(Y) - H(X, Y)` with each
            entropy Miller–Madow corrected by (non-empty cells - 1) / (2N), which removes the
            plug-in's first-order upward bias (see :func:`mutual_information_from_table`).
    """
    return mutual_information_from_table(contingency_table(pred_a, pred_b, num_classes), correction)


def mean_entropy(logits: ArrayLike) -> float:
    r"""Mean predictive entropy :math:`-\sum_c p_c \log p_c` over samples, nats (eq. H.1)."""
    h = entropy_per_sample(logits)
    return float(h.mean()) if h.numel() else NAN


def expected_calibration_error(logits: ArrayLike, targets: ArrayLike, n_bins: int = 15) -> float:
    r"""Expected calibration error (eq. H.2; Guo et al. 2017) over ``n_bins`` equal-width
    confidence bins ``(m/M, (m+1)/M]``:
    :math:`\sum_m \frac{|B_m|}{N} |\mathrm{Acc}(B_m) - \mathrm{Conf}(B_m)|`."""
    return ece_from_bins(calibration_bins(logits, targets, n_bins))


def attention_iou(
    maps_a: ArrayLike,
    maps_b: ArrayLike,
    threshold: float = 0.4,
    size: tuple[int, int] | None = None,
) -> float:
    r"""Mean over images of the attention IoU :math:`|A \cap B| / |A \cup B|` (eq. 1).

    Each map is resized to ``size`` (bilinear; docs/metrics.md#attention-iou uses the input image
    size), min-max normalised per image (a constant map becomes zeros) and binarised with
    ``> threshold``; two empty masks have IoU 1.0.

    Args:
        maps_a: ``(N, h, w)`` attention maps of one model (CAM or ViT CLS attention).
        maps_b: ``(N, h', w')`` maps of the other model.
        threshold: binarisation threshold on the normalised map.
        size: ``(H, W)`` to compare on; None compares on the larger of the two grids.
    """
    size = size or common_size(maps_a, maps_b)
    iou = iou_per_image(binarize_maps(maps_a, threshold, size), binarize_maps(maps_b, threshold, size))
    return float(iou.mean()) if iou.numel() else NAN


def affinity(acc_augmented: float, acc_clean: float) -> float:
    r"""Affinity (eq. 5; Cubuk et al. 2021): :math:`\mathrm{Acc}(D'_{val}) / \mathrm{Acc}(D_{val})`,
    the student's accuracy on augmented over clean validation data; NaN when ``acc_clean`` is 0."""
    acc_augmented, acc_clean = float(acc_augmented), float(acc_clean)
    return acc_augmented / acc_clean if acc_clean != 0 and not math.isnan(acc_clean) else NAN
