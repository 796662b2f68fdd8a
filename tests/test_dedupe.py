"""Dedupe stages on a real catalog: near-duplicates (incremental), semantic, representatives."""

from __future__ import annotations

import random
from pathlib import Path

import pytest
from rows import add_rows

from stillroom.catalog import Catalog
from stillroom.errors import StillroomError
from stillroom.tasks.curation import CurationConfig, curate, load_config

NEAR = CurationConfig({"empty": {}}, {"exact": {}, "near": {}})


def paragraph(seed: int, words: int = 80) -> str:
    rng = random.Random(seed)
    vocab = [f"{a}{b}" for a in ("tor", "mel", "vas", "quin", "dra", "pel") for b in
             ("ant", "ory", "ish", "el", "um", "ade", "ix", "on")]
    return " ".join(rng.choice(vocab) for _ in range(words)) + "."


def edited(text: str, every: int = 40) -> str:
    words = text.split()
    return " ".join(w + "ed" if i % every == 7 else w for i, w in enumerate(words))


def verdicts(catalog: Catalog, stage: str) -> dict[str, tuple[bool, str | None]]:
    return {r["response_id"]: (r["keep"], r["reason"]) for r in catalog.rows(
        "SELECT response_id, keep, reason FROM verdicts WHERE stage = ?", [stage])}


def test_near_duplicates_are_found_incrementally_against_earlier_nights(catalog: Catalog) -> None:
    night1 = add_rows(catalog, [{"question": f"Write note {i}.", "response": paragraph(i)}
                                for i in range(4)])
    first = curate(catalog, NEAR, "night-1")["dedupe"]
    assert first["near"] == {"judged": 4, "dropped": 0}
    signatures = catalog.scalar("SELECT count(*) FROM minhash_signatures")
    assert signatures == 4

    night2 = add_rows(catalog, [
        {"question": "Write note 1.", "response": edited(paragraph(1))},  # near-dup of night 1
        {"question": "Write note 9.", "response": paragraph(9)}])
    second = curate(catalog, NEAR, "night-2")["dedupe"]
    assert second["near"] == {"judged": 2, "dropped": 1}  # only tonight's rows were judged
    assert catalog.scalar("SELECT count(*) FROM minhash_signatures") == signatures + 2
    keep, reason = verdicts(catalog, "dedupe:near")[night2[0]]
    assert not keep and reason.startswith(f"near duplicate of {night1[1]} (similarity 0.")
    link = catalog.rows("SELECT * FROM duplicate_links WHERE response_id = ?", [night2[0]])[0]
    assert link["representative_id"] == night1[1] and 0.65 <= link["similarity"] < 1
    assert verdicts(catalog, "dedupe:near")[night2[1]] == (True, None)


def test_representative_rule_prefers_verified_then_complete_then_shortest(
        catalog: Catalog) -> None:
    text = paragraph(3)
    ids = add_rows(catalog, [
        {"question": "Describe it.", "response": text + " and more words at the end here"},
        {"question": "Describe it.", "response": text, "finish": "length"},
        {"question": "Describe it.", "response": text + " too"},
        {"question": "Describe it!", "response": text + " also", "answer": "x"}])
    curate(catalog, CurationConfig({"empty": {}}, {"near": {}}), "run")
    kept = [rid for rid, (keep, _) in verdicts(catalog, "dedupe:near").items() if keep]
    assert kept == [ids[3]]  # the verified one, though neither shortest nor first
    ids2 = add_rows(catalog, [{"question": "Say it.", "response": paragraph(5) + " long tail x"},
                              {"question": "Say it.", "response": paragraph(5), "finish": "length"},
                              {"question": "Say it.", "response": paragraph(5) + " y"}])
    curate(catalog, CurationConfig({"empty": {}}, {"near": {}}), "run")
    kept = {rid for rid, (keep, _) in verdicts(catalog, "dedupe:near").items() if keep}
    assert ids2[2] in kept and ids2[0] not in kept and ids2[1] not in kept


def test_template_alike_rows_with_different_answers_are_not_duplicates(catalog: Catalog) -> None:
    template = ("Consider the following problem carefully and answer with a single number. "
                "A farmer has {n} sheep and buys three more at the market on a sunny day. "
                "How many sheep does the farmer have now?")
    add_rows(catalog, [{"question": template.format(n=n), "response": str(n + 3),
                        "answer": str(n + 3), "task": "sheep"} for n in (4, 5, 6)])
    result = curate(catalog, NEAR, "run")["dedupe"]
    assert result["near"]["dropped"] == 0


def test_semantic_drops_paraphrases_but_keeps_template_fills(catalog: Catalog) -> None:
    ids = add_rows(catalog, [
        {"question": "What is the capital of France?", "response": "Paris is the capital."},
        {"question": "What's the capital city of France?", "response": "Paris is the capital."},
        {"question": "What is the capital of Germany?", "response": "Berlin is the capital."},
        {"question": "What is 12 plus 30?", "response": "42"},
        {"question": "What is 12 plus 31?", "response": "43"}])
    result = curate(catalog, CurationConfig({"empty": {}}, {"semantic": {}}), "run")["dedupe"]
    assert result["semantic"] == {"judged": 5, "dropped": 1}
    judged = verdicts(catalog, "dedupe:semantic")
    dropped = [rid for rid in ids if not judged[rid][0]]
    assert len(dropped) == 1 and dropped[0] in ids[:2]  # same length: the smaller id stays
    other = ({*ids[:2]} - {dropped[0]}).pop()
    assert judged[dropped[0]][1].startswith(f"semantic duplicate of {other} (similarity 0.9")
    assert catalog.scalar("SELECT count(*) FROM embeddings") == 5
    add_rows(catalog, [{"question": "Which city is the capital of France?",
                        "response": "Paris is the capital."}])
    again = curate(catalog, CurationConfig({"empty": {}}, {"semantic": {}}), "run")["dedupe"]
    assert again["semantic"] == {"judged": 1, "dropped": 1}
    assert catalog.scalar("SELECT count(*) FROM embeddings") == 6  # earlier vectors reused


@pytest.mark.parametrize("text, message", [
    ("filters:\n  empty: {}\n  nonsense: {}\n", ":3 (filters.nonsense): unknown filter 'nonsense'"),
    ("filters:\n  empty: {}\ndedupe:\n  near:\n    threshold: 1.5\n",
     ":5 (dedupe.near.threshold): must be in (0, 1], not 1.5"),
    ("dedupe:\n  fuzzy: {}\n", ":2 (dedupe.fuzzy): unknown dedupe stage 'fuzzy'"),
    ("dedupe:\n  exact: {}\n  semantic: {model: /no/such/encoder}\n",
     ":3 (dedupe.semantic): no local encoder '/no/such/encoder'"),
    ("filters:\n  length: {min_chars: 9, max_chars: 2}\n",
     ":2 (filters.length.max_chars): need min_chars <= max_chars, not 9 > 2"),
    ("filters: [\n", ":2: malformed YAML"),
    ("sorting: {}\n", ":1: unknown key 'sorting'"),
])
def test_bad_curation_config_names_file_and_line(tmp_path: Path, text: str, message: str) -> None:
    path = tmp_path / "curation.yaml"
    path.write_text(text)
    with pytest.raises(StillroomError) as error:
        load_config(path)
    assert f"{path}{message}" in str(error.value)


def test_near_dedupe_keeps_operators_apart() -> None:
    from stillroom.tasks.minhash import MinHasher, estimated_jaccard

    hasher = MinHasher()
    a, b, c = hasher.signatures(["State the answer: 7 - 0 = 7", "State the answer: 7 + 0 = 7",
                                 "STATE the answer 7 - 0 = 7!"])
    assert estimated_jaccard(a, b)[0] < 0.65 and estimated_jaccard(a, c)[0] == 1.0


def word_jaccard(a: str, b: str, n: int = 5) -> float:
    """The reference: Jaccard of the word n-gram sets, computed from scratch."""
    grams = [{tuple(w[i:i + n]) for i in range(len(w) - n + 1)}
             for w in (t.lower().replace(".", " ").split() for t in (a, b))]
    return len(grams[0] & grams[1]) / len(grams[0] | grams[1])


def test_template_alike_texts_below_the_threshold_are_never_merged() -> None:
    """Every s-th word refilled gives pairs at Jaccard 0.5-0.65: the signature estimate
    (std ~0.05 over 100 permutations) puts some above 0.65; the shingle sets do not."""
    from stillroom.tasks.minhash import MinHasher, NearDupIndex

    rng = random.Random(0)
    pairs = []
    for seed in range(80):
        words = paragraph(100 + seed, words=150).split()
        step = rng.randint(16, 24)
        for i in range(rng.randrange(step), len(words), step):
            words[i] = f"slot{seed}x{i}"
        pairs.append((paragraph(100 + seed, words=150), " ".join(words)))
    index = NearDupIndex(MinHasher())
    found = index.add([f"{i}{side}" for i in range(len(pairs)) for side in "ab"],
                      [text for pair in pairs for text in pair])
    close = [word_jaccard(a, b) for a, b in pairs]
    assert sum(0.55 <= j < 0.65 for j in close) >= 40  # the corpus is what it claims
    judged = list(zip(close, found[1::2], strict=True))
    assert [j for j, match in judged if match is not None and j < 0.65] == []  # none merged
    assert [j for j, match in judged if match is None and j >= 0.65] == []  # none missed
    assert all(match[1] == pytest.approx(j) for j, match in judged if match is not None)


def test_a_batch_of_fewer_words_than_one_shingle_gets_signatures() -> None:
    from stillroom.tasks.minhash import MinHasher, estimated_jaccard

    hasher = MinHasher()
    alone, = hasher.signatures(["Hi there!"])  # 2 words, 5-word shingles, nothing else
    again, other = hasher.signatures(["hi THERE", "Bye now"])
    assert estimated_jaccard(alone, again)[0] == 1.0 and estimated_jaccard(alone, other)[0] < 0.1


def test_content_check_separates_template_fills() -> None:
    from stillroom.tasks.embeddings import same_content

    assert same_content("What is the capital of France?", "What's the capital city of France?",
                        0.8)
    assert not same_content("What is the capital of France?", "What is the capital of Germany?",
                            0.8)
    assert not same_content("Solve: 7 - 0 =\n7", "Solve: 7 + 0 =\n7", 0.8)
    assert same_content("Solve: 4 + 8 =\n12", "Solve: 8 + 4 =\n12", 0.8)  # same content
