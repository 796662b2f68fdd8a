"""The catalog: schema versioning, and a writer and a reader in two processes at once."""

from __future__ import annotations

import multiprocessing as mp
from pathlib import Path

import duckdb

from stillroom import schema
from stillroom.catalog import Catalog


def test_migrations_are_recorded_and_idempotent(tmp_path: Path) -> None:
    catalog = Catalog(tmp_path / "c.duckdb").ensure()
    catalog.ensure()
    assert catalog.scalar("SELECT max(version) FROM schema_version") == schema.LATEST_VERSION
    assert catalog.scalar("SELECT count(*) FROM schema_version") == len(schema.MIGRATIONS)
    tables = {r["table_name"] for r in catalog.rows(
        "SELECT table_name FROM information_schema.tables")}
    for table in ("teachers", "prompts", "responses", "verdicts", "datasets", "dataset_rows",
                  "students", "eval_results", "runs", "license_grants"):
        assert table in tables


def test_failed_write_rolls_back(catalog: Catalog) -> None:
    try:
        with catalog.write() as conn:
            conn.execute("INSERT INTO runs (run_id, kind, status, started_at)"
                         " VALUES ('r1', 'test', 'running', now())")
            raise RuntimeError("boom")
    except RuntimeError:
        pass
    assert catalog.scalar("SELECT count(*) FROM runs") == 0


def _writer(path: str, batches: int, errors: mp.Queue) -> None:
    catalog = Catalog(path)
    failures = 0
    for i in range(batches):
        try:
            with catalog.write() as conn:
                conn.executemany("INSERT INTO runs (run_id, kind, status, started_at)"
                                 " VALUES (?, 'test', 'running', now())",
                                 [(f"w{i}-{j}",) for j in range(20)])
        except duckdb.Error:
            failures += 1
    errors.put(("writer", failures))


def _reader(path: str, stop: mp.Event, errors: mp.Queue) -> None:
    catalog = Catalog(path)
    failures = reads = 0
    while not stop.is_set() or reads < 5:
        try:
            catalog.scalar("SELECT count(*) FROM runs")
            reads += 1
        except duckdb.Error:
            failures += 1
    errors.put(("reader", failures, reads))


def test_writer_and_reader_processes_never_collide(tmp_path: Path) -> None:
    path = str(Catalog(tmp_path / "c.duckdb").ensure().path)
    ctx = mp.get_context("spawn")
    results, stop = ctx.Queue(), ctx.Event()
    reader = ctx.Process(target=_reader, args=(path, stop, results))
    writer = ctx.Process(target=_writer, args=(path, 60, results))
    reader.start()
    writer.start()
    writer.join(120)
    stop.set()
    reader.join(120)
    outcome = {r[0]: r[1:] for r in (results.get(timeout=10), results.get(timeout=10))}
    assert outcome["writer"] == (0,)
    assert outcome["reader"][0] == 0 and outcome["reader"][1] >= 5
    assert Catalog(path).scalar("SELECT count(*) FROM runs") == 60 * 20
