"""Teacher generation: license gate, request cache, batched calls, batch commits.

A request's key is the teacher, its revision, the rendered prompt, the sampling
parameters and k (and the prompt tokenisation rule where it matters, see `request_key`).
Keys already answered in the catalog are never sent again, and each batch is committed as
soon as it returns, so a killed run loses at most the batch in flight. Each run records how
it captured its rows (`capture_record`), for the manifests of the versions cut from them.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import Any, NamedTuple

from tqdm import tqdm

from stillroom.catalog import Catalog, insert_records
from stillroom.hashing import canonical_json, content_hash
from stillroom.runs import recorded_run
from stillroom.tasks import compat, soft_labels
from stillroom.tasks.engine import (
    Completion,
    Engine,
    RequestFailure,
    SamplingConfig,
    engine_for,
)
from stillroom.tasks.prompts import Prompt, store_prompts, store_rejected
from stillroom.tasks.teachers import Teacher, authorize

log = logging.getLogger(__name__)


def request_key(teacher: Teacher, rendered: str, sampling: SamplingConfig,
                tokenisation: str | None = None) -> str:
    """The cache key of one teacher call. `tokenisation` is `compat.tokenisation_tag`: set
    only for prompts whose ids the current rule changed, so their rows from before it (a
    doubled BOS) are asked again, while every other key stays what it always was."""
    parts = (teacher.teacher_id, teacher.revision, rendered, sampling.as_dict())
    return content_hash(*parts, *([tokenisation] if tokenisation else []))


def capture_record(engine: Engine, teacher: Teacher) -> dict[str, Any]:
    """How this run captures its rows: the engine's own account (name, version, logprob
    mode), the tokenizer's fingerprint, the teacher revision it was asked for and the prompt
    tokenisation rule. k and the soft-label codec version are on each row."""
    return {**engine.capture(), "tokenizer_hash": compat.tokenizer_fingerprint(engine.tokenizer),
            "revision": teacher.revision, "prompt_tokenisation": compat.PROMPT_TOKENISATION}


def answered_keys(catalog: Catalog, keys: list[str], n: int) -> set[str]:
    """Keys whose `n` samples are all stored already."""
    rows = catalog.rows(
        "SELECT request_key FROM responses WHERE request_key IN (SELECT unnest(?))"
        " GROUP BY request_key HAVING count(DISTINCT sample_index) >= ?", [keys, n])
    return {r["request_key"] for r in rows}


class ResponseRow(NamedTuple):
    """One `responses` row; field names are its columns (created_at is set on insert)."""

    response_id: str
    request_key: str
    sample_index: int
    prompt_id: str
    teacher_id: str
    rendered_prompt: str
    text: str
    prompt_tokens: int
    output_tokens: int
    finish_reason: str | None
    token_ids: list[int]
    soft_labels: bytes | None
    topk_k: int
    sampling: str
    latency_s: float | None
    usd: float | None
    run_id: str
    token_ids_exact: bool = True


class FailureRow(NamedTuple):
    """One `request_failures` row: a request that failed for good in this run."""

    request_key: str
    prompt_id: str
    teacher_id: str
    reason: str
    attempts: int
    run_id: str


@dataclass
class Tally:
    """Running totals of what a generation run committed."""

    responses: int = 0
    output_tokens: int = 0
    label_bytes: int = 0
    label_entries: int = 0
    failed: int = 0
    retokenised: int = 0
    usd: float | None = None

    def add(self, rows: list[ResponseRow]) -> None:
        if any(row.usd is not None for row in rows):
            self.usd = (self.usd or 0.0) + sum(row.usd or 0.0 for row in rows)
        self.responses += len(rows)
        self.retokenised += sum(not row.token_ids_exact for row in rows)
        self.output_tokens += sum(row.output_tokens for row in rows)
        self.label_bytes += sum(len(row.soft_labels or b"") for row in rows)
        self.label_entries += sum(row.output_tokens * row.topk_k for row in rows
                                  if row.soft_labels)

    @property
    def bytes_per_entry(self) -> float | None:
        return round(self.label_bytes / self.label_entries, 3) if self.label_entries else None


def _response_rows(request: tuple[Prompt, str, str], samples: list[Completion],
                   teacher: Teacher, sampling: SamplingConfig, run_id: str) -> list[ResponseRow]:
    """Rows for one request's samples; latency is the request's own, as its engine saw it."""
    prompt, rendered, key = request
    return [
        ResponseRow(content_hash(key, index), key, index, prompt.prompt_id, teacher.teacher_id,
                    rendered, c.text, c.prompt_tokens, len(c.token_ids), c.finish_reason,
                    c.token_ids, soft_labels.encode(c.topk_ids, c.topk_logprobs),
                    sampling.logprobs_k, canonical_json(sampling.as_dict()), c.latency_s, None,
                    run_id, c.token_ids_exact)
        for index, c in enumerate(samples)]


def priced(rows: list[ResponseRow], teacher: Teacher, engine_seconds: float) -> list[ResponseRow]:
    """Each row's dollars: per token, or its token share of the engine time since the last
    commit under a per-hour price (the rows were generated together in that interval)."""
    tokens = sum(row.output_tokens for row in rows) or 1
    return [row._replace(usd=teacher.usd_for(row.output_tokens,
                                             engine_seconds * row.output_tokens / tokens))
            for row in rows]


def generate(catalog: Catalog, teacher: Teacher, prompts: list[Prompt], sampling: SamplingConfig,
             batch_size: int = 64, noncommercial: bool = False, engine: Engine | None = None,
             backend: str = "vllm", endpoints: list[str] | None = None,
             api_key_env: str | None = None, progress: bool = True) -> dict[str, Any]:
    """Query `teacher` for every prompt not answered yet; returns the run's summary.

    The backend is not part of a request's key: every backend stores the same rows for the
    same request (greedy, fp32), so an answer from one satisfies a re-run on another.
    """
    terms = authorize(catalog, teacher, noncommercial)  # before any model is loaded
    params = {"teacher": teacher.name, "prompts": len(prompts), "sampling": sampling.as_dict(),
              "license": terms.license_id, "backend": backend}
    with recorded_run(catalog, "generate", params) as run:
        # An engine that fails to start leaves only this run, marked failed: the prompts are
        # stored once there is an engine to answer them (before any answer, as rows need).
        engine = engine or engine_for(teacher.model, teacher.revision, backend,
                                      endpoints=endpoints, api_key_env=api_key_env,
                                      max_logprobs=sampling.logprobs_k)
        engine.check_logprobs(sampling.logprobs_k)
        store_prompts(catalog, prompts)
        with catalog.write() as conn:
            conn.execute("INSERT INTO captures VALUES (?, ?, ?, now())",
                         [run.run_id, teacher.teacher_id,
                          canonical_json(capture_record(engine, teacher))])
        rejected = getattr(prompts, "rejected", [])  # seed rows set aside under `report`
        if rejected:
            with catalog.write() as conn:
                store_rejected(conn, rejected, run.run_id)
        requests = [(p, rendered := engine.render(p), request_key(
            teacher, rendered, sampling, compat.tokenisation_tag(engine.tokenizer, rendered)))
                    for p in prompts]
        unique = list({key: (p, r, key) for p, r, key in requests}.values())
        done = answered_keys(catalog, [key for _, _, key in unique], sampling.n)
        todo = [req for req in unique if req[2] not in done]
        tally = Tally()
        bar = tqdm(total=len(todo), desc=f"generate[{teacher.name}]", unit="req",
                   disable=not progress or not todo)
        pending: list[ResponseRow] = []
        failures: list[FailureRow] = []

        def commit() -> None:
            nonlocal last_commit
            now = time.monotonic()
            pending[:] = priced(pending, teacher, now - last_commit)
            last_commit = now
            with catalog.write() as conn:
                insert_records(conn, "responses", pending)
                insert_records(conn, "request_failures", failures)
            tally.add(pending)
            tally.failed += len(failures)
            pending.clear()
            failures.clear()

        started = last_commit = time.monotonic()
        with bar:  # closed on errors too, so an error message starts a line of its own
            for index, samples in engine.stream([r for _, r, _ in todo], sampling):
                prompt, _, key = todo[index]
                if isinstance(samples, RequestFailure):
                    failures.append(FailureRow(key, prompt.prompt_id, teacher.teacher_id,
                                               samples.reason, samples.attempts, run.run_id))
                    continue
                pending += _response_rows(todo[index], samples, teacher, sampling, run.run_id)
                bar.update(1)
                if len(pending) >= batch_size:
                    commit()
            commit()
        engine_seconds = time.monotonic() - started
        run.summary.update(
            run_id=run.run_id, teacher=teacher.name, requests_sent=len(todo),
            cache_hits=len(unique) - len(todo), responses_stored=tally.responses,
            failed=tally.failed, rejected_seeds=len(rejected), retokenised=tally.retokenised,
            retries=getattr(engine, "retries", 0),
            output_tokens=tally.output_tokens, engine_seconds=round(engine_seconds, 3),
            topk_bytes_per_entry=tally.bytes_per_entry,
            usd=round(tally.usd, 6) if tally.usd is not None else None)
    log.info("generated %d responses from %s (%d cached requests)", tally.responses,
             teacher.name, run.summary["cache_hits"])
    return run.summary
