"""The diversity report's measures on inputs whose values are worked out by hand."""

from __future__ import annotations

import numpy as np
import pytest

from stillroom.tasks.diversity import balance, coverage, distinct_n


@pytest.mark.parametrize("texts, n, expected", [
    # unigrams: the cat sat the cat ran -> 4 distinct of 6
    (["the cat sat", "The CAT ran"], 1, 0.6667),
    # bigrams: (the cat) (cat sat) (the cat) (cat ran) -> 3 of 4
    (["the cat sat", "The CAT ran"], 2, 0.75),
    # n-grams never span two texts: (a b) (c d) -> 2 of 2, not 3 with (b c)
    (["a b", "c d"], 2, 1.0),
    (["a a a a"], 1, 0.25),
    (["a a a a"], 2, 0.3333),          # (a a) three times
    (["one", "two words"], 3, None),  # no text has three words
    ([], 1, None),
])
def test_distinct_n(texts: list[str], n: int, expected: float | None) -> None:
    assert distinct_n(texts, n) == expected


@pytest.mark.parametrize("labels, counts, evenness", [
    (["a", "b", "a", "b"], {"a": 2, "b": 2}, 1.0),
    # H = -(3/4 ln 3/4 + 1/4 ln 1/4) = 0.5623; / ln 2 = 0.8113
    (["a", "a", "a", "b"], {"a": 3, "b": 1}, 0.8113),
    # H = 1/2 ln 2 + 2 * 1/4 ln 4 = 1.0397; / ln 3 = 0.9464
    (["x", "y", "x", "z"], {"x": 2, "y": 1, "z": 1}, 0.9464),
    (["only", "only"], {"only": 2}, 1.0),   # one label: nothing to be uneven about
])
def test_balance(labels: list[str], counts: dict[str, int], evenness: float) -> None:
    result = balance(labels)
    assert result == {"counts": counts, "evenness": evenness}
    assert list(result["counts"]) == sorted(counts, key=lambda k: -counts[k])  # largest first


def groups(*sizes: int) -> np.ndarray:
    """`sizes[i]` copies of the i-th unit basis vector: clusters k-means cannot get wrong."""
    return np.concatenate([np.tile(np.eye(8, dtype=np.float32)[i], (size, 1))
                           for i, size in enumerate(sizes)])


@pytest.mark.parametrize("vectors, expected", [
    # 8 rows -> k = round(sqrt(8 / 2)) = 2; two even clusters: exp(ln 2) = 2 effective
    (groups(4, 4), {"k": 2, "effective_clusters": 2.0, "coverage": 1.0,
                    "largest_cluster_share": 0.5}),
    # shares 3/4, 1/4: exp(0.5623) = 1.7548 effective, / 2 = 0.8774
    (groups(6, 2), {"k": 2, "effective_clusters": 1.75, "coverage": 0.8774,
                    "largest_cluster_share": 0.75}),
    # every row the same: one cluster of k = 2 used
    (groups(8), {"k": 2, "effective_clusters": 1.0, "coverage": 0.5,
                 "largest_cluster_share": 1.0}),
    # 18 rows -> k = round(sqrt(9)) = 3, three even clusters
    (groups(6, 6, 6), {"k": 3, "effective_clusters": 3.0, "coverage": 1.0,
                       "largest_cluster_share": 0.3333}),
    # 18 rows in two clusters of k = 3: exp(ln 2) / 3
    (groups(9, 9), {"k": 3, "effective_clusters": 2.0, "coverage": 0.6667,
                    "largest_cluster_share": 0.5}),
    (groups(1), {"k": 1, "effective_clusters": 1.0, "coverage": 1.0,
                 "largest_cluster_share": 1.0}),
])
def test_coverage(vectors: np.ndarray, expected: dict) -> None:
    assert coverage(vectors) == expected
