"""Run records: every stage invocation is a row in `runs`, tied to its Prefect flow run.

A run records the host, pid and process start of the process doing it, and a heartbeat
that a background thread refreshes while it lasts. `reconcile` marks `crashed` every
`running` run whose process is gone (same host), or whose heartbeat went stale (another
host), so a `kill -9` or an OOM never leaves a run `running` forever.
"""

from __future__ import annotations

import contextvars
import logging
import os
import socket
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from stillroom.catalog import Catalog
from stillroom.hashing import canonical_json

log = logging.getLogger(__name__)

HEARTBEAT_ENV = "STILLROOM_HEARTBEAT_S"
STALE_ENV = "STILLROOM_STALE_AFTER_S"
_current: contextvars.ContextVar[Run | None] = contextvars.ContextVar("stillroom_run",
                                                                      default=None)


def current_flow_run_id() -> str | None:
    """The Prefect flow-run id when called inside a flow, else None."""
    if "prefect" not in sys.modules:  # no flow can be running; importing prefect costs ~2 s
        return None
    try:
        from prefect.runtime import flow_run

        run_id = flow_run.id
    except Exception:  # prefect absent or no run context
        return None
    return str(run_id) if run_id else None


def heartbeat_seconds() -> float:
    """How often a running run refreshes its heartbeat (STILLROOM_HEARTBEAT_S, default 30)."""
    return float(os.environ.get(HEARTBEAT_ENV, "30"))


def stale_after_seconds() -> float:
    """A run on another host without a heartbeat this long is taken as crashed
    (STILLROOM_STALE_AFTER_S, default ten heartbeats)."""
    return float(os.environ.get(STALE_ENV, str(10 * heartbeat_seconds())))


def _proc_stat(pid: int) -> tuple[str, str] | None:
    """(state, boot id and start tick) of `pid` from /proc (Linux), or None."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
        boot = Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    except OSError:
        return None
    # After the command name (field 2, which may hold spaces): state is field 3, start 22.
    fields = stat.rsplit(")", 1)[1].split()
    return fields[0], f"{boot}:{fields[19]}"


def process_start(pid: int) -> str | None:
    """When `pid` started, as boot id and start tick, so a pid reused after a crash or a
    reboot is not mistaken for the process that recorded a run; None where /proc is absent."""
    stat = _proc_stat(pid)
    return stat[1] if stat else None


def process_alive(pid: int, started: str | None) -> bool:
    """Whether `pid` on this host is still the process that recorded `started`."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        pass
    stat = _proc_stat(pid)
    if stat is None:  # no /proc here: the pid's existence is all we can tell
        return True
    state, start = stat
    return state != "Z" and (started is None or start == started)


@dataclass
class Run:
    run_id: str
    kind: str
    started: float = field(default_factory=time.monotonic)
    summary: dict[str, Any] = field(default_factory=dict)

    @property
    def seconds(self) -> float:
        return round(time.monotonic() - self.started, 3)

    def add(self, key: str, amount: float | None) -> None:
        """Add to a running total in the summary (dollars, tokens); None adds nothing."""
        if amount is not None:
            self.summary[key] = (self.summary.get(key) or 0) + amount


def current_run() -> Run | None:
    """The run recorded by the innermost `recorded_run` in this context, if any."""
    return _current.get()


def heartbeat(catalog: Catalog, run_id: str) -> None:
    """Record that `run_id` is alive now (one short write transaction)."""
    with catalog.write() as conn:
        conn.execute("UPDATE runs SET heartbeat_at = now() WHERE run_id = ?", [run_id])


def _beat_until(stop: threading.Event, catalog: Catalog, run_id: str, every: float) -> None:
    while not stop.wait(every):
        try:
            heartbeat(catalog, run_id)
        except Exception:  # a missed beat is harmless; the next one may succeed
            log.debug("heartbeat for run %s failed", run_id, exc_info=True)


@contextmanager
def recorded_run(catalog: Catalog, kind: str, params: dict[str, Any]) -> Iterator[Run]:
    """Insert a `running` row, yield, then mark it completed (with its summary) or failed.

    While it runs a daemon thread refreshes its heartbeat every `heartbeat_seconds()`.
    """
    run = Run(run_id=uuid.uuid4().hex[:16], kind=kind)
    pid = os.getpid()
    with catalog.write() as conn:
        conn.execute(
            "INSERT INTO runs (run_id, kind, flow_run_id, status, params, started_at, host, pid,"
            " process_start, heartbeat_at) VALUES (?, ?, ?, 'running', ?, now(), ?, ?, ?, now())",
            [run.run_id, kind, current_flow_run_id(), canonical_json(params),
             socket.gethostname(), pid, process_start(pid)],
        )
    stop = threading.Event()
    beat = threading.Thread(target=_beat_until, daemon=True, name=f"heartbeat-{run.run_id}",
                            args=(stop, catalog, run.run_id, heartbeat_seconds()))
    beat.start()
    token = _current.set(run)
    status = "failed"
    try:
        yield run
        status = "completed"
    finally:
        _current.reset(token)
        stop.set()
        beat.join()
        run.summary.setdefault("seconds", run.seconds)
        with catalog.write() as conn:
            conn.execute(
                "UPDATE runs SET status = ?, summary = ?, finished_at = now() WHERE run_id = ?",
                [status, canonical_json(run.summary), run.run_id],
            )


def reconcile(catalog: Catalog) -> list[str]:
    """Mark `crashed` every `running` run whose process is gone; returns their ids.

    On this host a run is gone when its pid no longer exists or now belongs to a process
    that started at another time; on other hosts (and for runs recorded before hosts
    were) when its heartbeat is older than `stale_after_seconds()`. The check and the
    update happen in one transaction, so a run cannot finish in between.
    """
    if not catalog.path.exists():
        return []
    host = socket.gethostname()
    stale = stale_after_seconds()
    with catalog.write() as conn:
        running = conn.execute(
            "SELECT run_id, host, pid, process_start,"
            " date_diff('millisecond', coalesce(heartbeat_at, started_at), now()::TIMESTAMP)"
            " / 1000.0 FROM runs WHERE status = 'running'").fetchall()
        crashed: dict[str, str] = {}
        for run_id, run_host, pid, started, silent_s in running:
            if run_host == host and pid is not None:
                if not process_alive(pid, started):
                    crashed[run_id] = f"process {pid} on {host} is gone"
            elif silent_s > stale:
                crashed[run_id] = (f"no heartbeat from {run_host or 'an unknown host'} "
                                   f"for {silent_s:.0f}s")
        for run_id, reason in crashed.items():
            conn.execute(
                "UPDATE runs SET status = 'crashed', finished_at = now(),"
                " summary = coalesce(summary, ?) WHERE run_id = ? AND status = 'running'",
                [canonical_json({"crashed": reason}), run_id])
    for run_id, reason in crashed.items():
        log.warning("run %s marked crashed: %s", run_id, reason)
    return list(crashed)
