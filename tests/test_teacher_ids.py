"""``trials.teacher_ids`` is a list column (issue 12, item 5): ``list<string>``, one element per
teacher slot in slot order, so pandas' ``explode`` and DuckDB's ``UNNEST``/``list_contains`` work.
Older sweeps hold it as one comma-joined string; they read in the list form, also when a resumed
old sweep has added files of the new form beside the old ones."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from _analysis_fixtures import sweep, trial_row, write_results

from kd_ray import analysis as A
from kd_ray.plan import StudentTrial
from kd_ray.results import rows
from kd_ray.results.schema import TEACHER_IDS_TYPE, TRIALS, upgrade
from kd_ray.results.store import ResultTables, to_table
from kd_ray.storage import Storage

# The trials schema of sweeps written before teacher_ids became a list.
OLD_TRIALS = TRIALS.set(TRIALS.get_field_index("teacher_ids"), pa.field("teacher_ids", pa.string()))


def _trial(trial_id: str, teacher_ids: tuple[str, ...]) -> StudentTrial:
    return StudentTrial(trial_id, "d", "T1w_T2s_Sw", "ws", "w", "kd", "full", 0, teacher_ids, 4.0, 0.2, 0.05)


def _row(trial_id: str, teacher_ids: tuple[str, ...]) -> dict:
    return rows.trial_row(
        _trial(trial_id, teacher_ids),
        teacher_arch="t",
        student_arch="s",
        report=None,
        status="failed",
        error="boom",
        wall_s=1.0,
    )


def _write_old(sweep_dir: Path, trial_rows: list[dict]) -> None:
    """``trials`` files as sweeps wrote them before: teacher_ids joined by commas.

    Named in the rows' order (as the fixtures name theirs), so the rows read back in that order.
    """
    (sweep_dir / "trials.parquet").mkdir(parents=True, exist_ok=True)
    for i, row in enumerate(trial_rows):
        old = {**row, "teacher_ids": ",".join(row["teacher_ids"])}
        pq.write_table(
            pa.Table.from_pylist([old], schema=OLD_TRIALS), sweep_dir / "trials.parquet" / f"{i:04d}.parquet"
        )


def _as_old(sweep_dir: Path, trial_rows: list[dict]) -> Path:
    """A sweep written by the fixtures, its trials files replaced by the old form."""
    for path in (sweep_dir / "trials.parquet").iterdir():
        path.unlink()
    _write_old(sweep_dir, trial_rows)
    return sweep_dir


def test_a_written_trials_file_holds_a_list_in_slot_order(tmp_path: Path) -> None:
    tables = ResultTables(Storage.open(tmp_path))
    tables.write("trials", "x", [_row("x", ("t1w", "t2s"))])
    data = pq.read_table(tmp_path / "trials.parquet" / "x.parquet")
    assert data.schema.field("teacher_ids").type == pa.list_(pa.string()) == TEACHER_IDS_TYPE
    assert data.column("teacher_ids").to_pylist() == [["t1w", "t2s"]]
    # pandas' own reader gives an array per cell; the package's readers give a Python list.
    assert list(pd.read_parquet(tmp_path / "trials.parquet")["teacher_ids"][0]) == ["t1w", "t2s"]
    assert tables.read("trials")["teacher_ids"].tolist() == [["t1w", "t2s"]]
    assert tables.read_owner("trials", "x")["teacher_ids"].tolist() == [["t1w", "t2s"]]


def test_a_string_is_refused_rather_than_split_into_characters() -> None:
    with pytest.raises(TypeError, match="teacher_ids: expected a list of strings"):
        to_table("trials", [{**_row("x", ("a",)), "teacher_ids": "a,b"}])


def test_the_old_string_form_upgrades_to_the_list_form() -> None:
    old = pa.table({"teacher_ids": pa.array(["a,b", "c", None, ""])})
    new = upgrade("trials", old)
    assert new.schema.field("teacher_ids").type == TEACHER_IDS_TYPE
    assert new.column("teacher_ids").to_pylist() == [["a", "b"], ["c"], None, []]
    assert upgrade("trials", new) is new
    assert upgrade("teachers", old) is old


def _mixed_sweep(root: Path) -> Path:
    """An old sweep resumed by today's code: two old files, then two trials of the new form."""
    sweep_dir = root / "sweep"
    _write_old(sweep_dir, [_row("old-a", ("t1w", "t2s")), _row("old-b", ("t1s",))])
    tables = ResultTables(Storage.open(sweep_dir))
    for trial_id, ids in (("new-a", ("t1w", "t2w")), ("new-b", ("t1s", "t2s", "t3w"))):
        tables.write("trials", trial_id, [_row(trial_id, ids)])
    return sweep_dir


EXPECTED = {
    "old-a": ["t1w", "t2s"],
    "old-b": ["t1s"],
    "new-a": ["t1w", "t2w"],
    "new-b": ["t1s", "t2s", "t3w"],
}


def test_a_resumed_old_sweep_reads_in_the_list_form_throughout(tmp_path: Path) -> None:
    sweep_dir = _mixed_sweep(tmp_path)
    # The new files are written in the list form beside the old ones.
    types = sorted(
        (p.name, str(pq.read_schema(p).field("teacher_ids").type))
        for p in (sweep_dir / "trials.parquet").iterdir()
    )
    assert types == [
        ("0000.parquet", "string"),
        ("0001.parquet", "string"),
        ("new-a.parquet", "list<element: string>"),
        ("new-b.parquet", "list<element: string>"),
    ]
    driver = ResultTables(Storage.open(sweep_dir)).read("trials")
    assert dict(zip(driver["trial_id"], driver["teacher_ids"], strict=True)) == EXPECTED
    for loaded in (A.load_results(sweep_dir).trials, A.load_results([sweep_dir]).trials):
        assert dict(zip(loaded["trial_id"], loaded["teacher_ids"], strict=True)) == EXPECTED
        assert loaded.columns.tolist()[-len(TRIALS.names) :] == TRIALS.names
        assert loaded["n_teachers"].tolist() == [len(EXPECTED[t]) for t in loaded["trial_id"]]


def test_an_old_sweep_alone_reads_in_the_list_form(tmp_path: Path) -> None:
    rows_ = sweep(ks=(1, 2))
    old = _as_old(write_results(tmp_path / "old", rows_), rows_)
    trials = A.load_results(old).trials
    assert trials["teacher_ids"].tolist() == [r["teacher_ids"] for r in rows_]
    json.dumps(trials["teacher_ids"].tolist())  # list cells serialise as they are


def test_duckdb_list_functions_work_on_the_column(tmp_path: Path) -> None:
    duckdb = pytest.importorskip("duckdb", reason="DuckDB is an optional test dependency: pip install duckdb")
    sweep_dir = write_results(tmp_path / "s", sweep(ks=(1, 2)))
    glob = f"{sweep_dir}/trials.parquet/*.parquet"
    got = duckdb.sql(
        f"SELECT trial_id, list_contains(teacher_ids, 't2w') AS has, len(teacher_ids) AS k "
        f"FROM read_parquet('{glob}') ORDER BY trial_id"
    ).fetchall()
    trials = A.load_results(sweep_dir).trials.sort_values("trial_id")
    assert got == [
        (tid, "t2w" in ids, len(ids))
        for tid, ids in zip(trials["trial_id"], trials["teacher_ids"], strict=True)
    ]
    assert any(has for _, has, _ in got) and not all(has for _, has, _ in got)
    unnested = duckdb.sql(f"SELECT DISTINCT UNNEST(teacher_ids) AS t FROM read_parquet('{glob}') ORDER BY t")
    assert [t for (t,) in unnested.fetchall()] == sorted(set(trials["teacher_ids"].explode()))


def test_pandas_explode_and_grouping_by_teachers(tmp_path: Path) -> None:
    trials = A.load_results(write_results(tmp_path / "s", sweep(ks=(2,), seeds=(0, 1)))).trials
    exploded = trials.explode("teacher_ids")
    assert len(exploded) == 2 * len(trials)
    # A list is unhashable: group by its tuple.
    by_teachers = trials.groupby(trials["teacher_ids"].map(tuple))["trial_id"].count()
    # The fixtures' teachers depend on their augmentations only: each set of two is shared by
    # both student augmentations, both losses and both seeds.
    assert len(by_teachers) == 4 and set(by_teachers) == {8}


def test_claims_count_the_same_units_in_the_list_and_the_old_string_form(tmp_path: Path) -> None:
    """Trials share teachers (every loss and seed of a configuration); verdicts and unit counts
    must not depend on the form the teachers are recorded in."""
    rows_ = sweep(ks=(1, 2, 3), views=("full", "split"), seeds=(0, 1, 2))
    new = A.load_results(write_results(tmp_path / "new", rows_)).trials
    old = A.load_results(_as_old(write_results(tmp_path / "old", rows_), rows_)).trials
    assert new["teacher_ids"].tolist() == old["teacher_ids"].tolist()
    from_new, from_old = A.claims_check(new), A.claims_check(old)
    pd.testing.assert_frame_equal(from_new, from_old)
    by_claim = from_new.set_index("claim")
    assert by_claim["verdict"].to_dict() == {f"C{i}": "supported" for i in range(1, 8)}
    # Units are vanilla-KD full-view configurations: seeds and z-score twins, which share the
    # same teachers, do not count again (as tests/test_claims.py asserts on in-memory rows).
    assert by_claim.loc["C6", "n"] == 4 + 8 + 16
    pd.testing.assert_frame_equal(from_new, A.claims_check(pd.DataFrame(rows_)))


def test_a_hand_built_row_of_the_fixtures_holds_a_list() -> None:
    assert trial_row(perm="T1w_T2s_Sw")["teacher_ids"] == ["t1w", "t2s"]
