"""Self-Instruct and Evol-Instruct on a real engine, and the gates that guard them."""

from __future__ import annotations

import itertools
import json
from pathlib import Path

import pytest
from tiny import build_tiny_model

from stillroom.catalog import Catalog
from stillroom.cli import main
from stillroom.errors import LicenseError
from stillroom.tasks import expand, teachers
from stillroom.tasks.prompts import Prompt

SEEDS = [Prompt(text, "test") for text in (
    "Explain why the sky is blue.", "Write a haiku about rain.",
    "List three uses of copper.", "Describe how tides work.")]


@pytest.mark.parametrize("candidate, reason", [
    ("", "empty"),
    ("Why?", "too short (1 words)"),
    ("As an AI I cannot do that for you.", "unanswerable marker 'as an ai'"),
    ("New instruction: explain tides", "unanswerable marker 'instruction:'"),
    ("Explain why the sky is blue, please.", "too similar to its parent (bigram Jaccard 0.83)"),
    ("Explain why sunsets over the ocean look red and orange.", None),
])
def test_gates(candidate: str, reason: str | None) -> None:
    assert expand.gate(candidate, "Explain why the sky is blue.") == reason


@pytest.mark.parametrize("candidate, reason", [
    ("Tell me about tea, please.",
     "too similar to seed 'Tell me about tea.' (ROUGE-L 0.89)"),
    ("So, tell me all about rain clouds.",
     "too similar to accepted instruction 'Tell me about rain clouds.' (ROUGE-L 0.83)"),
    ("Explain how a clock keeps time.", None),
])
def test_self_instruct_candidates_are_compared_with_seeds_and_siblings(
        candidate: str, reason: str | None) -> None:
    pool = [("seed", "Tell me about tea."), ("accepted instruction", "Tell me about rain clouds.")]
    assert expand.gate(candidate, None, pool=pool) == reason


def test_requests_cover_every_seed_and_operation() -> None:
    evol = expand.evol_requests(SEEDS, ["deepen", "widen"])
    assert len(evol) == 8 and {m for _, _, m in evol} == {"evol:deepen", "evol:widen"}
    assert all(parent in text for text, parent, _ in evol)
    self_instruct = expand.self_instruct_requests(SEEDS, count=5, shots=3)
    assert len(self_instruct) == 5 and all(t.rstrip().endswith("4.") for t, _, _ in self_instruct)


def test_expansion_is_gated_recorded_and_resumable(catalog: Catalog, tiny_model: Path) -> None:
    teacher = teachers.add_teacher(catalog, "tiny", str(tiny_model), "apache-2.0")
    requests = expand.evol_requests(SEEDS, list(expand.EVOLUTIONS)) + \
        expand.self_instruct_requests(SEEDS, count=4)
    first = expand.expand(catalog, teacher, requests)
    assert len(first) + len(first.rejected) == len(requests) == 20
    assert all(r.reason for r in first.rejected)
    assert all(p.meta["method"].startswith(("evol:", "self_instruct")) for p in first)
    assert catalog.scalar("SELECT count(*) FROM expansions") == 20
    summary = catalog.rows("SELECT summary FROM runs WHERE kind = 'expand'")[0]["summary"]
    assert '"requests_sent":20' in summary.replace(" ", "")
    again = expand.expand(catalog, teacher, requests)  # nothing is asked twice
    assert [p.text for p in again] == [p.text for p in first]
    second = catalog.rows("SELECT summary FROM runs WHERE kind = 'expand' ORDER BY started_at")
    assert '"requests_sent":0' in second[-1]["summary"].replace(" ", "")


def test_expansion_respects_the_license_gate(catalog: Catalog, tiny_model: Path) -> None:
    teacher = teachers.add_teacher(catalog, "closed", str(tiny_model), "llama3")
    with pytest.raises(LicenseError):
        expand.expand(catalog, teacher, expand.evol_requests(SEEDS[:1], ["deepen"]))
    assert catalog.scalar("SELECT count(*) FROM expansions") == 0


LISTED = ["Tell me about tea.", "Tell me about rain.", "Tell me about maps."]


def list_writer(out: Path) -> Path:
    """A tiny real model that has learned to continue Self-Instruct's numbered task list."""
    corpus = []
    for i, order in enumerate(itertools.permutations(LISTED)):
        examples = "\n".join(f"{n}. {text}" for n, text in enumerate(order, start=1))
        new = ("Explain how a clock keeps time.", "Write a short poem about the sea.")[i % 2]
        corpus.append(expand.SELF_INSTRUCT_TEMPLATE.format(examples=examples, next=4) + " " + new)
    return build_tiny_model(out, corpus=corpus)


def test_self_instruct_end_to_end_accepts_rejects_and_prices(home: Path, tmp_path: Path,
                                                              capsys) -> None:
    model = list_writer(tmp_path / "list-writer")
    seeds = tmp_path / "seeds.jsonl"
    seeds.write_text("".join(json.dumps({"prompt": text}) + "\n" for text in LISTED))
    assert main(["teacher", "add", "lister", "--model", str(model), "--license", "mit",
                 "--price-per-1m-tokens", "2.0"]) == 0
    out = tmp_path / "new.jsonl"
    assert main(["expand", "--teacher", "lister", "--seeds", str(seeds), "--method",
                 "self-instruct", "--count", "12", "--out", str(out)]) == 0
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])

    catalog = Catalog()
    rows = catalog.rows("SELECT text, accepted, reason, output_tokens, usd FROM expansions"
                        " ORDER BY created_at, request_key")
    accepted = [r["text"] for r in rows if r["accepted"]]
    rejected = [r for r in rows if not r["accepted"]]
    assert summary["accepted"] == len(accepted) >= 1
    assert summary["gated_out"] == len(rejected) >= 1
    written = [json.loads(line) for line in out.read_text().splitlines()]
    assert [w["prompt"] for w in written] == accepted
    assert all(w["method"] == "self_instruct" and w["parent"] is None for w in written)
    # No accepted instruction repeats a seed or an instruction accepted before it.
    for i, text in enumerate(accepted):
        assert expand.gate(text, None, pool=[("seed", s) for s in LISTED]
                           + [("accepted instruction", a) for a in accepted[:i]]) is None
    assert any(r["reason"].startswith("too similar to accepted instruction ") for r in rejected)
    assert all(r["reason"] for r in rejected)
    # Priced like generation: per token under this teacher's price, summed in the summary.
    assert all(r["output_tokens"] > 0
               and r["usd"] == pytest.approx(2.0 * r["output_tokens"] / 1e6) for r in rows)
    run = json.loads(catalog.scalar("SELECT summary FROM runs WHERE kind = 'expand'"))
    assert run["usd"] > 0 and run["output_tokens"] == sum(r["output_tokens"] for r in rows)
    assert run["usd"] == pytest.approx(sum(r["usd"] for r in rows), abs=1e-6)
