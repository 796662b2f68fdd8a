"""Filters: small blocks that keep or drop a response, always with a reason.

Nothing is deleted: every decision is a row in `verdicts`, keyed by the filter
config's hash, and dataset versions select the rows every filter kept.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from stillroom.catalog import Catalog, insert_many
from stillroom.errors import StillroomError
from stillroom.eval.metrics import score_with
from stillroom.hashing import content_hash

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Verdict:
    keep: bool
    reason: str | None = None


KEEP = Verdict(True)
Row = dict[str, Any]
FilterFn = Callable[[Row], Verdict]
FILTERS: dict[str, Callable[..., FilterFn]] = {}


def register(name: str) -> Callable:
    def decorate(factory: Callable[..., FilterFn]) -> Callable[..., FilterFn]:
        FILTERS[name] = factory
        return factory
    return decorate


@register("empty")
def empty() -> FilterFn:
    return lambda row: Verdict(False, "empty response") if not row["text"].strip() else KEEP


@register("truncated")
def truncated() -> FilterFn:
    def check(row: Row) -> Verdict:
        if row["finish_reason"] == "length":
            return Verdict(False, f"truncated at max_tokens ({row['output_tokens']} tokens)")
        return KEEP
    return check


@register("repetition")
def repetition(n: int = 3, max_repeated_fraction: float = 0.5, min_ngrams: int = 4) -> FilterFn:
    """Degenerate loops: too large a share of word n-grams are repeats of earlier ones."""
    if not 0 < max_repeated_fraction <= 1:
        raise StillroomError("max_repeated_fraction must be in (0, 1]", where="filters.repetition")

    def check(row: Row) -> Verdict:
        words = row["text"].split()
        grams = [tuple(words[i:i + n]) for i in range(len(words) - n + 1)]
        if len(grams) < min_ngrams:
            return KEEP
        repeated = 1 - len(set(grams)) / len(grams)
        if repeated > max_repeated_fraction:
            return Verdict(False, f"repetition: {repeated:.0%} of word {n}-grams repeat")
        return KEEP
    return check


@register("length")
def length(min_chars: int = 1, max_chars: int = 8000) -> FilterFn:
    if min_chars < 0 or max_chars < min_chars:
        raise StillroomError("need 0 <= min_chars <= max_chars", where="filters.length")

    def check(row: Row) -> Verdict:
        size = len(row["text"].strip())
        if size < min_chars:
            return Verdict(False, f"too short: {size} < {min_chars} chars")
        if size > max_chars:
            return Verdict(False, f"too long: {size} > {max_chars} chars")
        return KEEP
    return check


@register("verifier")
def verifier(min_score: float = 1.0) -> FilterFn:
    """Prompts with a known answer keep only responses their task's scorer accepts."""
    def check(row: Row) -> Verdict:
        if not row["task"] or not row["reference"]:
            return KEEP
        reference = json.loads(row["reference"])
        score = score_with("reasoning_gym", row["text"], reference, task=row["task"])
        if score < min_score:
            return Verdict(False, f"verifier: score {score:g} (expected {reference['answer']!r})")
        return KEEP
    return check


@register("decontaminate")
def decontaminate(n: int = 13) -> FilterFn:
    """Drop rows whose question or response shares an item-specific n-gram with any
    built-in benchmark suite (see `stillroom.eval.contamination`)."""
    from stillroom.eval.contamination import ContaminationIndex

    if n < 4:
        raise StillroomError("n must be >= 4", where="filters.decontaminate")
    index = ContaminationIndex.for_builtin_suites(n)

    def check(row: Row) -> Verdict:
        reference = json.loads(row["reference"]) if row["reference"] else {}
        hit = index.match(reference.get("question", row["prompt"]), row["text"])
        if hit:
            return Verdict(False, f"contaminated: shares {hit[1]!r} with {hit[0]}")
        return KEEP
    return check


DEFAULT_FILTERS: dict[str, dict[str, Any]] = {
    "empty": {}, "truncated": {}, "repetition": {}, "length": {}, "verifier": {},
    "decontaminate": {}}


def build(config: dict[str, dict[str, Any]]) -> dict[str, FilterFn]:
    """Instantiate filters by name, with a clear error for unknown names or parameters."""
    built = {}
    for name, params in config.items():
        if name not in FILTERS:
            raise StillroomError(f"unknown filter {name!r}; known: {', '.join(sorted(FILTERS))}",
                                 where=f"filters.{name}")
        try:
            built[name] = FILTERS[name](**(params or {}))
        except TypeError as exc:
            raise StillroomError(f"bad parameters {params}: {exc}",
                                 where=f"filters.{name}") from exc
    return built


def config_hash(config: dict[str, dict[str, Any]]) -> str:
    return content_hash("filters", config)


ROWS_SQL = (
    "SELECT r.response_id, r.text, r.finish_reason, r.output_tokens, p.task, p.reference,"
    " p.text AS prompt"
    " FROM responses r JOIN prompts p USING (prompt_id)"
    " WHERE NOT EXISTS (SELECT 1 FROM verdicts v WHERE v.response_id = r.response_id"
    "                   AND v.stage = ? AND v.config_hash = ?)")


def write_verdicts(catalog: Catalog, stage: str, chash: str, run_id: str,
                   verdicts: list[tuple[str, Verdict]],
                   links: list[tuple[str, str, str, str, float]] = ()) -> None:
    """Record (response id, verdict) pairs for one stage, and a dedupe stage's links to
    representatives, in one transaction; a decided response keeps its first verdict."""
    with catalog.write() as conn:
        insert_many(conn, "INSERT OR IGNORE INTO verdicts VALUES (?, ?, ?, ?, ?, ?, now())",
                    [(rid, stage, chash, v.keep, v.reason, run_id) for rid, v in verdicts])
        insert_many(conn, "INSERT OR IGNORE INTO duplicate_links VALUES (?, ?, ?, ?, ?)",
                    list(links))


def apply_filters(catalog: Catalog, config: dict[str, dict[str, Any]], run_id: str) -> dict:
    """Judge every response that has no verdict yet under this config; returns counts."""
    filters = build(config)
    chash = config_hash(config)
    counts: dict[str, Any] = {"judged": 0, "dropped": {}}
    for name, check in filters.items():
        stage = f"filter:{name}"
        rows = catalog.rows(ROWS_SQL, [stage, chash])
        verdicts = [(row["response_id"], check(row)) for row in rows]
        write_verdicts(catalog, stage, chash, run_id, verdicts)
        counts["judged"] = max(counts["judged"], len(rows))
        counts["dropped"][name] = sum(not v.keep for _, v in verdicts)
    log.info("filters judged %d responses, dropped %s", counts["judged"], counts["dropped"])
    return counts
