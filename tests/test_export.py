"""Dataset export: every format carries the original conversation, the prompt as the
teacher saw it, tokens, soft labels and per-row provenance, and loads back row by row."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from stillroom.catalog import Catalog, insert_records
from stillroom.errors import StillroomError
from stillroom.hashing import content_hash
from stillroom.tasks import datasets, soft_labels
from stillroom.tasks.curation import CurationConfig, curate
from stillroom.tasks.generate import ResponseRow
from stillroom.tasks.prompts import Prompt, store_prompts
from stillroom.tasks.teachers import add_teacher

CHAT = [{"role": "system", "content": "You are terse."},
        {"role": "user", "content": "Name a prime."},
        {"role": "assistant", "content": "2."},
        {"role": "user", "content": "Another one?"}]
PLAIN = "Tell me about tides."


def rendered(messages: list[dict]) -> str:
    """A stand-in chat template: what the teacher was sent, unlike the messages themselves."""
    return "".join(f"<|{m['role']}|>{m['content']}\n" for m in messages) + "<|assistant|>"


@pytest.fixture
def version(catalog: Catalog) -> str:
    """Two teachers under different licenses; a multi-turn chat prompt with a system turn
    and a plain prompt; responses with soft labels; a version cut by the real curation."""
    teachers = [add_teacher(catalog, "open-a", "acme/open-a", "apache-2.0", revision="r1"),
                add_teacher(catalog, "open-b", "acme/open-b", "mit")]
    prompts = [Prompt(json.dumps(CHAT), "seed", is_chat=True), Prompt(PLAIN, "seed")]
    store_prompts(catalog, prompts)
    records = []
    for i, (prompt, teacher) in enumerate(zip(prompts, teachers, strict=True)):
        ids = [[10 + i, 11, 12], [13, 14 + i, 15]]
        lps = [[-0.25, -1.5, -3.0], [-0.5, -2.0, -2.5]]
        text = f"answer {i}"
        records.append(ResponseRow(
            response_id=content_hash("row", i), request_key=content_hash("key", i),
            sample_index=0, prompt_id=prompt.prompt_id, teacher_id=teacher.teacher_id,
            rendered_prompt=rendered(prompt.messages), text=text, prompt_tokens=9,
            output_tokens=2, finish_reason="stop", token_ids=[10 + i, 14 + i],
            soft_labels=soft_labels.encode(ids, lps), topk_k=3, sampling="{}", latency_s=0.1,
            usd=0.01, run_id="test"))
    with catalog.write() as conn:
        insert_records(conn, "responses", records)
    config = CurationConfig({"empty": {}}, {"exact": {}})
    curate(catalog, config, run_id="test")
    return datasets.cut(catalog, config, name="export-test")["dataset_id"]


def expected_rows(dataset_id: str) -> list[dict]:
    conversations = [CHAT, [{"role": "user", "content": PLAIN}]]
    return [{
        "response_id": content_hash("row", i),
        "messages": [*conversation, {"role": "assistant", "content": f"answer {i}"}],
        "rendered_prompt": rendered(conversation), "response": f"answer {i}",
        "finish_reason": "stop", "token_ids": [10 + i, 14 + i],
        "topk_ids": [[10 + i, 11, 12], [13, 14 + i, 15]],
        "topk_logprobs": [[-0.25, -1.5, -3.0], [-0.5, -2.0, -2.5]],
        "teacher": teacher, "teacher_model": f"acme/{teacher}", "teacher_revision": revision,
        "license": license_id, "dataset_id": dataset_id}
        for i, (conversation, teacher, revision, license_id) in enumerate(
            [(CHAT, "open-a", "r1", "apache-2.0"), (conversations[1], "open-b", None, "mit")])]


def test_jsonl_is_the_original_conversation_with_provenance(catalog: Catalog, version: str,
                                                            tmp_path: Path) -> None:
    path = datasets.export(catalog, version, tmp_path, "jsonl")
    lines = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]
    keys = set(datasets.JSONL_COLUMNS)
    assert lines == [{k: v for k, v in row.items() if k in keys}
                     for row in expected_rows(version)]
    # the system turn and the earlier turns survive; the template is not applied twice
    assert [m["role"] for m in lines[0]["messages"]] == [
        "system", "user", "assistant", "user", "assistant"]
    assert not any("<|" in m["content"] for line in lines for m in line["messages"])
    assert json.loads((tmp_path / "manifest.json").read_text())["dataset_id"] == version


@pytest.mark.parametrize("fmt", ["parquet", "hf"])
def test_parquet_and_hf_load_back_row_by_row(catalog: Catalog, version: str, tmp_path: Path,
                                             fmt: str) -> None:
    import datasets as hf

    path = datasets.export(catalog, version, tmp_path, fmt)
    data = hf.Dataset.from_parquet(str(path)) if fmt == "parquet" else hf.load_from_disk(
        str(path))
    rows = [{k: row[k] for k in expected_rows(version)[0]} for row in data]
    assert rows == expected_rows(version)
    assert "prompt_id" in data.column_names and "teacher_id" in data.column_names


def test_unknown_format_writes_nothing(catalog: Catalog, version: str, tmp_path: Path) -> None:
    with pytest.raises(StillroomError, match="unknown format 'csv'"):
        datasets.export(catalog, version, tmp_path / "out", "csv")
    assert not (tmp_path / "out").exists()



def _snapshot(out: Path) -> dict[str, bytes]:
    return {str(p.relative_to(out)): p.read_bytes() for p in sorted(out.rglob("*"))
            if p.is_file()}


@pytest.mark.parametrize("fmt", ["jsonl", "parquet", "hf"])
def test_a_failed_export_leaves_the_previous_one_whole(catalog: Catalog, version: str,
                                                       tmp_path: Path, fmt: str,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    """The writer dies after writing part of its output: the previous export stays byte for
    byte, and nothing half-written is left beside it."""
    import datasets as hf_datasets

    out = tmp_path / "out"
    datasets.export(catalog, version, out, fmt)
    before = _snapshot(out)

    def half_then_fail(path: str) -> None:
        target = Path(path) / "data-00000-of-00001.arrow" if fmt == "hf" else Path(path)
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text("half")
        raise OSError("disk full")

    if fmt == "jsonl":
        real_dumps, calls = json.dumps, []

        def dumps(value, *args, **kwargs):
            if isinstance(value, dict) and "messages" in value:  # an exported row
                calls.append(1)
                if len(calls) > 1:
                    raise OSError("disk full")
            return real_dumps(value, *args, **kwargs)
        monkeypatch.setattr(datasets.json, "dumps", dumps)
    else:
        method = "to_parquet" if fmt == "parquet" else "save_to_disk"
        monkeypatch.setattr(hf_datasets.Dataset, method,
                            lambda self, path, *a, **k: half_then_fail(path))
    with pytest.raises(OSError, match="disk full"):
        datasets.export(catalog, version, out, fmt)
    assert _snapshot(out) == before
