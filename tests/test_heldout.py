"""Held-out tracking: a split by prompt that training never sees, measured against a dense
reference, moving the right way as the student trains."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest
import torch
from tiny_dataset import CURATION, cut_dataset

from stillroom.catalog import Catalog
from stillroom.errors import StillroomError
from stillroom.tasks import cut, datasets, heldout, students, teachers, training
from stillroom.tasks.curation import curate
from stillroom.tasks.engine import SamplingConfig
from stillroom.tasks.generate import generate
from stillroom.tasks.prompts import Prompt
from stillroom.tasks.training import TrainConfig, build_examples

TOPICS = tuple(f"{a} {b}" for a in ("red", "old", "wet", "big", "odd", "new")
               for b in ("tea", "rain", "maps", "foxes"))   # 24 prompts


def test_split_is_by_prompt_stable_and_bounded() -> None:
    keys = [f"prompt-{i % 300}" for i in range(900)]   # three samples of each prompt
    held = heldout.split(keys, 0.3)
    assert held == heldout.split(list(keys), 0.3)      # the same in every call and process
    by_prompt: dict[str, set[bool]] = {}
    for key, side in zip(keys, held, strict=True):
        by_prompt.setdefault(key, set()).add(side)
    assert all(len(sides) == 1 for sides in by_prompt.values())   # a prompt is on one side
    share = sum(side.pop() for side in by_prompt.values()) / len(by_prompt)
    assert 0.22 < share < 0.38
    bigger = heldout.split(keys, 0.5)   # a larger fraction only adds prompts
    assert all(b for a, b in zip(held, bigger, strict=True) if a)
    assert not any(heldout.split(keys, 0.0))
    # Ten rows and a fraction too small for any hash: one prompt is held out all the same.
    assert sum(heldout.split([f"p{i}" for i in range(10)], 1e-12)) == 1
    assert not any(heldout.split([f"p{i}" for i in range(9)], 1e-12))
    # Never every prompt: the training side keeps one.
    assert heldout.split(["a", "a", "b"], 0.999999).count(False) >= 1
    assert heldout.split(["a", "a"], 0.999999) == [False, False]


@pytest.mark.parametrize("value", [1.0, -0.1, float("nan"), "0.1", True])
def test_bad_fractions_are_one_clear_error(value: object) -> None:
    with pytest.raises(StillroomError) as refused:
        TrainConfig(heldout_fraction=value)
    assert refused.value.where == "--heldout-fraction"
    with pytest.raises(StillroomError) as refused:
        TrainConfig(eval_every=0)
    assert refused.value.where == "--eval-every"


@pytest.fixture
def dataset(tiny_model: Path, home: Path) -> Catalog:
    catalog = Catalog().ensure()
    teacher = teachers.add_teacher(catalog, "tiny", str(tiny_model), "apache-2.0")
    cut_dataset(catalog, teacher, topics=TOPICS, name="wide")
    return catalog


def test_heldout_rows_are_never_trained_on_whatever_the_seed(
        dataset: Catalog, monkeypatch: pytest.MonkeyPatch,
        caplog: pytest.LogCaptureFixture) -> None:
    trained: list[tuple[int, ...]] = []
    real_loss = training.distillation_loss

    def spy(logits: torch.Tensor, batch: dict, config: TrainConfig) -> tuple:
        for ids, mask in zip(batch["input_ids"], batch["attention_mask"], strict=True):
            trained.append(tuple(ids[mask.bool()].tolist()))
        return real_loss(logits, batch, config)

    monkeypatch.setattr(training, "distillation_loss", spy)
    rows = datasets.load(dataset, datasets.resolve(dataset, "wide"))
    held_ids = {}
    for seed in (0, 1):
        config = TrainConfig(max_steps=12, batch_size=4, lr=1e-3, seed=seed,
                             heldout_fraction=0.25, eval_every=5)
        with caplog.at_level(logging.INFO, logger="stillroom.tasks.training"):
            summary = students.train_student(dataset, "wide", f"s{seed}", layers=2,
                                             config=config, progress=False)
        record = students.resolve_student(dataset, summary["student"])
        written = json.loads((Path(record["path"]) / "training.json").read_text())
        held_ids[seed] = written["heldout_response_ids"]
        assert [e["step"] for e in record["metrics"]["heldout"]] == [0, 5, 10, 12]
        assert summary["heldout"] == record["metrics"]["heldout"][-1]
        assert summary["heldout_rows"] == len(held_ids[seed])
    assert held_ids[0] == held_ids[1] and 0 < len(held_ids[0]) < len(rows)
    # Every row trained on, every epoch, is outside the held-out side; every other row is in.
    from transformers import AutoTokenizer

    examples, _ = build_examples(rows, AutoTokenizer.from_pretrained(rows[0]["teacher_model"]))
    sequences = {e.response_id: tuple(e.input_ids) for e in examples}
    held = {sequences[r] for r in held_ids[0]}
    assert held and not held & set(trained)
    assert set(trained) == set(sequences.values()) - held
    said = caplog.text
    assert "holding out" in said and "step 0/12: held-out KL" in said
    assert "step 5/12: loss " in said and " tok/s" in said


def dense_reference(model_dir: Path, examples: list) -> dict[str, float]:
    """Full-vocabulary KL(teacher || student), NLL and top-1 agreement, computed plainly."""
    from transformers import AutoModelForCausalLM

    student = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    kl, nll, agree, tokens = 0.0, 0.0, 0, 0
    with torch.no_grad():
        for e in examples:
            q = torch.log_softmax(student(torch.tensor([e.input_ids])).logits[0], -1)
            q = q[e.first_target:e.first_target + len(e.targets)].double()
            p = torch.full_like(q, float("-inf"))
            p.scatter_(-1, torch.tensor(e.topk_ids), torch.tensor(e.topk_logprobs).double())
            targets = torch.tensor(e.targets)
            kl += float((p.exp() * (p - q)).sum())
            nll -= float(q.gather(-1, targets[:, None]).sum())
            agree += int((q.argmax(-1) == targets).sum())
            tokens += len(e.targets)
    return {"kl": kl / tokens, "nll": nll / tokens, "top1_agreement": agree / tokens,
            "tokens": tokens}


def test_metrics_equal_a_dense_reference_and_improve_with_training(
        dataset: Catalog, tiny_model: Path, tmp_path: Path) -> None:
    """Soft labels covering the whole vocabulary: the held-out KL is the exact dense KL, at
    step 0 (the untrained cut) and at the end (the saved student)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny_model)
    teacher = AutoModelForCausalLM.from_pretrained(tiny_model, dtype=torch.float32).eval()
    rows = datasets.load(dataset, datasets.resolve(dataset, "wide"))
    examples, _ = build_examples(rows, tokenizer)
    by_id = {e.response_id: e for e in examples}
    dense_ids, dense_lp = [], []
    with torch.no_grad():
        for row in rows:
            e = by_id[row["response_id"]]
            logits = teacher(torch.tensor([e.input_ids])).logits[0]
            lp = torch.log_softmax(logits[e.first_target:e.first_target + len(e.targets)], -1)
            order = lp.argsort(-1, descending=True)
            dense_ids.append(order.tolist())
            dense_lp.append(lp.gather(-1, order).tolist())
    rows = (rows.remove_columns(["topk_ids", "topk_logprobs", "topk_tail"])
            .add_column("topk_ids", dense_ids).add_column("topk_logprobs", dense_lp)
            .add_column("topk_tail", [None] * len(rows)))
    init = tmp_path / "init"
    cut.cut_student(str(tiny_model), [0, 3], init)
    config = TrainConfig(max_steps=40, batch_size=4, lr=3e-3, kd_weight=1.0,
                         heldout_fraction=0.25, eval_every=20)
    summary = training.train(init, rows, config, tmp_path / "out", progress=False,
                             teacher_model=str(tiny_model))
    evals = summary["heldout"]
    assert [e["step"] for e in evals] == [0, 20, 40]
    ids = json.loads((tmp_path / "out" / "training.json").read_text())["heldout_response_ids"]
    dense = {e.response_id: e for e in build_examples(rows, tokenizer)[0]}
    held = [dense[r] for r in ids]
    assert held and all(len(e.topk_ids[0]) == len(tokenizer) for e in held)
    for entry, model_dir in ((evals[0], init), (evals[-1], tmp_path / "out")):
        reference = dense_reference(model_dir, held)
        assert entry["tokens"] == reference["tokens"]
        for key in ("kl", "nll", "top1_agreement"):
            assert entry[key] == pytest.approx(reference[key], rel=1e-4, abs=1e-6), key
    assert evals[0]["kl"] > 0.05
    assert evals[-1]["kl"] < 0.7 * evals[0]["kl"]
    assert evals[-1]["nll"] < evals[0]["nll"]
    assert evals[-1]["top1_agreement"] > evals[0]["top1_agreement"]


def test_rows_without_soft_labels_have_no_kl_but_nll_and_agreement(
        tiny_model: Path, home: Path) -> None:
    catalog = Catalog().ensure()
    teacher = teachers.add_teacher(catalog, "tiny", str(tiny_model), "apache-2.0")
    generate(catalog, teacher, [Prompt(f"Tell me about {t}.", "test") for t in TOPICS[:12]],
             SamplingConfig(max_tokens=6, logprobs_k=0), backend="transformers", progress=False)
    curate(catalog, CURATION, "test")
    datasets.cut(catalog, CURATION, name="unlabelled")
    summary = students.train_student(
        catalog, "unlabelled", "s", layers=2, progress=False,
        config=TrainConfig(max_steps=2, objective="sft", heldout_fraction=0.2, eval_every=1))
    evals = students.resolve_student(catalog, summary["student"])["metrics"]["heldout"]
    assert [e["step"] for e in evals] == [0, 1, 2]
    for entry in evals:
        assert entry["kl"] is None and entry["nll"] > 0 and entry["tokens"] > 0
        assert 0 <= entry["top1_agreement"] <= 1


def test_no_tracking_at_fraction_0(dataset: Catalog) -> None:
    summary = students.train_student(
        dataset, "wide", "s", layers=2, progress=False,
        config=TrainConfig(max_steps=2, batch_size=4, heldout_fraction=0.0))
    record = students.resolve_student(dataset, summary["student"])
    assert record["metrics"]["heldout"] == [] and summary["heldout"] is None
    assert record["metrics"]["examples"] == len(TOPICS)
