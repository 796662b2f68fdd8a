"""Run a suite on a teacher or a student through the same engine, and record what it scored."""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, replace
from typing import Any

from stillroom.catalog import Catalog, insert_many
from stillroom.errors import StillroomError
from stillroom.eval.metrics import METRICS, score_with
from stillroom.eval.suites import Suite, SuiteItem
from stillroom.hashing import content_hash
from stillroom.runs import recorded_run
from stillroom.tasks.engine import Engine, RequestFailure, engine_for
from stillroom.tasks.prompts import Prompt
from stillroom.tasks.teachers import Teacher, get_teacher

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ModelRef:
    kind: str            # "teacher" or "student"
    name: str
    path: str
    revision: str | None
    teacher: Teacher     # the teacher itself, or the student's teacher (prices, agreement)
    prompt_format: str = "teacher"  # what it was trained to answer (`TrainConfig.prompt_format`)


def resolve_model(catalog: Catalog, name: str) -> ModelRef:
    """A teacher by name, or a student by `name` (its latest version) or `name@N`."""
    if catalog.rows("SELECT 1 FROM teachers WHERE name = ?", [name]):
        t = get_teacher(catalog, name)
        return ModelRef("teacher", name, t.model, t.revision, t)
    from stillroom.tasks.students import resolve_student

    try:
        student = resolve_student(catalog, name, where="--model")
    except StillroomError as exc:
        raise StillroomError(f"no teacher or student named {name!r}", where="--model") from exc
    teacher_name = student["provenance"]["teachers"][0]["name"]
    return ModelRef("student", name, student["path"], None, get_teacher(catalog, teacher_name),
                    (student["config"] or {}).get("prompt_format", "teacher"))


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
        " AND prompt_format = 'teacher'"
        " ORDER BY created_at DESC LIMIT 1)", [teacher, suite_hash])
    return {r["item_id"]: r["output"] for r in rows}


COMMIT_EVERY = 16  # finished items per committed batch: a killed eval loses at most these


def measured_key(ref: ModelRef, suite: Suite) -> str:
    """What an eval measures: the model (kind, name, weights, revision), the suite and the
    prompt format it is given."""
    parts = (ref.kind, ref.name, ref.path, ref.revision, suite.suite_hash)
    return content_hash(*parts, *(() if ref.prompt_format == "teacher" else (ref.prompt_format,)))


def item_prompt(item: SuiteItem, prompt_format: str) -> Prompt:
    """The prompt an item is asked as: as the suite wrote it, or its question alone."""
    if prompt_format == "teacher":
        return item.prompt
    zero_shot = item.prompt.meta.get("zero_shot")
    if zero_shot is None:
        raise StillroomError(f"item {item.item_id} has no zero-shot form (only items of"
                             " procedural tasks have one)", where="--prompt-format")
    return Prompt(zero_shot, source=item.prompt.source, task=item.prompt.task,
                  reference=item.prompt.reference)


def open_eval_id(catalog: Catalog, ref: ModelRef, suite: Suite) -> str:
    """The eval this run fills in: the one a killed run left unfinished (items, no result),
    or else a new one, numbered by how many evals of this model, suite and format completed."""
    completed = catalog.scalar(
        "SELECT count(*) FROM eval_results WHERE model_name = ? AND suite_hash = ?"
        " AND prompt_format = ?", [ref.name, suite.suite_hash, ref.prompt_format])
    return content_hash(measured_key(ref, suite), completed)


def _answer_items(catalog: Catalog, engine: Engine, suite: Suite, todo: list[SuiteItem],
                  eval_id: str, commit_every: int, prompt_format: str) -> None:
    """Generate and score `todo`, committing every `commit_every` finished items with their
    tokens and their token share of the engine time since the previous commit."""
    rendered = [engine.render(item_prompt(item, prompt_format)) for item in todo]
    pending: list[tuple[SuiteItem, str, int]] = []

    def commit(seconds: float) -> None:
        tokens = sum(n for _, _, n in pending)
        rows = [(eval_id, item.item_id, item.prompt.reference["question"], out,
                 str(item.prompt.reference["answer"]),
                 score_with(item.scorer, out, item.prompt.reference, task=item.prompt.task),
                 n, seconds * (n / tokens if tokens else 1 / len(pending)))
                for item, out, n in pending]
        with catalog.write() as conn:
            insert_many(conn, "INSERT OR IGNORE INTO eval_items (eval_id, item_id, prompt,"
                              " output, expected, score, output_tokens, wall_s)"
                              " VALUES (?, ?, ?, ?, ?, ?, ?, ?)", rows)
        pending.clear()

    since = time.monotonic()
    for index, samples in engine.stream(rendered, suite.sampling):
        if isinstance(samples, RequestFailure):
            if pending:
                commit(time.monotonic() - since)
            raise StillroomError(f"item {todo[index].item_id} failed after {samples.attempts}"
                                 f" attempt(s): {samples.reason}", where=engine.model)
        pending.append((todo[index], samples[0].text.strip(), len(samples[0].token_ids)))
        if len(pending) >= commit_every:
            commit(time.monotonic() - since)
            since = time.monotonic()  # the commit itself is not the model's time
    if pending:
        commit(time.monotonic() - since)


def run_suite(catalog: Catalog, model_name: str, suite: Suite, engine: Engine | None = None,
              commit_every: int = COMMIT_EVERY,
              prompt_format: str | None = None) -> dict[str, Any]:
    """Greedy answers for every item, scored; returns and stores the suite's metrics, speed
    and cost. Items are committed in batches as they finish; a re-run after a crash resumes
    the unfinished eval and generates only the items it lacks.

    Only the metrics the suite names are computed: without `accuracy` the result's
    accuracy and interval columns are NULL.

    `prompt_format` defaults to the model's own (a student's training format; teachers get
    the suite's prompts); a student's init is compared in its trained version's format."""
    ref = resolve_model(catalog, model_name)
    if prompt_format is not None:
        ref = replace(ref, prompt_format=prompt_format)
    for item in suite.items:  # refused before any model loads
        item_prompt(item, ref.prompt_format)
    eval_id = open_eval_id(catalog, ref, suite)
    with recorded_run(catalog, "eval", {"model": model_name, "suite": suite.name,
                                        "prompt_format": ref.prompt_format,
                                        "eval_id": eval_id}) as run:
        done = {r["item_id"] for r in catalog.rows(
            "SELECT item_id FROM eval_items WHERE eval_id = ?", [eval_id])}
        todo = [item for item in suite.items if item.item_id not in done]
        if todo:
            engine = engine or engine_for(ref.path, ref.revision)
            _answer_items(catalog, engine, suite, todo, eval_id, commit_every,
                          ref.prompt_format)
        stored = {r["item_id"]: r for r in catalog.rows(
            "SELECT item_id, output, score, coalesce(output_tokens, 0) AS output_tokens,"
            " coalesce(wall_s, 0) AS wall_s FROM eval_items WHERE eval_id = ?", [eval_id])}
        answered = [stored[item.item_id] for item in suite.items]
        scores = [r["score"] for r in answered]
        outputs = [r["output"] for r in answered]
        tokens = sum(r["output_tokens"] for r in answered)
        wall = sum(r["wall_s"] for r in answered)
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
        with catalog.write() as conn:
            conn.execute(
                "INSERT OR IGNORE INTO eval_results (eval_id, model_kind, model_name, suite,"
                " suite_hash, n_items, accuracy, ci_low, ci_high, agreement, output_tokens,"
                " wall_s, tokens_per_s, usd_per_1m_tokens, run_id, created_at, prompt_format)"
                " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, now(), ?)",
                [eval_id, ref.kind, model_name, suite.name, suite.suite_hash, len(scores),
                 figures.get("accuracy"), figures.get("ci_low"), figures.get("ci_high"),
                 figures.get("agreement"), tokens, wall, tokens_per_s, cost, run.run_id,
                 ref.prompt_format])
        run.summary.update(eval_id=eval_id, model=model_name, kind=ref.kind, suite=suite.name,
                           prompt_format=ref.prompt_format,
                           items=len(scores), items_generated=len(todo),
                           items_resumed=len(done), output_tokens=tokens,
                           wall_s=round(wall, 3), tokens_per_s=round(tokens_per_s, 2),
                           usd_per_1m_tokens=round(cost, 4) if cost is not None else None,
                           **{k: round(v, 4) for k, v in figures.items()})
    log.info("%s on %s: %s", model_name, suite.name,
             ", ".join(f"{k} {v:.3f}" for k, v in figures.items()) or "no metrics")
    return run.summary
