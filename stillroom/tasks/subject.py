"""A row's *subject*: the one text dedupe compares and dedupe and diversity embed.

It is the question (the reference question where a prompt has one, so few-shot
preambles do not make every prompt look alike), a newline, and the response. Its
SQL is defined here once and its hash, `SUBJECT_KEY`, is part of every persisted
value derived from it (signatures, embeddings, dedupe verdicts): editing the
definition re-derives them instead of mixing texts under one key.
"""

from __future__ import annotations

from stillroom.hashing import content_hash


def question_sql(prompt: str = "p") -> str:
    """The question of prompt alias `prompt`."""
    return f"coalesce(json_extract_string({prompt}.reference, '$.question'), {prompt}.text)"


def subject_sql(prompt: str = "p", response: str = "r") -> str:
    """The subject of the row joining prompt alias `prompt` and response alias `response`."""
    return f"{question_sql(prompt)} || chr(10) || {response}.text"


SUBJECT_KEY = content_hash("subject", subject_sql())
