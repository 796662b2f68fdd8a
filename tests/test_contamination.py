"""Decontamination of items shorter than n words: they match as whole word sequences
inside longer texts, unless they are template text of their suite."""

from __future__ import annotations

import pytest

from stillroom.eval.contamination import ContaminationIndex, SuiteQuestions
from stillroom.eval.suites import load_suite
from stillroom.tasks.filters import build

QUIZ = SuiteQuestions("quiz", "0123", {
    "france": "What is the capital of France?",
    "peru": "What is the capital of Peru?",
    "entropy": "Define entropy.",
    "sum": "Calculate 2 + 3.",
    "longer-sum": "Calculate 2 + 3 + 4.",
})


@pytest.fixture(scope="module")
def quiz() -> ContaminationIndex:
    return ContaminationIndex({QUIZ.label: QUIZ})


@pytest.mark.parametrize("text, item", [
    ("What is the capital of France?", "quiz/france"),                 # the whole text
    ("Quick quiz: what is the capital of France? Thanks!", "quiz/france"),  # inside a prompt
    ("The teacher asked, 'What is the capital of Peru', and waited.", "quiz/peru"),
    ("calculate 2 + 3 + 4, then halve it", "quiz/longer-sum"),
    ("Define entropy.", "quiz/entropy"),                               # two words: whole text
])
def test_short_items_match_inside_longer_text(quiz: ContaminationIndex, text: str,
                                              item: str) -> None:
    hit = quiz.match(text)
    assert hit is not None and hit[0] == item


@pytest.mark.parametrize("text", [
    "What is the capital of Spain?",             # the template, another fill
    "what is the capital of frances",            # words, not characters
    "the capital of France is Paris",            # not the item's word sequence
    "Please define entropy in physics.",         # too short to match inside a text
    "Calculate 2 + 3, please.",                  # inside another item: template text
    "calculate 2 - 3 + 4",
])
def test_template_text_and_partial_words_do_not_match(quiz: ContaminationIndex,
                                                      text: str) -> None:
    assert quiz.match(text) is None


def row(question: str, text: str = "7") -> dict:
    return {"response_id": "r", "text": text, "finish_reason": "stop", "output_tokens": 1,
            "task": None, "prompt": question, "reference": None}


def test_builtin_short_item_inside_a_longer_prompt_or_response_is_dropped() -> None:
    check = build({"decontaminate": {}})["decontaminate"]
    items = {i.item_id: i.prompt.reference["question"]
             for i in load_suite("arithmetic-mini").items}
    short = items["basic_arithmetic/90002/9"]  # 'Calculate -4 / 2.': 4 words
    embedded = check(row(f"You are a careful tutor. {short} Show your working."))
    assert not embedded.keep
    assert "arithmetic-mini/basic_arithmetic/90002/9" in embedded.reason
    assert not check(row("Explain it.", text=f"Sure. {short[:-1]}, which is -2.")).keep
    assert check(row("You are a careful tutor. Calculate 1234 / 2. Show your working.")).keep


def test_rows_judged_by_the_old_matching_are_judged_again(catalog) -> None:
    """The matching changed under the same parameters: its revision is in the verdict key,
    so a keep written by the old matching does not stand, and earlier filters' do."""
    from rows import add_rows

    from stillroom.hashing import content_hash
    from stillroom.tasks.filters import KEEP, apply_filters, verdict_keys, write_verdicts

    config = {"empty": {}, "decontaminate": {}}
    [rid] = add_rows(catalog, [{"question": "You are a tutor. Calculate -4 / 2. Show it.",
                                "response": "-2"}])
    revision_1 = [content_hash("filters", [["empty", {}]]),
                  content_hash("filters", [["empty", {}], ["decontaminate", {}]])]
    assert verdict_keys(config)["empty"] == revision_1[0]
    for stage, key in zip(["filter:empty", "filter:decontaminate"], revision_1, strict=True):
        write_verdicts(catalog, stage, key, "old", [(rid, KEEP)])
    counts = apply_filters(catalog, config, run_id="new")
    assert counts["dropped"] == {"empty": 0, "decontaminate": 1}
    assert catalog.scalar("SELECT count(*) FROM verdicts WHERE run_id = 'new'") == 1
