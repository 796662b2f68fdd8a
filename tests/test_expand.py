"""Self-Instruct and Evol-Instruct on a real engine, and the gates that guard them."""

from __future__ import annotations

from pathlib import Path

import pytest

from stillroom.catalog import Catalog
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
