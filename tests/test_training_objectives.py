"""Training with the registered objectives: chosen, validated, fed the teacher's tail, recorded."""

from __future__ import annotations

import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from tiny_dataset import CURATION, cut_dataset

from stillroom.catalog import Catalog
from stillroom.cli import main
from stillroom.errors import StillroomError
from stillroom.tasks import datasets, soft_labels, students, teachers
from stillroom.tasks.curation import curate
from stillroom.tasks.engine import SamplingConfig
from stillroom.tasks.generate import generate
from stillroom.tasks.objectives import TAIL_FLOOR
from stillroom.tasks.prompts import Prompt
from stillroom.tasks.training import TrainConfig, build_examples, collate, distillation_loss

QUICK = {"max_steps": 2, "batch_size": 4, "lr": 1e-2}


@pytest.fixture
def with_dataset(tiny_model: Path, home: Path) -> Catalog:
    catalog = Catalog().ensure()
    teacher = teachers.add_teacher(catalog, "tiny", str(tiny_model), "apache-2.0")
    cut_dataset(catalog, teacher)
    return catalog


@pytest.mark.parametrize(("objective", "params", "where"), [
    ("kl", {}, "--objective"),
    ("jsd", {"beta": 1.5}, "objective jsd"),
    ("jsd", {"gamma": 0.5}, "--objective"),
    ("jsd", {"beta": math.nan}, "--objective-param beta"),
    ("tvd", {"beta": 0.5}, "--objective"),
])
def test_bad_objectives_are_refused_by_the_config(objective: str, params: dict,
                                                  where: str) -> None:
    with pytest.raises(StillroomError) as refused:
        TrainConfig(objective=objective, objective_params=params)
    assert refused.value.where == where
    assert TrainConfig(objective="jsd", objective_params={"beta": 0.3}).objective == "jsd"


@pytest.mark.parametrize(("args", "where"), [
    (["--objective", "kl"], "--objective"),
    (["--objective", "jsd", "--objective-param", "beta=2"], "objective jsd"),
    (["--objective-param", "beta"], "--objective-param"),
    (["--objective-param", "beta=high"], "--objective-param"),
    (["--objective-param", "beta=inf"], "--objective-param"),
])
def test_cli_refuses_bad_objective_arguments_in_one_line(
        args: list[str], where: str, home: Path, capsys: pytest.CaptureFixture) -> None:
    try:
        code = main(["train", "--dataset", "latest", "--name", "s", *args])
    except SystemExit as stopped:
        code = stopped.code
    err = capsys.readouterr().err
    assert code == 2
    assert err.count("\n") == 1 and err.startswith(f"stillroom: error: {where}: "), err
    assert not home.exists() or not any(home.rglob("*.duckdb"))


def test_the_teachers_stored_tail_reaches_the_loss(with_dataset: Catalog,
                                                   tiny_model: Path) -> None:
    from transformers import AutoTokenizer

    dataset_id = datasets.resolve(with_dataset, "tiny-data")
    rows = datasets.load(with_dataset, dataset_id)
    stored = {r["response_id"]: soft_labels.decode_labels(r["soft_labels"]).tail
              for r in with_dataset.rows("SELECT response_id, soft_labels FROM responses")}
    assert list(rows["topk_tail"]) == [stored[r] for r in rows["response_id"]]
    examples, mismatches = build_examples(rows, AutoTokenizer.from_pretrained(tiny_model))
    assert not mismatches and len(examples) == len(rows)
    batch = collate(examples, pad_id=0)
    tails = torch.tensor([t for e in examples for t in e.topk_tail])
    assert torch.equal(batch["kd_tail"], tails) and batch["kd_mask"].all()
    logits = torch.randn(len(tails), 384)
    _, parts = distillation_loss(logits, batch, TrainConfig(kd_weight=1.0))
    assert parts["teacher_tail"] == pytest.approx(float(tails.clamp_min(TAIL_FLOOR).mean()),
                                                  rel=1e-5)
    # A row stored before tails were recorded gets NaN: the loss estimates its tail instead.
    examples[0].topk_tail = None
    unknown = collate(examples[:1], pad_id=0)["kd_tail"]
    assert unknown.isnan().all()


def test_each_objective_trains_its_own_student_and_is_recorded(with_dataset: Catalog) -> None:
    trained = {}
    for objective, params in (("forward_kl", {}), ("jsd", {"beta": 0.2})):
        config = TrainConfig(**QUICK, kd_weight=1.0, objective=objective,
                             objective_params=params)
        summary = students.train_student(with_dataset, "tiny-data", f"s-{objective}", layers=2,
                                         config=config, progress=False)
        record = students.resolve_student(with_dataset, summary["student"])
        assert record["provenance"]["train_config"]["objective"] == objective
        assert record["provenance"]["train_config"]["objective_params"] == params
        rows = with_dataset.scalar("SELECT count(*) FROM dataset_rows")
        assert record["metrics"]["coverage"] == {"rows": rows, "k": 5, "labelled": rows,
                                                 "unlabelled": 0, "other_k": {}}
        card = (Path(record["path"]) / "README.md").read_text()
        assert f"- objective: {objective}" in card
        trained[objective] = load_file(Path(record["path"]) / "model.safetensors")
    # Same data, seed and init: only the objective differs, so the weights must too.
    assert any(not torch.equal(trained["forward_kl"][k], trained["jsd"][k])
               for k in trained["forward_kl"])


def test_kd_without_soft_labels_is_refused_before_anything_is_written(
        tiny_model: Path, home: Path) -> None:
    catalog = Catalog().ensure()
    teacher = teachers.add_teacher(catalog, "tiny", str(tiny_model), "apache-2.0")
    generate(catalog, teacher, [Prompt(f"Tell me about {t}.", "test") for t in ("tea", "rain")],
             SamplingConfig(max_tokens=6, logprobs_k=0), backend="transformers", progress=False)
    curate(catalog, CURATION, "test")
    datasets.cut(catalog, CURATION, name="unlabelled")
    runs = catalog.scalar("SELECT count(*) FROM runs")
    command = [sys.executable, "-m", "stillroom.cli", "train", "--dataset", "unlabelled",
               "--name", "s", "--layers", "2", "--max-steps", "1", "--kd-weight", "0.5"]
    done = subprocess.run(command, env={**os.environ, "STILLROOM_HOME": str(home)},
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 2
    assert done.stderr.count("\n") == 1, done.stderr
    assert done.stderr.startswith("stillroom: error: --kd-weight: the dataset's 2 rows have"
                                  " no soft labels"), done.stderr
    assert catalog.scalar("SELECT count(*) FROM students") == 0  # not even the init
    assert catalog.scalar("SELECT count(*) FROM runs") == runs
    # SFT needs no soft labels: the same dataset trains with the sft objective.
    summary = students.train_student(catalog, "unlabelled", "s", layers=2, progress=False,
                                     config=TrainConfig(max_steps=1, objective="sft"))
    assert summary["student"] == "s@1"
