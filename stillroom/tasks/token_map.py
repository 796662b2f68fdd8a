"""Token strings from a plain OpenAI-compatible server, mapped back to the teacher's ids.

Such servers name each token by its text (`logprobs.tokens`, the keys of `top_logprobs`),
and a token that is not valid UTF-8 on its own (part of a multi-byte character) as
`bytes:\\xe2\\x80`. Every vocabulary entry is reduced to the bytes it stands for
(byte-level BPE pieces through the GPT-2 byte alphabet, SentencePiece `▁` as a space and
`<0xNN>` byte fallbacks as that byte), so a server's string maps to an id when it names
the bytes of one entry and no other. A byte fallback gives way to an ordinary piece with the
same bytes (SentencePiece only emits fallbacks for bytes without a piece of their own).
"""

from __future__ import annotations

import json
import re
from typing import Any

_BYTE_FALLBACK = re.compile(r"<0x([0-9A-Fa-f]{2})>")
_ESCAPED_BYTE = re.compile(r"\\x([0-9A-Fa-f]{2})")


def server_token_bytes(token: str) -> bytes:
    """The bytes a server's token string stands for (`bytes:\\xNN...` or plain text)."""
    if token.startswith("bytes:"):
        escaped = token.removeprefix("bytes:")
        if _ESCAPED_BYTE.sub("", escaped) == "":
            return bytes(int(h, 16) for h in _ESCAPED_BYTE.findall(escaped))
    return token.encode("utf-8")


def _byte_decoder(tokenizer: Any) -> dict[str, int] | None:
    """The GPT-2 byte alphabet's inverse where the tokenizer is byte-level, else None."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is None or "ByteLevel" not in json.dumps(json.loads(backend.to_str())["decoder"]):
        return None
    from transformers.convert_slow_tokenizer import bytes_to_unicode

    return {char: byte for byte, char in bytes_to_unicode().items()}


def piece_bytes(piece: str, byte_decoder: dict[str, int] | None, special: bool) -> bytes:
    """The bytes one vocabulary piece decodes to."""
    if special:
        return piece.encode("utf-8")
    if match := _BYTE_FALLBACK.fullmatch(piece):
        return bytes([int(match[1], 16)])
    if byte_decoder is not None and all(char in byte_decoder for char in piece):
        return bytes(byte_decoder[char] for char in piece)
    return piece.replace("\u2581", " ").encode("utf-8")


class TokenMap:
    """Server token strings -> the teacher's ids, for the strings that name one entry."""

    def __init__(self, tokenizer: Any) -> None:
        byte_decoder = _byte_decoder(tokenizer)
        special = set(tokenizer.all_special_tokens)
        pieces: dict[bytes, list[int]] = {}
        fallbacks: dict[bytes, list[int]] = {}
        for piece, token_id in tokenizer.get_vocab().items():
            raw = piece_bytes(piece, byte_decoder, piece in special)
            table = fallbacks if _BYTE_FALLBACK.fullmatch(piece) else pieces
            table.setdefault(raw, []).append(token_id)
        self._unique = {raw: ids[0] for raw, ids in {**fallbacks, **pieces}.items()
                        if len(ids) == 1}

    def ids(self, tokens: list[str]) -> list[int] | None:
        """Each string's id, or None where any string names no entry or several."""
        ids = [self._unique.get(server_token_bytes(token)) for token in tokens]
        return None if None in ids else ids  # type: ignore[return-value]
