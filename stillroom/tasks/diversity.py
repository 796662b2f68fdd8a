"""How diverse a dataset version is: lexical (distinct-n), semantic (MiniLM clusters) and
balance across sources and topics. One report per version, stored in the catalog.

- distinct-n: unique word n-grams / all word n-grams, over prompts and over responses.
- coverage: k-means (k = ~sqrt(rows/2), at most 32) over the rows' MiniLM embeddings
  (the same vectors semantic dedupe stored); `effective_clusters` is exp(entropy) of the
  cluster sizes, so `coverage` = effective / k is 1.0 when the rows spread evenly.
- balance: normalised entropy of the row counts per source and per topic (the grid
  topic, the seed's topic, or the task), 1.0 when perfectly even.
"""

from __future__ import annotations

import json
import math
from collections import Counter
from typing import Any, NamedTuple

import numpy as np

from stillroom.catalog import Catalog
from stillroom.hashing import canonical_json, content_hash
from stillroom.tasks import embeddings
from stillroom.tasks.subject import question_sql, subject_sql


class _Row(NamedTuple):
    response_id: str
    subject: str
    prompt: str
    response: str
    source: str
    topic: str


def distinct_n(texts: list[str], n: int) -> float | None:
    """None when no text has n words (one-token answers have no bigrams to count)."""
    grams = [tuple(words[i:i + n]) for text in texts
             for words in [text.casefold().split()] for i in range(len(words) - n + 1)]
    return round(len(set(grams)) / len(grams), 4) if grams else None


def balance(labels: list[str]) -> dict[str, Any]:
    counts = Counter(labels)
    total = sum(counts.values())
    entropy = -sum(c / total * math.log(c / total) for c in counts.values())
    even = entropy / math.log(len(counts)) if len(counts) > 1 else 1.0
    return {"counts": dict(counts.most_common()), "evenness": round(even, 4)}


def kmeans(vectors: np.ndarray, k: int, iterations: int = 25, seed: int = 0) -> np.ndarray:
    """Cluster labels for unit vectors (cosine k-means, k-means++ seeding)."""
    rng = np.random.default_rng(seed)
    centres = [vectors[rng.integers(len(vectors))]]
    for _ in range(1, k):
        distance = 1 - np.max(vectors @ np.stack(centres).T, axis=1)
        weights = np.clip(distance, 0, None)
        if weights.sum() == 0:
            break
        centres.append(vectors[rng.choice(len(vectors), p=weights / weights.sum())])
    centre_matrix = np.stack(centres)
    for _ in range(iterations):
        labels = np.argmax(vectors @ centre_matrix.T, axis=1)
        for j in range(len(centre_matrix)):
            members = vectors[labels == j]
            if len(members):
                mean = members.mean(axis=0)
                centre_matrix[j] = mean / max(np.linalg.norm(mean), 1e-9)
    return np.argmax(vectors @ centre_matrix.T, axis=1)


def coverage(vectors: np.ndarray) -> dict[str, Any]:
    if len(vectors) < 2:
        return {"k": len(vectors), "effective_clusters": float(len(vectors)), "coverage": 1.0,
                "largest_cluster_share": 1.0}
    k = max(2, min(32, round(math.sqrt(len(vectors) / 2))))
    sizes = np.bincount(kmeans(vectors, k), minlength=k)
    shares = sizes[sizes > 0] / sizes.sum()
    effective = float(np.exp(-(shares * np.log(shares)).sum()))
    return {"k": k, "effective_clusters": round(effective, 2),
            "coverage": round(effective / k, 4),
            "largest_cluster_share": round(float(shares.max()), 4)}


def report(catalog: Catalog, dataset_id: str, model: str | None = None) -> dict[str, Any]:
    """Compute a version's report (not stored; see `store_report`)."""
    rows = [_Row(**r) for r in catalog.rows(
        f"SELECT r.response_id, {subject_sql('p', 'r')} AS subject,"
        f" {question_sql('p')} AS prompt, r.text AS response, p.source,"
        " coalesce(json_extract_string(p.meta, '$.topic'), p.task, 'none') AS topic"
        " FROM dataset_rows d JOIN responses r USING (response_id) JOIN prompts p"
        "  USING (prompt_id) WHERE d.dataset_id = ? ORDER BY d.position", [dataset_id])]
    prompts = list({r.prompt: None for r in rows})
    responses = [r.response for r in rows]
    vectors = embeddings.vectors(catalog, model or embeddings.default_model(), rows)
    return {
        "dataset_id": dataset_id, "rows": len(rows), "distinct_prompts": len(prompts),
        "prompts": {"distinct_1": distinct_n(prompts, 1), "distinct_2": distinct_n(prompts, 2)},
        "responses": {"distinct_1": distinct_n(responses, 1),
                      "distinct_2": distinct_n(responses, 2)},
        "embedding": coverage(vectors),
        "balance": {"source": balance([r.source.split(":")[0] for r in rows]),
                    "topic": balance([r.topic for r in rows])},
    }


def store_report(catalog: Catalog, dataset_id: str, run_id: str) -> dict[str, Any]:
    """Compute and store the version's report (once: a version is immutable)."""
    scope = f"dataset:{dataset_id}"
    existing = catalog.scalar("SELECT report FROM diversity_reports WHERE scope = ?", [scope])
    if existing:
        return json.loads(existing)
    result = report(catalog, dataset_id)
    with catalog.write() as conn:
        conn.execute("INSERT OR IGNORE INTO diversity_reports VALUES (?, ?, ?, ?, now())",
                     [content_hash(scope), scope, canonical_json(result), run_id])
    return result
