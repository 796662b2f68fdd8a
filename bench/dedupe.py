"""Near-duplicate detection: Stillroom's MinHash-LSH against datasketch's MinHashLSH.

A synthetic corpus of Zipf-distributed words in sentences (some boilerplate
sentences shared across unrelated documents) gets planted near-duplicates: word
edits, swapped adjacent sentences, whitespace and case noise, truncation, one or
two per variant. It also gets hard negatives: template-alike documents made from
an original by replacing every s-th word, kept only when their word n-gram
Jaccard with the original is 0.50-0.65, so that they must not be merged.

Three ways are timed, best of `--repeat` after the same warm-up: Stillroom's
in-memory index, datasketch's MinHash + MinHashLSH with its default SHA-1 hash
and with xxhash (the fast hash its docs recommend), and Stillroom's real catalog
stage (`dedupe` with `near` only: signatures and band keys persisted, the band
join, verdicts and links written) on a fresh catalog each time. All see the same
documents, shingles, bands x rows and confirmation threshold; the in-memory ones
judge documents in corpus order, the stage in its representative order.

Recall: correct flags over the flags a perfect deduper would make (each family's
members but one). Precision: the share of flagged documents whose match is in
their own family, hard negatives left out; `hard_negative_precision`: the same
over every flag, hard negatives included. The last line is JSON.

    .venv/bin/python bench/dedupe.py [--docs 50000] [--bands 14 --rows 8] [--repeat 3]
"""

from __future__ import annotations

import argparse
import json
import random
import re
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import NamedTuple

import numpy as np

from stillroom.tasks.minhash import SENTENCE_PUNCTUATION, MinHasher, MinHashParams, NearDupIndex

HARD_JACCARD = (0.50, 0.65)
_BLANK = str.maketrans(SENTENCE_PUNCTUATION, " " * len(SENTENCE_PUNCTUATION))


class Corpus(NamedTuple):
    docs: list[str]
    families: list[int]  # planted variants share their original's family
    hard: list[bool]  # hard negatives: each its own family, close to an original's


def make_corpus(n_docs: int, variant_share: float, hard_share: float, ngram: int,
                seed: int = 0) -> Corpus:
    """Documents in a shuffled order, with their families and which are hard negatives."""
    rng = random.Random(seed)
    np_rng = np.random.default_rng(seed)
    vocab = [f"w{i}{chr(97 + i % 26)}" for i in range(30_000)]
    cdf = np.cumsum(1 / np.arange(1, len(vocab) + 1) ** 1.05)
    cdf /= cdf[-1]
    boilerplate = [_sentence(np_rng, vocab, cdf) for _ in range(40)]
    n_variants, n_hard = int(n_docs * variant_share), int(n_docs * hard_share)
    originals = []
    for _ in range(n_docs - n_variants - n_hard):
        sentences = [_sentence(np_rng, vocab, cdf) for _ in range(rng.randint(6, 14))]
        if rng.random() < 0.3:  # unrelated documents sharing a boilerplate sentence
            sentences.insert(rng.randrange(len(sentences)), rng.choice(boilerplate))
        originals.append(sentences)
    docs = [(" ".join(s), family, False) for family, s in enumerate(originals)]
    for _ in range(n_variants):
        family = rng.randrange(len(originals))
        docs.append((_variant(rng, list(originals[family]), vocab), family, False))
    while len(docs) < n_docs:
        hard = _hard_negative(rng, " ".join(rng.choice(originals)), vocab, ngram)
        if hard is not None:
            docs.append((hard, len(docs), True))  # a family of its own
    rng.shuffle(docs)
    return Corpus([d for d, _, _ in docs], [f for _, f, _ in docs], [h for _, _, h in docs])


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


def shingles(text: str, n: int) -> list[bytes]:
    """Stillroom's word n-grams (lower-cased, sentence punctuation blanked), as bytes."""
    words = text.lower().translate(_BLANK).split()
    n = min(n, len(words)) or 1
    return [" ".join(words[i:i + n]).encode() for i in range(max(1, len(words) - n + 1))]


def jaccard(a: str, b: str, n: int) -> float:
    sa, sb = set(shingles(a, n)), set(shingles(b, n))
    return len(sa & sb) / len(sa | sb)


def _hard_negative(rng: random.Random, original: str, vocab: list[str], ngram: int
                   ) -> str | None:
    """The original with every s-th word replaced (a template filled differently), if its
    n-gram Jaccard with the original is in [low, high) of HARD_JACCARD: below the threshold."""
    words = original.split()
    step = rng.randint(3 * ngram, 5 * ngram)  # J ~ (1 - n/s) / (1 + n/s): 0.5 to 0.67
    for i in range(rng.randrange(step), len(words), step):
        words[i] = rng.choice(vocab)
    candidate = " ".join(words)
    low, high = HARD_JACCARD
    return candidate if low <= jaccard(candidate, original, ngram) < high else None


def run_stillroom(docs: list[str], params: MinHashParams) -> list[int | None]:
    index = NearDupIndex(MinHasher(params))
    ids = [str(i) for i in range(len(docs))]
    matches = []
    for start in range(0, len(docs), 5000):  # bounds the memory of one signature pass
        matches += index.add(ids[start:start + 5000], docs[start:start + 5000])
    return [int(m[0]) if m else None for m in matches]


def run_datasketch(docs: list[str], params: MinHashParams,
                   hashfunc: Callable[[bytes], int] | None = None) -> list[int | None]:
    from datasketch import MinHash, MinHashLSH

    lsh = MinHashLSH(num_perm=params.num_perm, params=(params.bands, params.rows))
    kept: dict[int, MinHash] = {}
    matches: list[int | None] = []
    minhashes = MinHash.generator((shingles(d, params.ngram) for d in docs),
                                  num_perm=params.num_perm, seed=params.seed, hashfunc=hashfunc)
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


def run_stage(docs: list[str], params: MinHashParams) -> tuple[float, list[int | None]]:
    """The catalog stage on a fresh catalog holding `docs` as responses: (seconds, matches).
    Only `dedupe` is timed, not creating the catalog or storing the rows."""
    from stillroom.catalog import Catalog, insert_records
    from stillroom.tasks import dedupe, filters
    from stillroom.tasks.generate import ResponseRow
    from stillroom.tasks.prompts import Prompt, store_prompts

    with tempfile.TemporaryDirectory() as home:
        catalog = Catalog(Path(home) / "catalog.duckdb").ensure()
        prompt = Prompt("", "bench")  # the subject is then the document itself
        store_prompts(catalog, [prompt])
        rows = [ResponseRow(
            response_id=f"{i:09d}", request_key=f"{i:09d}", sample_index=0,
            prompt_id=prompt.prompt_id, teacher_id="bench", rendered_prompt=prompt.text,
            text=doc, prompt_tokens=1, output_tokens=len(doc.split()), finish_reason="stop",
            token_ids=[], soft_labels=None, topk_k=0, sampling="{}", latency_s=0.0, usd=0.0,
            run_id="bench") for i, doc in enumerate(docs)]
        with catalog.write() as conn:
            insert_records(conn, "responses", rows)
        near = {"near": params.as_dict()}
        started = time.perf_counter()
        dedupe.dedupe(catalog, [], {"fhash": filters.config_hash({})}, near, "bench")
        seconds = time.perf_counter() - started
        links = catalog.rows("SELECT response_id, representative_id FROM duplicate_links")
    matches: list[int | None] = [None] * len(docs)
    for link in links:
        matches[int(link["response_id"])] = int(link["representative_id"])
    return seconds, matches


def quality(matches: list[int | None], corpus: Corpus) -> dict[str, float]:
    families = corpus.families
    ideal = len(families) - len(set(families))  # every member of a family but one
    flagged = [(i, m) for i, m in enumerate(matches) if m is not None]
    correct = [families[i] == families[m] for i, m in flagged]
    plain = [ok for (i, m), ok in zip(flagged, correct, strict=True)
             if not corpus.hard[i] and not corpus.hard[m]]
    return {"recall": round(sum(correct) / ideal, 4),
            "precision": round(sum(plain) / len(plain), 4) if plain else 1.0,
            "hard_negative_precision": round(sum(correct) / len(flagged), 4) if flagged else 1.0,
            "hard_negatives_merged": sum(corpus.hard[i] or corpus.hard[m] for i, m in flagged)}


def best_of(repeat: int, warm_up: Callable[[], object], run: Callable[[], tuple[float, list]]
            ) -> tuple[float, list]:
    """Warm up once, then the fastest of `repeat` runs (the matches are the same each time)."""
    warm_up()
    results = [run() for _ in range(repeat)]
    return min(results, key=lambda r: r[0])


def timed(fn: Callable[[], list]) -> tuple[float, list]:
    started = time.perf_counter()
    result = fn()
    return time.perf_counter() - started, result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--docs", type=int, default=50_000)
    parser.add_argument("--variant-share", type=float, default=0.2)
    parser.add_argument("--hard-negative-share", type=float, default=0.1)
    defaults = MinHashParams()
    for name in ("ngram", "bands", "rows", "seed"):
        parser.add_argument(f"--{name}", type=int, default=getattr(defaults, name))
    parser.add_argument("--threshold", type=float, default=defaults.threshold)
    parser.add_argument("--repeat", type=int, default=3, help="best of this many timed runs")
    args = parser.parse_args()
    import xxhash

    params = MinHashParams(args.ngram, args.bands, args.rows, args.threshold, args.seed)
    corpus = make_corpus(args.docs, args.variant_share, args.hard_negative_share, params.ngram)
    docs, warm = corpus.docs, corpus.docs[:1000]
    words = sum(len(d.split()) for d in docs)
    print(f"corpus: {len(docs)} docs, {words / len(docs):.0f} words/doc, "
          f"{len(docs) - len(set(corpus.families))} planted variants, "
          f"{sum(corpus.hard)} hard negatives; params {params.as_dict()}; best of {args.repeat}")
    ways = {
        "stillroom": lambda d: timed(lambda: run_stillroom(d, params)),
        "datasketch": lambda d: timed(lambda: run_datasketch(d, params)),
        "datasketch_xxhash": lambda d: timed(
            lambda: run_datasketch(d, params, xxhash.xxh32_intdigest)),
        "stillroom_stage": lambda d: run_stage(d, params),
    }
    figures = {}
    for name, way in ways.items():
        seconds, matches = best_of(args.repeat, lambda w=way: w(warm), lambda w=way: w(docs))
        figures[name] = {"seconds": round(seconds, 3), "docs_per_s": round(len(docs) / seconds),
                         **quality(matches, corpus)}
        f = figures[name]
        print(f"{name:<18} {seconds:8.2f} s {f['docs_per_s']:9d} docs/s  recall {f['recall']:.4f}"
              f"  precision {f['precision']:.4f}  with hard negatives"
              f" {f['hard_negative_precision']:.4f} ({f['hard_negatives_merged']} merged)")
    ours = figures["stillroom"]
    print(json.dumps({
        "speed_vs_datasketch": round(figures["datasketch"]["seconds"] / ours["seconds"], 2),
        "speed_vs_datasketch_fasthash": round(
            figures["datasketch_xxhash"]["seconds"] / ours["seconds"], 2),
        "recall": ours["recall"], "precision": ours["precision"],
        "hard_negative_precision": ours["hard_negative_precision"],
        "stage_docs_per_s": figures["stillroom_stage"]["docs_per_s"],
        "stage_recall": figures["stillroom_stage"]["recall"],
        "stage_hard_negative_precision": figures["stillroom_stage"]["hard_negative_precision"],
        "datasketch_recall": figures["datasketch"]["recall"],
        "datasketch_hard_negative_precision": figures["datasketch"]["hard_negative_precision"],
        "docs": len(docs), "hard_negatives": sum(corpus.hard),
        "docs_per_s": {k: v["docs_per_s"] for k, v in figures.items()},
        "params": params.as_dict(), "repeat": args.repeat}))


if __name__ == "__main__":
    main()
