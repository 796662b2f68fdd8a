"""Near-duplicate detection: Stillroom's MinHash-LSH against datasketch's MinHashLSH.

A synthetic corpus of Zipf-distributed words in sentences (some boilerplate
sentences shared across unrelated documents) gets planted near-duplicates: word
edits, swapped adjacent sentences, whitespace and case noise, truncation, one or
two per variant. Both sides see the same documents in the same order, use the
same word n-gram shingles, bands x rows and confirmation threshold, and judge
each document against the kept ones before it (a duplicate is not indexed).

Recall: the share of planted variants flagged as a near-duplicate of a member of
their own family. Precision: the share of flagged documents whose match is in
their own family. The last line is JSON.

    .venv/bin/python bench/dedupe.py [--docs 50000] [--variant-share 0.2]
"""

from __future__ import annotations

import argparse
import json
import random
import re
import time

import numpy as np

from stillroom.tasks.minhash import SENTENCE_PUNCTUATION, MinHasher, MinHashParams, NearDupIndex


def make_corpus(n_docs: int, variant_share: float, seed: int = 0) -> tuple[list[str], list[int]]:
    """Documents in a shuffled order and the family each belongs to."""
    rng = random.Random(seed)
    np_rng = np.random.default_rng(seed)
    vocab = [f"w{i}{chr(97 + i % 26)}" for i in range(30_000)]
    cdf = np.cumsum(1 / np.arange(1, len(vocab) + 1) ** 1.05)
    cdf /= cdf[-1]
    boilerplate = [_sentence(np_rng, vocab, cdf) for _ in range(40)]
    n_variants = int(n_docs * variant_share)
    originals = []
    for _ in range(n_docs - n_variants):
        sentences = [_sentence(np_rng, vocab, cdf) for _ in range(rng.randint(6, 14))]
        if rng.random() < 0.3:  # unrelated documents sharing a boilerplate sentence
            sentences.insert(rng.randrange(len(sentences)), rng.choice(boilerplate))
        originals.append(sentences)
    docs = [(" ".join(s), family) for family, s in enumerate(originals)]
    for _ in range(n_variants):
        family = rng.randrange(len(originals))
        docs.append((_variant(rng, list(originals[family]), vocab), family))
    rng.shuffle(docs)
    return [d for d, _ in docs], [f for _, f in docs]


def _sentence(rng: np.random.Generator, vocab: list[str], cdf: np.ndarray) -> str:
    words = np.searchsorted(cdf, rng.random(int(rng.integers(8, 20))))
    return " ".join(vocab[w] for w in words) + "."


def _variant(rng: random.Random, sentences: list[str], vocab: list[str]) -> str:
    kinds = rng.sample(["edit", "reorder", "whitespace", "truncate"], rng.randint(1, 2))
    for kind in sorted(kinds, key=lambda k: k != "reorder"):  # reorder while sentences exist
        if kind == "reorder":
            i = rng.randrange(len(sentences) - 1)
            sentences[i], sentences[i + 1] = sentences[i + 1], sentences[i]
        elif kind == "truncate":
            words = " ".join(sentences).split()
            sentences = [" ".join(words[: int(len(words) * rng.uniform(0.85, 0.95))])]
        elif kind == "edit":
            words = " ".join(sentences).split()
            for _ in range(max(1, len(words) // 60)):
                i = rng.randrange(len(words))
                words[i] = rng.choice(vocab) if rng.random() < 0.5 else words[i] + " " + "extra"
            sentences = [" ".join(words)]
        else:
            sentences = [re.sub(" ", lambda _: rng.choice([" ", "  ", "\n"]), s).upper()
                         if rng.random() < 0.3 else s for s in sentences]
    return " ".join(sentences)


def run_stillroom(docs: list[str], params: MinHashParams) -> list[int | None]:
    index = NearDupIndex(MinHasher(params))
    ids = [str(i) for i in range(len(docs))]
    matches = []
    for start in range(0, len(docs), 5000):  # the catalog stage also works in batches
        matches += index.add(ids[start:start + 5000], docs[start:start + 5000])
    return [int(m[0]) if m else None for m in matches]


def run_datasketch(docs: list[str], params: MinHashParams) -> list[int | None]:
    from datasketch import MinHash, MinHashLSH

    blank = str.maketrans(SENTENCE_PUNCTUATION, " " * len(SENTENCE_PUNCTUATION))

    def shingles(text: str) -> list[bytes]:  # the same words and n-grams as Stillroom's
        words = text.lower().translate(blank).split()
        n = min(params.ngram, len(words)) or 1
        return [" ".join(words[i:i + n]).encode() for i in range(max(1, len(words) - n + 1))]

    lsh = MinHashLSH(num_perm=params.num_perm, params=(params.bands, params.rows))
    kept: dict[int, MinHash] = {}
    matches: list[int | None] = []
    minhashes = MinHash.generator((shingles(d) for d in docs), num_perm=params.num_perm,
                                  seed=params.seed)
    for i, m in enumerate(minhashes):
        scored = [(m.jaccard(kept[c]), c) for c in lsh.query(m)]
        best = max(scored, default=None)
        if best and best[0] >= params.threshold:
            matches.append(best[1])
        else:
            lsh.insert(i, m)
            kept[i] = m
            matches.append(None)
    return matches


def quality(matches: list[int | None], families: list[int]) -> tuple[float, float]:
    first: dict[int, int] = {}
    planted = 0
    for i, family in enumerate(families):
        planted += family in first
        first.setdefault(family, i)
    flagged = [(i, m) for i, m in enumerate(matches) if m is not None]
    correct = sum(families[i] == families[m] for i, m in flagged)
    return correct / planted, (correct / len(flagged) if flagged else 1.0)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--docs", type=int, default=50_000)
    parser.add_argument("--variant-share", type=float, default=0.2)
    args = parser.parse_args()
    params = MinHashParams()
    docs, families = make_corpus(args.docs, args.variant_share)
    words = sum(len(d.split()) for d in docs)
    print(f"corpus: {len(docs)} docs, {words / len(docs):.0f} words/doc, "
          f"{len(docs) - len(set(families))} planted variants; params {params.as_dict()}")
    figures = {}
    for name, run in (("stillroom", run_stillroom), ("datasketch", run_datasketch)):
        started = time.perf_counter()
        matches = run(docs, params)
        seconds = time.perf_counter() - started
        recall, precision = quality(matches, families)
        figures[name] = {"seconds": round(seconds, 2), "docs_per_s": round(len(docs) / seconds),
                         "recall": round(recall, 4), "precision": round(precision, 4)}
        print(f"{name:<11} {seconds:7.2f} s  {len(docs) / seconds:9.0f} docs/s  "
              f"recall {recall:.4f}  precision {precision:.4f}")
    ours, theirs = figures["stillroom"], figures["datasketch"]
    print(json.dumps({"speed_vs_datasketch": round(theirs["seconds"] / ours["seconds"], 2),
                      "recall": ours["recall"], "precision": ours["precision"],
                      "datasketch_recall": theirs["recall"],
                      "datasketch_precision": theirs["precision"],
                      "docs": len(docs), "docs_per_s": {k: v["docs_per_s"]
                                                         for k, v in figures.items()},
                      "params": params.as_dict()}))


if __name__ == "__main__":
    main()
