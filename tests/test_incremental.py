"""A nightly refresh does its new rows' work: exact dedupe hashes only new rows, stored
vectors come back in one fetch, and a version that adds rows writes only its new chunks."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from rows import add_rows
from test_dedupe import paragraph

from stillroom import schema
from stillroom.catalog import Catalog
from stillroom.tasks import datasets, dedupe, embeddings
from stillroom.tasks.curation import CurationConfig, curate
from stillroom.tasks.teachers import add_teacher

EXACT = CurationConfig({"empty": {}}, {"exact": {}})
NO_DEDUPE = CurationConfig({"empty": {}}, {})


def count_normalize_calls(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Every text exact dedupe normalises (to hash it), recorded."""
    seen: list[str] = []
    real = dedupe.normalize

    def counting(text: str) -> str:
        seen.append(text)
        return real(text)
    monkeypatch.setattr(dedupe, "normalize", counting)
    return seen


def notes(start: int, stop: int) -> list[dict]:
    return [{"question": f"Write note {i}.", "response": paragraph(i, 12)}
            for i in range(start, stop)]


def version_rows(catalog: Catalog, dataset_id: str) -> list[str]:
    """A version's rows as every reader sees them (`dataset_rows`, in position order)."""
    return [r["response_id"] for r in catalog.rows(
        "SELECT response_id FROM dataset_rows WHERE dataset_id = ? ORDER BY position",
        [dataset_id])]


def test_exact_dedupe_hashes_only_the_nights_new_rows(
        catalog: Catalog, monkeypatch: pytest.MonkeyPatch) -> None:
    hashed = count_normalize_calls(monkeypatch)
    night1 = add_rows(catalog, notes(0, 20))
    assert curate(catalog, EXACT, "night-1")["dedupe"]["exact"] == {"judged": 20, "dropped": 0}
    assert len(hashed) == 20
    hashed.clear()
    twin = {"question": "Write note 3.", "response": "  " + paragraph(3, 12).upper() + " "}
    night2 = add_rows(catalog, [twin, *notes(20, 22)])
    assert curate(catalog, EXACT, "night-2")["dedupe"]["exact"] == {"judged": 3, "dropped": 1}
    assert len(hashed) == 3  # tonight's rows, not the 20 kept before
    link = catalog.rows("SELECT representative_id FROM duplicate_links WHERE response_id = ?",
                        [night2[0]])
    assert link == [{"representative_id": night1[3]}]


def test_kept_rows_without_stored_hashes_are_hashed_once_then_matched(
        catalog: Catalog, monkeypatch: pytest.MonkeyPatch) -> None:
    """A catalog whose rows were judged before hashes were stored still finds duplicates."""
    night1 = add_rows(catalog, notes(0, 5))
    curate(catalog, EXACT, "night-1")
    with catalog.write() as conn:
        conn.execute("DELETE FROM subject_hashes")
    hashed = count_normalize_calls(monkeypatch)
    night2 = add_rows(catalog, [{"question": "Write note 2.", "response": paragraph(2, 12) + " "}])
    assert curate(catalog, EXACT, "night-2")["dedupe"]["exact"] == {"judged": 1, "dropped": 1}
    assert len(hashed) == 5 + 1
    assert catalog.scalar("SELECT representative_id FROM duplicate_links WHERE response_id = ?",
                          [night2[0]]) == night1[2]
    hashed.clear()
    add_rows(catalog, notes(5, 6))
    curate(catalog, EXACT, "night-3")
    assert len(hashed) == 1


def test_stored_hashes_are_keyed_by_the_normalisation_version(
        catalog: Catalog, monkeypatch: pytest.MonkeyPatch) -> None:
    add_rows(catalog, notes(0, 3))
    curate(catalog, EXACT, "night-1")
    before = dedupe.subject_hash_key()
    assert {r["hash_key"] for r in catalog.rows("SELECT hash_key FROM subject_hashes")} == {before}
    keys = dedupe.stage_keys("f", EXACT.dedupe)
    monkeypatch.setattr(dedupe, "NORMALIZE_VERSION", 2)
    assert dedupe.subject_hash_key() != before
    assert dedupe.stage_keys("f", EXACT.dedupe) != keys  # so every row is judged again


def test_stored_vectors_come_back_in_one_fetch_in_row_order(
        catalog: Catalog, monkeypatch: pytest.MonkeyPatch) -> None:
    class Row:
        def __init__(self, response_id: str, subject: str) -> None:
            self.response_id, self.subject = response_id, subject

    model = embeddings.default_model()
    first = [Row("a", "The cat sat."), Row("b", "Rivers flow to the sea.")]
    embeddings.vectors(catalog, model, first)
    row_fetches = []
    real_rows = Catalog.rows
    monkeypatch.setattr(Catalog, "rows", lambda self, *a: row_fetches.append(a)
                        or real_rows(self, *a))
    mixed = [first[1], Row("c", "Bread rises in a warm oven."), first[0], first[1]]
    got = embeddings.vectors(catalog, model, mixed)
    assert row_fetches == []  # no row-wise Python fetch of stored vectors
    expected = embeddings.encode([r.subject for r in mixed], model)
    np.testing.assert_allclose(got, expected, atol=1e-5)
    assert got.dtype == np.float32
    assert catalog.scalar("SELECT count(*) FROM embeddings") == 3


def test_a_version_that_adds_rows_writes_only_its_new_chunks(catalog: Catalog) -> None:
    teacher = add_teacher(catalog, "t", "org/model", "apache-2.0").teacher_id
    add_rows(catalog, notes(0, 200), teacher)
    curate(catalog, NO_DEDUPE, "night-1")
    v1 = datasets.cut(catalog, NO_DEDUPE, name="nightly")
    assert v1["rows_written"] == 200
    v1_ids = datasets.manifest(catalog, v1["dataset_id"])["row_ids"]
    added = add_rows(catalog, notes(200, 210), teacher)
    curate(catalog, NO_DEDUPE, "night-2")
    v2 = datasets.cut(catalog, NO_DEDUPE, name="nightly")
    assert v2["rows"] == 210
    # Only the new rows and v1's last (open) chunk are written again.
    assert v2["rows_written"] == 10 + len(datasets.chunks(v1_ids)[-1]) < v2["rows"] // 2
    assert catalog.scalar("SELECT count(*) FROM row_chunks") == 200 + v2["rows_written"]
    v2_ids = datasets.manifest(catalog, v2["dataset_id"])["row_ids"]
    assert v2_ids == v1_ids + sorted(added)  # new rows are newer; ties go by id
    assert version_rows(catalog, v2["dataset_id"]) == v2_ids
    assert version_rows(catalog, v1["dataset_id"]) == v1_ids
    change = datasets.diff(catalog, v1["dataset_id"], v2["dataset_id"])
    assert (change["added"], change["removed"], change["unchanged"]) == (10, 0, 200)


def test_a_version_that_drops_rows_shares_the_chunks_it_keeps(catalog: Catalog) -> None:
    ids = add_rows(catalog, notes(0, 300))
    chunks = datasets.chunks(ids)
    assert len(chunks) > 3
    middle = len(chunks[0]) + 1  # a row inside the second chunk
    with catalog.write() as conn:
        first = datasets._store_row_set(conn, "v1", ids)
        second = datasets._store_row_set(conn, "v2", ids[:middle] + ids[middle + 1:])
    assert first == 300
    assert second <= len(chunks[1]) + len(chunks[2])  # the edited chunk (and its next)
    rows = {d: version_rows(catalog, d) for d in ("v1", "v2")}
    assert rows == {"v1": ids, "v2": ids[:middle] + ids[middle + 1:]}


def test_existing_versions_survive_the_row_storage_migration(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    before = [(n, ddl) for n, ddl in schema.MIGRATIONS if n < 8]
    monkeypatch.setattr(schema, "MIGRATIONS", before)
    old = Catalog(tmp_path / "old.duckdb").ensure()
    ids = add_rows(old, notes(0, 4))
    with old.write() as conn:
        conn.execute("INSERT INTO datasets VALUES ('old', 'legacy', 4, '{}', ?, 'r', now())",
                     ['{"row_ids": []}'])
        for position, rid in enumerate(reversed(ids)):
            conn.execute("INSERT INTO dataset_rows VALUES ('old', ?, ?)", [position, rid])
    monkeypatch.undo()
    migrated = Catalog(old.path).ensure()
    assert migrated.scalar("SELECT max(version) FROM schema_version") == schema.LATEST_VERSION
    assert version_rows(migrated, "old") == list(reversed(ids))


def test_a_night_loads_only_its_new_rows_and_their_near_candidates(
        catalog: Catalog, monkeypatch: pytest.MonkeyPatch) -> None:
    """Exact and near dedupe read into Python only tonight's rows and the kept rows that
    share a MinHash band with them, not every row kept before."""
    near = CurationConfig({"empty": {}}, {"exact": {}, "near": {}})
    night1 = add_rows(catalog, notes(0, 40))
    curate(catalog, near, "night-1")
    loaded: list[str] = []
    real_rows = Catalog.rows

    def counting(self: Catalog, sql: str, params: object = ()) -> list[dict]:
        rows = real_rows(self, sql, params)
        loaded.extend(r.get("response_id", "") for r in rows)
        return rows
    monkeypatch.setattr(Catalog, "rows", counting)
    edited_note = {"question": "Write note 7.", "response": paragraph(7, 12) + " Indeed."}
    night2 = add_rows(catalog, [edited_note, *notes(40, 42)])
    assert curate(catalog, near, "night-2")["dedupe"]["near"] == {"judged": 3, "dropped": 1}
    assert catalog.scalar("SELECT representative_id FROM duplicate_links WHERE response_id = ?",
                          [night2[0]]) == night1[7]
    assert set(loaded) - set(night2) <= {night1[7], ""}  # its representative, nothing else
    assert len(loaded) < 20


def test_semantic_dedupe_loads_only_kept_rows_close_to_tonights(
        catalog: Catalog, monkeypatch: pytest.MonkeyPatch) -> None:
    semantic = CurationConfig({"empty": {}}, {"semantic": {}})
    topics = ["France", "Germany", "Spain", "Italy", "Peru", "Japan", "Kenya", "Chile"]
    capitals = ["Paris", "Berlin", "Madrid", "Rome", "Lima", "Tokyo", "Nairobi", "Santiago"]
    night1 = add_rows(catalog, [{"question": f"What is the capital of {t}?",
                                 "response": f"{c} is the capital."}
                                for t, c in zip(topics, capitals, strict=True)])
    curate(catalog, semantic, "night-1")
    loaded: list[str] = []
    real_rows = Catalog.rows

    def counting(self: Catalog, sql: str, params: object = ()) -> list[dict]:
        rows = real_rows(self, sql, params)
        loaded.extend(r.get("response_id", "") for r in rows if "subject" in r)
        return rows
    monkeypatch.setattr(Catalog, "rows", counting)
    night2 = add_rows(catalog, [
        {"question": "Which city is the capital of France?", "response": "Paris is the capital."},
        {"question": "How do bees make honey?", "response": "From nectar, in the hive."}])
    assert curate(catalog, semantic, "night-2")["dedupe"]["semantic"] == {"judged": 2,
                                                                         "dropped": 1}
    assert catalog.scalar("SELECT representative_id FROM duplicate_links WHERE response_id = ?",
                          [night2[0]]) == night1[0]
    assert set(loaded) - set(night2) <= {night1[0]}  # no other kept row's text was read


def test_semantic_dedupe_embeds_kept_rows_whose_vectors_are_gone(catalog: Catalog) -> None:
    semantic = CurationConfig({"empty": {}}, {"semantic": {}})
    night1 = add_rows(catalog, [
        {"question": "What is the capital of France?", "response": "Paris is the capital."},
        {"question": "How do bees make honey?", "response": "From nectar, in the hive."}])
    curate(catalog, semantic, "night-1")
    with catalog.write() as conn:
        conn.execute("DELETE FROM embeddings")
    night2 = add_rows(catalog, [{"question": "Which city is the capital of France?",
                                 "response": "Paris is the capital."}])
    assert curate(catalog, semantic, "night-2")["dedupe"]["semantic"] == {"judged": 1,
                                                                         "dropped": 1}
    assert catalog.scalar("SELECT representative_id FROM duplicate_links WHERE response_id = ?",
                          [night2[0]]) == night1[0]
    assert catalog.scalar("SELECT count(*) FROM embeddings") == 3
