"""Filters: small blocks that keep or drop a response, always with a reason.

Nothing is deleted: every decision is a row in `verdicts` and dataset versions
select the rows every filter kept. Filters run in the config's order and a row
one of them dropped is not judged by the later ones, so each dropped row has
exactly one reason and the costly filters (the sandboxed verifier, the judge)
see only what survived the cheap ones. A filter's verdicts are keyed by the hash
of the config up to and including it (`verdict_keys`): changing or appending a
filter re-judges from that filter on, and leaves the verdicts before it alone.
"""

from __future__ import annotations

import inspect
import json
import logging
import string
import time
import unicodedata
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from stillroom import inputs
from stillroom.catalog import Catalog, insert_many
from stillroom.errors import StillroomError
from stillroom.eval.metrics import score_with
from stillroom.hashing import content_hash
from stillroom.tasks import procedural, sandbox

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Verdict:
    keep: bool
    reason: str | None = None


KEEP = Verdict(True)
Row = dict[str, Any]
FilterFn = Callable[[Row], Verdict]
FILTERS: dict[str, Callable[..., FilterFn]] = {}
REVISIONS: dict[str, int] = {}


def register(name: str, revision: int = 1) -> Callable:
    """Register a filter factory. Bump `revision` when the same parameters come to judge
    differently: it enters the verdict key, so the next run re-judges every row."""
    def decorate(factory: Callable[..., FilterFn]) -> Callable[..., FilterFn]:
        FILTERS[name] = factory
        REVISIONS[name] = revision
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
    inputs.whole_number(n, "filters.repetition.n", minimum=1)
    inputs.real_number(max_repeated_fraction, "filters.repetition.max_repeated_fraction",
                       maximum=1, positive=True)
    inputs.whole_number(min_ngrams, "filters.repetition.min_ngrams", minimum=1)

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
    inputs.whole_number(min_chars, "filters.length.min_chars", minimum=0)
    inputs.whole_number(max_chars, "filters.length.max_chars", minimum=0)
    if max_chars < min_chars:
        raise StillroomError(f"need min_chars <= max_chars, not {min_chars} > {max_chars}",
                             where="filters.length.max_chars")

    def check(row: Row) -> Verdict:
        size = len(row["text"].strip())
        if size < min_chars:
            return Verdict(False, f"too short: {size} < {min_chars} chars")
        if size > max_chars:
            return Verdict(False, f"too long: {size} > {max_chars} chars")
        return KEEP
    return check


REFUSAL_PHRASES = (
    "i'm sorry, but", "i am sorry, but", "i cannot help", "i can't help", "i cannot assist",
    "i can't assist", "i won't be able to", "i am unable to", "i'm unable to",
    "as an ai", "as a language model", "i cannot provide", "i can't provide",
    "i must decline", "against my guidelines")


@register("refusal")
def refusal(phrases: list[str] | None = None, within_chars: int = 300) -> FilterFn:
    """Refusals and assistant boilerplate, by phrase, near the start of the response."""
    if phrases is not None:
        inputs.strings(phrases, "filters.refusal.phrases")
    inputs.whole_number(within_chars, "filters.refusal.within_chars", minimum=1)
    needles = tuple(p.casefold() for p in (phrases or REFUSAL_PHRASES))

    def check(row: Row) -> Verdict:
        head = row["text"][:within_chars].casefold().replace("\u2019", "'")
        hit = next((p for p in needles if p in head), None)
        return Verdict(False, f"refusal: {hit!r}") if hit else KEEP
    return check


@register("charset")
def charset(scripts: list[str] | None = None, max_foreign_fraction: float = 0.1) -> FilterFn:
    """Mojibake, control characters, and text mostly in a script the dataset is not in.

    A letter's script is the first word of its Unicode name (LATIN, CYRILLIC, CJK, ...);
    this is a language check at script granularity, which needs no model.
    """
    if scripts is not None:
        inputs.strings(scripts, "filters.charset.scripts")
    inputs.real_number(max_foreign_fraction, "filters.charset.max_foreign_fraction",
                       minimum=0, maximum=1)
    allowed = {s.upper() for s in (scripts or ["LATIN"])}

    def check(row: Row) -> Verdict:
        text = row["text"]
        if "\ufffd" in text:
            return Verdict(False, "charset: contains U+FFFD (undecodable bytes)")
        control = [c for c in text if unicodedata.category(c) == "Cc" and c not in "\n\r\t"]
        if control:
            return Verdict(False, f"charset: control character U+{ord(control[0]):04X}")
        letters = [c for c in text if c.isalpha()]
        if not letters:
            return KEEP
        foreign = [c for c in letters if unicodedata.name(c, "?").split()[0] not in allowed]
        if len(foreign) / len(letters) > max_foreign_fraction:
            script = unicodedata.name(foreign[0], "?").split()[0]
            return Verdict(False, f"charset: {len(foreign) / len(letters):.0%} of letters are "
                                  f"{script}, not {'/'.join(sorted(allowed))}")
        return KEEP
    return check


@register("verifier")
def verifier(min_score: float = 1.0, timeout_s: float = 5.0, memory_mb: int = 512) -> FilterFn:
    """Prompts with a known answer keep only responses their checker accepts: code with
    tests (HumanEval style) runs in a sandboxed subprocess, everything else goes to its
    task's scorer (`procedural.scorer_for`)."""
    inputs.real_number(min_score, "filters.verifier.min_score", minimum=0, maximum=1)
    inputs.real_number(timeout_s, "filters.verifier.timeout_s", positive=True)
    inputs.whole_number(memory_mb, "filters.verifier.memory_mb", minimum=64)

    def check(row: Row) -> Verdict:
        if not row["task"] or not row["reference"]:
            return KEEP
        reference = json.loads(row["reference"])
        if "test" in reference and "entry_point" in reference:
            program = sandbox.humaneval_program(reference["prompt"], row["text"],
                                                reference["test"], reference["entry_point"])
            result = sandbox.run_python(program, timeout_s, memory_mb)
            return KEEP if result.passed else Verdict(False, f"verifier: tests fail"
                                                             f" ({result.reason})")
        score = score_with(procedural.scorer_for(row["task"]), row["text"], reference,
                           task=row["task"])
        if score < min_score:
            return Verdict(False, f"verifier: score {score:g} (expected {reference['answer']!r})")
        return KEEP
    return check


# revision 2: items shorter than n words also match inside longer texts
@register("decontaminate", revision=2)
def decontaminate(n: int = 13, suites: list[str] | tuple[str, ...] = (),
                  against: list[str] | None = None, catalog: Catalog | None = None) -> FilterFn:
    """Drop rows whose question or response shares an item-specific n-gram with a benchmark
    suite: built-ins, `suites` (names or YAML paths) and every suite evaluated in the catalog
    (see `stillroom.eval.contamination`). `against` pins the exact suites (`name@hash`);
    `CurationConfig.pinned` fills it in, so a new suite gives this filter a new verdict key."""
    from stillroom.eval.contamination import ContaminationIndex, known_suites

    inputs.whole_number(n, "filters.decontaminate.n", minimum=4)
    if not isinstance(suites, tuple):  # the default; a config gives a list
        inputs.strings(suites, "filters.decontaminate.suites")
    if against is not None:
        inputs.strings(against, "filters.decontaminate.against")
    known = known_suites(catalog or Catalog(), suites)
    if against is not None:
        missing = sorted(set(against) - set(known))
        if missing:
            raise StillroomError(f"pinned suites no longer known: {missing}",
                                 where="filters.decontaminate")
        known = {label: known[label] for label in against}
    index = ContaminationIndex(known, n)

    def check(row: Row) -> Verdict:
        reference = json.loads(row["reference"]) if row["reference"] else {}
        hit = index.match(reference.get("question", row["prompt"]), row["text"])
        if hit:
            return Verdict(False, f"contaminated: shares {hit[1]!r} with {hit[0]}")
        return KEEP
    return check


@register("judge")
def judge(teacher: str, min_score: int = 7, max_tokens: int = 4, template: str | None = None,
          catalog: Catalog | None = None) -> FilterFn:
    """A teacher grades each (question, response) from 1 to 10; rows below `min_score` are
    dropped with the grade. The judge must be registered and its license must allow use."""
    inputs.name(teacher, "filters.judge.teacher")
    inputs.whole_number(min_score, "filters.judge.min_score", minimum=1, maximum=10)
    inputs.whole_number(max_tokens, "filters.judge.max_tokens", minimum=1)
    if template is not None:
        _check_judge_template(inputs.text(template, "filters.judge.template"))
    from stillroom.tasks.judge import Judge

    try:
        grader = Judge(catalog or Catalog(), teacher, template, max_tokens)
    except StillroomError as exc:  # an unknown or unlicensed judge: the config names it
        raise type(exc)(exc.message, where="filters.judge.teacher") from exc

    def check_all(rows: list[Row]) -> list[Verdict]:
        verdicts = []
        for score, raw in grader.scores(rows):
            if score is None:
                verdicts.append(Verdict(False, f"judge: no grade in {raw[:40]!r}"))
            elif score < min_score:
                verdicts.append(Verdict(False, f"judge: {score}/10 < {min_score}"))
            else:
                verdicts.append(KEEP)
        return verdicts
    check_all.batched = True  # type: ignore[attr-defined]
    return check_all


def _check_judge_template(template: str) -> None:
    """The judge fills in {question} and {response}: both must be there, and nothing else."""
    where = "filters.judge.template"
    try:
        fields = {name for _, name, _, _ in string.Formatter().parse(template) if name}
        template.format(question="", response="")
    except (KeyError, IndexError, ValueError) as exc:
        raise StillroomError(f"may use only {{question}} and {{response}} (write other braces "
                             f"as {{{{ and }}}}): {exc!r}", where=where) from exc
    if not {"question", "response"} <= fields:
        raise StillroomError("template needs {question} and {response}", where=where)


DEFAULT_FILTERS: dict[str, dict[str, Any]] = {
    "empty": {}, "truncated": {}, "refusal": {}, "repetition": {}, "charset": {}, "length": {},
    "verifier": {}, "decontaminate": {}}


def build(config: dict[str, dict[str, Any]], catalog: Catalog | None = None
          ) -> dict[str, FilterFn]:
    """Instantiate filters by name, with a clear error for unknown names or parameters.
    Filters that take a `catalog` (the judge) get `catalog`; others must not name one."""
    built = {}
    for name, params in config.items():
        if name not in FILTERS:
            raise StillroomError(f"unknown filter {name!r}; known: {', '.join(sorted(FILTERS))}",
                                 where=f"filters.{name}")
        params = dict(params or {})
        if "catalog" in params:
            raise StillroomError("'catalog' is not a parameter", where=f"filters.{name}")
        if catalog is not None and "catalog" in inspect.signature(FILTERS[name]).parameters:
            params["catalog"] = catalog
        try:
            built[name] = FILTERS[name](**params)
        except TypeError as exc:
            raise StillroomError(f"bad parameters {params}: {exc}",
                                 where=f"filters.{name}") from exc
    return built


def verdict_keys(config: dict[str, dict[str, Any]]) -> dict[str, str]:
    """Each filter's verdict key: the hash of the filters up to and including it, in order,
    with their revisions (left out at revision 1, so first-revision keys never change)."""
    keys, prefix = {}, []
    for name, params in config.items():
        revision = REVISIONS.get(name, 1)
        prefix.append([name, params] if revision == 1 else [name, params, revision])
        keys[name] = content_hash("filters", prefix)
    return keys


def config_hash(config: dict[str, dict[str, Any]]) -> str:
    """The whole config's hash, which is also the last filter's verdict key."""
    return list(verdict_keys(config).values())[-1] if config else content_hash("filters", [])


ROWS_SQL = (
    "SELECT r.response_id, r.text, r.finish_reason, r.output_tokens, p.task, p.reference,"
    " p.text AS prompt"
    " FROM responses r JOIN prompts p USING (prompt_id)"
    " WHERE NOT EXISTS (SELECT 1 FROM verdicts v WHERE v.response_id = r.response_id"
    "                   AND v.stage = $stage AND v.config_hash = $key)"
    # Filters run in order: only rows the previous filter kept are judged.
    " AND ($previous IS NULL OR EXISTS (SELECT 1 FROM verdicts d"
    "      WHERE d.response_id = r.response_id AND d.stage = $previous"
    "      AND d.config_hash = $previous_key AND d.keep))"
    " ORDER BY r.created_at, r.response_id")
CHUNK = 64
"""Rows judged per step; a batched filter (the judge) gets them as one list."""
COMMIT_EVERY_S = 1.0
"""Judged chunks are committed once this much judging has piled up (and at the end): a
crash loses about this much work, and a fast filter is not slowed by a commit per chunk."""


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
    """Judge every response that has no verdict yet under this config; returns counts.

    Verdicts are committed progressively (see `COMMIT_EVERY_S`), so a run killed midway
    keeps what it committed and a re-run judges only the rows still without a verdict."""
    filters = build(config, catalog)
    keys = verdict_keys(config)
    counts: dict[str, Any] = {"judged": 0, "dropped": {}}
    previous = {"previous": None, "previous_key": None}
    for name, check in filters.items():
        stage = f"filter:{name}"
        rows = catalog.rows(ROWS_SQL, {"stage": stage, "key": keys[name], **previous})
        batched = getattr(check, "batched", False)
        pending: list[tuple[str, Verdict]] = []
        dropped, since_commit = 0, time.monotonic()
        for start in range(0, len(rows), CHUNK):
            chunk = rows[start:start + CHUNK]
            judged = check(chunk) if batched else [check(row) for row in chunk]
            pending += [(row["response_id"], v) for row, v in zip(chunk, judged, strict=True)]
            dropped += sum(not v.keep for v in judged)
            if time.monotonic() - since_commit >= COMMIT_EVERY_S or start + CHUNK >= len(rows):
                write_verdicts(catalog, stage, keys[name], run_id, pending)
                pending, since_commit = [], time.monotonic()
        counts["judged"] = max(counts["judged"], len(rows))
        counts["dropped"][name] = dropped
        previous = {"previous": stage, "previous_key": keys[name]}
    log.info("filters judged %d responses, dropped %s", counts["judged"], counts["dropped"])
    return counts
