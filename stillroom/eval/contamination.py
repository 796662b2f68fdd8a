"""Benchmark contamination: word n-grams of every suite item, to keep them out of training data.

An item contributes its normalised question's word n-grams (n=13 by default, as in GPT-3's
decontamination), or the whole question when it is shorter than n words. Grams that two or
more items of one suite share are template text, not item content, and are left out: a
templated task would otherwise flag every training prompt made from the same template.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable

from stillroom.eval.metrics import normalize
from stillroom.eval.suites import BUILTIN, Suite, load_suite


def ngrams(text: str, n: int) -> set[str]:
    words = normalize(text).split()
    if len(words) < n:
        return {" ".join(words)} if words else set()
    return {" ".join(words[i:i + n]) for i in range(len(words) - n + 1)}


def builtin_suite_names() -> list[str]:
    return sorted(p.name.removesuffix(".yaml") for p in BUILTIN.iterdir()
                  if p.name.endswith(".yaml"))


class ContaminationIndex:
    """Maps item-specific n-grams to the suite item they come from."""

    def __init__(self, suites: Iterable[Suite], n: int = 13) -> None:
        self.n = n
        self.owner: dict[str, str] = {}
        for suite in suites:
            items_with: dict[str, set[str]] = defaultdict(set)
            for item in suite.items:
                question = (item.prompt.reference or {}).get("question", item.prompt.text)
                for gram in ngrams(question, n):
                    items_with[gram].add(f"{suite.name}/{item.item_id}")
            for gram, items in items_with.items():
                if len(items) == 1:
                    self.owner.setdefault(gram, next(iter(items)))

    @classmethod
    def for_builtin_suites(cls, n: int = 13) -> ContaminationIndex:
        return cls((load_suite(name) for name in builtin_suite_names()), n)

    def match(self, *texts: str) -> tuple[str, str] | None:
        """(item, shared gram) for the first overlap with any suite item, else None."""
        for text in texts:
            for gram in ngrams(text, self.n):
                if gram in self.owner:
                    return self.owner[gram], gram
        return None
