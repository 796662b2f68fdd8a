"""Stillroom's own procedural tasks: known values, disjoint splits, scorers, and the demo's
prompts and suite built from them."""

from __future__ import annotations

import json

import pytest

from stillroom.errors import StillroomError
from stillroom.eval.suites import load_suite
from stillroom.flows.distill import DEMO_PROMPTS, DEMO_SUITE
from stillroom.tasks import procedural
from stillroom.tasks.filters import verifier
from stillroom.tasks.procedural import number_words, number_words_task
from stillroom.tasks.prompts import load_prompts, task_prompts


@pytest.mark.parametrize("value, words", [
    (0, "zero"), (7, "seven"), (13, "thirteen"), (20, "twenty"), (42, "forty-two"),
    (100, "one hundred"), (105, "one hundred five"), (999, "nine hundred ninety-nine"),
    (1001, "one thousand one"), (2040, "two thousand forty"),
    (123456, "one hundred twenty-three thousand four hundred fifty-six")])
def test_number_words(value: int, words: str) -> None:
    assert number_words(value) == words


def test_splits_partition_the_range_and_items_never_repeat() -> None:
    train = number_words_task(800, 1, split="train")
    test = number_words_task(190, 2, split="test")
    train_values = {e["metadata"]["value"] for e in train}
    test_values = {e["metadata"]["value"] for e in test}
    assert len(train_values) == 800 and len(test_values) == 190
    assert not train_values & test_values
    assert all(e["answer"] == str(e["metadata"]["value"]) for e in train + test)
    # The split does not follow a digit pattern: every last digit is on both sides.
    assert {v % 10 for v in test_values} == set(range(10))
    assert number_words_task(5, 3) == number_words_task(5, 3)  # seeded


@pytest.mark.parametrize("options, message", [
    ({"split": "dev"}, "split must be one of train, test"),
    ({"max_value": 9, "size": 11},
     r"size: asks for 11 items, but the train split of \[0, 9\] has 7 values"),
    ({"min_value": 5, "max_value": 2}, r"max_value: must be in \[5, 999999\], not 2"),
    ({"size": 3, "colour": "red"}, "task 'number_words'.*colour"),
])
def test_bad_task_options_are_named(options: dict, message: str) -> None:
    size = options.pop("size", 3)
    with pytest.raises(StillroomError, match=message):
        task_prompts("number_words", size, config=options, where="spec.yaml: tasks[0]")


def test_prompts_keep_their_zero_shot_form() -> None:
    (prompt,) = task_prompts("number_words", 1, seed=4, shots=2, template="Q: {question}\nA:")
    question = prompt.reference["question"]
    assert prompt.meta["zero_shot"] == f"Q: {question}\nA:"
    assert prompt.text.endswith(prompt.meta["zero_shot"]) and prompt.text.count("Q: ") == 3
    assert prompt.source == "procedural:number_words"


def test_demo_prompts_and_suite_share_no_number() -> None:
    prompts = load_prompts(DEMO_PROMPTS)
    suite = load_suite(DEMO_SUITE)
    asked = {p.reference["answer"] for p in prompts}
    benchmarked = {i.prompt.reference["answer"] for i in suite.items}
    assert len(asked) == len(prompts) >= 500 and len(benchmarked) == len(suite.items) >= 150
    assert not asked & benchmarked
    # Nor do the few-shot examples the teacher sees (they come from the train split).
    shown = {line.removeprefix("Answer: ") for p in prompts
             for line in p.text.splitlines() if line.startswith("Answer: ")}
    assert shown and not shown & benchmarked
    assert {i.scorer for i in suite.items} == {"exact_match"}


def test_the_verifier_checks_number_words_by_exact_match() -> None:
    check = verifier()
    (prompt,) = task_prompts("number_words", 1, seed=8)
    row = {"task": prompt.task, "reference": json.dumps(prompt.reference), "prompt": prompt.text}
    answer = prompt.reference["answer"]
    assert check({**row, "text": f" {answer}"}).keep
    wrong = check({**row, "text": f" {answer}0"})
    assert not wrong.keep and f"expected '{answer}'" in wrong.reason
    assert procedural.scorer_for("gcd") == "reasoning_gym"
