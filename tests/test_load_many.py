"""Analysis across sweeps (issue 12, item 5): ``load_results`` on several sweeps adds a ``sweep``
column to every table, and other tools (DuckDB) read the tables with a plain glob."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest
from _analysis_fixtures import sweep, trial_row, write_results
from _sweep_helpers import uninterrupted_run

from kd_ray.analysis import load_results
from kd_ray.errors import ResultsError
from kd_ray.results.schema import SCHEMAS

TABLES = tuple(SCHEMAS)


@pytest.fixture(scope="module")
def two_sweeps(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """Two sweeps of different sizes that share trial ids (the same grid at two settings)."""
    root = tmp_path_factory.mktemp("many")
    tau4 = write_results(root / "tau4", sweep(losses=("kd",)))
    tau10 = write_results(
        root / "tau10", sweep() + [trial_row(perm="T1w_T2w_Sw", seed=7, status="failed")], calibration=False
    )
    return tau4, tau10


def test_every_table_of_several_sweeps_has_a_sweep_column(two_sweeps: tuple[Path, Path]) -> None:
    tau4, tau10 = two_sweeps
    one = {path.name: load_results(path) for path in two_sweeps}
    both = load_results([tau4, str(tau10)])
    assert both.name == "tau4+tau10"
    for table in TABLES:
        frame = getattr(both, table)
        assert list(frame.columns) == ["sweep", *SCHEMAS[table].names], table
        parts = {label: part.drop(columns="sweep") for label, part in frame.groupby("sweep", sort=False)}
        for label, single in one.items():
            expected = getattr(single, table)
            if expected.empty:  # tau10 has no calibration table: it adds no rows
                assert label not in parts, table
                continue
            pd.testing.assert_frame_equal(
                parts[label].reset_index(drop=True), expected, obj=f"{table}/{label}"
            )
    # Trial ids repeat across sweeps; (sweep, trial_id) is the key.
    assert both.trials["trial_id"].duplicated().any()
    assert not both.trials[["sweep", "trial_id"]].duplicated().any()
    assert both.trials.groupby("sweep")["status"].apply(lambda s: (s == "failed").sum()).to_dict() == {
        "tau10": 1,
        "tau4": 0,
    }


def test_one_location_has_no_sweep_column_but_a_list_of_one_has(two_sweeps) -> None:
    tau4, _ = two_sweeps
    assert list(load_results(tau4).trials.columns) == SCHEMAS["trials"].names
    listed = load_results([tau4])
    assert listed.name == "tau4" and set(listed.trials["sweep"]) == {"tau4"}


def test_a_mapping_labels_sweeps_of_the_same_name(tmp_path: Path, two_sweeps) -> None:
    tau4, _ = two_sweeps
    other = write_results(tmp_path / "elsewhere" / "tau4", sweep(losses=("zscore_kd",)))
    with pytest.raises(ResultsError, match=r"two sweeps are named 'tau4' .*pass a mapping") as info:
        load_results([tau4, other])
    assert "\n" not in str(info.value)
    both = load_results({"vanilla": tau4, "zscore": f"file://{other}"})
    assert both.trials.groupby("sweep")["loss"].unique().map(list).to_dict() == {
        "vanilla": ["kd"],
        "zscore": ["zscore_kd"],
    }


def test_errors_name_the_sweep_at_fault(tmp_path: Path, two_sweeps) -> None:
    tau4, _ = two_sweeps
    with pytest.raises(ResultsError, match="no sweep given"):
        load_results([])
    with pytest.raises(ResultsError, match=f"results directory {tmp_path / 'gone'} not found"):
        load_results([tau4, tmp_path / "gone"])
    with pytest.raises(ResultsError, match="cannot open 'nosuchfs://b/tau4'"):
        load_results(["nosuchfs://b/tau4"])
    with pytest.raises(ResultsError, match="non-empty string"):
        load_results({"": tau4})


def _duckdb():
    return pytest.importorskip("duckdb", reason="DuckDB is an optional test dependency: pip install duckdb")


def test_duckdb_reads_the_tables_of_two_sweeps_with_a_plain_glob(two_sweeps) -> None:
    duckdb = _duckdb()
    root = two_sweeps[0].parent
    both = load_results(list(two_sweeps))
    # The sweep is the directory above trials.parquet/, as DuckDB users would label it.
    got = duckdb.sql(
        f"SELECT split_part(filename, '/', -3) AS sweep, * EXCLUDE (filename) "
        f"FROM read_parquet('{root}/*/trials.parquet/*.parquet', filename = true)"
    ).df()
    keys = ["sweep", "trial_id"]
    expected = both.trials.sort_values(keys).reset_index(drop=True)
    got = got.sort_values(keys).reset_index(drop=True)
    assert list(got.columns) == list(expected.columns)
    for column in ("sweep", "trial_id", "perm", "loss", "status", "seed", "n_teachers"):
        assert got[column].tolist() == expected[column].tolist(), column
    pd.testing.assert_series_equal(got["val_acc"], expected["val_acc"], check_dtype=False)


@pytest.mark.slow
def test_duckdb_reads_every_table_a_sweep_wrote() -> None:
    duckdb = _duckdb()
    sweep_dir = uninterrupted_run() / "tiny"
    res = load_results(sweep_dir)
    for table in TABLES:
        expected = getattr(res, table)
        counted = duckdb.sql(f"SELECT count(*) FROM read_parquet('{sweep_dir}/{table}.parquet/*.parquet')")
        assert counted.fetchall() == [(len(expected),)] and len(expected) > 0, table
        got = duckdb.sql(f"SELECT * FROM read_parquet('{sweep_dir}/{table}.parquet/*.parquet')").df()
        assert list(got.columns) == SCHEMAS[table].names, table
    trials = duckdb.sql(
        f"SELECT trial_id, val_acc FROM read_parquet('{sweep_dir}/trials.parquet/*.parquet') ORDER BY trial_id"
    ).fetchall()
    assert trials == list(
        res.trials.sort_values("trial_id")[["trial_id", "val_acc"]].itertuples(index=False, name=None)
    )
