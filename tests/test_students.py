"""Students: safe names, immutable versions whose rows, files and cards agree, pinned cuts."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import duckdb
import pytest
import torch
from safetensors.torch import load_file
from tiny_dataset import cut_dataset

from stillroom import schema
from stillroom.catalog import Catalog
from stillroom.cli import main
from stillroom.errors import StillroomError
from stillroom.tasks import models, students, teachers
from stillroom.tasks.training import TrainConfig

QUICK = TrainConfig(max_steps=2, batch_size=4, lr=1e-3)
ATTACKS = ["../../../escaped", "../escaped", "/tmp/stillroom-escaped", "a/../../../../escaped",
           "..", "name@2"]


SUITE = """
name: tiny-suite
template: "Question: {question}\\nAnswer:"
generation: {max_tokens: 4, stop: ["\\n"]}
tasks:
  - {task: basic_arithmetic, size: 2, seed: 5,
     config: {min_terms: 2, max_terms: 2, min_digits: 1, max_digits: 1}}
metrics: [accuracy]
"""


def every_path(root: Path) -> set[Path]:
    return set(root.rglob("*"))


def test_train_refuses_names_that_leave_the_state_directory(
        with_dataset: Catalog, home: Path, capsys: pytest.CaptureFixture) -> None:
    outside = home.parent
    before = every_path(outside)
    for attack in ATTACKS:
        code = main(["train", "--dataset", "first", "--name", attack, "--layers", "2",
                     "--max-steps", "1"])
        err = capsys.readouterr().err
        assert code == 2, attack
        assert err.startswith("stillroom: error: --name: ") and "not a valid name" in err, err
    assert every_path(outside) == before  # nothing written, inside the state directory or out
    assert not Path("/tmp/stillroom-escaped").exists()
    assert with_dataset.scalar("SELECT count(*) FROM students") == 0
    assert with_dataset.scalar("SELECT count(*) FROM runs WHERE kind = 'train'") == 0


def test_flows_refuse_a_student_name_that_leaves_the_state_directory(
        with_dataset: Catalog, home: Path) -> None:
    from stillroom.flows.distill import distill, train_student

    prompts = home.parent / "prompts.jsonl"
    prompts.write_text(json.dumps({"prompt": "Tell me about tea."}) + "\n")
    suite = home.parent / "suite.yaml"
    suite.write_text(SUITE)
    before = every_path(home.parent)
    runs = with_dataset.scalar("SELECT count(*) FROM runs")
    with pytest.raises(StillroomError, match="not a valid name"):
        train_student(dataset="first", name="../../../escaped", layers=2, epochs=1)
    with pytest.raises(StillroomError, match="not a valid name"):
        distill(teacher="tiny", prompts=str(prompts), suite=str(suite),
                student="../../../escaped", layers=2, epochs=1, max_tokens=8)
    assert every_path(home.parent) == before
    assert with_dataset.scalar("SELECT count(*) FROM runs") == runs  # refused before any work


def check_agrees(catalog: Catalog, ref: str) -> dict:
    """The row, the files and the model card describe the same weights."""
    row = students.resolve_student(catalog, ref)
    path = Path(row["path"])
    assert path.name == row["ref"] and path.parent == students.students_dir()
    assert models.weights_digest(path) == row["weights_digest"]
    assert row["provenance"]["weights_digest"] == row["weights_digest"]
    assert json.loads((path / "provenance.json").read_text()) == row["provenance"]
    card = (path / "README.md").read_text()
    assert card.startswith(f"# {row['ref']}\n") and row["weights_digest"] in card
    return row


def test_retraining_publishes_a_new_version_and_never_overwrites(
        tiny_model: Path, with_dataset: Catalog, capsys: pytest.CaptureFixture) -> None:
    catalog = with_dataset
    first = students.train_student(catalog, "first", "s", layers=2, config=QUICK,
                                   progress=False)
    assert first["student"] == "s@1" and first["init"] == "s-init@1"
    one = check_agrees(catalog, "s@1")
    files_before = load_file(Path(one["path"]) / "model.safetensors")

    teacher = teachers.get_teacher(catalog, "tiny")
    cut_dataset(catalog, teacher, topics=("tea", "rain", "clocks", "rivers", "moss"),
                name="second")
    second = students.train_student(catalog, "second", "s", layers=2, config=QUICK,
                                    progress=False)
    assert second["student"] == "s@2" and second["init"] == "s-init@1"  # same cut: reused
    two = check_agrees(catalog, "s@2")
    one_again = check_agrees(catalog, "s@1")
    assert one_again == one and two["weights_digest"] != one["weights_digest"]
    after = load_file(Path(one["path"]) / "model.safetensors")
    assert all(torch.equal(after[k], v) for k, v in files_before.items())
    assert students.resolve_student(catalog, "s")["ref"] == "s@2"  # plain name: the latest
    assert students.provenance(catalog, "s@1")["dataset_id"] == first["dataset_id"]
    check_agrees(catalog, "s-init")

    again = students.train_student(catalog, "second", "s", layers=2, config=QUICK,
                                   progress=False)
    assert again["reused"] and again["student"] == "s@2"  # nothing new to train
    assert catalog.scalar("SELECT count(*) FROM students") == 3
    assert sorted(p.name for p in students.students_dir().iterdir()
                  if not p.name.startswith(".")) == ["s-init@1", "s@1", "s@2"]

    for missing in ("s@3", "t", "s@0", "s@x"):
        with pytest.raises(StillroomError):
            students.resolve_student(catalog, missing)
    assert main(["student", "show", "s@1"]) == 0
    assert json.loads(capsys.readouterr().out)["weights_digest"] == one["weights_digest"]
    assert main(["student", "list"]) == 0
    listed = capsys.readouterr().out.splitlines()
    assert [line.split()[0] for line in listed] == ["s@1", "s@2", "s-init@1"]
    assert main(["provenance", "s@3"]) == 2
    assert "no student named 's@3'" in capsys.readouterr().err


def test_a_publish_killed_before_its_commit_is_not_reused_as_a_version(
        with_dataset: Catalog) -> None:
    orphan = students.students_dir() / "s@1"
    orphan.mkdir(parents=True)
    (orphan / "model.safetensors").write_bytes(b"weights nobody registered")
    summary = students.train_student(with_dataset, "first", "s", layers=2, config=QUICK,
                                     progress=False)
    assert summary["student"] == "s@1"
    check_agrees(with_dataset, "s@1")


def test_student_is_cut_from_the_teachers_pinned_revision(
        tiny_model: Path, home: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A hub cache holding two revisions of one model; the teacher pins the one that is not
    `main`. Loading goes through the real hub resolution (offline, from the cache)."""
    import huggingface_hub.constants as hub
    from transformers import AutoModelForCausalLM

    cache = tmp_path / "hub"
    repo = cache / "models--stillroom--tiny"
    main_rev, pinned = "a" * 40, "b" * 40
    for rev in (main_rev, pinned):
        shutil.copytree(tiny_model, repo / "snapshots" / rev)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(main_rev)
    changed = AutoModelForCausalLM.from_pretrained(repo / "snapshots" / pinned)
    with torch.no_grad():
        changed.model.norm.weight.add_(1.0)
    changed.save_pretrained(repo / "snapshots" / pinned)
    monkeypatch.setattr(hub, "HF_HUB_CACHE", str(cache))
    monkeypatch.setattr(hub, "HF_HUB_OFFLINE", True)

    catalog = Catalog().ensure()
    teacher = teachers.add_teacher(catalog, "hub-tiny", "stillroom/tiny", "apache-2.0",
                                   revision=pinned)
    cut_dataset(catalog, teacher)
    summary = students.train_student(catalog, "tiny-data", "pinned", layers=2, config=QUICK,
                                     progress=False)
    init = students.resolve_student(catalog, summary["init"])
    cut = load_file(Path(init["path"]) / "model.safetensors")
    assert torch.equal(cut["model.norm.weight"], changed.model.norm.weight.detach())
    assert f"revision {pinned}" in (Path(init["path"]) / "README.md").read_text()
    assert pinned in init["init"]


def test_catalogs_from_before_versions_keep_their_students(tmp_path: Path) -> None:
    path = tmp_path / "old.duckdb"
    conn = duckdb.connect(str(path))
    schema.current_version(conn)
    for number, ddl in schema.MIGRATIONS:
        if number <= 2:
            conn.execute(ddl)
            conn.execute("INSERT INTO schema_version VALUES (?, now())", [number])
    conn.execute("INSERT INTO students VALUES ('id1', 'old', NULL, '/m/old', 'cut', '{}',"
                 " '{\"teachers\": []}', NULL, 'r', now())")
    conn.close()
    catalog = Catalog(path).ensure()
    for ref in ("old", "old@1"):
        row = students.resolve_student(catalog, ref)
        assert row["student_id"] == "id1" and row["ref"] == "old@1" and row["path"] == "/m/old"
