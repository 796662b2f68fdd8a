"""The DuckDB catalog, shared safely between processes.

DuckDB lets one read-write process lock the file against all others, readers
included. So nobody holds a connection for long: writers open, write one short
transaction and close under an exclusive `flock`; readers open read-only per
query under a shared `flock`. A dashboard refresh waits at most one batch
commit for a running flow, and a flow waits at most one query for a dashboard.
"""

from __future__ import annotations

import fcntl
import os
import re
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import duckdb

from stillroom import schema, settings
from stillroom.errors import StillroomError

Params = Sequence[Any] | Mapping[str, Any]


class Catalog:
    """Handle on one catalog file; cheap to create, holds no open connection."""

    def __init__(self, path: Path | str | None = None) -> None:
        self.path = Path(path) if path else settings.catalog_path()
        self.lock_path = self.path.with_suffix(".lock")

    @contextmanager
    def _flock(self, exclusive: bool) -> Iterator[None]:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.lock_path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX if exclusive else fcntl.LOCK_SH)
            yield
        finally:
            fcntl.flock(fd, fcntl.LOCK_UN)
            os.close(fd)

    def ensure(self) -> Catalog:
        """Create the file and bring its schema up to date."""
        with self._flock(exclusive=True):
            conn = duckdb.connect(str(self.path))
            try:
                schema.migrate(conn)
            finally:
                conn.close()
        return self

    @contextmanager
    def write(self) -> Iterator[duckdb.DuckDBPyConnection]:
        """One short transaction: committed on success, rolled back on any error."""
        with self._flock(exclusive=True):
            conn = duckdb.connect(str(self.path))
            try:
                if schema.current_version(conn) < schema.LATEST_VERSION:
                    schema.migrate(conn)
                conn.execute("BEGIN TRANSACTION")
                try:
                    yield conn
                except BaseException:
                    conn.execute("ROLLBACK")
                    raise
                conn.execute("COMMIT")
            finally:
                conn.close()

    @contextmanager
    def reader(self) -> Iterator[duckdb.DuckDBPyConnection]:
        """A read-only connection for a few queries; keep the block short."""
        if not self.path.exists():
            raise StillroomError(
                "no catalog here yet; run `stillroom demo` or `stillroom teacher add` first",
                where=str(self.path),
            )
        with self._flock(exclusive=False):
            conn = duckdb.connect(str(self.path), read_only=True)
            try:
                yield conn
            finally:
                conn.close()

    def rows(self, sql: str, params: Params = ()) -> list[dict[str, Any]]:
        """Run one read query and return its rows as dicts."""
        with self.reader() as conn:
            cursor = conn.execute(sql, _bind(params))
            names = [d[0] for d in cursor.description]
            return [dict(zip(names, row, strict=True)) for row in cursor.fetchall()]

    def frame(self, sql: str, params: Params = ()) -> Any:
        """Run one read query and return a pandas DataFrame (for the dashboard)."""
        with self.reader() as conn:
            return conn.execute(sql, _bind(params)).df()

    def scalar(self, sql: str, params: Params = ()) -> Any:
        with self.reader() as conn:
            row = conn.execute(sql, _bind(params)).fetchone()
            return row[0] if row else None


def _bind(params: Params) -> Any:
    """DuckDB binds `?` from a list and `$name` from a dict."""
    return dict(params) if isinstance(params, Mapping) else list(params)


def insert_many(conn: duckdb.DuckDBPyConnection, sql: str, rows: Sequence[Sequence[Any]]) -> int:
    """Run an `INSERT ... VALUES (?, ...)` for many rows as one Arrow bulk insert (DuckDB's
    `executemany` goes row by row: ~100x slower); an empty batch is a no-op."""
    if not rows:
        return 0
    import pyarrow as pa

    head, values = sql.split(" VALUES ", 1)
    width = values.count("?")
    batch = pa.table({f"c{i}": [row[i] for row in rows] for i in range(width)})  # noqa: F841
    columns = iter(range(width))
    select = re.sub(r"\?", lambda _: f"c{next(columns)}", values.strip()[1:-1])
    conn.execute(f"{head} SELECT {select} FROM batch")
    return len(rows)


def insert_records(conn: duckdb.DuckDBPyConnection, table: str, rows: Sequence[Any]) -> int:
    """Bulk-insert NamedTuples whose fields name `table`'s columns, via Arrow (fast for many
    rows with list and blob columns); `created_at` is stamped now, existing keys are kept."""
    if not rows:
        return 0
    import pyarrow as pa

    columns = list(rows[0]._fields)
    batch = pa.Table.from_pylist([row._asdict() for row in rows])  # noqa: F841 (scanned below)
    names = ", ".join(columns)
    conn.execute(f"INSERT OR IGNORE INTO {table} ({names}, created_at)"
                 f" SELECT {names}, now() FROM batch")
    return len(rows)
