"""Layers chosen by measured importance: block influence on the teacher's real activations,
recorded with the init, and an even cut of the same layers keeps its own provenance."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from tiny_dataset import cut_dataset

from stillroom.catalog import Catalog
from stillroom.cli import main
from stillroom.tasks import datasets, layer_choice, models, students, teachers

QUICK = ["--max-steps", "1", "--batch-size", "4"]


def with_idle_block(tiny_model: Path, out: Path, block: int) -> Path:
    """The tiny model with one block's output projections zeroed: it passes its input on
    unchanged (the residual), so it has no influence at all."""
    from transformers import AutoModelForCausalLM

    shutil.copytree(tiny_model, out)
    model = AutoModelForCausalLM.from_pretrained(out)
    with torch.no_grad():
        model.model.layers[block].self_attn.o_proj.weight.zero_()
        model.model.layers[block].mlp.down_proj.weight.zero_()
    model.save_pretrained(out)
    return out


def rows_for(tokenizer) -> list[dict]:
    return [{"prompt": f"Tell me about {topic}.",
             "token_ids": tokenizer(f" {topic} is good.", add_special_tokens=False).input_ids}
            for topic in ("tea", "rain", "maps", "foxes")]


@pytest.mark.parametrize(("idle", "kept"), [(1, [0, 2, 3]), (2, [0, 1, 3])])
def test_an_idle_block_scores_lowest_and_is_dropped(tiny_model: Path, tmp_path: Path,
                                                    idle: int, kept: list[int]) -> None:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    teacher = with_idle_block(tiny_model, tmp_path / "teacher", idle)
    tokenizer = AutoTokenizer.from_pretrained(teacher)
    rows = rows_for(tokenizer)
    choice = layer_choice.choose("importance", 3, teacher, rows, str(teacher), None)
    assert choice.layers == kept
    assert choice.scores[idle] == pytest.approx(0, abs=1e-6)
    assert all(s > 0.05 for i, s in enumerate(choice.scores) if i != idle)
    # The same measure from the model's own hidden states (block i reads hidden_states[i]
    # and writes hidden_states[i + 1]; the last one is normed, so it is left out).
    model = AutoModelForCausalLM.from_pretrained(teacher).eval()
    sequences, calibration = layer_choice.calibration_sequences(rows, tokenizer)
    assert calibration["rows"] == 4
    totals, tokens = [0.0] * 3, 0
    with torch.no_grad():
        for sequence in sequences:
            hidden = model(torch.tensor([sequence]), output_hidden_states=True).hidden_states
            for i in range(3):
                cos = torch.nn.functional.cosine_similarity(hidden[i], hidden[i + 1], dim=-1)
                totals[i] += (1 - cos).sum().item()
            tokens += len(sequence)
    assert choice.scores[:3] == pytest.approx([t / tokens for t in totals], abs=1e-5)
    assert layer_choice.choose("even", 3, teacher, rows, str(teacher), None).layers == [0, 2, 3]


def test_the_first_and_last_blocks_are_always_kept() -> None:
    scores = [0.0, 0.9, 0.5, 0.7, 0.1]
    assert layer_choice.most_influential(scores, 2) == [0, 4]
    assert layer_choice.most_influential(scores, 3) == [0, 1, 4]
    assert layer_choice.most_influential(scores, 4) == [0, 1, 3, 4]
    assert layer_choice.most_influential(scores, 1) == [0]


def init_of(catalog: Catalog, ref: str) -> dict:
    return students.resolve_student(catalog, ref)


def test_an_importance_cut_is_recorded_and_an_equal_even_cut_keeps_its_own_provenance(
        tiny_model: Path, home: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    from transformers import AutoTokenizer

    catalog = Catalog().ensure()
    teacher_dir = with_idle_block(tiny_model, tmp_path / "teacher", 2)
    teacher = teachers.add_teacher(catalog, "idle", str(teacher_dir), "apache-2.0")
    dataset_id = cut_dataset(catalog, teacher)

    def train(*flags: str) -> dict:
        assert main(["train", "--dataset", dataset_id, "--name", "s", *QUICK, *flags]) == 0
        return json.loads(capsys.readouterr().out.splitlines()[-1])

    first = train("--layers", "3", "--layer-choice", "importance")
    init = init_of(catalog, first["init"])
    choice = init["provenance"]["layer_choice"]
    assert first["init"] == "s-init@1" and choice["method"] == "importance"
    assert choice["layers"] == [0, 1, 3] and init["provenance"]["layers"] == [0, 1, 3]
    assert choice["scores"][2] == pytest.approx(0, abs=1e-6) and min(choice["scores"]) == \
        choice["scores"][2]
    rows = datasets.load(catalog, dataset_id)
    _, calibration = layer_choice.calibration_sequences(
        rows, AutoTokenizer.from_pretrained(teacher_dir))
    assert choice["calibration"] == calibration and calibration["rows"] == len(rows)
    assert init["config"] == {"layers": [0, 1, 3], "layer_choice": "importance"}
    assert "chosen by measured importance" in init["init"]
    card = (Path(init["path"]) / "README.md").read_text()
    assert "## Layer choice" in card and "2: 0.0000," in card and calibration["hash"] in card
    trained = students.resolve_student(catalog, first["student"])
    assert trained["provenance"]["layer_choice"] == choice
    assert "## Layer choice" in (Path(trained["path"]) / "README.md").read_text()

    # Two layers of four are [0, 3] either way: the same weights, chosen two ways.
    by_importance = train("--layers", "2", "--layer-choice", "importance")
    evenly = train("--layers", "2")
    a, b = init_of(catalog, by_importance["init"]), init_of(catalog, "s-init")
    assert (a["ref"], b["ref"]) == ("s-init@2", "s-init@3")
    assert a["weights_digest"] == b["weights_digest"]
    assert a["provenance"]["layer_choice"]["method"] == "importance"
    assert b["provenance"]["layer_choice"] == {"method": "even", "layers": [0, 3], "total": 4}
    assert "chosen evenly" in b["init"]
    assert evenly["reused"] and evenly["student"] == by_importance["student"]
    assert evenly["init"] == "s-init@2"  # the reused student names the init it came from
    assert train("--layers", "2")["init"] == "s-init@2"
    assert catalog.scalar("SELECT count(*) FROM students WHERE name = 's-init'") == 3
    assert models.weights_digest(Path(b["path"])) == b["weights_digest"]
