"""Read a sweep's results directory (docs/results.md) into typed pandas frames.

This is the analysis package's only I/O: every figure, table and claim function takes the
frames returned here, so the same functions work on a notebook's hand-filtered frames. It reads
through :class:`kd_ray.storage.Storage`, so results are read from wherever a sweep can write
them: a local path, ``file://``, ``s3://``, ``gs://``.

Several sweeps load as one set of frames with a ``sweep`` column, so a study split over sweeps
(two temperatures, a grown grid kept apart) is compared with one ``groupby``.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from kd_ray.errors import ResultsError
from kd_ray.results.schema import SCHEMAS, upgrade
from kd_ray.results.store import ResultTables, to_frame
from kd_ray.storage import Storage

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Results:
    """The four result tables of one sweep (or several), with the column types of docs/results.md.

    Attributes:
        name: the sweep name (the results directory's last component); for several sweeps,
            their labels joined by ``+``.
        trials: one row per student trial, failed ones included (``status == "failed"``).
        epochs: one row per (trial_id, epoch, split).
        teachers: one row per distinct teacher.
        calibration: one row per (trial_id, split, bin).

    Loaded from several sweeps, every table starts with a ``sweep`` column (the sweep's label)
    and the keys of docs/results.md hold within each sweep.
    """

    name: str
    trials: pd.DataFrame
    epochs: pd.DataFrame
    teachers: pd.DataFrame
    calibration: pd.DataFrame


def empty_frame(table: str) -> pd.DataFrame:
    """An empty frame with the columns and dtypes of one table of docs/results.md."""
    return to_frame(SCHEMAS[table].empty_table())


def frame_from_table(table: str, data: pa.Table) -> pd.DataFrame:
    """Cast an Arrow table to the schema of ``table`` and convert it to pandas.

    Older column forms are upgraded (``trials.teacher_ids`` from a string to a list), and list
    cells become Python lists (:func:`kd_ray.results.store.to_frame`).

    Raises:
        ResultsError: a required column is missing.
    """
    return to_frame(_conform(table, data))


def _conform(table: str, data: pa.Table) -> pa.Table:
    schema = SCHEMAS[table]
    data = upgrade(table, data)
    missing = [name for name in schema.names if name not in data.column_names]
    if missing:
        raise ResultsError(
            f"{table}.parquet lacks columns {', '.join(missing[:5])}; "
            "expected the kd_ray results schema (docs/results.md)"
        )
    return data.select(schema.names).cast(schema)


Location = str | os.PathLike | Storage
"""A sweep's directory ``RESULTS/N``: a local path, a pyarrow filesystem URI, or a Storage."""

SWEEP_COLUMN = "sweep"


def _read_table(sweep: Storage, table: str, *, required: bool) -> pa.Table:
    name = f"{table}.parquet"
    where = sweep.child(name).uri
    if not sweep.exists(name):
        if required:
            raise ResultsError(f"{where} not found; expected a kd_ray results directory RESULTS/N")
        logger.info("%s absent; treating it as empty", where)
        return SCHEMAS[table].empty_table()
    try:
        # Reading the directory as one dataset with the expected schema unifies per-trial files
        # whose all-null columns were inferred as another type. Hidden files (a local write's
        # temporary name) are skipped by the dataset reader.
        schema = SCHEMAS[table] if sweep.is_dir(name) else None
        try:
            data = pq.read_table(sweep.path(name), filesystem=sweep.fs, schema=schema)
        except pa.ArrowNotImplementedError:
            if schema is None:
                raise
            # Files of an older form (trials.teacher_ids a string, before it was a list) do not
            # cast to today's schema: read file by file, upgrading each, as the driver does.
            data = _with_missing_columns(schema, ResultTables(sweep).read_arrow(table))
    except (OSError, pa.ArrowException) as exc:
        reason = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise ResultsError(f"{where} is not a readable Parquet dataset: {reason}") from exc
    return _conform(table, data)


def _with_missing_columns(schema: pa.Schema, data: pa.Table) -> pa.Table:
    """``data`` with the columns of ``schema`` that no file holds as nulls, as a dataset reads them."""
    for field in schema:
        if field.name not in data.column_names:
            data = data.append_column(field, pa.nulls(data.num_rows, field.type))
    return data


def _read_sweep(sweep: Storage) -> dict[str, pa.Table]:
    """The four tables of one sweep, checked; ``trials`` must hold one row per trial."""
    if not sweep.is_dir():
        raise ResultsError(
            f"results directory {sweep.uri} not found; expected RESULTS/N written by kd-ray sweep"
        )
    tables = {t: _read_table(sweep, t, required=t == "trials") for t in SCHEMAS}
    trials = tables["trials"]
    where = sweep.child("trials.parquet").uri
    if trials.num_rows == 0:
        raise ResultsError(f"{where} holds no trials; run or resume the sweep first")
    if trials.column("trial_id").to_pandas().duplicated().any():
        raise ResultsError(f"{where} has duplicated trial_id rows; expected one row per trial")
    return tables


def _open(location: Location) -> Storage:
    return location if isinstance(location, Storage) else Storage.open(location)


def _labelled(sweeps: Iterable[Location] | Mapping[str, Location]) -> dict[str, Storage]:
    """Each sweep's label: the mapping's key, else the sweep's name, which must then be unique."""
    if isinstance(sweeps, Mapping):
        for label in sweeps:
            if not isinstance(label, str) or not label:
                raise ResultsError(f"sweep label {label!r}: expected a non-empty string")
        return {label: _open(location) for label, location in sweeps.items()}
    labelled: dict[str, Storage] = {}
    for location in sweeps:
        sweep = _open(location)
        if sweep.name in labelled:
            raise ResultsError(
                f"two sweeps are named {sweep.name!r} ({labelled[sweep.name].uri}, {sweep.uri}); "
                "pass a mapping {label: location} to tell them apart"
            )
        labelled[sweep.name] = sweep
    return labelled


def load_results(results_dir: Location | Iterable[Location] | Mapping[str, Location]) -> Results:
    """Load the Parquet tables of a sweep's results directory ``RESULTS/N``, or of several.

    ``trials.parquet`` is required; the other tables may be absent (an interrupted sweep, or
    one without calibration bins) and then load empty, so sections that need them can say why.

    One location gives the tables exactly as docs/results.md lists them. A list (even of one)
    or a mapping ``{label: location}`` gives them with a first column ``sweep``: the label, or
    else the sweep's name. Whether the column is there thus depends on how the call is written,
    never on how many sweeps a list happens to hold.

    Args:
        results_dir: the sweep's directory, holding ``trials.parquet`` and friends: a local
            path, a pyarrow filesystem URI (``file://``, ``s3://``, ``gs://``; read through
            :class:`kd_ray.storage.Storage`, like the sweep writes), or several of them.

    Returns:
        The typed frames.

    Raises:
        ResultsError: a location cannot be opened; a directory or its trials table is missing,
            unreadable or mis-shaped; two sweeps of a list share a name; no sweep was given.
    """
    if isinstance(results_dir, (str, os.PathLike, Storage)):
        sweep = _open(results_dir)
        tables = _read_sweep(sweep)
        return Results(name=sweep.name, **{t: to_frame(data) for t, data in tables.items()})
    if isinstance(results_dir, bytes) or not isinstance(results_dir, Iterable):
        raise ResultsError(f"load_results: expected a location or several, got {type(results_dir).__name__}")
    sweeps = _labelled(results_dir)
    if not sweeps:
        raise ResultsError("load_results: no sweep given; expected one or more RESULTS/N locations")
    loaded = {label: _read_sweep(sweep) for label, sweep in sweeps.items()}
    frames = {}
    for table in SCHEMAS:
        parts = [
            tables[table].add_column(0, SWEEP_COLUMN, pa.array([label] * tables[table].num_rows, pa.string()))
            for label, tables in loaded.items()
        ]
        frames[table] = to_frame(pa.concat_tables(parts))
    return Results(name="+".join(sweeps), **frames)
