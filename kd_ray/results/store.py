"""Atomic, idempotent Parquet tables under a sweep's results directory
(docs/results.md#atomic-writes-and-resume).

Each table is a directory dataset ``N/<table>.parquet/`` holding one file per trial (or per
teacher), named after its key. Writing a trial's rows replaces that trial's file atomically, so
a trial that is re-reported after a resume replaces its rows instead of duplicating them, and a
reader never sees half a file. Only the driver writes; workers never touch these tables.
"""

from __future__ import annotations

import io
import re
from collections.abc import Iterable, Mapping
from typing import Any

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from kd_ray.errors import ResultsError
from kd_ray.results.schema import KEYS, SCHEMAS, upgrade
from kd_ray.storage import Storage

_SAFE = re.compile(r"[^A-Za-z0-9_.-]")


def _file_name(owner: str) -> str:
    return _SAFE.sub("_", owner) + ".parquet"


def to_table(table: str, rows: Iterable[Mapping[str, Any]]) -> pa.Table:
    """Rows (dicts) as an Arrow table with exactly the table's schema; missing columns are null."""
    schema = SCHEMAS[table]
    rows = list(rows)
    columns = {}
    for field in schema:
        values = [row.get(field.name) for row in rows]
        if pa.types.is_floating(field.type):
            values = [None if v is None else float(v) for v in values]
        elif pa.types.is_integer(field.type):
            values = [None if v is None else int(v) for v in values]
        elif pa.types.is_list(field.type) and any(isinstance(v, str) for v in values):
            # Arrow would take a string for a list of its characters.
            raise TypeError(f"{table}.{field.name}: expected a list of strings, got a string")
        columns[field.name] = pa.array(values, type=field.type)
    return pa.table(columns, schema=schema)


def to_frame(data: pa.Table) -> pd.DataFrame:
    """``data`` as pandas, with each list cell (``trials.teacher_ids``) a Python list.

    Arrow's own conversion (``pandas.read_parquet``) gives NumPy arrays there; a list compares
    with ``==`` and is JSON-serialisable. Like an array it is unhashable: group by
    ``teacher_ids.map(tuple)`` (docs/results.md#trials).
    """
    frame = data.to_pandas()
    for field in data.schema:
        if pa.types.is_list(field.type):
            frame[field.name] = pd.Series(
                data.column(field.name).to_pylist(), index=frame.index, dtype=object
            )
    return frame


class ResultTables:
    """The four tables of one sweep (docs/results.md)."""

    def __init__(self, storage: Storage) -> None:
        self.storage = storage

    def write(self, table: str, owner: str, rows: Iterable[Mapping[str, Any]]) -> None:
        """Replace the rows that ``owner`` (a trial or teacher id) holds in ``table``."""
        data = to_table(table, rows)
        keys = KEYS[table]
        if data.num_rows and data.select(list(keys)).to_pandas().duplicated().any():
            raise ValueError(f"duplicate {keys} rows for {owner} in {table}")
        buf = io.BytesIO()
        pq.write_table(data, buf)
        self.storage.write_bytes(f"{table}.parquet/{_file_name(owner)}", buf.getvalue())

    def read_owner(self, table: str, owner: str) -> pd.DataFrame:
        """The rows ``owner`` holds in ``table`` (empty frame if none)."""
        name = f"{table}.parquet/{_file_name(owner)}"
        if not self.storage.exists(name):
            return to_frame(SCHEMAS[table].empty_table())
        return to_frame(upgrade(table, self._read_file(name)))

    def _read_file(self, name: str) -> pa.Table:
        """One owner's file of a table.

        Raises:
            ResultsError: one line, when it is not a readable Parquet file (a host that crashed
                mid-write can leave one empty), naming it and what to do.
        """
        data = self.storage.read_bytes(name)
        try:
            return pq.read_table(io.BytesIO(data))
        except pa.ArrowException as err:
            reason = (str(err).strip().splitlines() or [type(err).__name__])[0]
            raise ResultsError(
                f"{self.storage.uri}/{name}: not a readable Parquet file ({reason}); delete it and "
                "run with --resume, which writes it again (a trial's file: the trial runs again; "
                "a teacher's: its row is rewritten from the teacher store)"
            ) from None

    def read(self, table: str) -> pd.DataFrame:
        """A whole table (empty frame with the right columns if nothing was written yet)."""
        return to_frame(self.read_arrow(table))

    def read_arrow(self, table: str) -> pa.Table:
        """A whole table as Arrow, file by file, older column forms upgraded (schema.upgrade)."""
        names = [n for n in self.storage.listdir(f"{table}.parquet") if n.endswith(".parquet")]
        if not names:
            return SCHEMAS[table].empty_table()
        parts = [upgrade(table, self._read_file(f"{table}.parquet/{n}")) for n in names]
        # Files written before a column was added lack it: it reads as null (docs/results.md).
        return pa.concat_tables(parts, promote_options="default")
