"""Crash safety for training: `kill -9` mid-training, re-run, same weights as an unbroken run."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import torch
from kill import kill_once
from safetensors.torch import load_file
from tiny_dataset import cut_dataset

from stillroom.catalog import Catalog
from stillroom.tasks import models, students, teachers
from stillroom.tasks.checkpoints import STEP_PREFIX
from stillroom.tasks.training import TrainConfig

STEPS, EVERY, SEED, EVAL_EVERY, HELDOUT = 16, 4, 3, 3, 0.4   # 0.4: 2 of the 8 tiny prompts
CONFIG = TrainConfig(max_steps=STEPS, batch_size=2, lr=1e-3, seed=SEED,
                     heldout_fraction=HELDOUT, eval_every=EVAL_EVERY)


def train_cli(home: Path, name: str) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "stillroom.cli", "train", "--dataset", "tiny-data", "--name", name,
         "--layers", "2", "--max-steps", str(STEPS), "--batch-size", "2", "--lr", "1e-3",
         "--seed", str(SEED), "--checkpoint-every", str(EVERY), "--heldout-fraction",
         str(HELDOUT), "--eval-every", str(EVAL_EVERY)],
        env={**os.environ, "STILLROOM_HOME": str(home)}, stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL, text=True)


def weights(path: str) -> dict:
    return load_file(Path(path) / "model.safetensors")


def test_kill_9_then_rerun_resumes_and_ends_with_the_same_weights(
        tiny_model: Path, home: Path) -> None:
    catalog = Catalog().ensure()
    teacher = teachers.add_teacher(catalog, "tiny", str(tiny_model), "apache-2.0")
    cut_dataset(catalog, teacher)
    reference = students.train_student(catalog, "tiny-data", "unbroken", layers=2, config=CONFIG,
                                       progress=False, checkpoint_every=EVERY)
    assert reference["resumed_from_step"] == 0 and reference["steps"] == STEPS
    checkpoints = students.checkpoints_dir()
    assert not any(checkpoints.glob(f"*/{STEP_PREFIX}*"))  # cleared once published

    victim = train_cli(home, "victim")
    kill_once(victim, lambda: any(checkpoints.glob(f"*/{STEP_PREFIX}*")), "a checkpoint",
              timeout=300, poll_s=0.02)
    assert catalog.scalar("SELECT count(*) FROM students WHERE name = 'victim'") == 0
    (run_dir,) = [p for p in checkpoints.iterdir() if p.is_dir()]
    (run_dir / ".tmp-torn").mkdir(exist_ok=True)  # as if killed while writing a checkpoint
    (run_dir / ".tmp-torn" / "state.pt").write_bytes(b"half a pickle")

    # Another seed is another run: it must start from scratch, not from the victim's state.
    other = students.train_student(catalog, "tiny-data", "victim", layers=2,
                                   config=replace(CONFIG, seed=SEED + 1),
                                   progress=False, checkpoint_every=EVERY)
    assert other["resumed_from_step"] == 0 and other["student"] == "victim@1"
    assert any(run_dir.glob(f"{STEP_PREFIX}*"))  # the victim's checkpoint is left alone

    rerun = train_cli(home, "victim")
    out, _ = rerun.communicate(timeout=600)
    assert rerun.returncode == 0
    summary = json.loads(out.strip().splitlines()[-1])
    assert 0 < summary["resumed_from_step"] < STEPS and summary["steps"] == STEPS
    assert summary["student"] == "victim@2"
    resumed = weights(summary["path"])
    unbroken = weights(reference["path"])
    assert resumed.keys() == unbroken.keys()
    for name, tensor in unbroken.items():
        assert torch.equal(resumed[name], tensor), name
    assert summary["weights_digest"] == reference["weights_digest"]
    assert models.weights_digest(Path(summary["path"])) == summary["weights_digest"]
    assert not run_dir.exists()  # published, so its checkpoints are gone
    written = json.loads((Path(summary["path"]) / "training.json").read_text())
    assert len(written["history"]) == STEPS  # the losses before the kill came back with it
    # So did the held-out evaluations: the same list as the unbroken run's, value for value.
    unbroken_heldout = students.resolve_student(catalog, reference["student"])["metrics"]
    assert [e["step"] for e in written["heldout"]] == [0, 3, 6, 9, 12, 15, 16]
    assert written["heldout"] == unbroken_heldout["heldout"]
    assert summary["heldout"] == reference["heldout"] == written["heldout"][-1]
