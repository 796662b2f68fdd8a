"""Bring your own student: a model sharing the teacher's tokenizer is published as the init,
byte for byte and pinned; one that does not is refused before anything is published."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from tiny import other_tokenizer

from stillroom.catalog import Catalog
from stillroom.cli import main
from stillroom.tasks import cut, models, students
from stillroom.tasks.training import TrainConfig

QUICK = ["--max-steps", "1", "--batch-size", "4"]


def published(catalog: Catalog) -> list[str]:
    names = [p.name for p in students.students_dir().iterdir()] if \
        students.students_dir().exists() else []
    return sorted(n for n in names if not n.startswith(".")) + sorted(
        r["ref"] for r in catalog.rows("SELECT name || '@' || version AS ref FROM students"))


def test_a_brought_student_is_published_as_the_init_then_trained(
        with_dataset: Catalog, tiny_model: Path, tmp_path: Path,
        capsys: pytest.CaptureFixture) -> None:
    mine = tmp_path / "mine"
    cut.cut_student(str(tiny_model), [0, 3], mine)  # any model with the teacher's tokenizer
    argv = ["train", "--dataset", "first", "--name", "s", "--init", str(mine), *QUICK]
    assert main(argv) == 0
    summary = json.loads(capsys.readouterr().out.splitlines()[-1])
    assert (summary["init"], summary["student"]) == ("s-init@1", "s@1")
    init = students.resolve_student(with_dataset, "s-init@1")
    assert init["init"] == f"brought by the user: {mine}@unpinned"
    assert init["weights_digest"] == models.weights_digest(mine)  # its files, byte for byte
    assert init["provenance"]["init_model"] == {"model": str(mine), "revision": None,
                                                "weights_digest": init["weights_digest"]}
    assert init["config"] == {"init_model": str(mine), "init_revision": None}
    card = (Path(init["path"]) / "README.md").read_text()
    assert f"brought by the user: {mine}@unpinned" in card and init["weights_digest"] in card
    trained = students.resolve_student(with_dataset, "s@1")
    assert trained["provenance"]["init_student"] == "s-init@1"
    assert trained["provenance"]["init"] == init["init"]
    assert trained["config"]["init_model"] == str(mine) and "layers" not in trained["config"]

    assert main(argv) == 0  # the same model again: both versions are reused
    again = json.loads(capsys.readouterr().out.splitlines()[-1])
    assert again["reused"] and again["init"] == "s-init@1"
    assert published(with_dataset) == ["s-init@1", "s@1"] * 2


def test_a_brought_student_with_another_tokenizer_is_refused_before_any_step(
        with_dataset: Catalog, tiny_model: Path, tmp_path: Path,
        capsys: pytest.CaptureFixture) -> None:
    mine = tmp_path / "mine"
    shutil.copytree(tiny_model, mine)
    other_tokenizer(mine)
    code = main(["train", "--dataset", "first", "--name", "s", "--init", str(mine), *QUICK])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2
    assert len(err) == 1 and err[0].startswith(
        "stillroom: error: student tokenizer: the student's tokenizer"), err
    assert published(with_dataset) == []
    assert not (students.staging_dir() / "s-init").exists()  # nothing half-written either
    assert not students.checkpoints_dir().exists()  # refused before any step


def test_a_brought_hub_model_is_taken_at_its_pinned_revision(
        with_dataset: Catalog, tiny_model: Path, tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch) -> None:
    """A hub cache holding two revisions; --init-revision pins the one that is not `main`.
    Resolution goes through the real hub client (offline, from the cache)."""
    import huggingface_hub.constants as hub
    from transformers import AutoModelForCausalLM

    repo = tmp_path / "hub" / "models--someone--mine"
    main_rev, pinned = "c" * 40, "d" * 40
    for rev in (main_rev, pinned):
        cut.cut_student(str(tiny_model), [0, 3], repo / "snapshots" / rev)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(main_rev)
    changed = AutoModelForCausalLM.from_pretrained(repo / "snapshots" / pinned)
    with torch.no_grad():
        changed.model.norm.weight.add_(1.0)
    changed.save_pretrained(repo / "snapshots" / pinned)
    monkeypatch.setattr(hub, "HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setattr(hub, "HF_HUB_OFFLINE", True)

    summary = students.train_student(with_dataset, "first", "s", progress=False,
                                     init_model="someone/mine", init_revision=pinned,
                                     config=TrainConfig(max_steps=1, batch_size=4))
    init = students.resolve_student(with_dataset, summary["init"])
    weights = load_file(Path(init["path"]) / "model.safetensors")
    assert torch.equal(weights["model.norm.weight"], changed.model.norm.weight.detach())
    assert init["init"] == f"brought by the user: someone/mine@{pinned}"
