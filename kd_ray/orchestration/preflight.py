"""Driver-side checks of a sweep's inputs, run before Ray starts.

Inside Ray a missing data directory or a corrupt teacher file surfaces as a failed trial,
after cluster start-up and only in a log; checked here, it is one line naming the field or path,
in a second, and nothing already finished is touched. No Ray import here.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable

from kd_ray.config import SweepConfig
from kd_ray.errors import DataError
from kd_ray.orchestration.teacher_store import TeacherStore
from kd_ray.plan import StudentTrial, SweepPlan

log = logging.getLogger(__name__)


def check_datasets(cfg: SweepConfig) -> None:
    """Build every dataset of the sweep once on the driver, so a data error stops the sweep early.

    The builders are the workers' own, so whatever they would reject is rejected here. This
    assumes the driver sees the data where the workers do (a shared filesystem on a cluster).

    Raises:
        DataError: names the dataset entry and the path or file that is wrong.
    """
    from kd_ray.data import DATASETS

    data_log = logging.getLogger("kd_ray.data")
    level = data_log.level
    data_log.setLevel(logging.WARNING)  # the workers say what they load; here it would be noise
    try:
        for i, dataset in enumerate(cfg.datasets):
            try:
                DATASETS.get(dataset.name)(dataset)
            except DataError as err:
                raise DataError(f"datasets.{i} ({dataset.key}): {err}") from None
    finally:
        data_log.setLevel(level)


def check_teachers(store: TeacherStore, plan: SweepPlan, trials: Iterable[StudentTrial]) -> None:
    """Check the stored teachers that ``trials`` will distil from.

    Only teachers already in the store are checked (the others are about to be trained). A file
    that is not a kd_ray teacher, or holds another teacher, is refused instead of retrained:
    the store is shared by sweeps, so a bad file there is worth a person's look.

    Raises:
        CheckpointError: names the file and what is wrong with it.
    """
    needed = sorted({tid for trial in trials for tid in trial.teacher_ids})
    for teacher_id in needed:
        if store.has(teacher_id):
            spec = plan.teacher(teacher_id)
            store.check(spec)
    log.debug("checked %d stored teacher(s)", len(needed))


def require_trained(store: TeacherStore, trial: StudentTrial) -> str | None:
    """The first teacher of ``trial`` that is not in the store, or None."""
    return next((tid for tid in trial.teacher_ids if not store.has(tid)), None)
