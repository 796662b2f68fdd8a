"""Each stored latency is its own request's, from submission to completion, not the time
since the run started."""

from __future__ import annotations

import time
from pathlib import Path

from stillroom.catalog import Catalog
from stillroom.tasks import teachers
from stillroom.tasks.engine import SamplingConfig, engine_for
from stillroom.tasks.generate import generate
from stillroom.tasks.prompts import Prompt

SAMPLING = SamplingConfig(max_tokens=24, logprobs_k=2)


def test_offline_engine_times_each_request_from_its_enqueueing(tiny_model: Path) -> None:
    """Two in flight at a time: later requests are enqueued as earlier ones finish, so their
    latency is well short of the time since the stream began."""
    engine = engine_for(str(tiny_model))
    texts = [f"Tell me about thing number {i}." for i in range(8)]
    started = time.monotonic()
    seen = []
    for index, samples in engine.stream(texts, SAMPLING, max_in_flight=2):
        seen.append((index, samples[0].latency_s, time.monotonic() - started))
    assert sorted(index for index, _, _ in seen) == list(range(8))
    assert all(0 < latency <= since for _, latency, since in seen)
    *_, (_, last_latency, last_since) = seen
    assert last_latency < 0.6 * last_since  # enqueued after three waves had finished


def test_generate_stores_each_completions_own_latency(tiny_model: Path, tmp_path: Path) -> None:
    catalog = Catalog(tmp_path / "catalog.duckdb").ensure()
    teacher = teachers.add_teacher(catalog, "tiny", str(tiny_model), "mit")
    prompts = [Prompt(f"Tell me about thing {i}.", "test") for i in range(4)]
    generate(catalog, teacher, prompts, SAMPLING, backend="transformers", progress=False)
    latencies = {r["latency_s"] for r in catalog.rows("SELECT latency_s FROM responses")}
    assert len(latencies) == 1  # one transformers batch: submitted and completed together
    assert 0 < latencies.pop() < catalog.scalar("SELECT json_extract(summary, '$.seconds')"
                                                "::DOUBLE FROM runs")
