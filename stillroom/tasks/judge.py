"""A registered teacher as a grader: one 1-10 score per (question, response), greedy.

Used by the `judge` filter. The judge goes through the same license gate as
generation, because its grades decide what the student is trained on.
"""

from __future__ import annotations

import json
import re
from typing import Any

from stillroom.catalog import Catalog
from stillroom.tasks.engine import SamplingConfig, engine_for
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
        replies = [samples[0].text for samples in engine.generate(rendered, self.sampling)]
        return [(parse_grade(reply), reply) for reply in replies]


def _question(row: dict[str, Any]) -> str:
    reference = json.loads(row["reference"]) if row.get("reference") else {}
    return reference.get("question") or row["prompt"]
