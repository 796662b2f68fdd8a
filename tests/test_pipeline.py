"""The stages on a real engine: vLLM generation with top-k, resume, dedupe, versions, training."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest
import torch

from stillroom.catalog import Catalog
from stillroom.tasks import datasets, soft_labels, teachers
from stillroom.tasks.curation import CurationConfig
from stillroom.tasks.dedupe import dedupe
from stillroom.tasks.engine import SamplingConfig, engine_for
from stillroom.tasks.filters import apply_filters
from stillroom.tasks.generate import generate
from stillroom.tasks.prompts import Prompt
from stillroom.tasks.students import provenance, train_student
from stillroom.tasks.training import TrainConfig, distillation_loss

FILTERS = {"empty": {}, "truncated": {}, "repetition": {}, "length": {}}
CURATION = CurationConfig(FILTERS, {"exact": {}, "near": {}})
PROMPTS = [Prompt(f"Tell me about {topic}.", "test") for topic in
           ("tides", "rust", "tea", "foxes", "maps", "rain", "bread", "glass")]
GREEDY = SamplingConfig(max_tokens=24, logprobs_k=5)


@pytest.fixture(scope="module")
def generated(tiny_model: Path, tmp_path_factory: pytest.TempPathFactory):
    catalog = Catalog(tmp_path_factory.mktemp("pipeline") / "catalog.duckdb").ensure()
    teacher = teachers.add_teacher(catalog, "tiny", str(tiny_model), "apache-2.0",
                                   gpu_hour_usd=1.0)
    first = generate(catalog, teacher, PROMPTS, GREEDY, batch_size=3, progress=False)
    return catalog, teacher, first


def test_generation_stores_every_token_with_its_top_k(generated) -> None:
    catalog, _, first = generated
    assert first["requests_sent"] == len(PROMPTS) and first["responses_stored"] == len(PROMPTS)
    assert first["failed"] == 0 and first["usd"] > 0
    assert catalog.scalar("SELECT sum(usd) FROM responses") == pytest.approx(first["usd"], abs=1e-6)
    assert 0 < first["topk_bytes_per_entry"] < 4
    rows = catalog.rows("SELECT token_ids, soft_labels, output_tokens, prompt_tokens, sampling"
                        " FROM responses")
    for row in rows:
        row["topk_ids"], row["topk_logprobs"] = soft_labels.decode(row["soft_labels"])
        assert row["output_tokens"] == len(row["token_ids"]) == len(row["topk_ids"]) > 0
        assert row["prompt_tokens"] > 0
        for token, ids, lps in zip(row["token_ids"], row["topk_ids"], row["topk_logprobs"],
                                   strict=True):
            assert len(ids) == len(lps) == 5
            assert ids[0] == token  # greedy: the chosen token is the teacher's top-1
            assert all(a >= b for a, b in zip(lps, lps[1:], strict=False)) and lps[0] <= 0
        assert json.loads(row["sampling"])["logprobs_k"] == 5


def test_rerun_sends_only_missing_requests(generated) -> None:
    catalog, teacher, _ = generated
    again = generate(catalog, teacher, PROMPTS + [Prompt("One more?", "test")], GREEDY,
                     progress=False)
    assert again["cache_hits"] == len(PROMPTS) and again["requests_sent"] == 1
    assert catalog.scalar("SELECT count(*) FROM responses") == len(PROMPTS) + 1


def test_filters_and_dedupe_across_runs(generated) -> None:
    catalog, teacher, _ = generated
    # A new seed is a new request key, but greedy decoding repeats every text exactly.
    reseeded = SamplingConfig(**{**GREEDY.as_dict(), "stop": GREEDY.stop, "seed": 1})
    generate(catalog, teacher, PROMPTS, reseeded, progress=False)
    apply_filters(catalog, FILTERS, run_id="test")
    result = dedupe(catalog, list(FILTERS), CURATION.hashes, CURATION.dedupe, run_id="test")
    assert result["exact"]["dropped"] >= len(PROMPTS)
    reasons = catalog.rows("SELECT reason FROM verdicts WHERE stage = 'dedupe:exact'"
                           " AND NOT keep")
    assert reasons and all(r["reason"].startswith("exact duplicate of ") for r in reasons)
    links = catalog.scalar("SELECT count(*) FROM duplicate_links WHERE stage = 'dedupe:exact'")
    assert links == len(reasons)
    assert result["near"]["judged"] == result["exact"]["judged"] - result["exact"]["dropped"]
    again = dedupe(catalog, list(FILTERS), CURATION.hashes, CURATION.dedupe, run_id="test")
    assert all(stage["judged"] == 0 for stage in again.values())  # verdicts are final


def test_dataset_version_is_immutable_and_loadable(generated, tmp_path: Path) -> None:
    catalog, _, _ = generated
    version = datasets.cut(catalog, CURATION, name="tiny-v1")
    assert version["created"] and version["rows"] > 0
    assert datasets.cut(catalog, CURATION, name="tiny-v1")["created"] is False
    data = datasets.load(catalog, version["dataset_id"])
    assert len(data) == version["rows"]
    assert {"prompt", "response", "token_ids", "topk_ids", "topk_logprobs"} <= set(data.features)
    manifest = datasets.manifest(catalog, version["dataset_id"])
    assert manifest["teachers"][0]["license"] == "apache-2.0"
    spent = catalog.scalar("SELECT sum(usd) FROM responses")
    assert manifest["cost"]["generation_usd"] == pytest.approx(spent)  # dropped rows count too
    assert version["usd_per_accepted_row"] == pytest.approx(spent / version["rows"])
    assert sorted(manifest["row_ids"]) == sorted(data["response_id"])
    path = datasets.export(catalog, version["dataset_id"], tmp_path, "jsonl")
    first = json.loads(path.read_text().splitlines()[0])
    assert [m["role"] for m in first["messages"]] == ["user", "assistant"]


def test_training_lowers_the_loss_and_records_provenance(generated, home: Path) -> None:
    catalog, _, _ = generated
    dataset_id = datasets.cut(catalog, CURATION)["dataset_id"]
    summary = train_student(catalog, dataset_id, "tiny-student", layers=2,
                            config=TrainConfig(epochs=6, batch_size=4, lr=3e-3), progress=False)
    assert summary["last_loss"] < summary["first_loss"]
    record = provenance(catalog, "tiny-student")
    assert record["dataset_id"] == dataset_id
    assert record["provenance"]["teachers"][0]["name"] == "tiny"
    assert record["provenance"]["layers"] == [0, 3]
    assert (Path(record["path"]) / "config.json").exists()
    assert "apache-2.0" in (Path(record["path"]) / "README.md").read_text()
    init = provenance(catalog, "tiny-student-init")
    assert init["dataset_id"] is None


def test_kd_term_vanishes_when_student_matches_teacher() -> None:
    vocab, k = 10, 3
    teacher_logits = torch.randn(4, vocab)
    top = teacher_logits.log_softmax(-1).topk(k)
    batch = {"targets": top.indices[:, 0], "kd_ids": top.indices, "kd_logprobs": top.values,
             "kd_mask": torch.ones(4, dtype=torch.bool)}
    # With a tail bucket a matching student needs the teacher's full logits: a student that
    # puts no mass outside the top-k no longer matches a teacher that does.
    _, parts = distillation_loss(teacher_logits, batch, TrainConfig(kd_weight=1.0))
    assert parts["kd"] == pytest.approx(0.0, abs=1e-5)
    _, parts = distillation_loss(torch.zeros(4, vocab), batch, TrainConfig(kd_weight=1.0))
    assert parts["kd"] > 0.01


def test_engine_tokenizer_copies_share_one_rust_tokenizer(generated) -> None:
    """vLLM's renderer deep-copies its tokenizer per thread; the offline engine's copies
    share the Rust tokenizer (seconds of every start for a large vocabulary)."""
    _, teacher, _ = generated
    tokenizer = engine_for(teacher.model, teacher.revision).tokenizer
    clone = copy.deepcopy(tokenizer)
    assert clone is not tokenizer and clone._tokenizer is tokenizer._tokenizer
    ids = clone.encode("Tell me about tides.")
    assert ids == tokenizer.encode("Tell me about tides.") and clone.decode(ids)


def test_chat_template_is_applied_where_the_tokenizer_has_one(tiny_model: Path,
                                                              tmp_path: Path) -> None:
    import shutil

    chat_model = tmp_path / "tiny-chat"
    shutil.copytree(tiny_model, chat_model)
    config_path = chat_model / "tokenizer_config.json"
    config = json.loads(config_path.read_text())
    config["chat_template"] = ("{% for m in messages %}<|{{ m['role'] }}|>{{ m['content'] }}\n"
                               "{% endfor %}{% if add_generation_prompt %}<|assistant|>{% endif %}")
    config_path.write_text(json.dumps(config))
    catalog = Catalog(tmp_path / "catalog.duckdb").ensure()
    teacher = teachers.add_teacher(catalog, "chatty", str(chat_model), "mit")
    chat = Prompt(json.dumps([{"role": "system", "content": "Be brief."},
                              {"role": "user", "content": "Tell me about tea."}]), "test",
                  is_chat=True)
    generate(catalog, teacher, [chat, Prompt("Tell me about rain.", "test")],
             SamplingConfig(max_tokens=4, logprobs_k=2), progress=False)
    rendered = sorted(r["rendered_prompt"] for r in catalog.rows(
        "SELECT rendered_prompt FROM responses"))
    assert rendered == ["<|system|>Be brief.\n<|user|>Tell me about tea.\n<|assistant|>",
                        "<|user|>Tell me about rain.\n<|assistant|>"]


def test_vllm_and_transformers_store_the_same_rows(tiny_model: Path, tmp_path: Path) -> None:
    prompts = PROMPTS[:5] + [Prompt("Question: What is 3 + 4?\nAnswer:", "test")]
    stored = {}
    for backend in ("vllm", "transformers"):
        catalog = Catalog(tmp_path / f"{backend}.duckdb").ensure()
        teacher = teachers.add_teacher(catalog, "tiny", str(tiny_model), "mit")
        for sampling in (GREEDY, SamplingConfig(max_tokens=24, logprobs_k=5, stop=(" is",))):
            generate(catalog, teacher, prompts, sampling, backend=backend, progress=False)
        stored[backend] = catalog.rows(
            "SELECT request_key, text, token_ids, finish_reason, prompt_tokens, soft_labels"
            " FROM responses ORDER BY request_key")
    assert len(stored["vllm"]) == 2 * len(prompts)
    for a, b in zip(stored["vllm"], stored["transformers"], strict=True):
        assert (a["request_key"], a["text"], a["token_ids"], a["finish_reason"],
                a["prompt_tokens"]) == (b["request_key"], b["text"], b["token_ids"],
                                        b["finish_reason"], b["prompt_tokens"])
        ids_a, lps_a = soft_labels.decode(a["soft_labels"])
        ids_b, lps_b = soft_labels.decode(b["soft_labels"])
        assert [ids[:3] for ids in ids_a] == [ids[:3] for ids in ids_b]
        assert max(abs(x - y) for row_a, row_b in zip(lps_a, lps_b, strict=True)
                   for x, y in zip(row_a[:3], row_b[:3], strict=True)) <= 1 / 32


def test_several_samples_per_prompt_with_a_seed(generated) -> None:
    catalog, teacher, _ = generated
    sampling = SamplingConfig(n=3, temperature=1.0, top_p=0.9, seed=7, max_tokens=8,
                              logprobs_k=2)
    summary = generate(catalog, teacher, PROMPTS[:2], sampling, progress=False)
    assert summary["responses_stored"] == 6
    rows = catalog.rows("SELECT sample_index, sampling FROM responses"
                        " WHERE json_extract(sampling, '$.n') = 3 ORDER BY sample_index")
    assert [r["sample_index"] for r in rows] == [0, 0, 1, 1, 2, 2]
    recorded = json.loads(rows[0]["sampling"])
    assert (recorded["temperature"], recorded["top_p"], recorded["seed"]) == (1.0, 0.9, 7)
