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
    ("name: x\ntemplate: 'no slot'\ntasks: [{task: gcd}]\n", "containing {question}"),
    ("name: x\nshots: -1\ntasks: [{task: gcd}]\n", "shots: must be >= 0, not -1"),
    ("name: x\nshots: 1.5\ntasks: [{task: gcd}]\n", "shots: must be an integer >= 0"),
    ("name: x\ntasks: [{task: gcd, size: 0}]\n", r"tasks\[0\].size: must be >= 1"),
    ("name: x\ntasks: [{task: gcd, size: true}]\n", "size: must be an integer"),
    ("name: x\ntasks: [{task: gcd, seed: -2}]\n", "seed: must be >= 0"),
    ("name: x\ntasks: [{task: gcd, config: 3}]\n", "'config' must be a mapping"),
    ("name: x\ntasks: [gcd]\n", "each task is a mapping"),
    ("name: x\ntasks: [{task: gcd}, {task: gcd}]\n", "items would repeat"),
    ("name: x\ngeneration: {max_tokens: 0}\ntasks: [{task: gcd}]\n", "max_tokens: must be >= 1"),
    ("name: x\ngeneration: {stop: 'ab'}\ntasks: [{task: gcd}]\n", "stop: must be a list"),
    ("name: x\ngeneration: {stop: [1]}\ntasks: [{task: gcd}]\n", "stop: must be a list"),
    ("name: x\nmetrics: accuracy\ntasks: [{task: gcd}]\n", "metrics: must be a list"),
    ("name: x\nmetrics: []\ntasks: [{task: gcd}]\n", "metrics: must not be empty"),
    ("name: x\ntemplate: '{question} {x}'\ntasks: [{task: gcd}]\n", "only {question}"),
    ("name: x\ntemplate: 7\ntasks: [{task: gcd}]\n", "must be a string"),
    ("name: x\ndescription: [a]\ntasks: [{task: gcd}]\n", "'description' must be a string"),
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


def test_builtin_names_cannot_climb_out_of_the_suites_directory() -> None:
    with pytest.raises(StillroomError, match="no suite file or built-in suite"):
        load_suite("../../licenses")  # stillroom/licenses.yaml exists


def test_binary_suite_file_is_named(tmp_path: Path) -> None:
    path = tmp_path / "suite.yaml"
    path.write_bytes(b"\xff\xfe" * 20)
    with pytest.raises(StillroomError, match="not a UTF-8 text file") as info:
        load_suite(str(path))
    assert info.value.where == str(path)


def test_metrics() -> None:
    low, high = bootstrap_interval([1.0] * 30 + [0.0] * 70)
    assert low < 0.3 < high and low > 0.15 and high < 0.45
    result = accuracy([1.0, 0.0, 1.0, 1.0])
    assert result["accuracy"] == 0.75
    assert agreement(["Paris ", "x"], ["paris", "y"]) == {"agreement": 0.5}
    assert score_with("exact_match", " 42 ", {"answer": "42"}) == 1.0
    assert score_with("reasoning_gym", "4", {"answer": "4", "metadata": {}}, task="gcd") == 1.0
