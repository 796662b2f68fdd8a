"""MinHash signatures and LSH banding, vectorised over whole batches with numpy.

Shingles are word n-grams of the lower-cased text with sentence punctuation blanked,
so whitespace, case and punctuation edits cost nothing (operators are kept). Each word gets a stable
64-bit hash; an n-gram's hash mixes its words' hashes; each of the `bands * rows` permutations is a
multiply-add-shift hash of that (Dietzfelbinger's 2-universal family, no modulo).
A signature row is the minimum over a document's shingles, taken for a whole
chunk of documents at once with `np.minimum.reduceat`.

Defaults: 5-word shingles as in datatrove, but 20 bands x 5 rows (100
permutations) instead of its 14 x 8. A pair becomes a candidate when all rows of
some band agree, with probability 1 - (1 - J^5)^20: 0.50 at Jaccard J = 0.55,
0.88 at 0.65, 0.99 at 0.75, and 1e-5 at J = 0.1 (unrelated text sharing a
boilerplate sentence). A candidate is confirmed when the Jaccard similarity of the
two documents' shingle sets (64-bit shingle hashes: exact up to hash collisions)
reaches `threshold`, 0.65. The signature estimate is not used for that: over 100
permutations its standard deviation is ~0.05 near J = 0.6, so a fifth of template-alike
pairs at J = 0.60-0.65 (bench/dedupe.py's hard negatives) would pass. On bench/dedupe.py's
planted variants (one or two of: ~2% of words edited, adjacent sentences swapped,
case and whitespace noise, 5-15% truncated) 5% of pairs fall below J = 0.7.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass

import numpy as np

from stillroom.errors import StillroomError
from stillroom.hashing import content_hash

_SEPARATOR = "\x1e"  # ASCII record separator: splits texts inside one joined batch
# Sentence punctuation only: operators, brackets and signs carry meaning ("7 - 0" != "7 + 0").
SENTENCE_PUNCTUATION = ".,;:!?\"'`"
_PUNCTUATION = bytes.maketrans(SENTENCE_PUNCTUATION.encode(), b" " * len(SENTENCE_PUNCTUATION))
_MIX = np.uint64(0x9E3779B97F4A7C15)  # odd 64-bit constant that spreads word hashes
# Bump whenever normalisation, word splitting, word hashing, shingle mixing or the
# permutations change: it is part of every persisted signature's key.
SHINGLING_VERSION = 2
_CHUNK_SHINGLES = 4_000  # (shingles x permutations) block small enough to stay in cache


@dataclass(frozen=True)
class MinHashParams:
    ngram: int = 5
    bands: int = 20
    rows: int = 5
    threshold: float = 0.65
    seed: int = 1

    def __post_init__(self) -> None:
        where = "dedupe.near"
        if self.ngram < 1 or self.bands < 1 or self.rows < 1:
            raise StillroomError("ngram, bands and rows must be >= 1", where=where)
        if not 0 < self.threshold <= 1:
            raise StillroomError(f"threshold {self.threshold} must be in (0, 1]", where=where)

    @property
    def num_perm(self) -> int:
        return self.bands * self.rows

    @property
    def signature_hash(self) -> str:
        """What a signature of a given text depends on: the shingling rules (their version
        and the punctuation they blank) and the parameters, but not the threshold."""
        return content_hash("minhash", SHINGLING_VERSION, SENTENCE_PUNCTUATION, self.ngram,
                            self.bands, self.rows, self.seed)

    def as_dict(self) -> dict:
        return asdict(self)


class MinHasher:
    """Signatures (uint32, one row per document) and LSH band keys for batches of texts."""

    def __init__(self, params: MinHashParams | None = None) -> None:
        self.params = params or MinHashParams()
        rng = np.random.default_rng(self.params.seed)
        n = self.params.num_perm
        self._a = rng.integers(1, 2**63, size=n, dtype=np.uint64) * np.uint64(2) + np.uint64(1)
        self._b = rng.integers(0, 2**63, size=n, dtype=np.uint64)
        self._band_mix = rng.integers(1, 2**63, size=self.params.rows, dtype=np.uint64)

    def shingles(self, texts: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
        """Hashes of every text's word n-grams, flat, and how many belong to each text.

        A text shorter than n words is one shingle of all its words (an empty one, of none).
        """
        words, lengths = _word_hashes(texts)
        n = self.params.ngram
        doc_of_word = np.repeat(np.arange(len(texts)), lengths)
        starts = np.arange(max(len(words) - n + 1, 0))
        whole = doc_of_word[starts] == doc_of_word[starts + n - 1]  # n-gram inside one text
        mixed = _mix(words, n)[whole]
        counts = np.bincount(doc_of_word[starts][whole], minlength=len(texts))
        short = np.flatnonzero(counts == 0)
        if len(short):  # rare: texts of fewer than n words get one shingle each
            offsets = np.concatenate(([0], np.cumsum(lengths)))
            extra = [_mix(words[offsets[d]:offsets[d + 1]], int(lengths[d])) if lengths[d]
                     else np.zeros(1, np.uint64) for d in short]
            positions = np.cumsum(counts)[short]
            mixed = np.insert(mixed, positions, np.concatenate(extra))
            counts[short] = 1
        return mixed, counts

    def signatures(self, texts: Sequence[str]) -> np.ndarray:
        """An (n_texts, num_perm) uint32 array of MinHash signatures."""
        return self.signatures_of(*self.shingles(texts))

    def signatures_of(self, shingles: np.ndarray, counts: np.ndarray) -> np.ndarray:
        """Signatures from `shingles`' output (flat hashes, how many belong to each text)."""
        out = np.empty((len(counts), self.params.num_perm), dtype=np.uint32)
        ends = np.cumsum(counts)
        buffer = np.empty((_CHUNK_SHINGLES, self.params.num_perm), dtype=np.uint64)
        doc = 0
        while doc < len(counts):
            first = ends[doc] - counts[doc]
            last_doc = max(doc + 1, int(np.searchsorted(ends, first + _CHUNK_SHINGLES, "right")))
            stop = ends[last_doc - 1]
            if stop - first > len(buffer):
                buffer = np.empty((stop - first, self.params.num_perm), dtype=np.uint64)
            permuted = buffer[:stop - first]
            np.multiply(shingles[first:stop, None], self._a, out=permuted)
            np.add(permuted, self._b, out=permuted)
            np.right_shift(permuted, np.uint64(32), out=permuted)
            offsets = (ends[doc:last_doc] - counts[doc:last_doc]) - first
            out[doc:last_doc] = np.minimum.reduceat(permuted, offsets, axis=0)
            doc = last_doc
        return out

    def band_keys(self, signatures: np.ndarray) -> np.ndarray:
        """An (n, bands) uint64 array: one bucket key per band, distinct across bands."""
        p = self.params
        banded = signatures.reshape(len(signatures), p.bands, p.rows).astype(np.uint64)
        with np.errstate(over="ignore"):
            keys = (banded * self._band_mix).sum(axis=2, dtype=np.uint64)
            keys = keys * _MIX + np.arange(p.bands, dtype=np.uint64)
        return keys


def _word_hashes(texts: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
    """Stable 64-bit hashes of every text's words, flat, and each text's word count.

    Words are what lies between whitespace once sentence punctuation is blanked, after
    Unicode lower-casing; the whole batch is split and hashed in one C-level pass.
    """
    from pandas.util import hash_array

    joined = _SEPARATOR.join(t.replace("\x1e", " ") for t in texts).lower().encode("utf-8")
    words = joined.translate(_PUNCTUATION).replace(b"\x1e", b" \x1e ").split()
    tokens = np.array(words + [b"\x1e"], dtype=object)
    hashes = hash_array(tokens, categorize=False)
    is_separator = tokens == b"\x1e"
    boundaries = np.flatnonzero(is_separator)
    lengths = np.diff(np.concatenate(([-1], boundaries))) - 1
    return hashes[~is_separator], lengths


def _mix(words: np.ndarray, n: int) -> np.ndarray:
    """Order-sensitive hashes of every run of n consecutive word hashes."""
    if len(words) < n:  # a batch of fewer than n words in all has no run of n
        return np.zeros(0, dtype=np.uint64)
    mixed = np.zeros(len(words) - n + 1, dtype=np.uint64)
    with np.errstate(over="ignore"):
        for offset in range(n):
            mixed = mixed * _MIX + words[offset:len(words) - n + 1 + offset]
    return mixed


def estimated_jaccard(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """The fraction of equal signature rows; `b` may hold many signatures."""
    return (np.atleast_2d(b) == a).mean(axis=1)


def per_text(shingles: np.ndarray, counts: np.ndarray) -> list[np.ndarray]:
    """`shingles`' flat output split into one array per text (views, no copies)."""
    return np.split(shingles, np.cumsum(counts)[:-1]) if len(counts) else []


def shingle_jaccard(a: np.ndarray, b: np.ndarray) -> float:
    """Jaccard similarity of two shingle sets, each given as sorted unique hashes."""
    shared = np.intersect1d(a, b, assume_unique=True).size
    return shared / (a.size + b.size - shared)


class NearDupIndex:
    """Documents seen so far, bucketed by band key; `add` reports each new one's match.

    Documents are judged in order: one whose confirmed match is already indexed is
    a near-duplicate and is not indexed itself, so every cluster keeps its first member.
    LSH bands find the candidates; the shingle sets' Jaccard confirms them.
    Two documents with different non-None labels (say, the reference answers of two
    procedural questions that share a template) are never duplicates.
    """

    def __init__(self, hasher: MinHasher) -> None:
        self.hasher = hasher
        self._buckets: dict[int, list[int]] = {}
        self._shingles: list[np.ndarray] = []  # made sorted and unique when first compared
        self._unique: list[bool] = []
        self._labels: list[str | None] = []
        self.ids: list[str] = []

    def insert(self, doc_id: str, shingles: np.ndarray, keys: Iterable[int],
               label: str | None = None) -> None:
        index = len(self.ids)
        self.ids.append(doc_id)
        self._shingles.append(shingles)
        self._unique.append(False)
        self._labels.append(label)
        for key in keys:
            self._buckets.setdefault(key, []).append(index)

    def _shingle_set(self, index: int) -> np.ndarray:
        if not self._unique[index]:
            self._shingles[index] = np.unique(self._shingles[index])
            self._unique[index] = True
        return self._shingles[index]

    def match(self, shingles: np.ndarray, keys: Iterable[int],
              label: str | None = None) -> tuple[str, float] | None:
        """The most similar candidate at or above the threshold, if any."""
        candidates = {i for key in keys for i in self._buckets.get(key, ())
                      if label is None or self._labels[i] in (None, label)}
        if not candidates:
            return None
        own = np.unique(shingles)
        score, best = max((shingle_jaccard(own, self._shingle_set(i)), -i) for i in candidates)
        if score >= self.hasher.params.threshold:
            return self.ids[-best], score
        return None

    def add(self, doc_ids: Sequence[str], texts: Sequence[str],
            labels: Sequence[str | None] | None = None) -> list[tuple[str, float] | None]:
        """Judge a batch in order: each entry is (matched id, Jaccard) or None."""
        shingles, counts = self.hasher.shingles(texts)
        signatures = self.hasher.signatures_of(shingles, counts)
        return self.add_signatures(doc_ids, signatures, per_text(shingles, counts), labels)

    def add_signatures(self, doc_ids: Sequence[str], signatures: np.ndarray,
                       shingles: Sequence[np.ndarray],
                       labels: Sequence[str | None] | None = None
                       ) -> list[tuple[str, float] | None]:
        """`add` for documents whose signatures and per-text shingles are at hand."""
        keys = self.hasher.band_keys(signatures).tolist()
        results = []
        for i, doc_id in enumerate(doc_ids):
            label = labels[i] if labels is not None else None
            found = self.match(shingles[i], keys[i], label)
            if found is None:
                self.insert(doc_id, shingles[i], keys[i], label)
            results.append(found)
        return results
