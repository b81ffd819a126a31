"""The driver's map of Tune trials to the runs they train.

A stage's runs (one teacher each, or a stream group of student trials) reach Tune as the items
that :class:`kd_ray.orchestration.placement.CapacityGate` hands out, and the gate writes down
here which Tune trial got which item. The driver's callbacks (the results collector, the
teacher outcomes, the progress display, Tune's trial names) look a trial's run up here by its
Tune trial id, so none of them reads kd_ray's own data back out of Tune's trial objects.

Tune pickles its searcher and callbacks with the experiment state; a book pickles as the plain
dict it is. kd_ray never restores a Tune experiment (a resumed sweep starts a fresh one).
"""

from __future__ import annotations

from typing import Any


class RunBook:
    """Tune trial id -> the item (teacher spec, or stream group) of the run that trial trains."""

    def __init__(self, stage: str) -> None:
        self.stage = stage
        self._items: dict[str, dict[str, Any]] = {}

    def record(self, trial_id: str, item: dict[str, Any]) -> None:
        """Tune trial ``trial_id`` trains ``item`` (called by the gate as it hands it out)."""
        self._items[trial_id] = item

    def __deepcopy__(self, memo: dict) -> RunBook:
        # One book per stage, shared: Tune deep-copies its experiment spec, which holds the
        # trial namer and so this book, for every trial it creates. A copy would miss the runs
        # handed out after it was made.
        return self

    def item(self, trial: Any) -> dict[str, Any] | None:
        """The item of Tune trial ``trial`` (anything with a ``trial_id``), None if not one of ours."""
        return self._items.get(trial.trial_id)
