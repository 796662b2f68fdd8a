"""Crash safety: `kill -9` mid-run loses no committed row, re-sends no answered request, and
leaves the run `crashed` (reconciled by the next command), not `running`."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from kill import kill_once

from stillroom.catalog import Catalog
from stillroom.tasks import teachers

PROMPTS = 120


def generate_cli(home: Path, prompts: Path) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "stillroom.cli", "generate", "--teacher", "tiny", "--prompts",
         str(prompts), "--batch-size", "1", "--max-tokens", "16", "--logprobs-k", "5"],
        env={**os.environ, "STILLROOM_HOME": str(home)}, stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL, text=True)


def test_kill_9_then_rerun_loses_nothing_and_repeats_nothing(tiny_model: Path,
                                                             tmp_path: Path) -> None:
    home = tmp_path / "home"
    catalog = Catalog(home / "catalog.duckdb").ensure()
    teachers.add_teacher(catalog, "tiny", str(tiny_model), "mit")
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text("\n".join(json.dumps({"prompt": f"Tell me about thing number {i}."})
                                 for i in range(PROMPTS)))

    victim = generate_cli(home, prompts)
    kill_once(victim, lambda: catalog.scalar("SELECT count(*) FROM responses") >= 10,
              "10 committed responses")
    survived = catalog.scalar("SELECT count(*) FROM responses")
    assert 10 <= survived < PROMPTS
    assert catalog.scalar("SELECT count(DISTINCT request_key) FROM responses") == survived
    assert catalog.scalar("SELECT status FROM runs WHERE kind = 'generate'") == "running"

    rerun = generate_cli(home, prompts)
    out, _ = rerun.communicate(timeout=600)
    assert rerun.returncode == 0
    summary = json.loads(out.strip().splitlines()[-1])
    assert summary["cache_hits"] == survived
    assert summary["requests_sent"] == summary["responses_stored"] == PROMPTS - survived
    assert catalog.scalar("SELECT count(*) FROM responses") == PROMPTS
    assert catalog.scalar("SELECT count(DISTINCT request_key) FROM responses") == PROMPTS
    # The re-run reconciled first: the killed run is crashed, not running forever.
    runs = catalog.rows("SELECT status, summary FROM runs WHERE kind = 'generate'"
                        " ORDER BY started_at")
    assert [r["status"] for r in runs] == ["crashed", "completed"]
    assert f"process {victim.pid} " in json.loads(runs[0]["summary"])["crashed"]
