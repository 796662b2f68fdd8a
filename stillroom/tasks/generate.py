"""Teacher generation: license gate, request cache, batched calls, batch commits.

A request's key is the teacher, its revision, the rendered prompt, the sampling
parameters and k. Keys already answered in the catalog are never sent again, and
each batch is committed as soon as it returns, so a killed run loses at most the
batch in flight.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator, Sequence
from typing import Any, TypeVar

from tqdm import tqdm

from stillroom.catalog import Catalog, insert_many
from stillroom.hashing import canonical_json, content_hash
from stillroom.runs import recorded_run
from stillroom.tasks import soft_labels
from stillroom.tasks.engine import Completion, Engine, SamplingConfig, engine_for
from stillroom.tasks.prompts import Prompt, store_prompts
from stillroom.tasks.teachers import Teacher, authorize

log = logging.getLogger(__name__)
T = TypeVar("T")


def chunks(items: Sequence[T], size: int) -> Iterator[Sequence[T]]:
    for start in range(0, len(items), size):
        yield items[start:start + size]


def request_key(teacher: Teacher, rendered: str, sampling: SamplingConfig) -> str:
    return content_hash(teacher.teacher_id, teacher.revision, rendered, sampling.as_dict())


def answered_keys(catalog: Catalog, keys: list[str], n: int) -> set[str]:
    """Keys whose `n` samples are all stored already."""
    rows = catalog.rows(
        "SELECT request_key FROM responses WHERE request_key IN (SELECT unnest(?))"
        " GROUP BY request_key HAVING count(DISTINCT sample_index) >= ?", [keys, n])
    return {r["request_key"] for r in rows}


def _response_rows(batch: Sequence[tuple[Prompt, str, str]], results: list[list[Completion]],
                   teacher: Teacher, sampling: SamplingConfig, seconds: float,
                   run_id: str) -> list[tuple]:
    rows = []
    for (prompt, rendered, key), samples in zip(batch, results, strict=True):
        for index, c in enumerate(samples):
            rows.append((content_hash(key, index), key, index, prompt.prompt_id, teacher.teacher_id,
                         rendered, c.text, c.prompt_tokens, len(c.token_ids), c.finish_reason,
                         c.token_ids, soft_labels.encode(c.topk_ids, c.topk_logprobs),
                         sampling.logprobs_k,
                         canonical_json(sampling.as_dict()), seconds, run_id))
    return rows


def generate(catalog: Catalog, teacher: Teacher, prompts: list[Prompt], sampling: SamplingConfig,
             batch_size: int = 64, noncommercial: bool = False, engine: Engine | None = None,
             backend: str = "vllm", progress: bool = True) -> dict[str, Any]:
    """Query `teacher` for every prompt not answered yet; returns the run's summary.

    The backend is not part of a request's key: every backend stores the same rows for the
    same request (greedy, fp32), so an answer from one satisfies a re-run on another.
    """
    terms = authorize(catalog, teacher, noncommercial)  # before any model is loaded
    store_prompts(catalog, prompts)
    params = {"teacher": teacher.name, "prompts": len(prompts), "sampling": sampling.as_dict(),
              "license": terms.license_id, "backend": backend}
    with recorded_run(catalog, "generate", params) as run:
        engine = engine or engine_for(teacher.model, teacher.revision, backend)
        requests = [(p, rendered := engine.render(p), request_key(teacher, rendered, sampling))
                    for p in prompts]
        unique = list({key: (p, r, key) for p, r, key in requests}.values())
        done = answered_keys(catalog, [key for _, _, key in unique], sampling.n)
        todo = [req for req in unique if req[2] not in done]
        stored = output_tokens = label_bytes = label_entries = 0
        engine_seconds = 0.0
        bar = tqdm(total=len(todo), desc=f"generate[{teacher.name}]", unit="req",
                   disable=not progress or not todo)
        for batch in chunks(todo, batch_size):
            started = time.monotonic()
            results = engine.generate([rendered for _, rendered, _ in batch], sampling)
            seconds = time.monotonic() - started
            engine_seconds += seconds
            rows = _response_rows(batch, results, teacher, sampling, seconds, run.run_id)
            with catalog.write() as conn:
                insert_many(conn, "INSERT OR IGNORE INTO responses VALUES"
                    " (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, now())", rows)
            stored += len(rows)
            output_tokens += sum(row[8] for row in rows)
            label_bytes += sum(len(row[11] or b"") for row in rows)
            label_entries += sum(row[8] * row[12] for row in rows if row[11])
            bar.update(len(batch))
        bar.close()
        usd = teacher.usd_for(output_tokens, engine_seconds)
        run.summary.update(
            run_id=run.run_id, teacher=teacher.name, requests_sent=len(todo),
            cache_hits=len(unique) - len(todo), responses_stored=stored, failed=0,
            output_tokens=output_tokens, engine_seconds=round(engine_seconds, 3),
            topk_bytes_per_entry=round(label_bytes / label_entries, 3) if label_entries else None,
            usd=round(usd, 6) if usd is not None else None)
    log.info("generated %d responses from %s (%d cached requests)", stored, teacher.name,
             run.summary["cache_hits"])
    return run.summary
