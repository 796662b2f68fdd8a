"""Prompt sources and their errors (each names the file and line)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from stillroom.catalog import Catalog
from stillroom.errors import StillroomError
from stillroom.tasks.prompts import load_prompts, store_prompts, store_rejected


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


def test_task_prompts_keep_answers() -> None:
    prompts = load_prompts("reasoning_gym:gcd:5:7")
    assert len(prompts) == 5 and all(p.task == "gcd" for p in prompts)
    assert all("answer" in p.reference and p.text.endswith("Answer:") for p in prompts)
    assert load_prompts("reasoning_gym:gcd:5:7")[0].prompt_id == prompts[0].prompt_id


@pytest.mark.parametrize("name, text, message", [
    ("empty.jsonl", "", "empty.jsonl: no usable prompts"),
    ("bad.jsonl", '{"prompt": "ok"}\n{"prompt": \n', "bad.jsonl:2: not valid JSON"),
    ("wrong.jsonl", '{"prompt": "ok"}\n{"text": "no"}\n', "wrong.jsonl:2: needs a JSON object"),
    ("axis.yaml", "grid:\n  templates: ['{topic} as {persona}']\n  topics: [x]\n",
     "uses {persona} but the grid has no 'personas' list"),
    ("seed.yaml", "seeds:\n  - jsonl: missing.jsonl\n", "seeds[0]: no such jsonl seed"),
    ("cb.yaml", "seeds:\n  - chatterbot: [nope]\n", "unknown categories ['nope']"),
    ("bad.yaml", "grid:\n  templates: [a\n", "bad.yaml:3: malformed YAML"),
    ("notopic.yaml", "grid:\n  templates: ['no slot']\n  topics: [x]\n", "containing {topic}"),
    ("extra.yaml", "grid: {templates: ['{topic}'], topics: [x]}\nbogus: 1\n", "unknown keys"),
    ("task.yaml", "reasoning_gym:\n  - task: no_such_task\n", "reasoning_gym[0]"),
    ("p.txt", "hello", "prompt files are .jsonl or .yaml"),
    ("size.yaml", "reasoning_gym:\n  - {task: gcd, size: abc}\n",
     "reasoning_gym[0].size: must be an integer >= 1, not 'abc'"),
    ("float.yaml", "reasoning_gym:\n  - {task: gcd, size: 2.5}\n", "not 2.5"),
    ("zero.yaml", "reasoning_gym:\n  - {task: gcd, size: 0}\n", "size: must be >= 1, not 0"),
    ("shots.yaml", "reasoning_gym:\n  - {task: gcd, shots: -1}\n", "shots: must be >= 0"),
    ("seed.yaml", "reasoning_gym:\n  - {task: gcd, seed: -1}\n", "seed: must be >= 0"),
    ("key.yaml", "reasoning_gym:\n  - {task: gcd, sise: 3}\n", "unknown keys ['sise']"),
    ("config.yaml", "reasoning_gym:\n  - {task: gcd, config: [1]}\n", "'config' must be"),
    ("tmpl.yaml", "reasoning_gym:\n  - {task: gcd, template: 'Q {question} {n}'}\n",
     "may use only {question}"),
    ("notask.yaml", "reasoning_gym:\n  - {size: 3}\n", "non-empty 'task' name"),
    ("empty-slot.yaml", "grid:\n  templates: ['{topic} {}']\n  topics: [x]\n", "uses {}"),
    ("unclosed.yaml", "grid:\n  templates: ['{topic} {x']\n  topics: [x]\n",
     "not a valid format string"),
    ("he.yaml", "humaneval: {size: 0}\n", "humaneval.size: must be >= 1"),
    ("he-key.yaml", "humaneval: {count: 3}\n", "'humaneval' takes {size: N}"),
    ("cb-str.yaml", "seeds:\n  - chatterbot: science\n", "must be a list of non-empty strings"),
    ("seed-opt.yaml", "seeds:\n  - {jsonl: s.jsonl, split: x}\n", "unknown keys ['split']"),
    ("seed-field.yaml", "seeds:\n  - {hf_dataset: d, field: 3}\n", "'field' must be a non-empty"),
])
def test_bad_prompt_files_name_file_and_line(tmp_path: Path, name: str, text: str,
                                             message: str) -> None:
    with pytest.raises(StillroomError, match=message.replace("[", r"\[").replace("{", r"\{")):
        load_prompts(write(tmp_path / name, text))


@pytest.mark.parametrize("spec, message", [
    ("reasoning_gym:gcd:-5", "'-5' is not a whole number"),
    ("reasoning_gym:gcd:0", "SIZE is 0"),
    ("reasoning_gym:gcd:3:-1", "'-1' is not a whole number"),
    ("reasoning_gym:gcd:3:x", "'x' is not a whole number"),
    ("reasoning_gym:gcd:3:1:2", "expected reasoning_gym:TASK"),
    ("reasoning_gym:", "expected reasoning_gym:TASK"),
    ("reasoning_gym::3", "expected reasoning_gym:TASK"),
])
def test_bad_reasoning_gym_specs(spec: str, message: str) -> None:
    with pytest.raises(StillroomError, match=message.replace("[", r"\[")) as info:
        load_prompts(spec)
    assert info.value.where == spec


@pytest.mark.parametrize("name", ["seeds.jsonl", "prompts.yaml"])
def test_binary_prompt_files_are_named(tmp_path: Path, name: str) -> None:
    path = tmp_path / name
    path.write_bytes(b"\x80\x81\xfe" * 50)
    with pytest.raises(StillroomError, match="not a UTF-8 text file") as info:
        load_prompts(str(path))
    assert info.value.where == str(path)


def test_on_bad_seed_is_checked_for_every_source() -> None:
    with pytest.raises(StillroomError, match="must be one of refuse, report"):
        load_prompts("reasoning_gym:gcd:2", on_bad="ignore")


def test_missing_prompt_file() -> None:
    with pytest.raises(StillroomError, match="no such prompt file"):
        load_prompts("/nope/prompts.jsonl")


def test_grid_crosses_topics_personas_and_difficulties(tmp_path: Path) -> None:
    spec = write(tmp_path / "p.yaml", """
grid:
  templates:
    - "As {persona}, explain {topic} at a {difficulty} level."
    - "Quick question about {topic}?"
  topics: [tides, rust]
  personas: [a chemist, a sailor, a child]
  difficulties: [beginner, expert]
""")
    prompts = load_prompts(spec)
    assert len(prompts) == 2 * 3 * 2 + 2
    first = prompts[0]
    assert first.meta == {"template": "As {persona}, explain {topic} at a {difficulty} level.",
                          "difficulty": "beginner", "persona": "a chemist", "topic": "tides"}
    assert first.text == "As a chemist, explain tides at a beginner level."


def test_seed_sources_hf_dataset_and_chatterbot(tmp_path: Path) -> None:
    import datasets

    datasets.Dataset.from_dict({"question": ["Why is the sky blue?", "What is rust?"],
                                "topic": ["light", "metal"]}).save_to_disk(tmp_path / "hf")
    (tmp_path / "more.jsonl").write_text(json.dumps({"prompt": "Say hi"}) + "\n")
    spec = write(tmp_path / "p.yaml", """
seeds:
  - hf_dataset: hf
    field: question
  - jsonl: more.jsonl
  - chatterbot: [science, history]
humaneval: {size: 2}
""")
    prompts = load_prompts(spec)
    by_source = {}
    for p in prompts:
        by_source.setdefault(p.source.split(":")[0], []).append(p)
    assert [p.text for p in by_source["hf"]] == ["Why is the sky blue?", "What is rust?"]
    assert by_source["hf"][0].meta == {"topic": "light"}
    assert len(by_source["seed"]) == 1
    assert len(by_source["chatterbot"]) > 20
    assert {p.meta["topic"] for p in by_source["chatterbot"]} == {"science", "history"}
    code = by_source["humaneval"]
    assert len(code) == 2 and code[0].task == "humaneval" and "check" in code[0].reference["test"]


def test_bad_seed_rows_refuse_or_report(tmp_path: Path, catalog: Catalog) -> None:
    lines = [json.dumps({"prompt": "Good one"}), "{broken", json.dumps({"prompt": ""}),
             json.dumps({"prompt": "Another good one"})]
    path = write(tmp_path / "s.jsonl", "\n".join(lines))
    with pytest.raises(StillroomError, match=r"s.jsonl:2: not valid JSON .*--on-bad-seed report"):
        load_prompts(path)
    prompts = load_prompts(path, on_bad="report")
    assert [p.text for p in prompts] == ["Good one", "Another good one"]
    assert [(r.location.rsplit("/", 1)[1], r.reason.split(" (")[0]) for r in prompts.rejected] \
        == [("s.jsonl:2", "not valid JSON"), ("s.jsonl:3", "needs a JSON object with a "
            "non-empty string 'prompt' or a 'messages' list of {role, content}")]
    with catalog.write() as conn:
        store_rejected(conn, prompts.rejected, "run-1")
    assert catalog.scalar("SELECT count(*) FROM rejected_seeds WHERE run_id = 'run-1'") == 2
    with pytest.raises(StillroomError, match="no usable prompts \\(1 bad rows\\)"):
        load_prompts(write(tmp_path / "bad.jsonl", "{x\n"), on_bad="report")
