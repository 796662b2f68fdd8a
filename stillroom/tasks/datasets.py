"""Dataset versions: immutable snapshots of kept rows, with a manifest that carries provenance."""

from __future__ import annotations

import hashlib
import itertools
import json
import logging
import os
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

from stillroom import settings
from stillroom.catalog import Catalog, insert_many
from stillroom.errors import StillroomError
from stillroom.hashing import canonical_json, content_hash
from stillroom.tasks import dedupe, soft_labels
from stillroom.tasks.curation import CurationConfig
from stillroom.tasks.licenses import terms_for
from stillroom.tasks.prompts import Prompt

log = logging.getLogger(__name__)

VERSION_ROWS_SQL = (
    "SELECT r.response_id, r.prompt_id, p.text AS prompt_text, p.is_chat, p.source,"
    " json_extract_string(p.meta, '$.zero_shot') AS zero_shot_prompt,"
    " r.rendered_prompt AS prompt, r.prompt_tokens, r.text AS response, r.token_ids,"
    " r.soft_labels,"
    " r.finish_reason, r.teacher_id, t.name AS teacher, t.model AS teacher_model,"
    " t.revision AS teacher_revision, t.license, d.dataset_id"
    " FROM dataset_rows d JOIN responses r USING (response_id) JOIN prompts p USING (prompt_id)"
    " JOIN teachers t ON t.teacher_id = r.teacher_id"
    " WHERE d.dataset_id = ? ORDER BY d.position")
PROVENANCE_COLUMNS = ("teacher", "teacher_model", "teacher_revision", "license", "dataset_id")
JSONL_COLUMNS = ("response_id", "messages", "rendered_prompt", "finish_reason",
                 *PROVENANCE_COLUMNS)


def _kept_rows_sql(config: CurationConfig) -> str:
    """Rows every filter and every dedupe stage kept (the last stage's keep under `$dkey`,
    the whole dedupe config's key, says so), of `$teacher` when it is not NULL."""
    last_stage = list(dedupe.build(config.dedupe))[-1] if config.dedupe else None
    kept = dedupe.kept_by_filters_sql(list(config.filters), last_stage)
    return (f"SELECT c.response_id FROM ({kept}) c"
            f" JOIN teachers t ON t.teacher_id = c.teacher_id"
            f" WHERE $teacher IS NULL OR t.name = $teacher"
            f" ORDER BY c.created_at, c.response_id")


def check_teacher_cut(curation: CurationConfig, teacher: str | None) -> None:
    """A one-teacher cut is whole only if no row of it was dropped for another teacher's."""
    if teacher is not None and curation.dedupe and curation.dedupe_scope != "teacher":
        raise StillroomError(
            f"dedupe scope is {curation.dedupe_scope!r}: rows of {teacher!r} may have been"
            " dropped as duplicates of another teacher's rows, so a one-teacher cut would"
            " lose them; cut every teacher, or dedupe with scope: teacher", where="--teacher")


CAPTURES_SQL = (
    "SELECT r.teacher_id, c.record, r.topk_k AS k,"
    " array_slice(r.soft_labels, 1, 1) AS codec_byte, count(*) AS rows"
    " FROM responses r LEFT JOIN captures c USING (run_id)"
    " WHERE r.response_id IN (SELECT unnest(?))"
    " GROUP BY ALL ORDER BY rows DESC, k, codec_byte, c.record")


def _captures(catalog: Catalog, ids: list[str]) -> dict[str, list[dict[str, Any]]]:
    """Each teacher's captures among the rows `ids`, as recorded when they were generated:
    the generation run's record (`generate.capture_record`; `engine` None for rows from
    before records were kept), with each row's k and soft-label codec version (the blob's
    first byte; None without soft labels) and how many rows share all of it."""
    out: dict[str, list[dict[str, Any]]] = {}
    for row in catalog.rows(CAPTURES_SQL, [ids]):
        record = json.loads(row["record"]) if row["record"] else {"engine": None}
        codec = row["codec_byte"][0] if row["codec_byte"] else None
        out.setdefault(row["teacher_id"], []).append(
            {**record, "k": row["k"], "soft_label_codec": codec, "rows": row["rows"]})
    return out


def _teacher_provenance(catalog: Catalog, teacher_ids: list[str],
                        ids: list[str]) -> list[dict[str, Any]]:
    captures = _captures(catalog, ids)
    teachers = catalog.rows(
        "SELECT teacher_id, name, model, revision, license FROM teachers"
        " WHERE teacher_id IN (SELECT unnest(?)) ORDER BY name", [teacher_ids])
    for t in teachers:
        terms = terms_for(t["license"])
        t.update(license_name=terms.name, verdict=terms.verdict,
                 obligations=list(terms.obligations),
                 grants=[g["reference"] for g in catalog.rows(
                     "SELECT reference FROM license_grants WHERE teacher_id = ?",
                     [t["teacher_id"]])],
                 capture=captures.get(t["teacher_id"], []))
    return teachers


def cut(catalog: Catalog, curation: CurationConfig, name: str | None = None,
        teacher: str | None = None, run_id: str = "") -> dict[str, Any]:
    """Snapshot every kept, deduped row into an immutable version (reused if identical)."""
    check_teacher_cut(curation, teacher)
    curation = curation.pinned(catalog)
    hashes = curation.hashes
    kept_sql = _kept_rows_sql(curation)
    with catalog.reader() as conn:
        ids = [r[0] for r in conn.execute(kept_sql, dedupe.sql_params(
            kept_sql, {**hashes, "dkey": hashes["dhash"], "teacher": teacher})).fetchall()]
        teacher_ids = [r[0] for r in conn.execute(
            "SELECT DISTINCT teacher_id FROM responses WHERE response_id IN (SELECT unnest(?))",
            [ids]).fetchall()]
        # Everything generated for the pool these rows were chosen from, dropped rows included.
        spent = conn.execute(
            "SELECT sum(r.usd) FROM responses r JOIN teachers t USING (teacher_id)"
            " WHERE ($teacher IS NULL OR t.name = $teacher) AND ($stage IS NULL OR EXISTS ("
            " SELECT 1 FROM verdicts v WHERE v.response_id = r.response_id"
            " AND v.stage = $stage AND v.config_hash = $key))",
            {**curation.pool, "teacher": teacher}).fetchone()[0]
    if not ids:
        raise StillroomError("no kept rows to snapshot; generate and filter first",
                             where=f"dataset (teacher={teacher or 'any'})")
    config = {**curation.as_dict(), "teacher": teacher}
    dataset_id = content_hash(sorted(ids), config)
    cost = {"generation_usd": spent,
            "usd_per_accepted_row": spent / len(ids) if spent is not None else None}
    manifest = {"dataset_id": dataset_id, "name": name, "rows": len(ids), "config": config,
                "cost": cost,
                "config_hash": content_hash(config),
                "teachers": _teacher_provenance(catalog, teacher_ids, ids), "row_ids": ids}
    with catalog.write() as conn:
        if conn.execute("SELECT 1 FROM datasets WHERE dataset_id = ?", [dataset_id]).fetchone():
            log.info("dataset %s already exists (%d rows)", dataset_id, len(ids))
            return {"dataset_id": dataset_id, "rows": len(ids), "created": False, **cost}
        conn.execute("INSERT INTO datasets VALUES (?, ?, ?, ?, ?, ?, now())",
                     [dataset_id, name, len(ids), canonical_json(config),
                      canonical_json(manifest), run_id])
        written = _store_row_set(conn, dataset_id, ids)
    log.info("cut dataset %s: %d rows from %d teacher(s), %d row entries written",
             dataset_id, len(ids), len(teacher_ids), written)
    return {"dataset_id": dataset_id, "rows": len(ids), "created": True,
            "rows_written": written, **cost}


CHUNK_BOUNDARY = 32  # a chunk ends after a row whose id hashes to 0 modulo this: ~32 rows
CHUNK_MAX = 256


def chunks(ids: list[str]) -> list[list[str]]:
    """`ids` cut where the ids themselves say (content-defined), so two versions that share
    a run of rows share its chunks: appending rows changes only the last chunk."""
    out: list[list[str]] = [[]]
    for rid in ids:
        out[-1].append(rid)
        digest = hashlib.blake2b(rid.encode(), digest_size=4).digest()
        if int.from_bytes(digest) % CHUNK_BOUNDARY == 0 or len(out[-1]) == CHUNK_MAX:
            out.append([])
    return [chunk for chunk in out if chunk]


def _store_row_set(conn: Any, dataset_id: str, ids: list[str]) -> int:
    """Store a version's ordered rows as chunks, writing only chunks no version has yet;
    returns how many row entries were written."""
    pieces = [(content_hash("chunk", chunk), chunk) for chunk in chunks(ids)]
    known = {r[0] for r in conn.execute(
        "SELECT DISTINCT chunk_id FROM row_chunks WHERE chunk_id IN (SELECT unnest(?))",
        [[chunk_id for chunk_id, _ in pieces]]).fetchall()}
    fresh = {chunk_id: chunk for chunk_id, chunk in pieces if chunk_id not in known}
    insert_many(conn, "INSERT INTO row_chunks VALUES (?, ?, ?)",
                [(chunk_id, i, rid) for chunk_id, chunk in fresh.items()
                 for i, rid in enumerate(chunk)])
    starts = list(itertools.accumulate((len(chunk) for _, chunk in pieces), initial=0))[:-1]
    insert_many(conn, "INSERT INTO dataset_chunks VALUES (?, ?, ?, ?)",
                [(dataset_id, seq, chunk_id, start)
                 for seq, ((chunk_id, _), start) in enumerate(zip(pieces, starts, strict=True))])
    return sum(len(chunk) for chunk in fresh.values())


def resolve(catalog: Catalog, ref: str) -> str:
    """A dataset id from `latest`, a full id, a name or an id prefix, in that order.

    A name that several versions carry (a nightly refresh reuses its name) means the newest
    of them, as `latest` does. An id prefix must match exactly one version, and a ref that
    is both a name and a prefix of another version's id is ambiguous too: both are errors
    listing the candidates, never a silent pick."""
    where = f"dataset {ref!r}"
    if not ref:
        raise StillroomError("empty reference; give an id, id prefix, name or 'latest'",
                             where="dataset")
    versions = list_versions(catalog)  # newest first
    if ref == "latest" and versions:
        return versions[0]["dataset_id"]
    if any(v["dataset_id"] == ref for v in versions):
        return ref
    named = [v for v in versions if v["name"] == ref][:1]  # newest first
    prefixed = [v for v in versions if v["dataset_id"].startswith(ref)]
    candidates = named + [v for v in prefixed if v not in named]
    if not candidates:
        raise StillroomError("no such dataset version; see `stillroom dataset list`",
                             where=where)
    if len(candidates) > 1:
        listed = "; ".join(f"{v['dataset_id']} ({v['name'] or 'unnamed'},"
                           f" {v['created_at']:%Y-%m-%d %H:%M:%S})" for v in candidates)
        raise StillroomError(f"ambiguous: {'name and ' if named else ''}id prefix match"
                             f" {len(candidates)} versions: {listed}; give more of the id",
                             where=where)
    return candidates[0]["dataset_id"]


def manifest(catalog: Catalog, dataset_id: str) -> dict[str, Any]:
    return json.loads(catalog.scalar("SELECT manifest FROM datasets WHERE dataset_id = ?",
                                     [dataset_id]))


def load(catalog: Catalog, dataset_id: str) -> Any:
    """The version as a `datasets.Dataset`, in snapshot order: the conversation
    (`messages`: the prompt's own messages, system and earlier turns included, then the
    teacher's answer), `prompt` as the teacher saw it (chat template applied) and its token
    count as the engine counted it (`prompt_tokens`), the response and its tokens, soft labels
    (`topk_ids`, `topk_logprobs`, and `topk_tail`: the teacher's mass outside the top-k per
    token, None for rows stored before it was recorded) and each row's provenance
    (`PROVENANCE_COLUMNS`). `zero_shot_prompt` is the question alone in its template, for
    prompts built from procedural tasks (None otherwise)."""
    import datasets
    import pandas

    table = catalog.frame(VERSION_ROWS_SQL, [dataset_id])
    table["messages"] = [
        [*Prompt(text, source, is_chat).messages, {"role": "assistant", "content": response}]
        for text, source, is_chat, response in zip(
            table.pop("prompt_text"), table.pop("source"), table.pop("is_chat"),
            table["response"], strict=True)]
    decoded = [soft_labels.decode_labels(None if pandas.isna(blob) else blob)  # NULL: none
               for blob in table.pop("soft_labels")]
    table["topk_ids"] = [labels.ids for labels in decoded]
    table["topk_logprobs"] = [labels.logprobs for labels in decoded]
    table["topk_tail"] = [labels.tail for labels in decoded]
    return datasets.Dataset.from_pandas(table, preserve_index=False)


def export(catalog: Catalog, dataset_id: str, out: Path, fmt: str = "jsonl") -> Path:
    """Write the version as `jsonl` (one conversation a line in TRL's `messages` format,
    with the rendered prompt and provenance: `JSONL_COLUMNS`), or `parquet` or `hf`
    (`save_to_disk`) with every column of `load`. The rendered prompt is exported as
    `rendered_prompt` so nobody mistakes it for the prompt to template again."""
    if fmt not in ("jsonl", "parquet", "hf"):
        raise StillroomError(f"unknown format {fmt!r}; use jsonl, parquet or hf",
                             where="--format")
    data = load(catalog, dataset_id).rename_column("prompt", "rendered_prompt")
    out.mkdir(parents=True, exist_ok=True)
    if fmt == "hf":
        path = _publish(out, "hf", lambda staging: data.save_to_disk(str(staging)))
    elif fmt == "parquet":
        path = _publish(out, "data.parquet", lambda staging: data.to_parquet(str(staging)))
    else:
        def write_jsonl(staging: Path) -> None:
            with staging.open("w", encoding="utf-8") as f:
                for row in data.select_columns(list(JSONL_COLUMNS)):
                    f.write(json.dumps(row, ensure_ascii=False) + "\n")
        path = _publish(out, "data.jsonl", write_jsonl)
    text = json.dumps(manifest(catalog, dataset_id), indent=2)
    _publish(out, "manifest.json", lambda staging: staging.write_text(text))
    return path


def _publish(out: Path, name: str, write: Callable[[Path], Any]) -> Path:
    """Write `out/name` under a temporary name beside it, then rename it into place: an
    export that fails or is killed part-way leaves the previous file or none, never half."""
    final, staging = out / name, out / f".{name}.partial-{os.getpid()}"
    try:
        write(staging)
        if final.is_dir():  # a directory (hf) cannot be renamed over a non-empty one
            shutil.rmtree(final)
        os.replace(staging, final)
    finally:
        if staging.is_dir():
            shutil.rmtree(staging)
        elif staging.exists():
            staging.unlink()
    return final


def diff(catalog: Catalog, a: str, b: str, examples: int = 5) -> dict[str, Any]:
    """What changed from version `a` to version `b`: rows, sources, config and teachers."""
    ids = {ref: resolve(catalog, ref) for ref in (a, b)}
    rows = catalog.rows(
        "SELECT d.dataset_id, d.response_id, p.source,"
        " coalesce(json_extract_string(p.reference, '$.question'), p.text) AS prompt"
        " FROM dataset_rows d JOIN responses r USING (response_id) JOIN prompts p"
        "  USING (prompt_id) WHERE d.dataset_id IN (?, ?) ORDER BY d.position",
        [ids[a], ids[b]])
    members = {ids[a]: {}, ids[b]: {}}
    for row in rows:
        members[row["dataset_id"]][row["response_id"]] = row
    left, right = members[ids[a]], members[ids[b]]
    added = [right[r] for r in right if r not in left]
    removed = [left[r] for r in left if r not in right]
    manifests = {ref: manifest(catalog, dataset_id) for ref, dataset_id in ids.items()}
    config = {key: {"a": manifests[a]["config"].get(key), "b": manifests[b]["config"].get(key)}
              for key in sorted({*manifests[a]["config"], *manifests[b]["config"]})
              if manifests[a]["config"].get(key) != manifests[b]["config"].get(key)}
    teachers = {ref: sorted(f"{t['name']}@{t['revision'] or '-'}" for t in m["teachers"])
                for ref, m in manifests.items()}

    def by_source(group: list[dict]) -> dict[str, int]:
        counts: dict[str, int] = {}
        for row in group:
            counts[row["source"]] = counts.get(row["source"], 0) + 1
        return counts

    return {"a": ids[a], "b": ids[b], "rows": {"a": len(left), "b": len(right)},
            "added": len(added), "removed": len(removed),
            "unchanged": len(set(left) & set(right)),
            "added_by_source": by_source(added), "removed_by_source": by_source(removed),
            "config_changes": config,
            "teachers": teachers if teachers[a] != teachers[b] else "unchanged",
            "added_examples": [r["prompt"][:120] for r in added[:examples]],
            "removed_examples": [r["prompt"][:120] for r in removed[:examples]]}


def list_versions(catalog: Catalog) -> list[dict[str, Any]]:
    """Every version, newest first."""
    if not catalog.path.exists():
        return []
    return catalog.rows("SELECT dataset_id, name, n_rows, created_at FROM datasets"
                        " ORDER BY created_at DESC, dataset_id")


def default_export_dir(dataset_id: str) -> Path:
    return settings.datasets_dir() / dataset_id
