"""Dedupe stages: exact, near-duplicate (MinHash-LSH) and semantic (MiniLM), in that order.

Each stage judges the rows every filter and every earlier stage kept, and only
those it has not judged yet under the same config, so a nightly refresh does the
new rows' work. Rows already kept stay representatives forever (verdicts are
never revised, so earlier dataset versions stay reproducible). Among new rows
the representative of a cluster is chosen by one documented rule, the order in
which rows are judged:

1. verified rows first (their prompt had a reference answer the verifier checked),
2. then complete answers (finish reason `stop`) before cut-off ones,
3. then the shortest response,
4. then the oldest row, then the smallest id.

Every dropped row gets a `verdicts` row with its reason and a `duplicate_links`
row naming its representative and their similarity. What the stages compare is a
row's *subject* (`stillroom.tasks.subject`).

Scope: with `teacher` (the default) rows are compared only with rows of the same
teacher, so clusters never span teachers and a one-teacher dataset cut loses no row
to another teacher's representative; with `all` they are compared across teachers,
and only a cut over every teacher is whole.

Keys: a stage's verdicts are keyed by the filters' hash, the scope and every stage
up to and including it (name, parameters, and the stage's identity: its algorithm
version, the subject's definition, the shingling rules or the encoder's digest).
Changing a later stage re-judges from it on and keeps the verdicts before it.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable
from functools import cached_property, partial
from typing import TYPE_CHECKING, Any, NamedTuple

import numpy as np

from stillroom import inputs
from stillroom.catalog import Catalog, insert_many
from stillroom.errors import StillroomError
from stillroom.eval.metrics import NORMALIZE_VERSION, normalize
from stillroom.hashing import content_hash
from stillroom.tasks.filters import FILTERS, Verdict, write_verdicts
from stillroom.tasks.subject import SUBJECT_KEY, subject_sql

if TYPE_CHECKING:
    from stillroom.tasks.minhash import MinHasher

log = logging.getLogger(__name__)


class Candidate(NamedTuple):
    response_id: str
    subject: str
    label: str | None  # the reference answer: rows with different answers are never duplicates
    group: str = ""  # rows are compared only within a group: their teacher under scope `teacher`


class Match(NamedTuple):
    representative_id: str
    similarity: float


class Kept:
    """The rows a stage kept earlier in one group, as SQL (`sql`, `ids_sql` with `params`),
    loaded into Python only as far as a stage asks: all (`candidates`) or some (`where`)."""

    def __init__(self, catalog: Catalog, sql_where: Callable[[str], str],
                 params: dict[str, Any]) -> None:
        self.catalog, self.sql_where, self.params = catalog, sql_where, params
        self.sql = sql_where("")

    @property
    def ids_sql(self) -> str:
        return f"SELECT response_id FROM ({self.sql})"

    @cached_property
    def candidates(self) -> list[Candidate]:
        return self.where("")

    def where(self, condition: str, **params: Any) -> list[Candidate]:
        """Those kept rows that also meet `condition` (SQL on alias `c`), in judging order."""
        sql = self.sql_where(condition)
        rows = self.catalog.rows(sql, sql_params(sql, {**self.params, **params}))
        return [Candidate(r["response_id"], r["subject"], r["label"], r["grp"]) for r in rows]


StageFn = Callable[[Catalog, Kept, list[Candidate]], list[Match | None]]


class Stage(NamedTuple):
    judge: StageFn
    identity: dict[str, Any]  # what its verdicts depend on besides its parameters


STAGES: dict[str, Callable[..., Stage]] = {}
SCOPES = ("teacher", "all")
DEFAULT_SCOPE = "teacher"


def stage(name: str) -> Callable:
    def decorate(factory: Callable[..., Stage]) -> Callable[..., Stage]:
        STAGES[name] = factory
        return factory
    return decorate


def stage_name(name: str) -> str:
    return f"dedupe:{name}"


def check_scope(scope: str) -> str:
    if scope not in SCOPES:
        raise StillroomError(f"unknown scope {scope!r}; use {' or '.join(SCOPES)}",
                             where="dedupe.scope")
    return scope


def stage_keys(fhash: str, config: dict[str, dict[str, Any]],
               scope: str = DEFAULT_SCOPE) -> dict[str, str]:
    """Each stage's verdict key, in pipeline order: the filters' hash, the scope, and the
    stages up to and including it (name, parameters, identity)."""
    keys, prefix = {}, []
    for name, built in build(config).items():
        prefix.append([name, config[name] or {}, built.identity])
        keys[name] = content_hash("dedupe", fhash, check_scope(scope), prefix)
    return keys


def config_hash(fhash: str, config: dict[str, dict[str, Any]],
                scope: str = DEFAULT_SCOPE) -> str:
    """The whole dedupe config's hash: the last stage's verdict key."""
    keys = stage_keys(fhash, config, scope)
    return list(keys.values())[-1] if keys else content_hash("dedupe", fhash, scope, [])


def kept_by_filters_sql(filter_names: list[str], last_stage: str | None = None) -> str:
    """Responses every named filter kept and, if `last_stage` is named, that dedupe stage
    kept under `$dkey`. Each filter and stage judged only what those before it kept, so the
    last one's keep under its key (which covers all before it: `$fhash` for the last
    filter) says all of them kept the row."""
    unknown = [name for name in filter_names if name not in FILTERS]
    if unknown:
        raise StillroomError(f"unknown filters {unknown}; known: {sorted(FILTERS)}",
                             where="filters")
    conditions = [
        f"EXISTS (SELECT 1 FROM verdicts v WHERE v.response_id = r.response_id"
        f" AND v.stage = 'filter:{name}' AND v.config_hash = $fhash AND v.keep)"
        for name in filter_names[-1:]]
    if last_stage is not None:
        conditions.append(
            f"EXISTS (SELECT 1 FROM verdicts v WHERE v.response_id = r.response_id"
            f" AND v.stage = '{stage_name(last_stage)}' AND v.config_hash = $dkey AND v.keep)")
    return f"SELECT r.* FROM responses r WHERE {' AND '.join(conditions) or 'TRUE'}"


def sql_params(sql: str, values: dict[str, Any]) -> dict[str, Any]:
    """The named parameters `sql` uses (DuckDB refuses unused ones)."""
    return {name: values[name] for name in set(re.findall(r"\$(\w+)", sql))}


# The representative rule (module docstring) as an ORDER BY.
_JUDGING_ORDER = ("ORDER BY (p.reference IS NULL), (c.finish_reason IS DISTINCT FROM 'stop'),"
                  " length(c.text), c.created_at, c.response_id")


def _candidates_sql(filter_names: list[str], previous: str | None, name: str, scope: str,
                    decided: bool, condition: str = "") -> str:
    """Rows kept so far that this stage has (decided) or has not yet (not decided) judged
    under `$key`, in judging order; decided ones are only those it kept in `$group`, and
    meeting `condition` where one is given."""
    verdict = (f"EXISTS (SELECT 1 FROM verdicts v WHERE v.response_id = c.response_id"
               f" AND v.stage = '{stage_name(name)}' AND v.config_hash = $key"
               + (" AND v.keep)" if decided else ")"))
    group = "c.teacher_id" if scope == "teacher" else "''"
    in_group = f" AND {group} = $group" if decided else ""
    in_group += f" AND ({condition})" if condition else ""
    return (f"SELECT c.response_id, {subject_sql('p', 'c')} AS subject,"
            f" json_extract_string(p.reference, '$.answer') AS label, {group} AS grp"
            f" FROM ({kept_by_filters_sql(filter_names, previous)}) c JOIN prompts p"
            f" USING (prompt_id) WHERE {'' if decided else 'NOT '}{verdict}{in_group}"
            f" {_JUDGING_ORDER}")


def subject_hash_key() -> str:
    """What a stored normalised-subject hash depends on: the subject's definition and the
    normalisation (which rows it is compared with is the verdicts' business, not the hash's)."""
    return content_hash("exact-subject", SUBJECT_KEY, NORMALIZE_VERSION)


def _store_subject_hashes(catalog: Catalog, rows: list[Candidate]) -> list[str]:
    """Hash `rows`' normalised subjects and store the hashes (each row is hashed once)."""
    hashes = [content_hash(normalize(c.subject)) for c in rows]
    with catalog.write() as conn:
        insert_many(conn, "INSERT OR IGNORE INTO subject_hashes VALUES (?, ?, ?)",
                    [(c.response_id, subject_hash_key(), h)
                     for c, h in zip(rows, hashes, strict=True)])
    return hashes


@stage("exact")
def exact() -> Stage:
    """Same normalised subject (case, width and whitespace ignored).

    Only the new rows are hashed; their hashes are matched with the stored hashes of the
    rows kept earlier by one SQL join (rows judged before hashes were stored get theirs
    stored the first time they are needed)."""
    def judge(catalog: Catalog, kept: Kept, new: list[Candidate]) -> list[Match | None]:
        key = subject_hash_key()
        params = {**sql_params(kept.sql, kept.params), "hkey": key}
        unhashed_sql = (f"SELECT c.* FROM ({kept.sql}) c WHERE NOT EXISTS (SELECT 1 FROM"
                        " subject_hashes h WHERE h.response_id = c.response_id"
                        " AND h.hash_key = $hkey)")
        unhashed = catalog.rows(unhashed_sql, params)
        if unhashed:
            _store_subject_hashes(catalog, [Candidate(r["response_id"], r["subject"], r["label"],
                                                      r["grp"]) for r in unhashed])
        hashes = _store_subject_hashes(catalog, new)
        seen = {r["hash"]: r["response_id"] for r in catalog.rows(
            f"SELECT h.hash, min(h.response_id) AS response_id FROM subject_hashes h"
            f" WHERE h.hash_key = $hkey AND h.hash IN (SELECT unnest($hashes))"
            f" AND h.response_id IN ({kept.ids_sql}) GROUP BY h.hash",
            {**params, "hashes": sorted(set(hashes))})}
        matches: list[Match | None] = []
        for c, h in zip(new, hashes, strict=True):
            matches.append(Match(seen[h], 1.0) if h in seen else None)
            seen.setdefault(h, c.response_id)
        return matches
    return Stage(judge, {"version": 1, "subject": SUBJECT_KEY, "normalize": NORMALIZE_VERSION})


@stage("near")
def near(ngram: int = 5, bands: int = 20, rows: int = 5, threshold: float = 0.65,
         seed: int = 1) -> Stage:
    """MinHash-LSH over word n-grams (see `stillroom.tasks.minhash` for the parameters).

    Signatures and band keys are persisted per row; a new row is compared only with
    earlier kept rows that share a band with it, fetched by one join.
    """
    from stillroom.tasks.minhash import MinHasher, MinHashParams, NearDupIndex, per_text

    for field, value in (("ngram", ngram), ("bands", bands), ("rows", rows)):
        inputs.whole_number(value, f"dedupe.near.{field}", minimum=1)
    inputs.real_number(threshold, "dedupe.near.threshold", maximum=1, positive=True)
    inputs.whole_number(seed, "dedupe.near.seed", minimum=0)
    hasher = MinHasher(MinHashParams(ngram, bands, rows, threshold, seed))
    phash = signature_key(hasher)

    def judge(catalog: Catalog, kept: Kept, new: list[Candidate]) -> list[Match | None]:
        shingles, counts = hasher.shingles([c.subject for c in new])
        fresh = _signatures(catalog, hasher, new, shingles, counts)
        # Only kept rows sharing a band with a new one are loaded (in judging order).
        old_rows = kept.where(
            "c.response_id IN (SELECT e.response_id FROM minhash_bands e"
            " JOIN minhash_bands n ON n.params_hash = e.params_hash AND n.band_key = e.band_key"
            " WHERE e.params_hash = $p AND n.response_id IN (SELECT unnest($new)))",
            p=phash, new=[c.response_id for c in new])
        signatures = {r["response_id"]: r["signature"] for r in catalog.rows(
            "SELECT response_id, signature FROM minhash_signatures WHERE params_hash = ?"
            " AND response_id IN (SELECT unnest(?))", [phash, [c.response_id for c in old_rows]])}
        old_rows = [c for c in old_rows if c.response_id in signatures]
        index = NearDupIndex(hasher)
        if old_rows:  # kept rows sharing a band with a new one: re-shingled to confirm matches
            old = np.stack([np.frombuffer(signatures[c.response_id], np.uint32)
                            for c in old_rows])
            old_shingles = per_text(*hasher.shingles([c.subject for c in old_rows]))
            for c, text_shingles, keys in zip(old_rows, old_shingles,
                                              hasher.band_keys(old).tolist(), strict=True):
                index.insert(c.response_id, text_shingles, keys, c.label)
        found = index.add_signatures([c.response_id for c in new], fresh,
                                     per_text(shingles, counts), [c.label for c in new])
        return [Match(*m) if m else None for m in found]
    # Version 2: matches are confirmed by the shingle sets' Jaccard, not the estimate.
    return Stage(judge, {"version": 2, "signatures": phash})


def signature_key(hasher: MinHasher) -> str:
    """A persisted signature's key: the shingling rules and parameters, and the signed text."""
    return content_hash("near", hasher.params.signature_hash, SUBJECT_KEY)


def _signatures(catalog: Catalog, hasher: MinHasher, rows: list[Candidate],
                shingles: np.ndarray, counts: np.ndarray) -> np.ndarray:
    """The rows' signatures: read where all are persisted, else computed from their
    shingles, with the missing ones stored along with their band keys."""
    phash = signature_key(hasher)
    ids = [c.response_id for c in rows]
    stored = {r["response_id"]: r["signature"] for r in catalog.rows(
        "SELECT response_id, signature FROM minhash_signatures WHERE params_hash = ?"
        " AND response_id IN (SELECT unnest(?))", [phash, ids])}
    if len(stored) == len(ids):
        return np.stack([np.frombuffer(stored[rid], np.uint32) for rid in ids])
    signatures = hasher.signatures_of(shingles, counts)
    missing = [i for i, rid in enumerate(ids) if rid not in stored]
    keys = hasher.band_keys(signatures[missing])
    missing_ids = [ids[i] for i in missing]
    with catalog.write() as conn:
        insert_many(conn, "INSERT OR IGNORE INTO minhash_signatures VALUES (?, ?, ?)",
                    [(rid, phash, signatures[i].tobytes()) for rid, i in zip(missing_ids, missing,
                                                                             strict=True)])
        band_rows = {"params_hash": [phash] * keys.size, "band_key": keys.ravel(),
                     "response_id": np.repeat(np.array(missing_ids, dtype=object), keys.shape[1])}
        import pyarrow as pa

        batch = pa.table(band_rows)  # noqa: F841 (scanned below)
        conn.execute("INSERT INTO minhash_bands SELECT * FROM batch")
    return signatures


@stage("semantic")
def semantic(threshold: float = 0.95, min_content_overlap: float = 0.8,
             model: str | None = None) -> Stage:
    """MiniLM cosine at or above `threshold`, confirmed by a content-word check.

    Template-alike texts (one template, different numbers or names) embed above 0.9
    like paraphrases do; a pair is confirmed only if both carry the same numbers and
    operators and one's content words (stopwords dropped) are at least
    `min_content_overlap` contained in the other's. Embeddings are persisted per row and model.
    """
    from stillroom.tasks import embeddings

    inputs.real_number(threshold, "dedupe.semantic.threshold", maximum=1, positive=True)
    inputs.real_number(min_content_overlap, "dedupe.semantic.min_content_overlap",
                       minimum=0, maximum=1)
    if model is not None:
        inputs.text(model, "dedupe.semantic.model")
    model_path = model or embeddings.default_model()

    def judge(catalog: Catalog, kept: Kept, new: list[Candidate]) -> list[Match | None]:
        ekey = {"ekey": embeddings.embedding_key(model_path)}
        unembedded = kept.where("NOT EXISTS (SELECT 1 FROM embeddings e WHERE e.response_id"
                                " = c.response_id AND e.embedding_key = $ekey)", **ekey)
        embeddings.vectors(catalog, model_path, unembedded)  # stored for the fetch below
        new_vectors = embeddings.vectors(catalog, model_path, new)
        kept_ids, kept_vectors = embeddings.stored_vectors(
            catalog, model_path, kept.ids_sql, sql_params(kept.ids_sql, kept.params))
        # Only kept rows close to some new row can represent one: load just those.
        close = [rid for rid, near in zip(
            kept_ids, (kept_vectors @ new_vectors.T >= threshold).any(axis=1) if kept_ids else [],
            strict=True) if near]
        reps = kept.where("c.response_id IN (SELECT unnest($close))", close=close) if close else []
        at = {rid: i for i, rid in enumerate(kept_ids)}
        rep_vectors = np.empty((len(reps) + len(new), new_vectors.shape[1]), np.float32)
        if reps:
            rep_vectors[:len(reps)] = kept_vectors[[at[c.response_id] for c in reps]]
        matches: list[Match | None] = []
        for c, v in zip(new, new_vectors, strict=True):
            scores = rep_vectors[:len(reps)] @ v
            close_reps = np.flatnonzero(scores >= threshold)
            match = next((Match(reps[i].response_id, float(scores[i]))
                          for i in close_reps[np.argsort(-scores[close_reps], kind="stable")]
                          if (c.label is None or reps[i].label in (None, c.label))
                          and embeddings.same_content(c.subject, reps[i].subject,
                                                      min_content_overlap)), None)
            matches.append(match)
            if match is None:
                rep_vectors[len(reps)] = v
                reps.append(c)
        return matches
    try:
        key = embeddings.embedding_key(model_path)
    except StillroomError as exc:  # point at the config when the model was named there
        raise StillroomError(exc.message, where="dedupe.semantic" if model else exc.where
                             ) from exc
    return Stage(judge, {"version": 1, "embeddings": key})


DEFAULT_DEDUPE: dict[str, dict[str, Any]] = {"exact": {}, "near": {}, "semantic": {}}


def build(config: dict[str, dict[str, Any]]) -> dict[str, Stage]:
    """Instantiate stages by name, in pipeline order, with a clear error for bad ones."""
    built = {}
    for name, params in config.items():
        if name not in STAGES:
            raise StillroomError(f"unknown dedupe stage {name!r}; known: {', '.join(STAGES)}",
                                 where=f"dedupe.{name}")
        try:
            built[name] = STAGES[name](**(params or {}))
        except TypeError as exc:
            raise StillroomError(f"bad parameters {params}: {exc}",
                                 where=f"dedupe.{name}") from exc
    order = list(STAGES)
    return dict(sorted(built.items(), key=lambda item: order.index(item[0])))


def dedupe(catalog: Catalog, filter_names: list[str], hashes: dict[str, str],
           config: dict[str, dict[str, Any]], run_id: str,
           scope: str = DEFAULT_SCOPE) -> dict[str, Any]:
    """Run every configured stage over the rows it has not judged; returns drop counts."""
    stages = build(config)
    keys = stage_keys(hashes["fhash"], config, scope)
    counts: dict[str, Any] = {}
    previous: str | None = None
    for name, built in stages.items():
        params = {"fhash": hashes["fhash"], "dkey": keys.get(previous), "key": keys[name]}
        new_sql = _candidates_sql(filter_names, previous, name, scope, decided=False)
        new = [Candidate(r["response_id"], r["subject"], r["label"], r["grp"])
               for r in catalog.rows(new_sql, sql_params(new_sql, params))]
        dropped = 0
        if new:
            kept_sql = partial(_candidates_sql, filter_names, previous, name, scope, True)
            matches = _judge_within_groups(catalog, built.judge, kept_sql, params, new)
            _record(catalog, name, keys[name], run_id, new, matches)
            dropped = sum(m is not None for m in matches)
        counts[name] = {"judged": len(new), "dropped": dropped}
        previous = name
    log.info("dedupe: %s", ", ".join(f"{k} dropped {v['dropped']} of {v['judged']}"
                                     for k, v in counts.items()))
    return counts


def _judge_within_groups(catalog: Catalog, judge: StageFn, kept_sql: Callable[[str], str],
                         params: dict[str, Any], new: list[Candidate]) -> list[Match | None]:
    """Judge each group's new rows against that group's kept rows only (clusters never
    span groups); groups without new rows are not looked at."""
    positions: dict[str, list[int]] = {}
    for i, c in enumerate(new):
        positions.setdefault(c.group, []).append(i)
    matches: list[Match | None] = [None] * len(new)
    for group, members in positions.items():
        kept = Kept(catalog, kept_sql, {**params, "group": group})
        found = judge(catalog, kept, [new[i] for i in members])
        for i, match in zip(members, found, strict=True):
            matches[i] = match
    return matches


def _record(catalog: Catalog, name: str, dhash: str, run_id: str, rows: list[Candidate],
            matches: list[Match | None]) -> None:
    verdicts = [(c.response_id, Verdict(True) if m is None else Verdict(
        False, f"{name} duplicate of {m.representative_id} (similarity {m.similarity:.2f})"))
        for c, m in zip(rows, matches, strict=True)]
    links = [(c.response_id, stage_name(name), dhash, m.representative_id, m.similarity)
             for c, m in zip(rows, matches, strict=True) if m is not None]
    write_verdicts(catalog, stage_name(name), dhash, run_id, verdicts, links)


def clusters(catalog: Catalog, representative_id: str) -> list[dict[str, Any]]:
    """The rows dropped in favour of one representative, by any stage."""
    return catalog.rows("SELECT response_id, stage, similarity FROM duplicate_links"
                        " WHERE representative_id = ? ORDER BY stage, response_id",
                        [representative_id])
