"""Read-only queries behind the dashboard (each one a short read-only connection)."""

from __future__ import annotations

from typing import Any

from stillroom.catalog import Catalog

LATEST_EVALS = """
SELECT e.model_name AS model, e.model_kind AS kind, e.suite, e.n_items AS items,
       e.accuracy, e.ci_low, e.ci_high, e.agreement, e.tokens_per_s,
       e.usd_per_1m_tokens, e.created_at
FROM eval_results e
QUALIFY row_number() OVER (PARTITION BY e.model_name, e.suite ORDER BY e.created_at DESC) = 1
ORDER BY e.suite, e.model_kind DESC, e.model_name
"""

STUDENTS = """
SELECT s.name AS student, s.dataset_id,
       json_extract_string(s.provenance, '$.teachers[0].name') AS teacher,
       s.init, s.created_at
FROM students s ORDER BY s.created_at DESC
"""

RESPONSES = """
SELECT r.response_id, t.name AS teacher, p.source, p.task, r.rendered_prompt AS prompt,
       r.text AS response, r.finish_reason, r.output_tokens, r.created_at,
       coalesce(bool_and(v.keep), TRUE) AS kept,
       string_agg(v.stage || ': ' || v.reason, '; ') FILTER (WHERE NOT v.keep) AS dropped_because
FROM responses r
JOIN prompts p USING (prompt_id)
JOIN teachers t USING (teacher_id)
LEFT JOIN verdicts v USING (response_id)
WHERE ($teacher IS NULL OR t.name = $teacher)
GROUP BY ALL
HAVING $status = 'all' OR ($status = 'kept') = kept
ORDER BY r.created_at DESC, r.response_id
LIMIT $limit
"""


def latest_evals(catalog: Catalog) -> Any:
    return catalog.frame(LATEST_EVALS)


def students(catalog: Catalog) -> Any:
    return catalog.frame(STUDENTS)


def teacher_names(catalog: Catalog) -> list[str]:
    return [r["name"] for r in catalog.rows("SELECT name FROM teachers ORDER BY name")]


def responses(catalog: Catalog, teacher: str | None, status: str, limit: int = 200) -> Any:
    with catalog.reader() as conn:
        return conn.execute(RESPONSES, {"teacher": teacher, "status": status,
                                        "limit": limit}).df()


def counts(catalog: Catalog) -> dict[str, int]:
    tables = ("teachers", "prompts", "responses", "datasets", "students", "eval_results")
    with catalog.reader() as conn:
        return {t: conn.execute(f"SELECT count(*) FROM {t}").fetchone()[0] for t in tables}
