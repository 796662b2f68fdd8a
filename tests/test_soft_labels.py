"""The compact soft-label codec: ids exact, logprobs within half a quantisation step."""

from __future__ import annotations

import numpy as np
import pytest

from stillroom.tasks import soft_labels


def random_topk(steps: int, k: int, vocab: int, seed: int = 0):
    rng = np.random.default_rng(seed)
    ids = [rng.choice(vocab, size=k, replace=False).tolist() for _ in range(steps)]
    lps = [np.sort(-rng.exponential(2.0, size=k)).tolist()[::-1] for _ in range(steps)]
    return ids, lps


@pytest.mark.parametrize("vocab", [384, 262_144])
def test_round_trip(vocab: int) -> None:
    ids, lps = random_topk(steps=37, k=20, vocab=vocab)
    blob = soft_labels.encode(ids, lps)
    back_ids, back_lps = soft_labels.decode(blob)
    assert back_ids == ids
    clipped = np.maximum(np.array(lps), -255 / soft_labels.SCALE)
    assert np.abs(clipped - np.array(back_lps)).max() <= 0.5 / soft_labels.SCALE + 1e-9


def test_empty_and_bad_input() -> None:
    assert soft_labels.encode([], []) is None
    assert soft_labels.decode(None) == ([], [])
    with pytest.raises(ValueError, match="ids in"):
        soft_labels.encode([[1 << 24]], [[-0.1]])
    with pytest.raises(ValueError, match="unknown soft-label version"):
        soft_labels.decode(b"\x09\x14abc")
