"""A registered teacher as a grader: one 1-10 score per (question, response), greedy.

Used by the `judge` filter. The judge goes through the same license gate as
generation, because its grades decide what the student is trained on, and its calls
are priced like generation: calls, output tokens and dollars are summed into the
summary of the run it grades for.
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Iterable
from typing import Any, NamedTuple

from stillroom.catalog import Catalog
from stillroom.runs import current_run
from stillroom.tasks.engine import SamplingConfig, engine_for
from stillroom.tasks.generate import priced
from stillroom.tasks.prompts import Prompt
from stillroom.tasks.teachers import authorize, get_teacher

DEFAULT_TEMPLATE = (
    "Rate the response to the question for correctness and helpfulness, from 1 (useless) "
    "to 10 (perfect). Reply with the number only.\n\n"
    "Question: {question}\nResponse: {response}\nRating (1-10):")
_GRADE = re.compile(r"\b(10|[1-9])\b")


def parse_grade(text: str) -> int | None:
    """The first integer from 1 to 10 in the judge's reply, if any."""
    match = _GRADE.search(text)
    return int(match.group(1)) if match else None


class JudgeCall(NamedTuple):
    """One grading call's output tokens and dollars (priced like a generation request)."""

    output_tokens: int
    usd: float | None


def _total(costs: Iterable[float | None]) -> float | None:
    known = [usd for usd in costs if usd is not None]
    return sum(known) if known else None


class Judge:
    def __init__(self, catalog: Catalog, teacher: str, template: str | None = None,
                 max_tokens: int = 4, backend: str = "vllm") -> None:
        self.teacher = get_teacher(catalog, teacher)
        authorize(catalog, self.teacher)
        self.template = template or DEFAULT_TEMPLATE
        self.sampling = SamplingConfig(max_tokens=max_tokens, logprobs_k=0)
        self.backend = backend

    def scores(self, rows: list[dict[str, Any]]) -> list[tuple[int | None, str]]:
        """(grade or None, raw reply) for each row with `prompt`, `reference` and `text`."""
        engine = engine_for(self.teacher.model, self.teacher.revision, self.backend)
        rendered = [engine.render(Prompt(self.template.format(
            question=_question(row), response=row["text"].strip()), "judge")) for row in rows]
        started = time.monotonic()
        results = engine.generate(rendered, self.sampling)
        calls = priced([JudgeCall(len(samples[0].token_ids), None) for samples in results],
                       self.teacher, time.monotonic() - started)
        run = current_run()  # the judge's calls are summed into the filter run's summary
        if run is not None:
            run.add("judge_calls", len(calls))
            run.add("judge_output_tokens", sum(call.output_tokens for call in calls))
            run.add("judge_usd", _total(call.usd for call in calls))
        replies = [samples[0].text for samples in results]
        return [(parse_grade(reply), reply) for reply in replies]


def _question(row: dict[str, Any]) -> str:
    reference = json.loads(row["reference"]) if row.get("reference") else {}
    return reference.get("question") or row["prompt"]
