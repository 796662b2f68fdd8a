"""Students trained on the question alone (context distillation), and evaluated that way."""

from __future__ import annotations

from pathlib import Path

import pytest
from tiny_dataset import CURATION, cut_dataset

from stillroom.catalog import Catalog
from stillroom.errors import StillroomError
from stillroom.eval.runner import item_prompt, resolve_model, run_suite
from stillroom.eval.suites import load_suite
from stillroom.tasks import compat, datasets, students, teachers
from stillroom.tasks.curation import curate
from stillroom.tasks.engine import SamplingConfig
from stillroom.tasks.generate import generate
from stillroom.tasks.prompts import task_prompts
from stillroom.tasks.training import TrainConfig, build_examples

SUITE = """
name: words-mini
template: "Q: {question}\\nA:"
shots: 2
generation: {max_tokens: 4, stop: ["\\n"]}
tasks:
  - {task: number_words, size: 4, seed: 7, config: {split: test}}
metrics: [accuracy, agreement]
"""
CONFIG = TrainConfig(max_steps=2, batch_size=2, lr=1e-3, prompt_format="zero_shot")


def words_dataset(catalog: Catalog, teacher: teachers.Teacher) -> str:
    prompts = task_prompts("number_words", 6, seed=3, shots=2, template="Q: {question}\nA:",
                           config={"split": "train"})
    generate(catalog, teacher, prompts, SamplingConfig(max_tokens=4, logprobs_k=5),
             backend="transformers", progress=False)
    curate(catalog, CURATION, "test")
    return datasets.cut(catalog, CURATION, name="words")["dataset_id"]


def test_zero_shot_examples_are_the_question_alone(catalog: Catalog, tiny_model: Path) -> None:
    from transformers import AutoTokenizer

    teacher = teachers.add_teacher(catalog, "tiny", str(tiny_model), "apache-2.0")
    rows = datasets.load(catalog, words_dataset(catalog, teacher))
    tokenizer = AutoTokenizer.from_pretrained(tiny_model)
    as_taught, _ = build_examples(rows, tokenizer, "teacher")
    alone, mismatches = build_examples(rows, tokenizer, "zero_shot")
    assert not mismatches and len(alone) == len(as_taught) == len(rows)
    for row, short, full in zip(rows, alone, as_taught, strict=True):
        question = compat.prompt_ids(tokenizer, row["zero_shot_prompt"])
        assert row["zero_shot_prompt"] == f"Q: {row['messages'][0]['content'].split('Q: ')[-1]}"
        assert short.input_ids == question + row["token_ids"]
        assert short.targets == full.targets and short.topk_ids == full.topk_ids
        assert len(full.input_ids) > len(short.input_ids)


def test_zero_shot_is_refused_for_prompts_without_one(catalog: Catalog, tiny_model: Path) -> None:
    teacher = teachers.add_teacher(catalog, "tiny", str(tiny_model), "apache-2.0")
    cut_dataset(catalog, teacher)  # free-form prompts: no zero-shot form
    with pytest.raises(StillroomError, match="rows have no zero-shot prompt"):
        students.train_student(catalog, "tiny-data", "s", layers=1, config=CONFIG,
                               progress=False)
    assert catalog.scalar("SELECT count(*) FROM students WHERE name = 's'") == 0


def test_students_are_evaluated_in_their_training_format(catalog: Catalog, tiny_model: Path,
                                                         tmp_path: Path) -> None:
    teacher = teachers.add_teacher(catalog, "tiny", str(tiny_model), "apache-2.0")
    words_dataset(catalog, teacher)
    students.train_student(catalog, "words", "s", layers=1, config=CONFIG, progress=False)
    assert resolve_model(catalog, "s").prompt_format == "zero_shot"
    assert resolve_model(catalog, "s-init").prompt_format == "teacher"
    (tmp_path / "suite.yaml").write_text(SUITE)
    suite = load_suite(str(tmp_path / "suite.yaml"))
    item = suite.items[0]
    assert item_prompt(item, "zero_shot").text == f"Q: {item.prompt.reference['question']}\nA:"
    assert item_prompt(item, "teacher") is item.prompt

    run_suite(catalog, "tiny", suite)
    student = run_suite(catalog, "s", suite)
    init = run_suite(catalog, "s-init", suite, prompt_format="zero_shot")
    also = run_suite(catalog, "s-init", suite)
    assert (student["prompt_format"], init["prompt_format"], also["prompt_format"]) == (
        "zero_shot", "zero_shot", "teacher")
    assert "agreement" in student  # compared with the teacher's answers to the same items
    stored = catalog.rows("SELECT model_name, prompt_format FROM eval_results"
                          " ORDER BY created_at")
    assert [r["prompt_format"] for r in stored] == ["teacher", "zero_shot", "zero_shot",
                                                    "teacher"]
    # Two formats of one model are two measurements, not one resumed eval.
    assert init["eval_id"] != also["eval_id"] and also["items_generated"] == 4
