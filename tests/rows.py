"""Catalog rows written directly, for stages that only read what generation stored."""

from __future__ import annotations

import json

from stillroom.catalog import Catalog, insert_records
from stillroom.hashing import content_hash
from stillroom.tasks.generate import ResponseRow
from stillroom.tasks.prompts import Prompt, store_prompts


def add_rows(catalog: Catalog, rows: list[dict], teacher_id: str = "t0") -> list[str]:
    """Store prompts and one response each: {question, response, answer?, finish?, task?}."""
    prompts = [Prompt(r["question"], "test", task=r.get("task"),
                      reference={"question": r["question"], "answer": r["answer"]}
                      if "answer" in r else None) for r in rows]
    store_prompts(catalog, prompts)
    records = [ResponseRow(
        response_id=content_hash("row", p.prompt_id, r["response"]),
        request_key=content_hash("key", p.prompt_id, r["response"]), sample_index=0,
        prompt_id=p.prompt_id, teacher_id=teacher_id, rendered_prompt=p.text,
        text=r["response"], prompt_tokens=len(p.text.split()),
        output_tokens=len(r["response"].split()), finish_reason=r.get("finish", "stop"),
        token_ids=[1, 2, 3], soft_labels=None, topk_k=0, sampling=json.dumps({}),
        latency_s=0.1, usd=0.001, run_id="test") for p, r in zip(prompts, rows, strict=True)]
    with catalog.write() as conn:
        insert_records(conn, "responses", records)
    return [r.response_id for r in records]
