"""Column names and types of the four result tables (docs/results.md).

Every table is a directory dataset (``N/<table>.parquet/``) of one file per trial or teacher,
so every file must carry exactly the same Arrow schema: the schemas here are the single source
of the columns, built from the metric names in :mod:`kd_ray.metrics.names`.

Trials carry the unprefixed final-epoch columns of docs/results.md#trials (see
``TRIAL_SUMMARY_SOURCE`` for the split each comes from) and, for explicit analysis,
``{split}_{metric}`` for every split and metric (``val_acc``, ``train_acc`` and ``val_aug_acc``
are among those).
"""

from __future__ import annotations

import pyarrow as pa

from kd_ray.metrics.names import SPLITS, TRIAL_SUMMARY_SOURCE, epoch_metrics

TABLES: tuple[str, ...] = ("trials", "epochs", "teachers", "calibration")

# Files written before a metric's column existed (``acc_top5``) lack it; readers give it null.
_METRICS = epoch_metrics()

TEACHER_IDS_TYPE = pa.list_(pa.string())
# Older sweeps' ``trials`` files hold ``teacher_ids`` as one string, the ids joined by this.
OLD_TEACHER_IDS_SEPARATOR = ","

TRIAL_KEY_COLUMNS: list[tuple[str, pa.DataType]] = [
    ("trial_id", pa.string()),
    ("dataset", pa.string()),
    ("n_teachers", pa.int64()),
    ("perm", pa.string()),
    ("teacher_augs", pa.string()),
    ("student_aug", pa.string()),
    ("loss", pa.string()),
    ("view", pa.string()),
    ("seed", pa.int64()),
    # KD's own hyper-parameters (docs/experiments.md#kd-hyper-parameters): always filled, also
    # where the grid does not sweep them. Files written before these columns existed read them as
    # null (a directory dataset is read with this schema).
    ("temperature", pa.float64()),
    ("alpha", pa.float64()),
    ("lr", pa.float64()),
    ("teacher_arch", pa.string()),
    ("student_arch", pa.string()),
    # One element per teacher slot, in slot order (a list, so pandas' explode and DuckDB's UNNEST
    # and list_contains work). Files written before it was a list hold a string: see upgrade().
    ("teacher_ids", TEACHER_IDS_TYPE),
    ("status", pa.string()),
    ("error", pa.string()),
    ("epochs", pa.int64()),
    ("wall_s", pa.float64()),
]
_SPLIT_COLUMNS = [f"{split}_{m}" for split in SPLITS for m in _METRICS]
# ``val_acc`` and ``train_acc`` are split columns already; ``ensemble_acc`` is not (its source is
# ``train_acc_ensemble``).
_SUMMARY = [c for c in TRIAL_SUMMARY_SOURCE if c not in _SPLIT_COLUMNS] + ["gap", "affinity"]

TRIALS = pa.schema(TRIAL_KEY_COLUMNS + [(c, pa.float64()) for c in _SUMMARY + _SPLIT_COLUMNS])

EPOCHS = pa.schema(
    [
        ("trial_id", pa.string()),
        ("epoch", pa.int64()),
        ("split", pa.string()),
        ("seconds", pa.float64()),
        ("lr", pa.float64()),
    ]
    + [(m, pa.float64()) for m in _METRICS]
)

TEACHERS = pa.schema(
    [
        ("teacher_id", pa.string()),
        ("name", pa.string()),
        ("dataset", pa.string()),
        ("arch", pa.string()),
        ("slot", pa.int64()),
        ("aug", pa.string()),
        ("seed", pa.int64()),
        ("pretrained", pa.bool_()),
        ("status", pa.string()),
        ("error", pa.string()),
        ("epochs", pa.int64()),
        ("train_acc", pa.float64()),
        ("val_acc", pa.float64()),
        ("val_acc_top5", pa.float64()),
        ("wall_s", pa.float64()),
        ("checkpoint", pa.string()),
    ]
)

CALIBRATION = pa.schema(
    [
        ("trial_id", pa.string()),
        ("split", pa.string()),
        ("bin", pa.int64()),
        ("lower", pa.float64()),
        ("upper", pa.float64()),
        ("count", pa.int64()),
        ("acc", pa.float64()),
        ("conf", pa.float64()),
    ]
)

SCHEMAS: dict[str, pa.Schema] = {
    "trials": TRIALS,
    "epochs": EPOCHS,
    "teachers": TEACHERS,
    "calibration": CALIBRATION,
}

# The columns that identify a row; a resumed sweep leaves exactly one row per key.
KEYS: dict[str, tuple[str, ...]] = {
    "trials": ("trial_id",),
    "epochs": ("trial_id", "epoch", "split"),
    "teachers": ("teacher_id",),
    "calibration": ("trial_id", "split", "bin"),
}


def upgrade(table: str, data: pa.Table) -> pa.Table:
    """One file of ``table`` as read, with columns of an older form in today's form.

    ``trials.teacher_ids`` was one string (the ids joined by :data:`OLD_TEACHER_IDS_SEPARATOR`)
    in sweeps written before it became a list; a resumed old sweep adds files of the list form
    beside them, so every reader upgrades file by file before putting files together.
    """
    if table != "trials" or "teacher_ids" not in data.column_names:
        return data
    i = data.column_names.index("teacher_ids")
    column = data.column(i)
    if not (pa.types.is_string(column.type) or pa.types.is_large_string(column.type)):
        return data
    lists = [
        None if ids is None else ids.split(OLD_TEACHER_IDS_SEPARATOR) if ids else []
        for ids in column.to_pylist()
    ]
    return data.set_column(i, pa.field("teacher_ids", TEACHER_IDS_TYPE), pa.array(lists, TEACHER_IDS_TYPE))
