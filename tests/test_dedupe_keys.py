"""What dedupe persists is keyed by everything that determines it: per-stage verdict keys,
signatures by the shingling rules, embeddings by the encoder's files and the embedded text."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import NamedTuple

import duckdb
import numpy as np
import pytest
from rows import add_rows
from test_dedupe import edited, paragraph

from stillroom import schema
from stillroom.catalog import Catalog
from stillroom.tasks import datasets, dedupe, diversity, embeddings, minhash
from stillroom.tasks.curation import CurationConfig, curate
from stillroom.tasks.teachers import add_teacher

NEAR = {"exact": {}, "near": {}}
EMPTY = {"empty": {}}


def counts(catalog: Catalog) -> dict[str, int]:
    return {r["stage"]: r["n"] for r in catalog.rows(
        "SELECT stage, count(*) AS n FROM verdicts GROUP BY stage")}


def test_changing_only_the_semantic_threshold_rejudges_only_semantic(catalog: Catalog) -> None:
    add_rows(catalog, [
        {"question": "What is the capital of France?", "response": "Paris is the capital."},
        {"question": "What's the capital city of France?", "response": "Paris is the capital."},
        {"question": "Write a note.", "response": paragraph(1)},
        {"question": "Write a note.", "response": edited(paragraph(1))},
        {"question": "Write a note.", "response": paragraph(1).replace(" ", "  ", 3)}])
    first = curate(catalog, CurationConfig({"empty": {}}, {**NEAR, "semantic": {}}), "night-1")
    assert first["dedupe"]["exact"] == {"judged": 5, "dropped": 1}
    assert first["dedupe"]["near"] == {"judged": 4, "dropped": 1}
    before = counts(catalog)
    stricter = CurationConfig({"empty": {}}, {**NEAR, "semantic": {"threshold": 0.99}})
    second = curate(catalog, stricter, "night-2")["dedupe"]
    assert second["exact"] == second["near"] == {"judged": 0, "dropped": 0}  # verdicts kept
    assert second["semantic"]["judged"] == 3  # what near kept, judged again under 0.99
    after = counts(catalog)
    assert after["dedupe:exact"] == before["dedupe:exact"]
    assert after["dedupe:near"] == before["dedupe:near"]
    assert after["dedupe:semantic"] == 2 * before["dedupe:semantic"]
    # And changing an earlier stage re-judges everything after it.
    looser_near = CurationConfig({"empty": {}}, {"exact": {}, "near": {"threshold": 0.7},
                                                 "semantic": {"threshold": 0.99}})
    third = curate(catalog, looser_near, "night-3")["dedupe"]
    assert third["exact"]["judged"] == 0 and third["near"]["judged"] == 4
    assert third["semantic"]["judged"] == 3


def test_shingling_rules_and_parameters_key_the_signatures(
        catalog: Catalog, monkeypatch: pytest.MonkeyPatch) -> None:
    add_rows(catalog, [{"question": f"Write note {i}.", "response": paragraph(i)}
                       for i in range(3)])

    def keys() -> int:
        return catalog.scalar("SELECT count(DISTINCT params_hash) FROM minhash_signatures")

    assert curate(catalog, CurationConfig(EMPTY, NEAR), "run")["dedupe"]["near"]["judged"] == 3
    assert curate(catalog, CurationConfig(EMPTY, NEAR), "run")["dedupe"]["near"]["judged"] == 0
    assert keys() == 1
    monkeypatch.setattr(minhash, "SENTENCE_PUNCTUATION", minhash.SENTENCE_PUNCTUATION + "-")
    assert curate(catalog, CurationConfig(EMPTY, NEAR), "run")["dedupe"]["near"]["judged"] == 3
    assert keys() == 2
    monkeypatch.setattr(minhash, "SHINGLING_VERSION", minhash.SHINGLING_VERSION + 1)
    curate(catalog, CurationConfig(EMPTY, NEAR), "run")
    assert keys() == 3
    monkeypatch.setattr(dedupe, "SUBJECT_KEY", "another definition of the text")
    curate(catalog, CurationConfig(EMPTY, NEAR), "run")
    assert keys() == 4
    for params in ({"ngram": 4}, {"seed": 2}, {"bands": 10, "rows": 10}):
        result = curate(catalog, CurationConfig(EMPTY, {"near": params}), "run")["dedupe"]
        assert result["near"]["judged"] == 3
    assert keys() == 7
    assert catalog.scalar("SELECT count(*) FROM minhash_signatures") == 21
    # The threshold changes verdicts, not signatures.
    curate(catalog, CurationConfig(EMPTY, {"near": {"seed": 2, "threshold": 0.9}}), "run")
    assert keys() == 7


def test_curation_without_filters_dedupes_and_cuts(catalog: Catalog) -> None:
    teacher = add_teacher(catalog, "t", "org/model", "apache-2.0")
    ids = add_rows(catalog, [{"question": "Say hi.", "response": "Hi!"},
                             {"question": "Say hi.", "response": "hi!"}], teacher.teacher_id)
    config = CurationConfig({}, NEAR)
    assert curate(catalog, config, "run")["dedupe"]["exact"] == {"judged": 2, "dropped": 1}
    kept = datasets.manifest(catalog, datasets.cut(catalog, config)["dataset_id"])["row_ids"]
    assert len(kept) == 1 and kept[0] in ids


class Row(NamedTuple):
    response_id: str
    subject: str


def tiny_encoder(path: Path, seed: int) -> Path:
    """A one-layer BERT with MiniLM's tokenizer and random weights."""
    import torch
    from transformers import AutoTokenizer, BertConfig, BertModel

    torch.manual_seed(seed)
    config = BertConfig(vocab_size=30522, hidden_size=16, num_hidden_layers=1,
                        num_attention_heads=2, intermediate_size=32)
    BertModel(config).save_pretrained(path)
    AutoTokenizer.from_pretrained(embeddings.default_model()).save_pretrained(path)
    return path


def test_embeddings_are_keyed_by_the_encoders_files_not_its_path(
        catalog: Catalog, tmp_path: Path) -> None:
    first = tiny_encoder(tmp_path / "encoder", seed=0)
    moved = Path(shutil.copytree(first, tmp_path / "reinstalled" / "encoder"))
    other = tiny_encoder(tmp_path / "other", seed=1)
    rows = [Row(f"r{i}", f"text number {i}\nanswer {i}") for i in range(3)]

    def stored() -> int:
        return catalog.scalar("SELECT count(*) FROM embeddings")

    original = embeddings.vectors(catalog, str(first), rows)
    assert original.shape == (3, 16) and stored() == 3
    again = embeddings.vectors(catalog, str(moved), rows)  # the same files elsewhere
    assert stored() == 3 and np.array_equal(again, original)
    different = embeddings.vectors(catalog, str(other), rows)
    assert stored() == 6 and not np.allclose(different, original)
    assert embeddings.embedding_key(str(first)) == embeddings.embedding_key(str(moved))
    assert embeddings.embedding_key(str(first)) != embeddings.embedding_key(str(other))


def test_diversity_embeds_the_same_text_dedupe_did(catalog: Catalog) -> None:
    teacher = add_teacher(catalog, "t", "org/model", "apache-2.0")
    add_rows(catalog, teacher_id=teacher.teacher_id, rows=[
        {"question": "What is the capital of France?", "response": "Paris is the capital."},
        {"question": "What is 12 plus 30?", "response": "42", "answer": "42"},
        {"question": "Name a colour.", "response": "Blue."}])
    config = CurationConfig({"empty": {}}, {"semantic": {}})
    curate(catalog, config, "run")
    assert catalog.scalar("SELECT count(*) FROM embeddings") == 3
    report = diversity.report(catalog, datasets.cut(catalog, config)["dataset_id"])
    assert report["rows"] == 3
    assert catalog.scalar("SELECT count(*) FROM embeddings") == 3  # reused, none recomputed


def test_migration_4_clears_derived_values_stored_under_old_keys(tmp_path: Path) -> None:
    path = tmp_path / "old.duckdb"
    conn = duckdb.connect(str(path))
    schema.current_version(conn)
    for number, ddl in schema.MIGRATIONS:
        if number < 4:
            conn.execute(ddl)
            conn.execute("INSERT INTO schema_version VALUES (?, now())", [number])
    conn.execute("INSERT INTO embeddings VALUES ('r1', '/old/install/path', [0.5, 0.5])")
    conn.execute("INSERT INTO minhash_signatures VALUES ('r1', 'old', '\\x00'::BLOB)")
    conn.execute("INSERT INTO minhash_bands VALUES ('old', 1, 'r1')")
    conn.close()
    catalog = Catalog(path).ensure()
    assert catalog.scalar("SELECT max(version) FROM schema_version") == schema.LATEST_VERSION
    assert {r["column_name"] for r in catalog.rows(
        "SELECT column_name FROM information_schema.columns WHERE table_name = 'embeddings'")
            } == {"response_id", "embedding_key", "vector"}
    for table in ("embeddings", "minhash_signatures", "minhash_bands"):
        assert catalog.scalar(f"SELECT count(*) FROM {table}") == 0
