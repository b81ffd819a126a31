"""Read a sweep's results directory (docs/results.md) into typed pandas frames.

This is the analysis package's only I/O: every figure, table and claim function takes the
frames returned here, so the same functions work on a notebook's hand-filtered frames.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from kd_ray.errors import ResultsError
from kd_ray.results.schema import SCHEMAS

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Results:
    """The four result tables of one sweep, with the column types of docs/results.md.

    Attributes:
        name: the sweep name (the results directory's last component).
        trials: one row per student trial, failed ones included (``status == "failed"``).
        epochs: one row per (trial_id, epoch, split).
        teachers: one row per distinct teacher.
        calibration: one row per (trial_id, split, bin).
    """

    name: str
    trials: pd.DataFrame
    epochs: pd.DataFrame
    teachers: pd.DataFrame
    calibration: pd.DataFrame


def empty_frame(table: str) -> pd.DataFrame:
    """An empty frame with the columns and dtypes of one table of docs/results.md."""
    return SCHEMAS[table].empty_table().to_pandas()


def frame_from_table(table: str, data: pa.Table) -> pd.DataFrame:
    """Cast an Arrow table to the schema of ``table`` and convert it to pandas.

    Raises:
        ResultsError: a required column is missing.
    """
    schema = SCHEMAS[table]
    missing = [name for name in schema.names if name not in data.column_names]
    if missing:
        raise ResultsError(
            f"{table}.parquet lacks columns {', '.join(missing[:5])}; "
            "expected the kd_ray results schema (docs/results.md)"
        )
    return data.select(schema.names).cast(schema).to_pandas()


def _read_table(root: Path, table: str, *, required: bool) -> pd.DataFrame:
    path = root / f"{table}.parquet"
    if not path.exists():
        if required:
            raise ResultsError(f"{path} not found; expected a kd_ray results directory RESULTS/N")
        logger.info("%s absent; treating it as empty", path)
        return empty_frame(table)
    try:
        # Reading the directory as one dataset with the expected schema unifies per-trial files
        # whose all-null columns were inferred as another type.
        data = pq.read_table(path, schema=SCHEMAS[table]) if path.is_dir() else pq.read_table(path)
    except (OSError, pa.ArrowException) as exc:
        raise ResultsError(f"{path} is not a readable Parquet dataset: {str(exc).splitlines()[0]}") from exc
    return frame_from_table(table, data)


def load_results(results_dir: str | Path) -> Results:
    """Load the Parquet tables of a sweep's results directory ``RESULTS/N``.

    ``trials.parquet`` is required; the other tables may be absent (an interrupted sweep, or
    one without calibration bins) and then load empty, so sections that need them can say why.

    Args:
        results_dir: the sweep's directory, holding ``trials.parquet`` and friends.

    Returns:
        The typed frames.

    Raises:
        ResultsError: the directory or its trials table is missing, unreadable or mis-shaped.
    """
    root = Path(results_dir)
    if not root.is_dir():
        raise ResultsError(f"results directory {root} not found; expected RESULTS/N written by kd-ray sweep")
    frames = {t: _read_table(root, t, required=t == "trials") for t in SCHEMAS}
    trials = frames["trials"]
    if trials.empty:
        raise ResultsError(f"{root / 'trials.parquet'} holds no trials; run or resume the sweep first")
    if trials["trial_id"].duplicated().any():
        raise ResultsError(
            f"{root / 'trials.parquet'} has duplicated trial_id rows; expected one row per trial"
        )
    return Results(name=root.name, **frames)
