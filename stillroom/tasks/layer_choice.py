"""Which of the teacher's layers a student keeps: spread evenly, or the most influential ones
as measured on the dataset, or none (a student brought with `--init` keeps its own).

Importance is Block Influence, the measure ShortGPT prunes by: a block whose output points
where its input did (cosine close to 1) changes little and is the cheapest to drop. For each
block, 1 - cos(hidden in, hidden out) is averaged over every token of a seeded sample of the
dataset's rows (prompt and teacher response, the text the student trains on). The first and
last blocks are always kept, as in an even cut; the others are the most influential ones, in
the teacher's order.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from stillroom.errors import StillroomError
from stillroom.hashing import content_hash

METHODS = ("even", "importance")
DEFAULT_LAYERS = 4
CALIBRATION_ROWS = 32
CALIBRATION_SEED = 0
MEASURE = "block influence: 1 - cos(hidden in, hidden out), mean over tokens"


@dataclass(frozen=True)
class LayerChoice:
    """Layers kept out of `total`, how they were chosen, and on what evidence."""

    method: str
    layers: list[int]
    total: int
    scores: list[float] | None = None
    calibration: dict[str, Any] = field(default_factory=dict)

    def record(self) -> dict[str, Any]:
        """For the provenance (and the init's build key: everything that decided the cut)."""
        record: dict[str, Any] = {"method": self.method, "layers": self.layers,
                                  "total": self.total}
        if self.method == "importance":
            record |= {"measure": MEASURE, "scores": self.scores,
                       "calibration": self.calibration}
        return record

    def describe(self) -> str:
        if self.method == "even":
            return "evenly"
        return (f"by measured importance (block influence on {self.calibration['rows']}"
                f" calibration rows)")


def check_student_shape(layers: int | None, layer_choice: str | None, init_model: str | None,
                        init_revision: str | None) -> None:
    """A student is either cut (`layers`, `layer_choice`) or brought (`init_model`), not both."""
    from stillroom.tasks.teachers import validate_model

    if layer_choice is not None and layer_choice not in METHODS:
        raise StillroomError(f"{layer_choice!r} is not one of {', '.join(METHODS)}",
                             where="--layer-choice")
    if init_model is None:
        if init_revision is not None:
            raise StillroomError("a revision applies only to a student brought with --init",
                                 where="--init-revision")
        return
    for flag, value in (("--layers", layers), ("--layer-choice", layer_choice)):
        if value is not None:
            raise StillroomError("chooses the teacher layers to cut; a student brought with"
                                 " --init keeps its own layers", where=flag)
    validate_model(init_model, "--init")


def spread_layers(total: int, keep: int) -> list[int]:
    """`keep` layer indices spread evenly over `total`, always including the first and last."""
    check_keep(total, keep)
    if keep == 1:
        return [0]
    return sorted({round(i * (total - 1) / (keep - 1)) for i in range(keep)})


def check_keep(total: int, keep: int) -> None:
    if not 1 <= keep <= total:
        raise StillroomError(f"cannot keep {keep} of {total} layers", where="--layers")


def most_influential(scores: list[float], keep: int) -> list[int]:
    """The first and last blocks and the `keep - 2` highest-scoring others (ties: the earlier
    block), in order."""
    total = len(scores)
    check_keep(total, keep)
    if keep == 1:
        return [0]
    middle = sorted(range(1, total - 1), key=lambda i: (-scores[i], i))[:keep - 2]
    return sorted({0, total - 1, *middle})


def calibration_sequences(rows: Any, tokenizer: Any, count: int = CALIBRATION_ROWS,
                          seed: int = CALIBRATION_SEED) -> tuple[list[list[int]], dict[str, Any]]:
    """A seeded sample of the rows as token ids (prompt as the teacher saw it, then its
    response), and a record of the sample whose hash changes with any of its tokens."""
    from stillroom.tasks import compat

    picked = sorted(random.Random(seed).sample(range(len(rows)), min(count, len(rows))))
    sequences = [compat.prompt_ids(tokenizer, rows[i]["prompt"]) + list(rows[i]["token_ids"])
                 for i in picked]
    return sequences, {"rows": len(sequences), "seed": seed, "hash": content_hash(sequences)}


def block_influence(model: Any, blocks: Any, sequences: list[list[int]]) -> list[float]:
    """1 - cos(input, output) of each block, averaged over every token of `sequences`, from
    the blocks' real activations (forward hooks; one sequence at a time, so no padding)."""
    import torch

    sums = [0.0] * len(blocks)
    tokens = [0] * len(blocks)

    def hook(index: int) -> Any:
        def measure(_module: Any, args: tuple, kwargs: dict, output: Any) -> None:
            hidden_in = args[0] if args else kwargs["hidden_states"]
            hidden_out = output[0] if isinstance(output, tuple) else output
            cos = torch.nn.functional.cosine_similarity(hidden_in.float(), hidden_out.float(),
                                                        dim=-1)
            sums[index] += (1 - cos).sum().item()
            tokens[index] += cos.numel()
        return measure

    handles = [block.register_forward_hook(hook(i), with_kwargs=True)
               for i, block in enumerate(blocks)]
    device = next(model.parameters()).device
    try:
        with torch.no_grad():
            for sequence in sequences:
                model(input_ids=torch.tensor([sequence], device=device), use_cache=False)
    finally:
        for handle in handles:
            handle.remove()
    if not all(tokens):
        raise StillroomError("no calibration tokens reached the teacher's blocks",
                             where="--layer-choice importance")
    return [round(s / n, 6) for s, n in zip(sums, tokens, strict=True)]


def choose(method: str, keep: int, folder: Path, rows: Any, teacher_model: str,
           revision: str | None) -> LayerChoice:
    """The layers a cut of the teacher in `folder` keeps. `importance` runs the teacher (the
    whole model, unlike the cut) on the calibration sample, on a GPU when there is one."""
    from stillroom.tasks import cut

    total = cut.layer_count(folder)
    if method == "even":
        return LayerChoice("even", spread_layers(total, keep), total)
    check_keep(total, keep)
    from transformers import AutoTokenizer

    from stillroom import settings

    tokenizer = AutoTokenizer.from_pretrained(folder)
    sequences, calibration = calibration_sequences(rows, tokenizer)
    model = cut.load_model(teacher_model, revision, folder).eval()
    if settings.has_cuda():
        model = model.to("cuda")
    blocks = model.get_submodule(cut.block_prefix(model.state_dict(), total))
    scores = block_influence(model, blocks, sequences)
    return LayerChoice("importance", most_influential(scores, keep), total, scores, calibration)


def card_lines(record: dict[str, Any]) -> list[str]:
    """Model-card lines for a recorded choice."""
    lines = [f"- method: {record['method']}, layers {record['layers']} of {record['total']}"]
    if record["method"] == "importance":
        calibration = record["calibration"]
        lines += [f"- measure: {record['measure']}",
                  f"- calibration: {calibration['rows']} rows (seed {calibration['seed']},"
                  f" hash `{calibration['hash']}`)",
                  "- scores: " + ", ".join(
                      f"{i}: {s:.4f}{' (kept)' if i in record['layers'] else ''}"
                      for i, s in enumerate(record["scores"]))]
    return lines
