"""Filter blocks: each keeps or drops with a reason."""

from __future__ import annotations

import json

import pytest

from stillroom.errors import StillroomError
from stillroom.tasks.filters import build


def row(text: str, finish: str = "stop", task: str | None = None, answer: str | None = None,
        question: str = "Say something."):
    return {"response_id": "r", "text": text, "finish_reason": finish, "output_tokens": 3,
            "task": task, "prompt": question,
            "reference": json.dumps({"question": question, "answer": answer, "metadata": {}})
            if answer is not None else None}


def test_each_filter_drops_with_a_reason() -> None:
    f = build({"empty": {}, "truncated": {}, "repetition": {}, "length": {"max_chars": 20},
               "verifier": {}})
    assert f["empty"](row("  ")).reason == "empty response"
    assert f["empty"](row("7")).keep
    assert "truncated" in f["truncated"](row("abc", finish="length")).reason
    assert f["truncated"](row("abc")).keep
    loop = "the cat sat " * 10
    assert "repetition" in f["repetition"](row(loop)).reason
    assert f["repetition"](row("a b c d e f g h i j")).keep
    assert "too long" in f["length"](row("x" * 21)).reason
    assert f["verifier"](row("6", task="gcd", answer="6")).keep
    wrong = f["verifier"](row("5", task="gcd", answer="6"))
    assert not wrong.keep and "expected '6'" in wrong.reason
    assert f["verifier"](row("anything")).keep  # nothing to verify against


@pytest.mark.parametrize("config, message", [
    ({"nonsense": {}}, "unknown filter 'nonsense'"),
    ({"length": {"min_chars": 5, "max_chars": 2}}, "min_chars <= max_chars"),
    ({"repetition": {"max_repeated_fraction": 2}}, r"\(0, 1\]"),
    ({"length": {"colour": "red"}}, "bad parameters"),
])
def test_bad_filter_config(config: dict, message: str) -> None:
    with pytest.raises(StillroomError, match=message):
        build(config)


def test_decontaminate_drops_benchmark_items_but_not_their_template() -> None:
    from stillroom.eval.suites import load_suite

    check = build({"decontaminate": {}})["decontaminate"]
    items = {i.item_id: i.prompt.reference for i in load_suite("arithmetic-mini").items}
    gcd = items["gcd/90001/0"]["question"]
    seen = check(row("1", task="gcd", answer="1", question=gcd))
    assert not seen.keep and "arithmetic-mini/gcd/90001/0" in seen.reason
    template_only = gcd.replace(gcd.split(":")[1].split(".")[0], " 1234, 5678")
    assert check(row("2", task="gcd", answer="2", question=template_only)).keep
    short = items["basic_arithmetic/90002/9"]["question"]
    assert not check(row("x", task="basic_arithmetic", answer="x", question=short)).keep
    assert not check(row(f"As the benchmark asks: {gcd}")).keep  # quoted in a response
    assert check(row("Tea is a drink made from leaves.")).keep
