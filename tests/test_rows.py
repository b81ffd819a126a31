"""From a worker's flat report to rows of the docs/results.md tables, and their Arrow schemas."""

from __future__ import annotations

import pyarrow as pa
import pytest

from kd_ray.metrics.names import SPLIT_METRICS, SPLITS, report_key
from kd_ray.plan import StudentTrial
from kd_ray.results.rows import epoch_rows, trial_row
from kd_ray.results.schema import EPOCHS, TRIALS

TRIAL = StudentTrial(
    "d-T1w_T2s_Sw-kd-split-tau4-s0",
    "d",
    "T1w_T2s_Sw",
    "ws",
    "w",
    "kd",
    "split",
    0,
    ("a", "b"),
    4.0,
    0.2,
    0.05,
)


def _report() -> dict[str, float]:
    # A distinct value per (split, metric), so a column taken from the wrong split shows.
    report = {"epoch": 3, "seconds": 1.5, "lr": 0.1}
    for i, split in enumerate(SPLITS):
        for j, metric in enumerate((*SPLIT_METRICS, "acc_t1", "acc_t2", "entropy_t1", "entropy_t2")):
            report[report_key(split, metric)] = 0.01 * j + 0.3 * i + 0.05
    return report


def test_trial_row_fills_the_schema_and_new_columns_come_from_train() -> None:
    report = _report()
    row = trial_row(
        TRIAL, teacher_arch="t", student_arch="s", report=report, status="ok", error=None, wall_s=2.0
    )
    assert set(row) == set(TRIALS.names)
    pa.Table.from_pylist([row], schema=TRIALS)  # every value fits its column's type
    for column, metric in [
        ("mi_mm", "mi_mm"),
        ("agreement_probmean", "agreement_probmean"),
        ("kl_probmean", "kl_probmean"),
        ("ensemble_acc", "acc_ensemble"),
        ("agreement", "agreement"),
        ("mi", "mi"),
    ]:
        assert row[column] == report[report_key("train", metric)], column
    for split in SPLITS:
        assert row[f"{split}_acc_ensemble"] == report[report_key(split, "acc_ensemble")]
        assert row[f"{split}_mi_mm"] == report[report_key(split, "mi_mm")]
    assert row["gap"] == pytest.approx(row["train_acc"] - row["val_acc"])
    # The trial's KD hyper-parameters, not the report's per-epoch lr (that is in epochs.parquet).
    assert (row["temperature"], row["alpha"], row["lr"]) == (4.0, 0.2, 0.05)
    assert report["lr"] != row["lr"]


def test_epoch_rows_carry_every_split_metric() -> None:
    rows = epoch_rows(TRIAL.trial_id, _report())
    assert [r["split"] for r in rows] == list(SPLITS)
    assert set(rows[0]) == set(EPOCHS.names)
    pa.Table.from_pylist(rows, schema=EPOCHS)
    for metric in ("mi_mm", "agreement_probmean", "kl_probmean", "acc_ensemble"):
        assert metric in EPOCHS.names


def test_a_table_of_old_and_new_trial_files_reads_with_nulls_for_the_new_columns(tmp_path) -> None:
    # A sweep started before the KD-axis columns existed, resumed after: one file lacks them.
    import pyarrow.parquet as pq

    from kd_ray.results.store import ResultTables
    from kd_ray.storage import Storage

    tables = ResultTables(Storage.open(tmp_path))
    row = trial_row(
        TRIAL, teacher_arch="t", student_arch="s", report=_report(), status="ok", error=None, wall_s=2.0
    )
    tables.write("trials", "new", [{**row, "trial_id": "new"}])
    old = pa.Table.from_pylist([{**row, "trial_id": "old"}], schema=TRIALS).drop_columns(
        ["temperature", "alpha", "lr"]
    )
    pq.write_table(old, tmp_path / "trials.parquet" / "old.parquet")
    trials = tables.read("trials").set_index("trial_id")
    assert sorted(trials.index) == ["new", "old"]
    assert trials.loc["new", "temperature"] == 4.0
    assert trials.loc["old", ["temperature", "alpha", "lr"]].isna().all()
