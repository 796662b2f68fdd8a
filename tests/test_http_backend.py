"""OpenAI-compatible endpoints: a real vLLM server, the same rows as the offline engine, and
faults (500s, timeouts, truncated bodies) recorded, retried and never lost."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from faulty_proxy import FaultyProxy

from stillroom.catalog import Catalog
from stillroom.tasks import teachers
from stillroom.tasks.engine import SamplingConfig
from stillroom.tasks.generate import generate
from stillroom.tasks.http_engine import OpenAIEngine, VLLMServer
from stillroom.tasks.prompts import Prompt

SAMPLING = SamplingConfig(max_tokens=16, logprobs_k=5)


@pytest.fixture(scope="module")
def server(tiny_model: Path):
    started = VLLMServer(str(tiny_model), max_model_len=512)
    yield started
    started.stop()


def prompts(count: int, start: int = 0) -> list[Prompt]:
    return [Prompt(f"Tell me about thing {i}.", "test") for i in range(start, start + count)]


def test_server_backend_stores_what_the_offline_engine_stores(server, tiny_model: Path,
                                                              tmp_path: Path) -> None:
    rows = {}
    for backend in ("vllm", "openai"):
        catalog = Catalog(tmp_path / f"{backend}.duckdb").ensure()
        teacher = teachers.add_teacher(catalog, "tiny", str(tiny_model), "mit")
        engine = OpenAIEngine(teacher.model, None, [server.url]) if backend == "openai" else None
        summary = generate(catalog, teacher, prompts(6), SAMPLING, engine=engine,
                           backend=backend, progress=False)
        assert summary["responses_stored"] == 6 and summary["failed"] == 0
        rows[backend] = catalog.rows("SELECT request_key, text, token_ids, finish_reason,"
                                     " prompt_tokens FROM responses ORDER BY request_key")
    assert rows["openai"] == rows["vllm"]


def test_faulty_endpoints_lose_nothing_and_rerun_retries_only_failures(
        server, tiny_model: Path, tmp_path: Path) -> None:
    # The client timeout is far above a real answer (well under 1 s) even on a loaded machine,
    # and the injected hang is longer still: only injected faults can fail a request.
    proxies = [FaultyProxy(server.url, fault_rate=0.2, hang_s=12.0, seed=s) for s in (1, 2)]
    try:
        catalog = Catalog(tmp_path / "catalog.duckdb").ensure()
        teacher = teachers.add_teacher(catalog, "tiny", str(tiny_model), "mit")
        batch = prompts(40)
        fragile = OpenAIEngine(teacher.model, None, [p.url for p in proxies], timeout=10.0,
                               max_retries=0, concurrency=4)
        first = generate(catalog, teacher, batch, SAMPLING, engine=fragile, batch_size=8,
                         progress=False)
        assert first["failed"] > 0
        assert first["responses_stored"] + first["failed"] == 40
        assert all(p.requests > 5 for p in proxies)  # spread over both endpoints
        assert sum(sum(p.faults.values()) for p in proxies) >= first["failed"]
        reasons = {r["reason"].split(":")[0] for r in catalog.rows(
            "SELECT reason FROM request_failures")}
        assert reasons <= {"RetryableError", "ReadTimeout", "RemoteProtocolError"} and reasons

        sturdy = OpenAIEngine(teacher.model, None, [p.url for p in proxies], timeout=10.0,
                              max_retries=6, backoff=0.05, concurrency=4)
        second = generate(catalog, teacher, batch, SAMPLING, engine=sturdy, progress=False)
        assert second["cache_hits"] == first["responses_stored"]
        assert second["requests_sent"] == first["failed"]
        assert second["failed"] == 0
        assert catalog.scalar("SELECT count(DISTINCT request_key) FROM responses") == 40
        assert catalog.scalar("SELECT count(*) FROM responses") == 40

        more = generate(catalog, teacher, prompts(30, start=100), SAMPLING, engine=sturdy,
                        progress=False)
        assert more["failed"] == 0 and more["responses_stored"] == 30 and more["retries"] > 0
    finally:
        for p in proxies:
            p.close()


def test_api_key_comes_from_the_environment_and_is_never_stored(
        server, tiny_model: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TEACHER_KEY", "sk-secret-123")
    catalog = Catalog(tmp_path / "catalog.duckdb").ensure()
    teacher = teachers.add_teacher(catalog, "tiny", str(tiny_model), "mit")
    engine = OpenAIEngine(teacher.model, None, [server.url], api_key_env="TEACHER_KEY")
    generate(catalog, teacher, prompts(2), SAMPLING, engine=engine, progress=False)
    dump = json.dumps(catalog.rows("SELECT * FROM runs"), default=str)
    dump += json.dumps(catalog.rows("SELECT sampling, text FROM responses"), default=str)
    assert "sk-secret" not in dump
    monkeypatch.delenv("TEACHER_KEY")
    with pytest.raises(Exception, match="TEACHER_KEY is not set"):
        OpenAIEngine(teacher.model, None, [server.url], api_key_env="TEACHER_KEY")

