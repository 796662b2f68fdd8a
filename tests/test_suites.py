"""Suites as data, scorers and metrics by registry."""

from __future__ import annotations

from pathlib import Path

import pytest

from stillroom.errors import StillroomError
from stillroom.eval.metrics import accuracy, agreement, bootstrap_interval, score_with
from stillroom.eval.suites import load_suite


def test_builtin_suite_loads_with_disjoint_items() -> None:
    suite = load_suite("arithmetic-mini")
    assert len(suite.items) == 120
    assert len({i.item_id for i in suite.items}) == 120
    assert suite.metrics == ["accuracy", "agreement"]
    assert suite.sampling.stop == ("\n",) and suite.sampling.temperature == 0


@pytest.mark.parametrize("text, message", [
    ("name: x\ntasks: [\n", "malformed YAML"),
    ("tasks: [{task: gcd}]\n", "'name' must be"),
    ("name: x\ntasks: []\n", "'tasks' must be a non-empty list"),
    ("name: x\ntasks: [{task: gcd}]\nmetrics: [vibes]\n", "unknown metrics"),
    ("name: x\ntasks: [{task: gcd, scorer: magic}]\n", "unknown scorer"),
    ("name: x\ntasks: [{task: gcd, sise: 3}]\n", "unknown keys"),
    ("name: x\ntasks: [{task: not_a_task}]\n", "reasoning-gym task 'not_a_task'"),
    ("name: x\ntemplate: 'no slot'\ntasks: [{task: gcd}]\n", "must contain"),
])
def test_malformed_suites(tmp_path: Path, text: str, message: str) -> None:
    path = tmp_path / "suite.yaml"
    path.write_text(text)
    with pytest.raises(StillroomError, match=message) as info:
        load_suite(str(path))
    assert str(path) in str(info.value)


def test_unknown_suite_lists_builtins() -> None:
    with pytest.raises(StillroomError, match="arithmetic-mini"):
        load_suite("no-such-suite")


def test_metrics() -> None:
    low, high = bootstrap_interval([1.0] * 30 + [0.0] * 70)
    assert low < 0.3 < high and low > 0.15 and high < 0.45
    result = accuracy([1.0, 0.0, 1.0, 1.0])
    assert result["accuracy"] == 0.75
    assert agreement(["Paris ", "x"], ["paris", "y"]) == {"agreement": 0.5}
    assert score_with("exact_match", " 42 ", {"answer": "42"}) == 1.0
    assert score_with("reasoning_gym", "4", {"answer": "4", "metadata": {}}, task="gcd") == 1.0
