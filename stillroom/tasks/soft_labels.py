"""Compact top-k soft labels: ~3 bytes per (token id, logprob) entry at k=20.

Layout of one response's blob, deflated raw (no zlib header):
  header  version (1 byte), k (1 byte)
  ids     3 byte planes (high, mid, low) of every id, rank-major per step (vocab < 2**24)
  lps     logprobs quantised to 1/32 nat as uint8 of -logprob (floor at -255/32 nats),
          stored as differences along each step's ranks (small, non-negative: they compress)
Ids round-trip exactly; logprobs within 1/64 nat, finer than KD needs.
"""

from __future__ import annotations

import zlib

import numpy as np

VERSION = 1
SCALE = 32.0  # quantisation steps per nat
MAX_ID = 1 << 24


def encode(topk_ids: list[list[int]], topk_logprobs: list[list[float]]) -> bytes | None:
    """Pack a response's per-step top-k into one blob (None when there are no soft labels)."""
    if not topk_ids:
        return None
    ids = np.asarray(topk_ids, dtype=np.int64)
    k = ids.shape[1]
    if not 0 < k < 256 or ids.min() < 0 or ids.max() >= MAX_ID:
        raise ValueError(f"cannot pack top-k of width {k} with ids in [{ids.min()}, {ids.max()}]")
    planes = np.stack([(ids >> 16) & 255, (ids >> 8) & 255, ids & 255]).astype(np.uint8)
    quantised = np.clip(np.round(-np.asarray(topk_logprobs, dtype=np.float64) * SCALE), 0, 255)
    steps = np.diff(quantised.astype(np.int16), axis=1, prepend=0).astype(np.uint8)
    deflate = zlib.compressobj(9, zlib.DEFLATED, -15)
    body = deflate.compress(planes.tobytes() + steps.tobytes()) + deflate.flush()
    return bytes([VERSION, k]) + body


def decode(blob: bytes | None) -> tuple[list[list[int]], list[list[float]]]:
    """The inverse of `encode`: per-step top-k ids and logprobs."""
    if not blob:
        return [], []
    if blob[0] != VERSION:
        raise ValueError(f"unknown soft-label version {blob[0]}")
    k = blob[1]
    raw = np.frombuffer(zlib.decompress(blob[2:], -15), dtype=np.uint8)
    n = raw.size // (4 * k)
    planes = raw[:3 * n * k].reshape(3, n, k).astype(np.int64)
    ids = (planes[0] << 16) | (planes[1] << 8) | planes[2]
    quantised = np.cumsum(raw[3 * n * k:].reshape(n, k).astype(np.int16), axis=1) % 256
    return ids.tolist(), (-quantised / SCALE).tolist()


def bytes_per_entry(blob: bytes | None, steps: int) -> float:
    if not blob or not steps:
        return 0.0
    return len(blob) / (steps * blob[1])
