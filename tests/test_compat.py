"""The compatibility report: a student that cannot learn from the teacher's labels is refused
before any step, and the report of one that can is stored with it."""

from __future__ import annotations

import json
import shutil
from dataclasses import replace
from pathlib import Path

import pytest
from tiny import other_tokenizer
from tiny_dataset import cut_dataset

from stillroom.catalog import Catalog
from stillroom.errors import StillroomError
from stillroom.tasks import compat, datasets, students, teachers
from stillroom.tasks.training import TrainConfig, train

ONE_STEP = TrainConfig(max_steps=1, batch_size=4)


def with_chat_template(model_dir: Path) -> None:
    config_path = model_dir / "tokenizer_config.json"
    config = json.loads(config_path.read_text())
    config["chat_template"] = "{% for m in messages %}{{ m['content'] }}{% endfor %}"
    config_path.write_text(json.dumps(config))


def padded_vocabulary(model_dir: Path) -> None:
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(model_dir)
    model.resize_token_embeddings(400)
    model.save_pretrained(model_dir)


def test_a_rendered_prompt_that_starts_with_bos_gets_no_second_one(tiny_model: Path) -> None:
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny_model)
    bos = tokenizer.bos_token_id
    assert tokenizer("<bos>Tell me about tea.").input_ids[:2] == [bos, bos]  # the trap
    written = compat.prompt_ids(tokenizer, "<bos>Tell me about tea.")
    added = compat.prompt_ids(tokenizer, "Tell me about tea.")
    assert written == added
    assert written[0] == bos and written.count(bos) == 1
    assert written[1:] == tokenizer("Tell me about tea.", add_special_tokens=False).input_ids


@pytest.fixture
def dataset(tiny_model: Path, home: Path) -> tuple[Catalog, str]:
    catalog = Catalog().ensure()
    teacher = teachers.add_teacher(catalog, "tiny", str(tiny_model), "apache-2.0")
    return catalog, cut_dataset(catalog, teacher)


@pytest.mark.parametrize(("change", "where", "what"), [
    (other_tokenizer, "student tokenizer", "is not the teacher's"),
    (with_chat_template, "student tokenizer", "chat template differs"),
    (None, "teacher revision", "cut from revision another-revision"),
])
def test_an_incompatible_student_is_refused_before_any_step(
        dataset: tuple[Catalog, str], tiny_model: Path, tmp_path: Path, change,
        where: str, what: str) -> None:
    catalog, dataset_id = dataset
    student = tmp_path / "student"
    shutil.copytree(tiny_model, student)
    if change:
        change(student)
    out = tmp_path / "out"
    with pytest.raises(StillroomError) as refused:
        train(student, datasets.load(catalog, dataset_id), ONE_STEP, out, progress=False,
              teacher_model=str(tiny_model),
              teacher_revision=None if change else "another-revision")
    assert refused.value.where == where and what in refused.value.message
    assert not out.exists()  # refused before the first step, nothing saved


def test_a_padded_vocabulary_is_accepted(dataset: tuple[Catalog, str], tiny_model: Path,
                                         tmp_path: Path) -> None:
    catalog, dataset_id = dataset
    student = tmp_path / "student"
    shutil.copytree(tiny_model, student)
    padded_vocabulary(student)
    summary = train(student, datasets.load(catalog, dataset_id), ONE_STEP, tmp_path / "out",
                    progress=False, teacher_model=str(tiny_model))
    assert summary["compatibility"]["vocab"] == {"tokenizer": 384, "student_logits": 400}


def test_prompts_that_tokenise_unlike_the_teachers_are_refused_then_the_report_is_stored(
        dataset: tuple[Catalog, str]) -> None:
    catalog, dataset_id = dataset
    rows = catalog.scalar("SELECT count(*) FROM dataset_rows")
    with catalog.write() as conn:  # as if the engine had counted one more prompt token
        conn.execute("UPDATE responses SET prompt_tokens = prompt_tokens + 1")
    with pytest.raises(StillroomError) as refused:
        students.train_student(catalog, dataset_id, "s", layers=2, config=ONE_STEP,
                               progress=False)
    assert refused.value.where == "prompt tokens"
    assert f"{rows} of {rows} rendered prompts" in refused.value.message
    assert catalog.scalar("SELECT count(*) FROM students WHERE name = 's'") == 0
    with catalog.write() as conn:
        conn.execute("UPDATE responses SET prompt_tokens = prompt_tokens - 1")

    summary = students.train_student(catalog, dataset_id, "s", layers=2,
                                     config=replace(ONE_STEP, seed=1), progress=False)
    record = students.resolve_student(catalog, summary["student"])
    report = record["provenance"]["compatibility"]
    assert report["tokenizer"]["student"] == report["tokenizer"]["teacher"]
    assert report["chat_template_equal"] is True
    assert report["bos"] == {"token": "<bos>", "prompt_length_mismatches": 0, "rows": rows}
    assert report["revision"] == {"recorded": [""], "used": ""}
    assert report["soft_labels"]["k"] == 5 and report["soft_labels"]["labelled"] == rows
    stored = json.loads((Path(record["path"]) / "provenance.json").read_text())
    assert stored["compatibility"] == report
    card = (Path(record["path"]) / "README.md").read_text()
    assert "## Compatibility with the teacher" in card
    assert f"prompts re-tokenised to the teacher's length: {rows} of {rows}" in card
