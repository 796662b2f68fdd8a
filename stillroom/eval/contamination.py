"""Benchmark contamination: word n-grams of every suite item, to keep them out of training data.

"Every suite" is every suite Stillroom knows of: the built-in ones, any named in the filter's
`suites` parameter, and every suite ever evaluated in the catalog (their questions are in
`eval_items`). A suite is identified by its content hash, so an edited suite is a new suite.

Texts are compared as words: normalised, with sentence punctuation trimmed from each word's
ends, so "Calculate 2 + 3." also matches inside "calculate 2 + 3, then halve it". An item
contributes its word n-grams (n=13 by default, as in GPT-3's decontamination), or, when it is
shorter than n words, its whole word sequence, which matches wherever those words appear in a
row, in that order and contiguous (an item of fewer than `MIN_EMBEDDED_WORDS` words matches
only a whole text). Grams that two or more items of one suite contain are template text, not
item content, and are left out: a templated task would otherwise flag every training prompt
made from the same template.

Matching is a dictionary lookup per window: a text's n-word windows, and at each word that
starts some short item, the windows of those items' lengths; no per-item scan.
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


SENTENCE_PUNCTUATION = ".,;:!?\"'`"
MIN_EMBEDDED_WORDS = 3
Gram = tuple[str, ...]


def words(text: str) -> list[str]:
    """Normalised words with sentence punctuation trimmed from their ends (operators and
    signs stay: "-6", "+", "=")."""
    trimmed = (word.strip(SENTENCE_PUNCTUATION) for word in normalize(text).split())
    return [word for word in trimmed if word]


def windows(sequence: list[str], size: int) -> Iterable[Gram]:
    return (tuple(sequence[i:i + size]) for i in range(len(sequence) - size + 1))


class ContaminationIndex:
    """Maps item-specific grams (n-grams of long items, whole short items) to their item."""

    def __init__(self, suites: Mapping[str, SuiteQuestions], n: int = 13) -> None:
        self.n = n
        self.owner: dict[Gram, str] = {}
        self.short_lengths: dict[str, set[int]] = defaultdict(set)  # by first word
        for suite in suites.values():
            items = {f"{suite.name}/{item_id}": words(question)
                     for item_id, question in suite.questions.items()}
            items_with: dict[Gram, set[str]] = defaultdict(set)
            for item, sequence in items.items():
                for gram in windows(sequence, min(n, len(sequence))) if sequence else ():
                    items_with[gram].add(item)
            # a short item inside another item's text is template text too
            short = {len(gram) for gram in items_with if len(gram) < n}
            for item, sequence in items.items():
                for size in short:
                    for gram in windows(sequence, size):
                        if gram in items_with:
                            items_with[gram].add(item)
            for gram, owners in items_with.items():
                if len(owners) == 1 and gram not in self.owner:
                    self.owner[gram] = next(iter(owners))
                    if len(gram) < n:
                        self.short_lengths[gram[0]].add(len(gram))

    def _grams(self, sequence: list[str]) -> Iterable[Gram]:
        yield from windows(sequence, self.n)
        for i, word in enumerate(sequence):
            for size in self.short_lengths.get(word, ()):
                if i + size <= len(sequence) and (
                        size >= MIN_EMBEDDED_WORDS or size == len(sequence)):
                    yield tuple(sequence[i:i + size])

    def match(self, *texts: str) -> tuple[str, str] | None:
        """(item, shared words) for the first overlap with any suite item, else None."""
        for text in texts:
            for gram in self._grams(words(text)):
                if gram in self.owner:
                    return self.owner[gram], " ".join(gram)
        return None
