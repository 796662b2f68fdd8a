"""Content hashes: every catalog key is derived from what the row is, so re-runs are idempotent."""

from __future__ import annotations

import hashlib
import json
from typing import Any


def canonical_json(value: Any) -> str:
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False, default=str)


def content_hash(*parts: Any, length: int = 16) -> str:
    """A short sha256 of the canonical JSON of `parts` (stable across processes and runs)."""
    digest = hashlib.sha256(canonical_json(parts).encode("utf-8")).hexdigest()
    return digest[:length]
