"""An engine that cannot run ends in one clear error line, not a traceback: vLLM missing,
or a model vLLM's kernels refuse."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from stillroom.catalog import Catalog
from stillroom.tasks import teachers


def head_dim_16_model(tiny_model: Path, out: Path) -> Path:
    """The tiny model's tokenizer over a Llama whose heads are 16 wide (hidden 32, 2 heads):
    vLLM's CPU attention kernels have no such size."""
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    tokenizer = AutoTokenizer.from_pretrained(tiny_model)
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64,
                         num_hidden_layers=1, num_attention_heads=2, num_key_value_heads=2,
                         max_position_embeddings=256, tie_word_embeddings=True,
                         bos_token_id=tokenizer.bos_token_id,
                         eos_token_id=tokenizer.eos_token_id,
                         pad_token_id=tokenizer.pad_token_id)
    torch.manual_seed(0)
    LlamaForCausalLM(config).save_pretrained(out)
    tokenizer.save_pretrained(out)
    return out


def setup_home(home: Path, model: Path, prompts: Path) -> None:
    teachers.add_teacher(Catalog(home / "catalog.duckdb").ensure(), "tiny", str(model), "mit")
    prompts.write_text(json.dumps({"prompt": "Tell me about tea."}) + "\n")


def test_missing_vllm_says_what_to_install_or_choose(tiny_model: Path, tmp_path: Path) -> None:
    home, prompts = tmp_path / "home", tmp_path / "prompts.jsonl"
    setup_home(home, tiny_model, prompts)
    code = ("import sys; sys.modules['vllm'] = None\n"
            "from stillroom.cli import main\n"
            f"sys.exit(main(['generate', '--teacher', 'tiny', '--prompts', {str(prompts)!r},"
            " '--max-tokens', '4']))")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            env={**os.environ, "STILLROOM_HOME": str(home)}, timeout=300)
    assert result.returncode == 2, result.stderr[-2000:]
    assert "Traceback" not in result.stderr
    errors = [line for line in result.stderr.splitlines() if line.startswith("stillroom:")]
    assert len(errors) == 1
    assert errors[0].startswith("stillroom: error: --backend vllm: vLLM cannot be imported")
    assert "pip install" in errors[0] and "--backend transformers" in errors[0]
    catalog = Catalog(home / "catalog.duckdb")  # a true record of the run, and nothing else
    assert [r["status"] for r in catalog.rows("SELECT status FROM runs")] == ["failed"]
    assert catalog.scalar("SELECT count(*) FROM prompts") == 0


def test_a_model_vllm_cannot_run_ends_in_one_error_naming_it(
        tiny_model: Path, tmp_path: Path) -> None:
    """Run as a user would, in a process of its own: what reaches the terminal is the test."""
    pytest.importorskip("vllm")
    home, prompts = tmp_path / "home", tmp_path / "prompts.jsonl"
    model = head_dim_16_model(tiny_model, tmp_path / "head-dim-16")
    setup_home(home, model, prompts)
    done = subprocess.run(
        [sys.executable, "-m", "stillroom.cli", "generate", "--teacher", "tiny", "--prompts",
         str(prompts), "--max-tokens", "4"], env={**os.environ, "STILLROOM_HOME": str(home)},
        capture_output=True, text=True, timeout=600)
    code, err = done.returncode, done.stderr
    assert code == 2, err[-3000:]
    assert "Traceback" not in err
    errors = [line for line in err.splitlines() if line.startswith("stillroom:")]
    assert len(errors) == 1, err[-3000:]
    assert errors[0].startswith(f"stillroom: error: {model}: vLLM cannot run this model")
    assert "head_dim=16" in errors[0]
    assert Catalog(home / "catalog.duckdb").scalar("SELECT status FROM runs") == "failed"
