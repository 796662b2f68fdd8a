"""Cutting a student reads only the tensors it keeps, and gives exactly the model that loading
the whole teacher and dropping its blocks would."""

from __future__ import annotations

import json
import logging
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from stillroom.tasks import cut, models

PROMPT = "Tell me about tea. Tea is"


def reference_cut(teacher: Path, layers: list[int]):
    """The teacher loaded whole, with every block not in `layers` dropped: what a cut must be."""
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(teacher)
    prefix = cut.block_prefix(model.state_dict(), model.config.num_hidden_layers)
    parent, _, attribute = prefix.rpartition(".")
    blocks = model.get_submodule(prefix)
    setattr(model.get_submodule(parent), attribute, torch.nn.ModuleList(blocks[i]
                                                                        for i in layers))
    for new_index, block in enumerate(model.get_submodule(prefix)):
        for module in block.modules():
            if hasattr(module, "layer_idx"):
                module.layer_idx = new_index
    model.config.num_hidden_layers = len(layers)
    return model.eval()


def gpt2_teacher(tiny_model: Path, out: Path) -> Path:
    """A GPT-2 (blocks under `transformer.h`, layer count in `n_layer`) with the tiny tokenizer."""
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(0)
    GPT2LMHeadModel(GPT2Config(vocab_size=384, n_positions=128, n_embd=64, n_layer=4,
                               n_head=2)).save_pretrained(out)
    cut.copy_tokenizer(tiny_model, out)
    return out


def assert_same_model(student_dir: Path, reference) -> None:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    student = AutoModelForCausalLM.from_pretrained(student_dir).eval()
    expected, got = reference.state_dict(), student.state_dict()
    assert expected.keys() == got.keys()
    assert all(torch.equal(expected[k], got[k]) for k in expected)
    ids = AutoTokenizer.from_pretrained(student_dir)(PROMPT, return_tensors="pt").input_ids
    with torch.no_grad():
        assert torch.equal(student(ids).logits, reference(ids).logits)


@pytest.mark.parametrize("arch", ["llama", "gpt2"])
def test_a_cut_is_the_teacher_with_its_other_blocks_dropped(tiny_model: Path, tmp_path: Path,
                                                            arch: str) -> None:
    teacher = tiny_model if arch == "llama" else gpt2_teacher(tiny_model, tmp_path / "gpt2")
    report = cut.cut_student(str(teacher), [1, 3], tmp_path / "student")
    assert report.method == "tensors"
    assert report.blocks == ("model.layers" if arch == "llama" else "transformer.h")
    assert_same_model(tmp_path / "student", reference_cut(teacher, [1, 3]))
    config = json.loads((tmp_path / "student" / "config.json").read_text())
    assert config["num_hidden_layers" if arch == "llama" else "n_layer"] == 2
    for name in ("tokenizer.json", "tokenizer_config.json"):  # copied byte for byte
        assert (tmp_path / "student" / name).read_bytes() == (teacher / name).read_bytes()


def test_bytes_read_are_the_kept_tensors_not_the_teacher(tiny_model: Path,
                                                         tmp_path: Path) -> None:
    teacher = load_file(tiny_model / "model.safetensors")
    block = sum(t.nbytes for name, t in teacher.items() if name.startswith("model.layers.2."))
    outside = sum(t.nbytes for name, t in teacher.items() if not name.startswith("model.layers."))
    one = cut.cut_student(str(tiny_model), [2], tmp_path / "one")
    three = cut.cut_student(str(tiny_model), [0, 2, 3], tmp_path / "three")
    assert one.bytes_read == outside + block  # one block and the embedding, nothing else
    assert three.bytes_read - one.bytes_read == 2 * block  # every further block, its own size
    assert one.bytes_read < 0.35 * one.teacher_bytes


def test_a_sharded_teacher_cuts_to_the_same_bytes_and_a_re_cut_to_the_same_digest(
        tiny_model: Path, tmp_path: Path) -> None:
    from transformers import AutoModelForCausalLM

    sharded = tmp_path / "sharded"
    AutoModelForCausalLM.from_pretrained(tiny_model).save_pretrained(sharded,
                                                                     max_shard_size="300KB")
    cut.copy_tokenizer(tiny_model, sharded)
    assert (sharded / cut.WEIGHTS_INDEX).exists() and len(cut.weight_files(sharded)) > 2
    cut.cut_student(str(sharded), [0, 3], tmp_path / "from-shards")
    cut.cut_student(str(tiny_model), [0, 3], tmp_path / "from-one-file")
    assert ((tmp_path / "from-shards" / cut.WEIGHTS).read_bytes()
            == (tmp_path / "from-one-file" / cut.WEIGHTS).read_bytes())
    first = models.weights_digest(tmp_path / "from-one-file")
    shutil.rmtree(tmp_path / "from-one-file")
    cut.cut_student(str(tiny_model), [0, 3], tmp_path / "from-one-file")
    assert models.weights_digest(tmp_path / "from-one-file") == first


def test_a_teacher_stored_as_bin_only_is_loaded_whole_and_says_so(
        tiny_model: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    from transformers import AutoModelForCausalLM

    legacy = tmp_path / "legacy"
    legacy.mkdir()
    state = AutoModelForCausalLM.from_pretrained(tiny_model).state_dict()
    torch.save({k: v.clone() for k, v in state.items()}, legacy / "pytorch_model.bin")
    for file in tiny_model.iterdir():
        if file.suffix != ".safetensors":
            shutil.copyfile(file, legacy / file.name)
    with caplog.at_level(logging.WARNING, logger="stillroom.tasks.cut"):
        report = cut.cut_student(str(legacy), [0, 2], tmp_path / "student")
    assert report.method == "full load"
    assert "no safetensors weights, only .bin: loading the whole model" in caplog.text
    assert_same_model(tmp_path / "student", reference_cut(tiny_model, [0, 2]))


def test_the_config_keeps_the_kept_layers_entries() -> None:
    config = {"text_config": {"num_hidden_layers": 4, "layer_types": ["s", "f", "s", "f"],
                              "eos_token_id": [1, 2, 3, 4]}, "architectures": ["X"]}
    assert cut.cut_config(config, [1, 2], 4) == {
        "text_config": {"num_hidden_layers": 2, "layer_types": ["f", "s"],
                        "eos_token_id": [1, 2, 3, 4]}, "architectures": ["X"]}
    assert config["text_config"]["num_hidden_layers"] == 4  # the teacher's is not changed


PEAK = """
import re, sys
from pathlib import Path
sys.path.insert(0, {root!r})
import torch, transformers, safetensors.torch
from stillroom.tasks import cut

def peak_kb():
    return int(re.search(r"VmHWM:\\s+(\\d+)", Path("/proc/self/status").read_text())[1])

open("/proc/self/clear_refs", "w").write("5")  # the peak so far (the imports') is forgotten
before = peak_kb()
if sys.argv[1] == "cut":
    cut.cut_student(sys.argv[2], [0], Path(sys.argv[3]))
else:
    transformers.AutoModelForCausalLM.from_pretrained(sys.argv[2])
print((peak_kb() - before) * 1024)
"""


def test_cutting_one_layer_of_a_large_teacher_needs_memory_for_that_layer_only(
        tiny_model: Path, tmp_path: Path) -> None:
    """Peak memory, measured in a process of its own: a cut's growth stays far below the
    teacher's size, while loading the teacher (what a full-load cut does) exceeds it."""
    from transformers import LlamaConfig, LlamaForCausalLM

    teacher = tmp_path / "teacher"
    torch.manual_seed(0)
    LlamaForCausalLM(LlamaConfig(vocab_size=384, hidden_size=512, intermediate_size=1536,
                                 num_hidden_layers=16, num_attention_heads=8,
                                 num_key_value_heads=8)).save_pretrained(teacher)
    cut.copy_tokenizer(tiny_model, teacher)
    size = (teacher / cut.WEIGHTS).stat().st_size  # ~220 MB; one block is ~14 MB

    def peak(mode: str) -> int:
        script = PEAK.format(root=str(Path(__file__).parents[1]))
        done = subprocess.run([sys.executable, "-c", script, mode, str(teacher),
                               str(tmp_path / "student")],
                              capture_output=True, text=True, timeout=300, check=True)
        return int(done.stdout.split()[-1])

    assert peak("load") > 0.9 * size  # the measurement sees a full load
    assert peak("cut") < 0.3 * size
