"""Benchmark contamination: word n-grams of every suite item, to keep them out of training data.

"Every suite" is every suite Stillroom knows of: the built-in ones, any named in the filter's
`suites` parameter, and every suite ever evaluated in the catalog (their questions are in
`eval_items`). A suite is identified by its content hash, so an edited suite is a new suite.

An item contributes its normalised question's word n-grams (n=13 by default, as in GPT-3's
decontamination), or the whole question when it is shorter than n words. Grams that two or
more items of one suite share are template text, not item content, and are left out: a
templated task would otherwise flag every training prompt made from the same template.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from stillroom.catalog import Catalog
from stillroom.eval.metrics import normalize
from stillroom.eval.suites import builtin_suite_names, load_suite


@dataclass(frozen=True)
class SuiteQuestions:
    """What decontamination needs of a suite: its name and each item's question."""
    name: str
    suite_hash: str
    questions: dict[str, str]

    @property
    def label(self) -> str:
        """`name@hash`: how a dataset's config records which suites it was checked against."""
        return f"{self.name}@{self.suite_hash}"


def known_suites(catalog: Catalog | None, extra: Iterable[str] = ()) -> dict[str, SuiteQuestions]:
    """Every suite Stillroom knows, by label: built-ins, `extra` refs (names or YAML paths),
    and the suites evaluated in `catalog`."""
    found: dict[str, SuiteQuestions] = {}
    for ref in [*builtin_suite_names(), *extra]:
        suite = load_suite(ref)
        questions = {item.item_id: (item.prompt.reference or {}).get("question", item.prompt.text)
                     for item in suite.items}
        found[suite.suite_hash] = SuiteQuestions(suite.name, suite.suite_hash, questions)
    if catalog is not None and catalog.path.exists():
        evaluated: dict[str, SuiteQuestions] = {}
        for row in catalog.rows(
                "SELECT r.suite, r.suite_hash, i.item_id, any_value(i.prompt) AS question"
                " FROM eval_results r JOIN eval_items i USING (eval_id)"
                " GROUP BY ALL ORDER BY r.suite_hash, i.item_id"):
            suite = evaluated.setdefault(
                row["suite_hash"], SuiteQuestions(row["suite"], row["suite_hash"], {}))
            suite.questions[row["item_id"]] = row["question"]
        found = {**evaluated, **found}
    return {suite.label: suite for suite in sorted(found.values(), key=lambda s: s.label)}


def ngrams(text: str, n: int) -> set[str]:
    words = normalize(text).split()
    if len(words) < n:
        return {" ".join(words)} if words else set()
    return {" ".join(words[i:i + n]) for i in range(len(words) - n + 1)}


class ContaminationIndex:
    """Maps item-specific n-grams to the suite item they come from."""

    def __init__(self, suites: Mapping[str, SuiteQuestions], n: int = 13) -> None:
        self.n = n
        self.owner: dict[str, str] = {}
        for suite in suites.values():
            items_with: dict[str, set[str]] = defaultdict(set)
            for item_id, question in suite.questions.items():
                for gram in ngrams(question, n):
                    items_with[gram].add(f"{suite.name}/{item_id}")
            for gram, items in items_with.items():
                if len(items) == 1:
                    self.owner.setdefault(gram, next(iter(items)))

    def match(self, *texts: str) -> tuple[str, str] | None:
        """(item, shared gram) for the first overlap with any suite item, else None."""
        for text in texts:
            for gram in ngrams(text, self.n):
                if gram in self.owner:
                    return self.owner[gram], gram
        return None
