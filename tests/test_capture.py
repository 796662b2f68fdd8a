"""How rows were captured: the manifest's capture record, k above vLLM's default, raw
logprobs on both engines, and prompts tokenised once, as training re-tokenises them."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch

from stillroom.catalog import Catalog
from stillroom.errors import StillroomError
from stillroom.hashing import content_hash
from stillroom.tasks import compat, datasets, soft_labels, teachers
from stillroom.tasks.curation import CurationConfig, curate
from stillroom.tasks.engine import SamplingConfig, close_engine, engine_for, package_version
from stillroom.tasks.generate import generate, request_key
from stillroom.tasks.prompts import Prompt
from stillroom.tasks.training import TrainConfig, train

CURATION = CurationConfig({"empty": {}}, {"exact": {}})
TOPICS = ("tea", "rain", "foxes", "maps", "tides", "glass")
# Sampled, not greedy: processed logprobs (after temperature and top-p) would differ from raw.
HOT = {"temperature": 1.5, "top_p": 0.8, "seed": 3, "max_tokens": 8}
BOS_TEMPLATE = ("{{ bos_token }}{% for m in messages %}{{ m['content'] }}\n{% endfor %}"
                "{% if add_generation_prompt %}Answer:{% endif %}")


def prompts(topics: tuple[str, ...]) -> list[Prompt]:
    return [Prompt(f"Tell me about {topic}.", "test") for topic in topics]


def raw_logprobs(model_dir: Path, rows: list[dict]) -> list[torch.Tensor]:
    """Per row, log_softmax of the model's unmodified logits at each generated position."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    lm = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    out = []
    with torch.inference_mode():
        for row in rows:
            ids = compat.prompt_ids(tokenizer, row["rendered_prompt"])
            logits = lm(torch.tensor([ids + list(row["token_ids"])])).logits[0]
            out.append(logits[len(ids) - 1:len(ids) - 1 + row["output_tokens"]].log_softmax(-1))
    return out


def test_an_engine_started_for_fewer_logprobs_refuses_a_wider_k(tiny_model: Path,
                                                                 tmp_path: Path) -> None:
    catalog = Catalog(tmp_path / "catalog.duckdb").ensure()
    teacher = teachers.add_teacher(catalog, "tiny", str(tiny_model), "apache-2.0")
    close_engine()  # whatever an earlier test left: this one is built for vLLM's default
    engine = engine_for(str(tiny_model))
    assert engine.max_logprobs == 20
    with pytest.raises(StillroomError) as refused:
        generate(catalog, teacher, prompts(TOPICS[:1]), SamplingConfig(logprobs_k=21),
                 engine=engine, progress=False)
    assert refused.value.where == "sampling.logprobs_k"
    assert catalog.scalar("SELECT count(*) FROM responses") == 0


def test_a_mixed_dataset_lists_each_capture_with_its_rows_and_raw_logprobs(
        tiny_model: Path, tmp_path: Path) -> None:
    """vLLM at k=5, then the same cached engine asked for k=32 (above vLLM's default of 20:
    it must be restarted for it), then transformers at k=5; the version cut from all of it
    names each capture, as recorded at generation, with its row count."""
    catalog = Catalog(tmp_path / "catalog.duckdb").ensure()
    teacher = teachers.add_teacher(catalog, "tiny", str(tiny_model), "apache-2.0")
    generate(catalog, teacher, prompts(TOPICS[:2]), SamplingConfig(logprobs_k=5, **HOT),
             progress=False)
    wide = generate(catalog, teacher, prompts(TOPICS[2:4]), SamplingConfig(logprobs_k=32, **HOT),
                    progress=False)
    assert wide["responses_stored"] == 2
    assert engine_for(str(tiny_model)).max_logprobs >= 32  # the cached engine, rebuilt for 32
    generate(catalog, teacher, prompts(TOPICS[4:]), SamplingConfig(logprobs_k=5, **HOT),
             backend="transformers", progress=False)
    with catalog.write() as conn:  # the registry changing later does not rewrite the record
        conn.execute("UPDATE teachers SET revision = 'changed-since'")
    curate(catalog, CURATION, "test")
    manifest = datasets.manifest(catalog, datasets.cut(catalog, CURATION)["dataset_id"])

    [entry] = manifest["teachers"]
    from transformers import AutoTokenizer

    common = {"logprob_mode": "raw", "soft_label_codec": soft_labels.VERSION, "revision": None,
              "tokenizer_hash": compat.tokenizer_fingerprint(
                  AutoTokenizer.from_pretrained(tiny_model)),
              "prompt_tokenisation": compat.PROMPT_TOKENISATION}
    vllm_version = package_version("vllm")
    assert sorted(entry["capture"], key=lambda c: (c["engine"], c["k"])) == [
        {**common, "engine": "transformers", "engine_version": package_version("transformers"),
         "k": 5, "rows": 2},
        {**common, "engine": "vllm", "engine_version": vllm_version, "k": 5, "rows": 2},
        {**common, "engine": "vllm", "engine_version": vllm_version, "k": 32, "rows": 2}]

    rows = catalog.rows("SELECT rendered_prompt, token_ids, output_tokens, soft_labels, topk_k"
                        " FROM responses ORDER BY response_id")
    for row, reference in zip(rows, raw_logprobs(tiny_model, rows), strict=True):
        labels = soft_labels.decode_labels(row["soft_labels"])
        assert all(len(step) == row["topk_k"] for step in labels.ids)
        stored = torch.tensor(labels.logprobs)
        expected = reference.gather(1, torch.tensor(labels.ids))
        assert (stored - expected).abs().max() <= 1 / 64 + 1e-3  # the codec's rounding only


@pytest.fixture(scope="module")
def bos_chat_model(tiny_model: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny model with a chat template that writes `<bos>` itself (Gemma-it style)."""
    model = tmp_path_factory.mktemp("bos-chat") / "model"
    shutil.copytree(tiny_model, model)
    config_path = model / "tokenizer_config.json"
    config = json.loads(config_path.read_text())
    config["chat_template"] = BOS_TEMPLATE
    config_path.write_text(json.dumps(config))
    return model


@pytest.mark.parametrize("backend", ["vllm", "transformers", "vllm-server"])
def test_a_template_that_writes_bos_gets_one_bos_and_training_accepts_the_rows(
        bos_chat_model: Path, tmp_path: Path, backend: str) -> None:
    from transformers import AutoTokenizer

    catalog = Catalog(tmp_path / "catalog.duckdb").ensure()
    teacher = teachers.add_teacher(catalog, "bos-chat", str(bos_chat_model), "apache-2.0")
    generate(catalog, teacher, prompts(TOPICS), SamplingConfig(max_tokens=8, logprobs_k=5),
             backend=backend, progress=False)
    tokenizer = AutoTokenizer.from_pretrained(bos_chat_model)
    rows = catalog.rows("SELECT rendered_prompt, prompt_tokens FROM responses")
    assert len(rows) == len(TOPICS)
    for row in rows:
        assert row["rendered_prompt"].startswith("<bos>Tell me about")
        doubled = tokenizer(row["rendered_prompt"]).input_ids
        assert doubled[:2] == [tokenizer.bos_token_id] * 2  # what the engines used to send
        assert row["prompt_tokens"] == len(doubled) - 1  # one BOS
    curate(catalog, CURATION, "test")
    dataset_id = datasets.cut(catalog, CURATION)["dataset_id"]
    summary = train(bos_chat_model, datasets.load(catalog, dataset_id),
                    TrainConfig(max_steps=1, batch_size=4), tmp_path / "student",
                    progress=False, teacher_model=str(bos_chat_model))
    assert summary["compatibility"]["bos"]["prompt_length_mismatches"] == 0


def test_only_prompts_the_tokenisation_rule_changed_get_new_request_keys(
        tiny_model: Path, bos_chat_model: Path, tmp_path: Path) -> None:
    """Rows generated on a doubled BOS are asked again; every other row keeps its key."""
    from transformers import AutoTokenizer

    catalog = Catalog(tmp_path / "catalog.duckdb").ensure()
    sampling = SamplingConfig(max_tokens=8, logprobs_k=5)
    for model in (tiny_model, bos_chat_model):
        teacher = teachers.add_teacher(catalog, model.name, str(model), "apache-2.0")
        tokenizer = AutoTokenizer.from_pretrained(model)
        rendered = engine_for(str(model), backend="transformers").render(prompts(("tea",))[0])
        tag = compat.tokenisation_tag(tokenizer, rendered)
        before = content_hash(teacher.teacher_id, teacher.revision, rendered,
                              sampling.as_dict())  # the key before the rule was recorded
        generate(catalog, teacher, prompts(("tea",)), sampling, backend="transformers",
                 progress=False)
        stored = catalog.scalar("SELECT request_key FROM responses WHERE teacher_id = ?",
                                [teacher.teacher_id])
        assert stored == request_key(teacher, rendered, sampling, tag)
        if model == tiny_model:  # no BOS in the text: tokenised as before, same key
            assert tag is None and stored == before
        else:
            assert tag == compat.PROMPT_TOKENISATION and stored != before


def test_rows_generated_before_capture_records_are_listed_as_unrecorded(
        tiny_model: Path, tmp_path: Path) -> None:
    catalog = Catalog(tmp_path / "catalog.duckdb").ensure()
    teacher = teachers.add_teacher(catalog, "tiny", str(tiny_model), "apache-2.0")
    generate(catalog, teacher, prompts(TOPICS[:3]), SamplingConfig(max_tokens=8, logprobs_k=4),
             backend="transformers", progress=False)
    generate(catalog, teacher, prompts(TOPICS[3:]), SamplingConfig(max_tokens=8, logprobs_k=0),
             backend="transformers", progress=False)
    with catalog.write() as conn:  # as a catalog migrated from before the captures table
        conn.execute("DELETE FROM captures")
    curate(catalog, CURATION, "test")
    manifest = datasets.manifest(catalog, datasets.cut(catalog, CURATION)["dataset_id"])
    assert manifest["teachers"][0]["capture"] == [
        {"engine": None, "k": 0, "soft_label_codec": None, "rows": 3},
        {"engine": None, "k": 4, "soft_label_codec": soft_labels.VERSION, "rows": 3}]
