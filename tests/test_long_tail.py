"""Long-tail counts against the published CIFAR-100-LT sizes (docs/experiments.md#datasets) and
subset selection."""

from __future__ import annotations

import numpy as np
import pytest

from kd_ray import data
from kd_ray.data.long_tail import long_tail_counts, long_tail_indices
from kd_ray.errors import ConfigError, DataError


@pytest.mark.parametrize(("imbalance", "total", "tail"), [(100, 10847, 5), (50, 12608, 10), (10, 19573, 50)])
def test_cifar100_lt_sizes(imbalance: float, total: int, tail: int) -> None:
    counts = data.long_tail_counts(500, 100, imbalance)
    assert len(counts) == 100
    assert sum(counts) == total
    assert counts[0] == 500
    assert counts[-1] == tail
    assert all(a >= b for a, b in zip(counts, counts[1:], strict=False))


def test_imbalance_one_is_balanced_and_single_class_keeps_all() -> None:
    assert long_tail_counts(7, 4, 1.0) == [7, 7, 7, 7]
    assert long_tail_counts(9, 1, 10.0) == [9]


@pytest.mark.parametrize("imbalance", [0.5, 0.0, float("nan"), float("inf")])
def test_bad_imbalance_names_the_field(imbalance: float) -> None:
    with pytest.raises(ConfigError, match=r"dataset\.imbalance"):
        long_tail_counts(500, 100, imbalance)


def _ldam_reference(labels: np.ndarray, counts: list[int]) -> np.ndarray:
    """Cao et al.'s IMBALANCECIFAR selection: global np.random.seed(0), shuffle, take first n_i."""
    np.random.seed(0)
    chosen = []
    for c, n in enumerate(counts):
        idx = np.where(labels == c)[0]
        np.random.shuffle(idx)
        chosen.append(idx[:n])
    return np.sort(np.concatenate(chosen))


def test_indices_match_ldam_reference_and_counts() -> None:
    labels = np.random.default_rng(3).permutation(np.repeat(np.arange(10), 50))
    keep = long_tail_indices(labels, 10.0, seed=0)
    counts = long_tail_counts(50, 10, 10.0)
    assert np.bincount(labels[keep], minlength=10).tolist() == counts
    assert np.array_equal(keep, _ldam_reference(labels, counts))
    assert np.all(np.diff(keep) > 0)  # file order kept
    assert np.array_equal(keep, long_tail_indices(labels, 10.0, seed=0))
    assert not np.array_equal(keep, long_tail_indices(labels, 10.0, seed=1))


def test_indices_use_smallest_class_as_head_size() -> None:
    labels = np.array([0] * 30 + [1] * 20 + [2] * 25)
    keep = long_tail_indices(labels, 4.0)
    assert np.bincount(labels[keep]).tolist() == long_tail_counts(20, 3, 4.0) == [20, 10, 5]


def test_indices_reject_empty_class_and_too_large_imbalance() -> None:
    with pytest.raises(DataError, match="class 1"):
        long_tail_indices(np.array([0, 0, 2, 2]), 2.0)
    with pytest.raises(ConfigError, match=r"dataset\.imbalance"):
        long_tail_indices(np.repeat(np.arange(3), 4), 10.0)
