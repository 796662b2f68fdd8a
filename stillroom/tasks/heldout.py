"""Held-out tracking: which rows a training never sees, and how close the student is on them.

The split is by prompt (its id, or its text when a row has none), hashed: every sample of one
prompt falls on the same side, and the split is the same for every seed, objective and run on
the dataset version, so runs compared on it are compared on the same rows.

The metrics are teacher-forced at the teacher's response tokens: forward KL(teacher || student)
over the teacher's top-k plus its tail bucket (`objectives.forward_kl`, exact over the
vocabulary when k covers it), NLL of the teacher's tokens and top-1 agreement (the student's
argmax is the teacher's token), each a mean per token.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from stillroom import inputs
from stillroom.tasks import objectives

MIN_ROWS_FOR_ONE = 10
"""A dataset with at least this many rows holds out at least one prompt when the fraction is
above 0, however the hashes fall."""


def check_fraction(value: Any, where: str = "--heldout-fraction") -> float:
    """A held-out fraction in [0, 1): 0 turns tracking off; 1 would leave nothing to train."""
    return inputs.fraction_below_one(value, where)


def prompt_key(row: Mapping[str, Any]) -> str:
    """What identifies a row's prompt: its id, or the prompt text when it has none."""
    return str(row.get("prompt_id") or row["prompt"])


def _position(key: str) -> float:
    """Where `key` falls in [0, 1), uniformly and the same in every process."""
    digest = hashlib.sha256(f"stillroom-heldout:{key}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2 ** 64


def split(keys: Sequence[str], fraction: float) -> list[bool]:
    """For each row's prompt key, whether the row is held out.

    A prompt is held out when its hash falls below `fraction`. With >= `MIN_ROWS_FOR_ONE`
    rows and a fraction above 0, at least one prompt is held out (the lowest hash); the
    training side always keeps at least one prompt (the highest hash)."""
    check_fraction(fraction, "heldout_fraction")
    positions = {key: _position(key) for key in keys}
    held = {key for key, at in positions.items() if at < fraction}
    if fraction > 0 and not held and len(keys) >= MIN_ROWS_FOR_ONE and len(positions) > 1:
        held = {min(positions, key=positions.__getitem__)}
    if held and len(held) == len(positions):
        held.discard(max(positions, key=positions.__getitem__))
    return [key in held for key in keys]


@dataclass
class Tally:
    """Sums over held-out positions, batch by batch; `result` turns them into means."""
    kl_sum: float = 0.0
    kl_tokens: int = 0
    nll_sum: float = 0.0
    agree: int = 0
    tokens: int = 0

    def add(self, logits: torch.Tensor, batch: Mapping[str, torch.Tensor]) -> None:
        """Add one batch: `logits` [N, V] at its N response positions, `batch` as collated
        for training (targets, kd_ids, kd_logprobs, kd_tail, kd_mask)."""
        _, parts = objectives.objective_loss(
            logits, batch["targets"], batch["kd_ids"], batch["kd_logprobs"],
            batch.get("kd_tail"), batch["kd_mask"], objective="forward_kl", temperature=1.0,
            kd_weight=1.0)
        count = int(batch["targets"].numel())
        self.kl_sum += parts["kd"] * parts["kd_positions"]
        self.kl_tokens += int(parts["kd_positions"])
        self.nll_sum += parts["ce"] * count
        self.agree += int((logits.argmax(-1) == batch["targets"]).sum())
        self.tokens += count

    def result(self, step: int) -> dict[str, Any]:
        """{step, kl, nll, top1_agreement, tokens}; kl is None without soft labels."""
        kl = self.kl_sum / self.kl_tokens if self.kl_tokens else None
        tokens = max(self.tokens, 1)
        return {"step": step, "kl": kl, "nll": self.nll_sum / tokens,
                "top1_agreement": self.agree / tokens, "tokens": self.tokens}


def describe(entry: Mapping[str, Any]) -> str:
    """`held-out KL 0.45, NLL 0.67, top-1 0.81` for a log line."""
    kl = entry.get("kl")
    shown = "-" if kl is None or not math.isfinite(kl) else f"{kl:.3f}"
    return (f"held-out KL {shown}, NLL {entry['nll']:.3f},"
            f" top-1 {entry['top1_agreement']:.2f}")
