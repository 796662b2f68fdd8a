"""Teacher-driven prompt expansion: Self-Instruct and Evol-Instruct, behind quality gates.

- Self-Instruct: the teacher sees a few seed instructions and writes a new one.
- Evol-Instruct: the teacher rewrites one seed instruction by an operation: `deepen`,
  `constrain` (add constraints), `concretise`, or `widen` (a new instruction in the
  same domain, for breadth).

Every candidate passes the gates below or is kept in `expansions` with the reason it
failed, so nothing is dropped silently. Each request is keyed like a generation
request; a re-run skips every request already answered. The teacher goes through
the license gate first: its words become training prompts.
"""

from __future__ import annotations

import logging
import random
import re
import time
from collections.abc import Callable, Iterable, Sequence
from typing import Any, NamedTuple

from stillroom.catalog import Catalog, insert_records
from stillroom.hashing import content_hash
from stillroom.runs import recorded_run
from stillroom.tasks.engine import RequestFailure, SamplingConfig, engine_for
from stillroom.tasks.generate import priced
from stillroom.tasks.prompts import Prompt, PromptSet, Rejected
from stillroom.tasks.teachers import Teacher, authorize

log = logging.getLogger(__name__)

EVOLUTIONS = {
    "deepen": "Rewrite the instruction so that answering it needs deeper reasoning.",
    "constrain": "Rewrite the instruction adding one more constraint or requirement.",
    "concretise": "Rewrite the instruction replacing general ideas with specific ones.",
    "widen": "Write a new instruction in the same domain, but on a rarer topic.",
}
EVOL_TEMPLATE = ("{operation}\nKeep it self-contained and answerable. Reply with the new "
                 "instruction only.\n\nInstruction: {instruction}\nNew instruction:")
SELF_INSTRUCT_TEMPLATE = ("Here are some tasks a user might ask an assistant:\n{examples}\n"
                          "{next}.")
UNANSWERABLE = ("as an ai", "i cannot", "i can't", "sorry", "n/a", "instruction:",
                "rewrite the", "new instruction", "<image>", "http://", "https://")


def gate(candidate: str, parent: str | None, max_similarity: float = 0.7,
         min_words: int = 3, max_chars: int = 600,
         pool: Iterable[tuple[str, str]] = ()) -> str | None:
    """Why `candidate` is not a usable new instruction, or None when it is.

    A rewrite (Evol-Instruct) must differ from its parent: word-bigram Jaccard below
    `max_similarity`. A new instruction (Self-Instruct) must differ from every (kind, text)
    in `pool`, the seeds and the instructions accepted before it: ROUGE-L (word LCS F1)
    below `max_similarity`, Self-Instruct's own overlap filter.
    """
    text = candidate.strip()
    if not text:
        return "empty"
    if len(text.split()) < min_words:
        return f"too short ({len(text.split())} words)"
    if len(text) > max_chars:
        return f"too long ({len(text)} chars)"
    lowered = text.casefold()
    marker = next((m for m in UNANSWERABLE if m in lowered), None)
    if marker:
        return f"unanswerable marker {marker!r}"
    if parent is not None:
        similarity = _bigram_jaccard(text, parent)
        if similarity >= max_similarity:
            return f"too similar to its parent (bigram Jaccard {similarity:.2f})"
    for kind, other in pool:
        similarity = _rouge_l(text, other)
        if similarity >= max_similarity:
            return f"too similar to {kind} {other[:60]!r} (ROUGE-L {similarity:.2f})"
    return None


def _words(text: str) -> list[str]:
    return re.findall(r"\w+", text.casefold())


def _bigram_jaccard(a: str, b: str) -> float:
    def grams(text: str) -> set[tuple[str, ...]]:
        words = _words(text)
        return {tuple(words[i:i + 2]) for i in range(max(len(words) - 1, 1))}
    ga, gb = grams(a), grams(b)
    return len(ga & gb) / len(ga | gb) if ga | gb else 1.0


def _rouge_l(a: str, b: str) -> float:
    """F1 of the longest common word subsequence of `a` and `b`."""
    x, y = _words(a), _words(b)
    previous = [0] * (len(y) + 1)
    for word in x:
        row = [0]
        for j, other in enumerate(y, start=1):
            row.append(previous[j - 1] + 1 if word == other else max(previous[j], row[j - 1]))
        previous = row
    common = previous[-1]
    if not common:
        return 0.0
    precision, recall = common / len(x), common / len(y)
    return 2 * precision * recall / (precision + recall)


def _first_line(text: str) -> str:
    lines = [line.strip() for line in text.strip().splitlines() if line.strip()]
    return re.sub(r"^\d+[.)]\s*", "", lines[0]) if lines else ""


Request = tuple[str, str | None, str]  # (meta-prompt text, parent prompt text or None, method)


def evol_requests(seeds: list[Prompt], operations: list[str]) -> list[Request]:
    return [(EVOL_TEMPLATE.format(operation=EVOLUTIONS[op], instruction=seed.text), seed.text,
             f"evol:{op}") for seed in seeds for op in operations]


def self_instruct_requests(seeds: list[Prompt], count: int, shots: int = 3,
                           seed: int = 0) -> list[Request]:
    rng = random.Random(seed)
    requests = []
    for _ in range(count):
        examples = rng.sample(seeds, min(shots, len(seeds)))
        listed = "\n".join(f"{i}. {p.text}" for i, p in enumerate(examples, start=1))
        requests.append((SELF_INSTRUCT_TEMPLATE.format(examples=listed, next=len(examples) + 1),
                         None, "self_instruct"))
    return requests


class ExpansionRow(NamedTuple):
    """One `expansions` row; field names are its columns (created_at is set on insert)."""

    request_key: str
    parent_id: str | None
    teacher_id: str
    method: str
    text: str
    accepted: bool
    reason: str | None
    run_id: str
    output_tokens: int
    usd: float | None


def expand(catalog: Catalog, teacher: Teacher, requests: list[Request],
           sampling: SamplingConfig | None = None,
           gate_fn: Callable[..., str | None] = gate, pool: Sequence[str] = (),
           batch_size: int = 16) -> PromptSet:
    """Send every request not yet answered, gate the answers, and return every accepted
    instruction (earlier runs' included) with the gated-out ones as `rejected`.

    Replies are gated and committed (priced like generation) every `batch_size` as they
    return, so a killed run repeats none of them. A candidate without a parent is compared
    with the seed `pool` and with every instruction accepted before it.
    """
    authorize(catalog, teacher)
    sampling = sampling or SamplingConfig(temperature=0.7, top_p=0.95, max_tokens=96,
                                          stop=("\n",), logprobs_k=0)
    keyed = {content_hash(teacher.teacher_id, teacher.revision, text, method,
                          sampling.as_dict()): (text, parent, method)
             for text, parent, method in requests}
    answered = catalog.rows(
        "SELECT request_key, text, accepted, parent_id FROM expansions"
        " WHERE request_key IN (SELECT unnest(?))", [list(keyed)])
    todo = [key for key in keyed if key not in {r["request_key"] for r in answered}]
    seen = [("seed", text) for text in pool] + [
        ("accepted instruction", r["text"]) for r in answered
        if r["accepted"] and r["parent_id"] is None]
    with recorded_run(catalog, "expand", {"teacher": teacher.name, "requests": len(keyed),
                                          "sampling": sampling.as_dict()}) as run:
        stored: list[ExpansionRow] = []
        failed = 0
        if todo:
            engine = engine_for(teacher.model, teacher.revision)
            pending: list[ExpansionRow] = []
            last_commit = time.monotonic()

            def commit() -> None:
                nonlocal last_commit
                rows = priced(pending, teacher, time.monotonic() - last_commit)
                with catalog.write() as conn:
                    insert_records(conn, "expansions", rows)
                last_commit = time.monotonic()
                stored.extend(rows)
                pending.clear()

            rendered = [engine.render(Prompt(keyed[key][0], "expand")) for key in todo]
            for index, samples in engine.stream(rendered, sampling):
                if isinstance(samples, RequestFailure):
                    failed += 1  # not stored: the next run asks again
                    continue
                key = todo[index]
                _, parent, method = keyed[key]
                candidate = _first_line(samples[0].text)
                reason = gate_fn(candidate, parent, pool=() if parent else seen)
                if reason is None and parent is None:
                    seen.append(("accepted instruction", candidate))
                pending.append(ExpansionRow(
                    key, content_hash(parent, False) if parent else None, teacher.teacher_id,
                    method, candidate, reason is None, reason, run.run_id,
                    len(samples[0].token_ids), None))
                if len(pending) >= batch_size:
                    commit()
            commit()
        results = catalog.rows(
            "SELECT request_key, parent_id, method, text, accepted, reason FROM expansions"
            " WHERE request_key IN (SELECT unnest(?)) ORDER BY created_at, request_key",
            [list(keyed)])
        accepted = PromptSet(
            [Prompt(r["text"], r["method"], meta={"parent": r["parent_id"],
                                                   "method": r["method"]})
             for r in results if r["accepted"]],
            [Rejected(r["method"], f"expansion:{r['request_key']}", r["reason"], r["text"])
             for r in results if not r["accepted"]])
        run.summary.update(_summary(len(todo), len(keyed) - len(todo), accepted, stored),
                           failed=failed)
    log.info("expansion: %d accepted, %d gated out", len(accepted), len(accepted.rejected))
    return accepted


def _summary(sent: int, cached: int, result: PromptSet,
             stored: list[ExpansionRow]) -> dict[str, Any]:
    reasons: dict[str, int] = {}
    for r in result.rejected:
        kind = r.reason.split(" (")[0]
        reasons[kind] = reasons.get(kind, 0) + 1
    costs = [row.usd for row in stored if row.usd is not None]
    return {"requests_sent": sent, "cache_hits": cached, "accepted": len(result),
            "gated_out": len(result.rejected), "gate_reasons": reasons,
            "output_tokens": sum(row.output_tokens for row in stored),
            "usd": round(sum(costs), 6) if costs else None}
