"""Run records: every stage invocation is a row in `runs`, tied to its Prefect flow run."""

from __future__ import annotations

import sys
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

from stillroom.catalog import Catalog
from stillroom.hashing import canonical_json


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


@dataclass
class Run:
    run_id: str
    kind: str
    started: float = field(default_factory=time.monotonic)
    summary: dict[str, Any] = field(default_factory=dict)

    @property
    def seconds(self) -> float:
        return round(time.monotonic() - self.started, 3)


@contextmanager
def recorded_run(catalog: Catalog, kind: str, params: dict[str, Any]) -> Iterator[Run]:
    """Insert a `running` row, yield, then mark it completed (with its summary) or failed."""
    run = Run(run_id=uuid.uuid4().hex[:16], kind=kind)
    with catalog.write() as conn:
        conn.execute(
            "INSERT INTO runs (run_id, kind, flow_run_id, status, params, started_at)"
            " VALUES (?, ?, ?, 'running', ?, now())",
            [run.run_id, kind, current_flow_run_id(), canonical_json(params)],
        )
    status = "failed"
    try:
        yield run
        status = "completed"
    finally:
        run.summary.setdefault("seconds", run.seconds)
        with catalog.write() as conn:
            conn.execute(
                "UPDATE runs SET status = ?, summary = ?, finished_at = now() WHERE run_id = ?",
                [status, canonical_json(run.summary), run.run_id],
            )
