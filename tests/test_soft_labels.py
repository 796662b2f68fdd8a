"""The compact soft-label codec: ids exact, logprobs within half a step, tail mass kept."""

from __future__ import annotations

import zlib

import numpy as np
import pytest

from stillroom.tasks import soft_labels

# A v1 blob written by the v1 encoder: steps [[5, 300], [7, 1]] with logprobs
# [[-0.1, -9.0], [-0.5, -1.25]] (-9.0 was clipped to the v1 floor, -255/32).
V1_BLOB = bytes.fromhex("010263600002460606561d7646e63f021200")


def random_topk(steps: int, k: int, vocab: int, seed: int = 0):
    """Top-k of real distributions over the vocabulary: peaked logits, like an LM's."""
    rng = np.random.default_rng(seed)
    ids, lps, tails = [], [], []
    for _ in range(steps):
        logits = rng.normal(0, 2.0, vocab)
        logits[rng.choice(vocab, 3, replace=False)] += rng.uniform(5, 25, 3)
        logprobs = logits - np.logaddexp.reduce(logits)
        top = np.argsort(-logprobs)[:k]
        ids.append(top.tolist())
        lps.append(logprobs[top].tolist())
        tails.append(-np.expm1(np.logaddexp.reduce(logprobs[top])))
    return ids, lps, np.array(tails)


def encode_v1(ids: list[list[int]], lps: list[list[float]]) -> bytes:
    """The v1 layout (uint8 codes, floor -7.97 nats, no tail), to test that v1 still reads."""
    ids_ = np.asarray(ids)
    planes = np.stack([(ids_ >> 16) & 255, (ids_ >> 8) & 255, ids_ & 255]).astype(np.uint8)
    codes = np.clip(np.round(-np.asarray(lps) * 32), 0, 255)
    steps = np.diff(codes.astype(np.int16), axis=1, prepend=0).astype(np.uint8)
    deflate = zlib.compressobj(9, zlib.DEFLATED, -15)
    body = deflate.compress(planes.tobytes() + steps.tobytes()) + deflate.flush()
    return bytes([1, ids_.shape[1]]) + body


@pytest.mark.parametrize("vocab", [384, 262_144])
def test_round_trip(vocab: int) -> None:
    ids, lps, tails = random_topk(steps=37, k=20, vocab=vocab)
    blob = soft_labels.encode(ids, lps)
    assert blob[0] == 2
    labels = soft_labels.decode_labels(blob)
    assert labels.ids == ids
    assert np.abs(np.array(lps) - np.array(labels.logprobs)).max() <= 0.5 / 32 + 1e-9
    assert not np.any(labels.clipped)
    # the tail comes from the unquantised logprobs: within half a step in log space
    assert np.abs(np.log(labels.tail) - np.log(tails)).max() <= 0.5 / 32 + 1e-9
    assert soft_labels.decode(blob) == (labels.ids, labels.logprobs)


def test_confident_tail_survives_quantisation() -> None:
    """A tail of 3e-5 is far below what 1/32-nat logprobs can resolve; v2 stores it anyway."""
    lps = [[np.log1p(-3e-5), np.log(1e-5), np.log(1e-5)]]
    labels = soft_labels.decode_labels(soft_labels.encode([[4, 8, 9]], lps))
    assert labels.tail[0] == pytest.approx(1e-5, rel=0.02)
    from_quantised = 1 - np.exp(labels.logprobs[0]).sum()
    assert abs(from_quantised - 1e-5) > 1e-5   # a guess from the stored logprobs is off by >100%


def test_below_floor_entries_are_kept_or_marked() -> None:
    """v1 clipped -12 nats to -7.97; v2 keeps it, and marks only -inf (no probability)."""
    lps = [[-0.01, -12.0, -40.0, -np.inf]]
    labels = soft_labels.decode_labels(soft_labels.encode([[1, 2, 3, 4]], lps))
    assert labels.logprobs[0][:3] == pytest.approx([-0.01, -12.0, -40.0], abs=1 / 64)
    assert labels.clipped == [[False, False, False, True]]
    assert labels.logprobs[0][3] == soft_labels.FLOOR and np.exp(soft_labels.FLOOR) == 0
    full = soft_labels.decode_labels(soft_labels.encode([[1, 2]], [[0.0, -np.inf]]))
    assert full.tail == [0.0]          # the top-k holds all the mass: the tail is exactly 0


def test_v1_blobs_decode_as_before() -> None:
    assert soft_labels.decode(V1_BLOB) == ([[5, 300], [7, 1]],
                                           [[-0.09375, -7.96875], [-0.5, -1.25]])
    labels = soft_labels.decode_labels(V1_BLOB)
    assert labels.tail is None
    assert labels.clipped == [[False, True], [False, False]]
    ids, lps, _ = random_topk(steps=25, k=20, vocab=262_144, seed=3)
    back_ids, back_lps = soft_labels.decode(encode_v1(ids, lps))
    assert back_ids == ids
    clipped = np.maximum(np.array(lps), -255 / 32)
    assert np.abs(clipped - np.array(back_lps)).max() <= 0.5 / 32 + 1e-9


def test_storage_cost_at_k20_on_a_262k_vocab() -> None:
    """Bytes per entry, v1 vs v2 (the docstring quotes these): the tail costs little."""
    ids, lps, _ = random_topk(steps=200, k=20, vocab=262_144, seed=1)
    v1 = soft_labels.bytes_per_entry(encode_v1(ids, lps), 200)
    v2 = soft_labels.bytes_per_entry(soft_labels.encode(ids, lps), 200)
    print(f"bytes per entry at k=20, 262k vocab: v1 {v1:.3f}, v2 {v2:.3f}")
    assert v2 < 3.5 and v2 - v1 < 0.6


def test_empty_and_bad_input() -> None:
    assert soft_labels.encode([], []) is None
    assert soft_labels.decode(None) == ([], [])
    assert soft_labels.decode_labels(None).tail is None
    with pytest.raises(ValueError, match="ids in"):
        soft_labels.encode([[1 << 24]], [[-0.1]])
    with pytest.raises(ValueError, match="NaN"):
        soft_labels.encode([[1, 2]], [[-0.1, float("nan")]])
    with pytest.raises(ValueError, match="unknown soft-label version"):
        soft_labels.decode(b"\x09\x14abc")
