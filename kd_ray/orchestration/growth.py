"""Whether a changed config only grows a sweep: the one config change ``--resume`` accepts
besides where and how fast trials run.

Why growth is safe: a trial's id names its grid values (dataset, seed, permutation, loss, view,
and each KD value the grid lists), and its numbers and checkpoint fingerprint come from those
values plus the config outside the grid (:func:`kd_ray.plan.trial_fingerprint_content`); a
teacher's id hashes its dataset, seed and settings. So adding grid values adds trials (and
teachers) with new ids and leaves every existing trial's id, fingerprint and teachers as they
were: a resume runs the new trials beside the finished ones and reuses the stored teachers.

Why the rest is refused:

- a changed field outside the grid (``student.train.lr``) changes what existing trials compute;
- a removed grid value would leave trials in the results that the saved config, which
  ``kd-ray status`` and the report read, no longer describes;
- listing a KD axis the sweep did not list (or unlisting one) renames every existing trial,
  since a listed axis is part of the id (docs/experiments.md#trial-names).

Lists are compared as sets: reordering grid values changes no trial. Datasets are matched by
their key (label, else name), so adding one or reordering them is growth too. The inputs are
the comparable parts of two configs' ``model_dump`` (what
:func:`kd_ray.orchestration.stored_sweep.comparable` keeps: no resources, runtime, failure, results, trackers, report or data locations).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from kd_ray.config import KD_AXES
from kd_ray.plan import perm_name, permutations

# The grid axes whose values may be added, each compared as a set. ``permutations`` is one
# too, but unset means "all of the teacher counts'", so it is expanded before comparing.
_SET_AXES = ("teacher_counts", "losses", "views", "seeds")

_UNSET = "unset"


class NotAGrowth(ValueError):
    """The new config changes what existing trials compute or drops some of them; the message
    names each changed dotted key and each removed grid value, on one line."""


@dataclass(frozen=True)
class Growth:
    """What a config adds to a sweep: dotted key -> the values it adds (empty: no change)."""

    added: dict[str, list[Any]]

    def __bool__(self) -> bool:
        return bool(self.added)

    def describe(self) -> str:
        """``grid.seeds +[1], datasets +['digits']``, for the driver's log."""
        return ", ".join(f"{key} +{values}" for key, values in self.added.items())


def _show(value: Any) -> str:
    if value is None:
        return _UNSET
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _changed_keys(old: Any, new: Any, path: str, out: list[str]) -> None:
    """Append ``path old -> new`` for every leaf that differs (dicts compared key by key)."""
    if isinstance(old, Mapping) and isinstance(new, Mapping):
        for key in list(old) + [k for k in new if k not in old]:
            _changed_keys(old.get(key), new.get(key), f"{path}.{key}" if path else str(key), out)
    elif old != new:
        out.append(f"{path} {_show(old)} -> {_show(new)}")


def _dataset_key(dataset: Mapping[str, Any]) -> str:
    return str(dataset.get("label") or dataset.get("name"))


def _compare_datasets(saved: list, new: list, changed: list[str], removed: list[str]) -> list[str]:
    """Datasets matched by key: (added keys); a kept one's changed fields go to ``changed``."""
    new_by_key = {_dataset_key(d): (i, d) for i, d in enumerate(new)}
    for dataset in saved:
        key = _dataset_key(dataset)
        if key not in new_by_key:
            removed.append(f"datasets [{key!r}]")
            continue
        index, now = new_by_key.pop(key)
        _changed_keys(dataset, now, f"datasets.{index}", changed)
    return list(new_by_key)


def _perms(grid: Mapping[str, Any]) -> set[str]:
    """The permutations a grid runs: its filter, or every permutation of its teacher counts."""
    listed = grid.get("permutations")
    if listed is not None:
        return set(listed)
    return {perm_name(t, s) for k in grid.get("teacher_counts") or () for t, s in permutations(int(k))}


def _teacher_count(perm: str) -> int:
    return perm.count("_")  # "T1s_T2w_Ss": two teachers, two separators


def _sorted(values: set) -> list:
    return sorted(values, key=lambda v: (str(type(v)), v))


def _compare_grid(saved: Mapping, new: Mapping, changed: list[str], removed: list[str]) -> dict:
    """The grid's added values by dotted key; removals and renaming changes go to the lists."""
    added: dict[str, list[Any]] = {}

    def compare_sets(key: str, old: set, now: set) -> None:
        if old - now:
            removed.append(f"{key} {_sorted(old - now)}")
        if now - old:
            added[key] = _sorted(now - old)

    for axis in _SET_AXES:
        compare_sets(f"grid.{axis}", set(saved.get(axis) or ()), set(new.get(axis) or ()))
    if saved.get("permutations") is not None or new.get("permutations") is not None:
        # Unset on both sides, the permutations follow the teacher counts, compared above.
        kept_counts = set(new.get("teacher_counts") or ())
        old_perms = {p for p in _perms(saved) if _teacher_count(p) in kept_counts}  # else said above
        compare_sets("grid.permutations", old_perms, _perms(new))
    for axis in KD_AXES:
        old, now = saved.get(axis), new.get(axis)
        if old is None or now is None:
            if old != now:
                changed.append(
                    f"grid.{axis} {_show(old)} -> {_show(now)} (listing or unlisting a KD axis "
                    "renames every trial)"
                )
            continue
        compare_sets(f"grid.{axis}", set(old), set(now))
    known = {*_SET_AXES, "permutations", *KD_AXES}
    for key in list(saved) + [k for k in new if k not in saved]:
        if key not in known:  # a grid field that is not an axis: it must stay as it was
            _changed_keys(saved.get(key), new.get(key), f"grid.{key}", changed)
    return added


def growth(saved: Mapping[str, Any], new: Mapping[str, Any]) -> Growth:
    """What ``new`` adds to the sweep that ``saved`` describes (both as ``comparable`` returns).

    Raises:
        NotAGrowth: a field outside the grid changed, a grid value or dataset was removed, or a
            KD axis was listed or unlisted; one line naming each dotted key and removed value.
    """
    changed: list[str] = []
    removed: list[str] = []
    added_datasets = _compare_datasets(
        list(saved.get("datasets") or ()), list(new.get("datasets") or ()), changed, removed
    )
    added = _compare_grid(saved.get("grid") or {}, new.get("grid") or {}, changed, removed)
    if added_datasets:
        added = {"datasets": added_datasets, **added}
    for key in [*saved, *(k for k in new if k not in saved)]:
        if key not in ("datasets", "grid"):
            _changed_keys(saved.get(key), new.get(key), key, changed)
    if changed or removed:
        parts = []
        if changed:
            parts.append("changed " + ", ".join(changed))
        if removed:
            parts.append(
                "removed " + ", ".join(removed) + " (their trials are in the results, and the saved "
                "config must describe every trial there)"
            )
        raise NotAGrowth("; ".join(parts))
    return Growth(added)
