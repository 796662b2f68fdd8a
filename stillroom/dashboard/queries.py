"""Read-only queries behind the dashboard (each one a short read-only connection)."""

from __future__ import annotations

import json
from typing import Any

from stillroom.catalog import Catalog
from stillroom.tasks import soft_labels

LATEST_EVALS = """
SELECT coalesce(json_extract_string(s.provenance, '$.teachers[0].name'), e.model_name)
         AS teacher,
       e.model_name AS model, e.model_kind AS kind, e.suite, e.n_items AS items,
       e.accuracy, e.ci_low, e.ci_high, e.agreement, e.tokens_per_s,
       e.usd_per_1m_tokens, e.created_at
FROM eval_results e
LEFT JOIN students s ON s.name = e.model_name
QUALIFY row_number() OVER (PARTITION BY e.model_name, e.suite ORDER BY e.created_at DESC) = 1
ORDER BY e.suite, teacher, e.model_kind DESC, e.model_name
"""

STUDENTS = """
SELECT s.name AS student, s.dataset_id,
       json_extract_string(s.provenance, '$.teachers[0].name') AS teacher,
       s.init, s.created_at
FROM students s ORDER BY s.created_at DESC
"""

RESPONSES = """
SELECT r.response_id, t.name AS teacher, p.task,
       coalesce(json_extract_string(p.reference, '$.question'), p.text) AS prompt,
       r.text AS response, coalesce(bool_and(v.keep), TRUE) AS kept,
       string_agg(v.stage || ': ' || v.reason, '; ') FILTER (WHERE NOT v.keep) AS dropped_because,
       json_extract_string(p.reference, '$.answer') AS expected,
       r.finish_reason, r.output_tokens, p.source, r.created_at
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


DROP_REASONS = """
SELECT stage, regexp_replace(reason, '(duplicate of|expected) .*', '\\1 …') AS reason,
       count(*) AS rows
FROM verdicts WHERE NOT keep GROUP BY ALL ORDER BY rows DESC
"""


def drop_reasons(catalog: Catalog) -> Any:
    return catalog.frame(DROP_REASONS)


def response_detail(catalog: Catalog, response_id: str) -> dict[str, Any]:
    """One response in full: rendered prompt, text, verdicts and its first top-k soft labels."""
    with catalog.reader() as conn:
        row = conn.execute(
            "SELECT r.rendered_prompt, r.text, r.token_ids, r.soft_labels,"
            " r.sampling, r.latency_s, t.name AS teacher, t.license, t.revision"
            " FROM responses r JOIN teachers t USING (teacher_id) WHERE r.response_id = ?",
            [response_id]).fetchone()
        verdicts = conn.execute(
            "SELECT stage, keep, reason, created_at FROM verdicts WHERE response_id = ?"
            " ORDER BY created_at, stage", [response_id]).df()
        duplicates = conn.execute(
            "SELECT response_id AS duplicate, stage, similarity FROM duplicate_links"
            " WHERE representative_id = ? ORDER BY stage, similarity DESC",
            [response_id]).df()
    names = ("prompt", "text", "token_ids", "soft_labels", "sampling", "latency_s", "teacher",
             "license", "revision")
    detail = dict(zip(names, row, strict=True))
    detail["topk_ids"], detail["topk_logprobs"] = soft_labels.decode(detail.pop("soft_labels"))
    return {**detail, "verdicts": verdicts, "duplicates": duplicates}


def counts(catalog: Catalog) -> dict[str, int]:
    tables = ("teachers", "prompts", "responses", "datasets", "students", "eval_results")
    with catalog.reader() as conn:
        return {t: conn.execute(f"SELECT count(*) FROM {t}").fetchone()[0] for t in tables}


def dataset_versions(catalog: Catalog) -> Any:
    return catalog.frame(
        "SELECT d.dataset_id, d.name, d.n_rows AS rows, d.created_at,"
        " r.report IS NOT NULL AS has_report FROM datasets d"
        " LEFT JOIN diversity_reports r ON r.scope = 'dataset:' || d.dataset_id"
        " ORDER BY d.created_at DESC")


def diversity(catalog: Catalog, dataset_id: str) -> dict[str, Any] | None:
    report = catalog.scalar("SELECT report FROM diversity_reports WHERE scope = ?",
                            [f"dataset:{dataset_id}"])
    return json.loads(report) if report else None


CLUSTERS = """
SELECT l.representative_id, l.stage, count(*) AS duplicates, round(min(l.similarity), 3)
       AS min_similarity,
       any_value(coalesce(json_extract_string(p.reference, '$.question'), p.text)) AS prompt
FROM duplicate_links l
JOIN responses r ON r.response_id = l.representative_id
JOIN prompts p USING (prompt_id)
GROUP BY ALL ORDER BY duplicates DESC, l.representative_id LIMIT $limit
"""


def clusters(catalog: Catalog, limit: int = 100) -> Any:
    """The largest duplicate clusters: each representative and how many rows it stood for."""
    with catalog.reader() as conn:
        return conn.execute(CLUSTERS, {"limit": limit}).df()
