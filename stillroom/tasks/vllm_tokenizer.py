"""The offline vLLM engine's HF tokenizer, without a deep copy per renderer thread.

vLLM's renderer deep-copies the tokenizer once per worker thread, plus once more, so
that its async API server can tokenize from several threads at a time. The offline
engine calls it from one thread only, and for a large vocabulary each copy costs
seconds of every engine start (Gemma 3's 262k-token tokenizer: ~3 s a copy, about
half of a warm engine start on CPU). Copies made here share the Rust tokenizer and
copy only the Python object around it.

Only for the in-process engine: the `vllm-server` backend runs vLLM's own server in
its own process, which keeps the real copies.
"""

from __future__ import annotations

import logging
from typing import Any

log = logging.getLogger(__name__)
_MODE = "hf"


class SharedCopyHfTokenizer:
    """vLLM's `hf` tokenizer loader, whose tokenizers deep-copy as shallow copies."""

    @classmethod
    def from_pretrained(cls, *args: Any, **kwargs: Any) -> Any:
        from vllm.tokenizers.hf import CachedHfTokenizer

        tokenizer = CachedHfTokenizer.from_pretrained(*args, **kwargs)
        base = type(tokenizer)
        tokenizer.__class__ = type(f"SharedCopy{base.__name__}", (base,),
                                   {"__copy__": _copy, "__deepcopy__": _deepcopy})
        return tokenizer


def _copy(tokenizer: Any) -> Any:
    """A new object over the same attributes (vLLM's cached tokenizer would otherwise copy
    through its `__reduce__`, rebuilding its caches and dropping this class)."""
    clone = object.__new__(type(tokenizer))
    clone.__dict__.update(tokenizer.__dict__)
    return clone


def _deepcopy(tokenizer: Any, memo: dict[int, Any]) -> Any:
    return _copy(tokenizer)


def install() -> bool:
    """Point vLLM's `hf` tokenizer mode at the shared-copy loader; False where this vLLM
    has no tokenizer registry (another version), which keeps its own loader."""
    try:
        from vllm.tokenizers.registry import TokenizerRegistry
    except ImportError:
        return False
    entry = (__name__, SharedCopyHfTokenizer.__name__)
    if TokenizerRegistry.tokenizers.get(_MODE) != entry:
        TokenizerRegistry.tokenizers[_MODE] = entry
        log.debug("vLLM tokenizer mode %r loads through %s", _MODE, __name__)
    return True
