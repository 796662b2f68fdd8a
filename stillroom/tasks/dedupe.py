"""Exact dedupe on normalised (prompt, response) text, within a run and against all earlier runs.

The first response seen (by creation time, then id) with a given normalised text is
the representative; later ones are dropped as `duplicate of <id>`. Verdicts already
written are never revised, so earlier dataset versions stay reproducible.
"""

from __future__ import annotations

import logging
from typing import Any

from stillroom.catalog import Catalog
from stillroom.errors import StillroomError
from stillroom.eval.metrics import normalize
from stillroom.hashing import content_hash
from stillroom.tasks.filters import FILTERS, KEEP, Verdict, write_verdicts

log = logging.getLogger(__name__)
STAGE = "dedupe:exact"


def text_key(prompt: str, response: str) -> str:
    return content_hash(normalize(prompt), normalize(response))


def kept_by_filters_sql(filter_names: list[str]) -> str:
    """Responses that every named filter judged `keep` under the config hash bound to `$chash`."""
    unknown = [name for name in filter_names if name not in FILTERS]
    if unknown:
        raise StillroomError(f"unknown filters {unknown}; known: {sorted(FILTERS)}",
                             where="filters")
    conditions = " AND ".join(
        f"EXISTS (SELECT 1 FROM verdicts v WHERE v.response_id = r.response_id"
        f" AND v.stage = 'filter:{name}' AND v.config_hash = $chash AND v.keep)"
        for name in filter_names) or "TRUE"
    return f"SELECT r.* FROM responses r WHERE {conditions}"


def dedupe(catalog: Catalog, filter_names: list[str], chash: str, run_id: str) -> dict[str, Any]:
    """Write a dedupe verdict for every filter-kept response that has none under `chash`."""
    with catalog.reader() as conn:
        candidates = conn.execute(
            f"SELECT c.response_id, c.rendered_prompt, c.text, v.keep"
            f" FROM ({kept_by_filters_sql(filter_names)}) c"
            f" LEFT JOIN verdicts v ON v.response_id = c.response_id AND v.stage = '{STAGE}'"
            f"  AND v.config_hash = $chash"
            f" ORDER BY c.created_at, c.response_id", {"chash": chash}).fetchall()
    representative: dict[str, str] = {}
    new_verdicts: list[tuple[str, Verdict]] = []
    for response_id, prompt, text, decided in candidates:
        key = text_key(prompt, text)
        if decided is not None:
            if decided:
                representative.setdefault(key, response_id)
            continue
        if key in representative:
            new_verdicts.append(
                (response_id, Verdict(False, f"duplicate of {representative[key]}")))
        else:
            representative[key] = response_id
            new_verdicts.append((response_id, KEEP))
    write_verdicts(catalog, STAGE, chash, run_id, new_verdicts)
    dropped = sum(not v.keep for _, v in new_verdicts)
    log.info("dedupe judged %d new responses, dropped %d duplicates", len(new_verdicts), dropped)
    return {"judged": len(new_verdicts), "duplicates": dropped}
