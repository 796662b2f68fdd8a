"""Run records: host, pid, heartbeat, and reconciling runs whose process is gone."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time

import pytest

from stillroom.catalog import Catalog
from stillroom.cli import main
from stillroom.runs import process_start, reconcile, recorded_run


def dead_pid() -> int:
    """The pid of a real process that has exited and been reaped."""
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    return child.pid


def insert_running(catalog: Catalog, run_id: str, host: str | None, pid: int | None,
                   started: str | None, silent_s: int = 0) -> None:
    with catalog.write() as conn:
        conn.execute(
            "INSERT INTO runs (run_id, kind, status, started_at, host, pid, process_start,"
            " heartbeat_at) VALUES (?, 'generate', 'running', now(), ?, ?, ?,"
            " now()::TIMESTAMP - to_seconds(?))", [run_id, host, pid, started, silent_s])


def statuses(catalog: Catalog) -> dict[str, str]:
    return {r["run_id"]: r["status"] for r in catalog.rows("SELECT run_id, status FROM runs")}


def test_a_run_records_its_process_and_beats(catalog: Catalog,
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("STILLROOM_HEARTBEAT_S", "0.1")
    with recorded_run(catalog, "test", {}) as run:
        first = catalog.rows("SELECT * FROM runs WHERE run_id = ?", [run.run_id])[0]
        time.sleep(0.6)
        later = catalog.scalar("SELECT heartbeat_at FROM runs WHERE run_id = ?", [run.run_id])
        assert reconcile(catalog) == []  # this very process is alive
    assert first["host"] == socket.gethostname() and first["pid"] == os.getpid()
    assert first["process_start"] == process_start(os.getpid()) is not None
    assert later > first["heartbeat_at"]
    assert statuses(catalog)[run.run_id] == "completed"


def test_reconcile_marks_runs_whose_process_is_gone(catalog: Catalog) -> None:
    here, me = socket.gethostname(), os.getpid()
    insert_running(catalog, "alive", here, me, process_start(me))
    insert_running(catalog, "killed", here, dead_pid(), "boot:123")
    insert_running(catalog, "pid-reused", here, me, "boot:1")  # same pid, another process
    insert_running(catalog, "elsewhere-fresh", "other-host", 42, "x", silent_s=5)
    insert_running(catalog, "elsewhere-stale", "other-host", 42, "x", silent_s=3600)
    insert_running(catalog, "before-hosts", None, None, None, silent_s=3600)
    assert sorted(reconcile(catalog)) == ["before-hosts", "elsewhere-stale", "killed",
                                          "pid-reused"]
    assert statuses(catalog) == {"alive": "running", "elsewhere-fresh": "running",
                                 "killed": "crashed", "pid-reused": "crashed",
                                 "elsewhere-stale": "crashed", "before-hosts": "crashed"}
    reasons = {r["run_id"]: json.loads(r["summary"])["crashed"] for r in catalog.rows(
        "SELECT run_id, summary FROM runs WHERE status = 'crashed'")}
    assert "is gone" in reasons["killed"] and "no heartbeat from other-host" in reasons[
        "elsewhere-stale"]
    assert reconcile(catalog) == []  # idempotent


def test_every_cli_command_reconciles_first(home, capsys: pytest.CaptureFixture) -> None:
    catalog = Catalog().ensure()
    insert_running(catalog, "killed", socket.gethostname(), dead_pid(), None)
    assert main(["teacher", "list"]) == 0
    assert statuses(catalog) == {"killed": "crashed"}


def test_reconcile_leaves_a_missing_catalog_alone(tmp_path) -> None:
    catalog = Catalog(tmp_path / "nothing" / "catalog.duckdb")
    assert reconcile(catalog) == [] and not catalog.path.exists()
