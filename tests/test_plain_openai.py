"""A plain OpenAI-compatible server (no vLLM extensions): the same rows as the transformers
backend, exact ids mapped back from token strings, and one clear error where the server
cannot give what was asked."""

from __future__ import annotations

from pathlib import Path

import pytest
from strict_openai import StrictOpenAIServer

from stillroom.catalog import Catalog
from stillroom.errors import StillroomError
from stillroom.tasks import soft_labels, teachers
from stillroom.tasks.engine import SamplingConfig
from stillroom.tasks.generate import generate
from stillroom.tasks.http_engine import OpenAIEngine
from stillroom.tasks.token_map import TokenMap

SAMPLING = SamplingConfig(max_tokens=16, logprobs_k=5)


@pytest.fixture(scope="module")
def strict(tiny_model: Path):
    server = StrictOpenAIServer(str(tiny_model))
    yield server
    server.close()


def prompts(count: int) -> list:
    from stillroom.tasks.prompts import Prompt

    return [Prompt(f"Tell me about thing {i}.", "test") for i in range(count)]


def stored(catalog: Catalog) -> list[dict]:
    rows = catalog.rows("SELECT request_key, text, token_ids, finish_reason, prompt_tokens,"
                        " soft_labels, token_ids_exact FROM responses ORDER BY request_key")
    for row in rows:
        row["topk_ids"], logprobs = soft_labels.decode(row.pop("soft_labels"))
        row["top_logprob"] = [round(step[0], 1) for step in logprobs]
    return rows


def test_plain_server_stores_what_the_transformers_backend_stores(
        strict: StrictOpenAIServer, tiny_model: Path, tmp_path: Path) -> None:
    rows = {}
    for backend in ("transformers", "openai"):
        catalog = Catalog(tmp_path / f"{backend}.duckdb").ensure()
        teacher = teachers.add_teacher(catalog, "tiny", str(tiny_model), "mit")
        engine = OpenAIEngine(teacher.model, None, [strict.url], concurrency=2) \
            if backend == "openai" else None
        summary = generate(catalog, teacher, prompts(5), SAMPLING, engine=engine,
                           backend=backend, progress=False)
        assert summary["responses_stored"] == 5 and summary["failed"] == 0
        assert summary["retokenised"] == 0
        rows[backend] = stored(catalog)
    assert rows["openai"] == rows["transformers"]
    assert all(row["token_ids_exact"] and row["topk_ids"] for row in rows["openai"])
    assert not any("return_tokens_as_token_ids" in body for body in strict.bodies[1:])


def test_every_token_string_maps_back_to_its_id(strict: StrictOpenAIServer) -> None:
    """Byte tokens that are not UTF-8 on their own travel as `bytes:\\xNN` and come back."""
    mapping = TokenMap(strict.engine.tokenizer)
    names = strict.token_text
    assert any(name.startswith("bytes:") for name in names.values())
    assert mapping.ids([names[i] for i in sorted(names)]) == sorted(names)


def test_unmappable_tokens_are_retokenised_and_flagged(strict: StrictOpenAIServer,
                                                       tiny_model: Path) -> None:
    engine = OpenAIEngine(str(tiny_model), None, [strict.url])
    choice = {"text": "Tea is a drink.", "finish_reason": "stop",
              "logprobs": {"tokens": ["Tea", "\ufffd", " a drink."],
                           "top_logprobs": [{"Tea": -0.1}, {"\ufffd": -0.2}, {".": -0.3}]}}
    completion = engine._mapped_completion(choice, 4, 1)
    assert not completion.token_ids_exact
    assert completion.token_ids == engine.tokenizer.encode("Tea is a drink.",
                                                           add_special_tokens=False)
    assert completion.topk_ids == []  # its steps would not line up with re-tokenised ids


def test_a_server_capping_logprobs_fails_fast_with_one_clear_error(
        strict: StrictOpenAIServer, tiny_model: Path, tmp_path: Path) -> None:
    catalog = Catalog(tmp_path / "catalog.duckdb").ensure()
    teacher = teachers.add_teacher(catalog, "tiny", str(tiny_model), "mit")
    engine = OpenAIEngine(teacher.model, None, [strict.url], max_retries=4, backoff=0.01)
    before = len(strict.bodies)
    with pytest.raises(StillroomError) as caught:
        generate(catalog, teacher, prompts(6), SamplingConfig(max_tokens=8, logprobs_k=20),
                 engine=engine, progress=False)
    assert caught.value.where == strict.url
    assert "logprobs" in caught.value.message and "--logprobs-k" in caught.value.message
    assert len(strict.bodies) - before == 2  # one probe, and once more without vLLM's field
    assert catalog.scalar("SELECT count(*) FROM responses") == 0
    assert catalog.scalar("SELECT count(*) FROM request_failures") == 0
    assert catalog.scalar("SELECT status FROM runs") == "failed"


def test_http_latency_is_each_requests_own(strict: StrictOpenAIServer, tiny_model: Path,
                                           tmp_path: Path) -> None:
    """One request at a time: each latency is one request's, not the time since the start."""
    catalog = Catalog(tmp_path / "catalog.duckdb").ensure()
    teacher = teachers.add_teacher(catalog, "tiny", str(tiny_model), "mit")
    engine = OpenAIEngine(teacher.model, None, [strict.url], concurrency=1)
    summary = generate(catalog, teacher, prompts(6), SAMPLING, engine=engine, progress=False)
    latencies = [r["latency_s"] for r in catalog.rows("SELECT latency_s FROM responses")]
    assert len(latencies) == 6 and all(s > 0 for s in latencies)
    assert sum(latencies) <= summary["engine_seconds"]  # sequential: they cannot overlap
