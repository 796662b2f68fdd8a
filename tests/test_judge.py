"""The teacher judge's calls are priced like generation and summed into the filter run."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from rows import add_rows

from stillroom.catalog import Catalog
from stillroom.runs import recorded_run
from stillroom.tasks.filters import apply_filters
from stillroom.tasks.teachers import add_teacher


def test_judge_calls_are_priced_into_the_filter_run(catalog: Catalog, tiny_model: Path) -> None:
    add_teacher(catalog, "grader", str(tiny_model), "apache-2.0", per_1m_tokens_usd=3.0)
    add_rows(catalog, [{"question": f"Q{i}?", "response": f"answer {i}"} for i in range(5)])
    config = {"judge": {"teacher": "grader", "min_score": 5}}
    with recorded_run(catalog, "filter", {}) as run:
        apply_filters(catalog, config, run.run_id)
    summary = json.loads(catalog.scalar("SELECT summary FROM runs WHERE run_id = ?",
                                        [run.run_id]))
    assert summary["judge_calls"] == 5 and summary["judge_output_tokens"] > 0
    assert summary["judge_usd"] == pytest.approx(3.0 * summary["judge_output_tokens"] / 1e6)
    with recorded_run(catalog, "filter", {}) as again:
        apply_filters(catalog, config, again.run_id)  # every row has its grade: no call
    assert "judge_usd" not in json.loads(catalog.scalar(
        "SELECT summary FROM runs WHERE run_id = ?", [again.run_id]))
