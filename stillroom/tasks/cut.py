"""Student checkpoints made from files: a teacher cut to some of its layers, or a model brought
as it is.

A cut reads the teacher's safetensors lazily, one kept tensor at a time (`safe_open`), so
cutting 4 layers out of a 7B teacher needs memory for those layers and the embeddings, not for
the teacher. Teacher layer `old` becomes student layer `new` by renaming its tensors
(`<blocks>.<old>.` -> `<blocks>.<new>.`); every tensor outside the blocks (embeddings, final
norm, LM head) is copied unchanged, and the config's layer count and per-layer lists are cut to
match. Teachers stored only as PyTorch `.bin` files cannot be read lazily: they are loaded whole
and cut in memory, with a log line saying so.
"""

from __future__ import annotations

import json
import logging
import re
import shutil
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from stillroom.errors import StillroomError

log = logging.getLogger(__name__)

WEIGHTS = "model.safetensors"
WEIGHTS_INDEX = "model.safetensors.index.json"
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json",
                   "added_tokens.json", "tokenizer.model", "spiece.model", "vocab.json",
                   "vocab.txt", "merges.txt", "chat_template.jinja", "chat_template.json",
                   "generation_config.json")
HUB_FILES = ["*.json", "*.safetensors", "*.model", "*.txt", "*.jinja", "*.tiktoken"]
"""What a hub snapshot needs for a cut; `.bin` weights are fetched only by the full-load path."""
LAYER_COUNT_KEYS = ("num_hidden_layers", "n_layer", "num_layers", "n_layers")
BLOCK_INDEX = re.compile(r"^(.+?)\.(\d+)\.")


@dataclass(frozen=True)
class CutReport:
    """What a cut did: which teacher layers it kept under which tensor prefix, how, and how
    many tensor bytes it read (the memory it needed) out of the teacher's."""

    path: Path
    layers: list[int]
    blocks: str
    method: str            # "tensors" (lazy safetensors) or "full load" (.bin teacher)
    bytes_read: int
    teacher_bytes: int


def checkpoint_dir(model: str, revision: str | None, where: str) -> Path:
    """The local folder holding `model`'s config, tokenizer and safetensors: the directory
    itself for a local path (as for teachers, a revision does not apply to it), else the hub
    snapshot at `revision`."""
    if Path(model).expanduser().is_dir():
        return Path(model).expanduser()
    from huggingface_hub import snapshot_download

    try:
        return Path(snapshot_download(model, revision=revision, allow_patterns=HUB_FILES))
    except Exception as exc:  # offline, unknown repo or revision, no access: one clear line
        raise StillroomError(f"cannot fetch {model}@{revision or 'main'} from the hub:"
                             f" {type(exc).__name__}: {exc}", where=where) from exc


def weight_files(folder: Path) -> list[Path]:
    """The safetensors files of a checkpoint (the index's shards, or the single file); empty
    for a checkpoint stored as `.bin` only."""
    index = folder / WEIGHTS_INDEX
    if index.exists():
        shards = json.loads(index.read_text())["weight_map"].values()
        return [folder / shard for shard in sorted(set(shards))]
    return [folder / WEIGHTS] if (folder / WEIGHTS).exists() else []


def read_config(folder: Path) -> dict[str, Any]:
    path = folder / "config.json"
    if not path.exists():
        raise StillroomError(f"no model checkpoint (config.json) at {folder}", where=str(folder))
    return json.loads(path.read_text())


def _decoder_config(config: dict[str, Any]) -> dict[str, Any]:
    """The part of a config that counts the decoder's layers (a multimodal model's
    `text_config`, else the config itself)."""
    if not any(key in config for key in LAYER_COUNT_KEYS) and isinstance(
            config.get("text_config"), dict):
        return config["text_config"]
    return config


def layer_count(folder: Path) -> int:
    decoder = _decoder_config(read_config(folder))
    for key in LAYER_COUNT_KEYS:
        if isinstance(decoder.get(key), int):
            return decoder[key]
    raise StillroomError(f"config.json names no layer count ({', '.join(LAYER_COUNT_KEYS)})",
                         where=str(folder))


def block_prefix(names: Iterable[str], total: int) -> str:
    """The tensor-name prefix of the decoder's blocks (`model.layers`, `transformer.h`,
    `model.language_model.layers`, ...): the prefix followed by exactly the indices 0..total-1.
    Found from the names themselves, so no architecture needs to be known in advance."""
    indices: dict[str, set[int]] = {}
    for name in names:
        match = BLOCK_INDEX.match(name)
        if match:
            indices.setdefault(match[1], set()).add(int(match[2]))
    found = [prefix for prefix, seen in indices.items() if seen == set(range(total))]
    if len(found) > 1:  # e.g. a vision tower with as many blocks: prefer the decoder's name
        decoders = [p for p in found if not re.search(r"vision|visual|audio|encoder", p)]
        found = decoders if len(decoders) == 1 else found
    if len(found) != 1:
        raise StillroomError(
            f"cannot tell which tensors are the {total} decoder blocks: candidates"
            f" {sorted(found) or sorted(indices)}", where="teacher checkpoint")
    return found[0]


def _renamer(prefix: str, layers: list[int]) -> Any:
    """name -> the student's name for it, or None for a tensor of a block that is dropped."""
    new_index = {old: new for new, old in enumerate(layers)}
    pattern = re.compile(rf"^{re.escape(prefix)}\.(\d+)\.")

    def rename(name: str) -> str | None:
        match = pattern.match(name)
        if not match:
            return name
        new = new_index.get(int(match[1]))
        return None if new is None else f"{prefix}.{new}.{name[match.end():]}"

    return rename


def cut_config(config: dict[str, Any], layers: list[int], total: int) -> dict[str, Any]:
    """`config` for a model keeping `layers` of `total`: the layer count and every per-layer
    list (`layer_types`, `no_rope_layers`, ...: a `*layer*` key holding one entry per layer)."""
    config = json.loads(json.dumps(config))
    decoder = _decoder_config(config)
    for key in LAYER_COUNT_KEYS:
        if isinstance(decoder.get(key), int):
            decoder[key] = len(layers)
    for key, value in decoder.items():
        if "layer" in key and isinstance(value, list) and len(value) == total:
            decoder[key] = [value[i] for i in layers]
    return config


def copy_tokenizer(folder: Path, out: Path) -> None:
    """The tokenizer and generation config files, byte for byte (a student shares them)."""
    for name in TOKENIZER_FILES:
        if (folder / name).is_file():
            shutil.copyfile(folder / name, out / name)


def check_layers(layers: list[int], total: int) -> None:
    if not layers or layers != sorted(set(layers)) or not 0 <= layers[0] <= layers[-1] < total:
        raise StillroomError(f"layers {layers} are not increasing indices of the teacher's"
                             f" {total} layers", where="--layers")


def cut_student(teacher: str, layers: list[int], out: Path,
                revision: str | None = None) -> CutReport:
    """A student sharing the teacher's tokenizer and embedding, keeping `layers` of its blocks.

    `revision` is the teacher's pinned revision: the student must come from the weights the
    teacher's rows (and the student's model card) name, not whatever the hub serves today.
    Reading only the kept tensors keeps every value byte for byte, in the teacher's dtype.
    """
    from safetensors import safe_open
    from safetensors.torch import save_file

    folder = checkpoint_dir(teacher, revision, where="teacher")
    total = layer_count(folder)
    check_layers(layers, total)
    files = weight_files(folder)
    if not files:
        return _cut_by_loading(teacher, revision, folder, layers, total, out)
    names: dict[str, Path] = {}
    for file in files:
        with safe_open(file, framework="pt") as f:
            names.update(dict.fromkeys(f.keys(), file))
    prefix = block_prefix(names, total)
    rename = _renamer(prefix, layers)
    tensors, read = {}, 0
    for file in files:
        with safe_open(file, framework="pt") as f:
            for name in sorted(n for n, where in names.items() if where == file):
                new = rename(name)
                if new is not None:
                    tensors[new] = f.get_tensor(name)
                    read += tensors[new].nbytes
    out.mkdir(parents=True, exist_ok=True)
    save_file(tensors, out / WEIGHTS, metadata={"format": "pt"})
    (out / "config.json").write_text(
        json.dumps(cut_config(read_config(folder), layers, total), indent=2, sort_keys=True)
        + "\n")
    copy_tokenizer(folder, out)
    log.info("cut a %d-layer student from %s@%s (layers %s): read %.1f of %.1f MB of tensors",
             len(layers), teacher, revision or "unpinned", layers, read / 1e6,
             sum(f.stat().st_size for f in files) / 1e6)
    return CutReport(out, layers, prefix, "tensors", read, sum(f.stat().st_size for f in files))


def load_model(model: str, revision: str | None, folder: Path) -> Any:
    """The whole model in its stored dtype (from `folder` when it holds safetensors, else
    through transformers, which fetches a hub model's `.bin` files itself)."""
    from transformers import AutoModelForCausalLM

    if weight_files(folder):
        return AutoModelForCausalLM.from_pretrained(folder, dtype="auto")
    return AutoModelForCausalLM.from_pretrained(model, revision=revision, dtype="auto")


def _cut_by_loading(teacher: str, revision: str | None, folder: Path, layers: list[int],
                    total: int, out: Path) -> CutReport:
    """The cut for a teacher without safetensors: load it whole, drop blocks, save."""
    import torch

    log.warning("teacher %s has no safetensors weights, only .bin: loading the whole model to"
                " cut it (this needs memory for the full teacher)", teacher)
    model = load_model(teacher, revision, folder)
    prefix = block_prefix(model.state_dict(), total)
    blocks = model.get_submodule(prefix)
    parent_name, _, attribute = prefix.rpartition(".")
    kept = torch.nn.ModuleList(blocks[i] for i in layers)
    setattr(model.get_submodule(parent_name), attribute, kept)
    for new_index, block in enumerate(kept):
        for module in block.modules():
            if hasattr(module, "layer_idx"):
                module.layer_idx = new_index
    config = model.config.get_text_config()
    config.num_hidden_layers = len(layers)
    if getattr(config, "layer_types", None):
        config.layer_types = [config.layer_types[i] for i in layers]
    read = sum(t.nbytes for t in model.state_dict().values())
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out)
    copy_tokenizer(folder, out)
    return CutReport(out, layers, prefix, "full load", read, read)


def copy_checkpoint(model: str, revision: str | None, out: Path) -> Path:
    """A model brought as a student, copied as it is (config, tokenizer, safetensors shards);
    a `.bin`-only model is loaded and saved as safetensors."""
    folder = checkpoint_dir(model, revision, where="--init")
    read_config(folder)
    out.mkdir(parents=True, exist_ok=True)
    files = weight_files(folder)
    if files:
        for file in [*files, folder / WEIGHTS_INDEX, folder / "config.json"]:
            if file.is_file():
                shutil.copyfile(file, out / file.name)
    else:
        log.warning("%s has no safetensors weights, only .bin: loading it to save it as"
                    " safetensors", model)
        load_model(model, revision, folder).save_pretrained(out)
    copy_tokenizer(folder, out)
    return out
