"""Run a suite on a teacher or a student through the same engine, and record what it scored."""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass
from typing import Any

from stillroom.catalog import Catalog, insert_many
from stillroom.errors import StillroomError
from stillroom.eval.metrics import METRICS, score_with
from stillroom.eval.suites import Suite
from stillroom.hashing import content_hash
from stillroom.runs import recorded_run
from stillroom.tasks.engine import Engine, engine_for
from stillroom.tasks.teachers import Teacher, get_teacher

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ModelRef:
    kind: str            # "teacher" or "student"
    name: str
    path: str
    revision: str | None
    teacher: Teacher     # the teacher itself, or the student's teacher (prices, agreement)


def resolve_model(catalog: Catalog, name: str) -> ModelRef:
    if catalog.rows("SELECT 1 FROM teachers WHERE name = ?", [name]):
        t = get_teacher(catalog, name)
        return ModelRef("teacher", name, t.model, t.revision, t)
    rows = catalog.rows("SELECT path, provenance FROM students WHERE name = ?", [name])
    if not rows:
        raise StillroomError(f"no teacher or student named {name!r}", where="--model")
    teacher_name = json.loads(rows[0]["provenance"])["teachers"][0]["name"]
    return ModelRef("student", name, rows[0]["path"], None, get_teacher(catalog, teacher_name))


def usd_per_1m(ref: ModelRef, tokens_per_s: float) -> float | None:
    """Teachers priced per token cost that; otherwise the hardware's hourly price at this speed."""
    t = ref.teacher
    if ref.kind == "teacher" and t.per_1m_tokens_usd is not None:
        return t.per_1m_tokens_usd
    if t.gpu_hour_usd is None or tokens_per_s <= 0:
        return None
    return t.gpu_hour_usd / 3600 / tokens_per_s * 1e6


def _teacher_outputs(catalog: Catalog, teacher: str, suite_hash: str) -> dict[str, str]:
    rows = catalog.rows(
        "SELECT i.item_id, i.output FROM eval_items i WHERE i.eval_id = ("
        " SELECT eval_id FROM eval_results WHERE model_name = ? AND suite_hash = ?"
        " ORDER BY created_at DESC LIMIT 1)", [teacher, suite_hash])
    return {r["item_id"]: r["output"] for r in rows}


def run_suite(catalog: Catalog, model_name: str, suite: Suite,
              engine: Engine | None = None) -> dict[str, Any]:
    """Greedy answers for every item, scored; returns and stores accuracy, CI, agreement, speed."""
    ref = resolve_model(catalog, model_name)
    with recorded_run(catalog, "eval", {"model": model_name, "suite": suite.name}) as run:
        engine = engine or engine_for(ref.path, ref.revision)
        rendered = [engine.render(item.prompt) for item in suite.items]
        started = time.monotonic()
        results = engine.generate(rendered, suite.sampling)
        wall = time.monotonic() - started
        outputs = [samples[0].text.strip() for samples in results]
        tokens = sum(len(samples[0].token_ids) for samples in results)
        scores = [score_with(item.scorer, out, item.prompt.reference, task=item.prompt.task)
                  for item, out in zip(suite.items, outputs, strict=True)]
        teacher_out = {} if ref.kind == "teacher" else _teacher_outputs(
            catalog, ref.teacher.name, suite.suite_hash)
        reference_outputs = [teacher_out.get(item.item_id, "") for item in suite.items]
        figures: dict[str, Any] = {}
        for name in suite.metrics:
            figures.update(METRICS[name](scores=scores, outputs=outputs,
                                         reference_outputs=reference_outputs if teacher_out
                                         else None))
        tokens_per_s = tokens / wall if wall > 0 else 0.0
        cost = usd_per_1m(ref, tokens_per_s)
        eval_id = content_hash(model_name, suite.suite_hash, run.run_id)
        with catalog.write() as conn:
            conn.execute(
                "INSERT INTO eval_results VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?,"
                " now())",
                [eval_id, ref.kind, model_name, suite.name, suite.suite_hash, len(scores),
                 figures["accuracy"], figures["ci_low"], figures["ci_high"],
                 figures.get("agreement"), tokens, wall, tokens_per_s, cost, run.run_id])
            insert_many(conn, "INSERT INTO eval_items VALUES (?, ?, ?, ?, ?, ?)",
                [(eval_id, item.item_id, item.prompt.reference["question"], out,
                  str(item.prompt.reference["answer"]), score)
                 for item, out, score in zip(suite.items, outputs, scores, strict=True)])
        run.summary.update(eval_id=eval_id, model=model_name, kind=ref.kind, suite=suite.name,
                           items=len(scores), output_tokens=tokens, wall_s=round(wall, 3),
                           tokens_per_s=round(tokens_per_s, 2),
                           usd_per_1m_tokens=round(cost, 4) if cost is not None else None,
                           **{k: round(v, 4) for k, v in figures.items()})
    log.info("%s on %s: accuracy %.3f [%.3f, %.3f]", model_name, suite.name,
             figures["accuracy"], figures["ci_low"], figures["ci_high"])
    return run.summary
