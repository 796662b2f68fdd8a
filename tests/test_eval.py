"""The eval runner on the tiny real model: suites without accuracy, and resume after kill -9."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from kill import kill_once

from stillroom.catalog import Catalog
from stillroom.eval.runner import run_suite
from stillroom.eval.suites import load_suite
from stillroom.tasks import teachers

SUITE = """
name: {name}
template: "Question: {{question}}\\nAnswer:"
shots: 2
generation: {{max_tokens: 8, stop: ["\\n"]}}
tasks:
  - {{task: basic_arithmetic, size: {size}, seed: 5,
     config: {{min_terms: 2, max_terms: 2, min_digits: 1, max_digits: 1}}}}
metrics: {metrics}
"""


def write_suite(path: Path, name: str, size: int, metrics: str) -> Path:
    path.write_text(SUITE.format(name=name, size=size, metrics=metrics))
    return path


def test_a_suite_without_accuracy_stores_what_it_names(catalog: Catalog, tiny_model: Path,
                                                      tmp_path: Path) -> None:
    teachers.add_teacher(catalog, "tiny", str(tiny_model), "mit", gpu_hour_usd=1.0)
    suite = load_suite(str(write_suite(tmp_path / "s.yaml", "no-accuracy", 6, "[agreement]")))
    first = run_suite(catalog, "tiny", suite)
    assert "accuracy" not in first and first["items"] == 6 and first["output_tokens"] > 0
    assert first["tokens_per_s"] > 0 and first["usd_per_1m_tokens"] > 0
    row = catalog.rows("SELECT accuracy, ci_low, ci_high, n_items FROM eval_results")[0]
    assert row == {"accuracy": None, "ci_low": None, "ci_high": None, "n_items": 6}
    assert catalog.scalar("SELECT count(*) FROM eval_items WHERE score IS NOT NULL") == 6
    # A finished eval is not resumed: benchmarking again measures again.
    second = run_suite(catalog, "tiny", suite)
    assert second["eval_id"] != first["eval_id"] and second["items_generated"] == 6


def test_kill_9_mid_eval_then_rerun_generates_only_missing_items(tiny_model: Path,
                                                                 tmp_path: Path) -> None:
    home = tmp_path / "home"
    env = {**os.environ, "STILLROOM_HOME": str(home)}
    catalog = Catalog(home / "catalog.duckdb").ensure()
    teachers.add_teacher(catalog, "tiny", str(tiny_model), "mit")
    suite = write_suite(tmp_path / "suite.yaml", "resumable", 160, "[accuracy]")
    items = len(load_suite(str(suite)).items)
    victim = subprocess.Popen(
        [sys.executable, "-c",
         "import sys\nfrom stillroom.catalog import Catalog\n"
         "from stillroom.eval.runner import run_suite\nfrom stillroom.eval.suites import "
         "load_suite\nrun_suite(Catalog(), 'tiny', load_suite(sys.argv[1]), commit_every=1)",
         str(suite)], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    kill_once(victim, lambda: catalog.scalar("SELECT count(*) FROM eval_items") >= 5,
              "5 committed eval items")
    survived = catalog.scalar("SELECT count(*) FROM eval_items")
    assert 5 <= survived < items
    assert catalog.scalar("SELECT count(*) FROM eval_results") == 0
    assert catalog.scalar("SELECT status FROM runs WHERE kind = 'eval'") == "running"

    rerun = subprocess.run([sys.executable, "-m", "stillroom.cli", "eval", "--model", "tiny",
                            "--suite", str(suite)], env=env, capture_output=True, text=True,
                           timeout=600)
    assert rerun.returncode == 0, rerun.stderr[-2000:]
    summary = json.loads(rerun.stdout.strip().splitlines()[-1])
    assert summary["items_resumed"] == survived
    assert summary["items_generated"] == items - survived
    assert summary["items"] == items and 0 <= summary["accuracy"] <= 1
    assert catalog.scalar("SELECT count(*) FROM eval_items") == items
    assert catalog.scalar("SELECT count(DISTINCT eval_id) FROM eval_items") == 1
    statuses = catalog.rows("SELECT status, summary FROM runs WHERE kind = 'eval'"
                            " ORDER BY started_at")
    assert [r["status"] for r in statuses] == ["crashed", "completed"]
    assert f"process {victim.pid}" in json.loads(statuses[0]["summary"])["crashed"]
