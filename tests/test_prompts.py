"""Prompt sources and their errors (each names the file and line)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from stillroom.catalog import Catalog
from stillroom.errors import StillroomError
from stillroom.tasks.prompts import load_prompts, store_prompts


def write(path: Path, text: str) -> str:
    path.write_text(text)
    return str(path)


def test_grid_is_every_template_with_every_topic(tmp_path: Path) -> None:
    spec = write(tmp_path / "p.yaml", "grid:\n  templates: ['Explain {topic}.', 'Why {topic}?']\n"
                                      "  topics: [tides, rust, tea]\n")
    prompts = load_prompts(spec)
    assert len(prompts) == 6
    assert {p.meta["topic"] for p in prompts} == {"tides", "rust", "tea"}
    assert prompts[0].text == "Explain tides."


def test_jsonl_seeds_plain_and_chat(tmp_path: Path, catalog: Catalog) -> None:
    lines = [json.dumps({"prompt": "Say hi", "topic": "greeting"}),
             "",
             json.dumps({"messages": [{"role": "user", "content": "Hello?"}]})]
    prompts = load_prompts(write(tmp_path / "s.jsonl", "\n".join(lines)))
    assert [p.is_chat for p in prompts] == [False, True]
    assert prompts[0].meta == {"topic": "greeting"}
    assert store_prompts(catalog, prompts) == 2
    assert store_prompts(catalog, prompts) == 0  # content-hash keys: idempotent


def test_reasoning_gym_prompts_keep_answers() -> None:
    prompts = load_prompts("reasoning_gym:gcd:5:7")
    assert len(prompts) == 5 and all(p.task == "gcd" for p in prompts)
    assert all("answer" in p.reference and p.text.endswith("Answer:") for p in prompts)
    assert load_prompts("reasoning_gym:gcd:5:7")[0].prompt_id == prompts[0].prompt_id


@pytest.mark.parametrize("name, text, message", [
    ("empty.jsonl", "", "no prompts in file"),
    ("bad.jsonl", '{"prompt": "ok"}\n{"prompt": \n', "bad.jsonl:2: not valid JSON"),
    ("wrong.jsonl", '{"prompt": "ok"}\n{"text": "no"}\n', "wrong.jsonl:2: needs a non-empty"),
    ("bad.yaml", "grid:\n  templates: [a\n", "bad.yaml:3: malformed YAML"),
    ("notopic.yaml", "grid:\n  templates: ['no slot']\n  topics: [x]\n", "containing {topic}"),
    ("extra.yaml", "grid: {templates: ['{topic}'], topics: [x]}\nbogus: 1\n", "unknown keys"),
    ("task.yaml", "reasoning_gym:\n  - task: no_such_task\n", "reasoning_gym[0]"),
    ("p.txt", "hello", "prompt files are .jsonl or .yaml"),
])
def test_bad_prompt_files_name_file_and_line(tmp_path: Path, name: str, text: str,
                                             message: str) -> None:
    with pytest.raises(StillroomError, match=message.replace("[", r"\[").replace("{", r"\{")):
        load_prompts(write(tmp_path / name, text))


def test_missing_prompt_file() -> None:
    with pytest.raises(StillroomError, match="no such prompt file"):
        load_prompts("/nope/prompts.jsonl")
