"""Can this student learn from these soft labels? Checked before any training step.

KD compares the student's distribution with the teacher's at the same token ids and the same
positions, so the student must share the teacher's tokenizer (ids mean the same strings), see
the prompt exactly as the teacher did (chat template, BOS), and the labels must come from the
teacher revision the student was cut from. A mismatch trains silently on shifted or
meaningless targets, so each one is a `StillroomError` before a step, and the report is stored
with the student.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import Any

from stillroom.errors import StillroomError
from stillroom.hashing import content_hash

PROMPT_MISMATCH_TOLERANCE = 0.01
"""Share of rows whose re-tokenised prompt length may differ from what the teacher saw (such
rows are left out of training); more than this means the tokenisation itself differs."""


def tokenizer_fingerprint(tokenizer: Any) -> str:
    """Hash of what decides the ids: vocabulary, merges and special tokens."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is not None:
        spec = json.loads(backend.to_str())
        model = spec.get("model", {})
        vocab, merges = model.get("vocab"), model.get("merges")
        added = [(t["id"], t["content"], t["special"]) for t in spec.get("added_tokens", [])]
    else:
        vocab, merges, added = tokenizer.get_vocab(), None, None
    special = {key: str(value) for key, value in tokenizer.special_tokens_map.items()}
    return content_hash(vocab, merges, added, special)


def prompt_ids(tokenizer: Any, rendered: str) -> list[int]:
    """The rendered prompt's ids as the engine saw them: the tokenizer's special tokens (BOS),
    unless the text already starts with the BOS string (a chat template that writes it), which
    would otherwise give two."""
    bos = tokenizer.bos_token
    already = bool(bos) and rendered.startswith(bos)
    return tokenizer(rendered, add_special_tokens=not already).input_ids


PROMPT_TOKENISATION = "prompt_ids/1"
"""The version of `prompt_ids`' rule: bump it when the rule changes, and `tokenisation_tag`
must then tell apart the prompts the change affects."""


def tokenisation_tag(tokenizer: Any, rendered: str) -> str | None:
    """`PROMPT_TOKENISATION` where `prompt_ids` gives other ids than the tokenizer's default
    call, None where they agree.

    For a request key: engines used the default call before they used `prompt_ids`, and the
    two differ only for a text that already starts with BOS (the default doubled it). Tagging
    just those keys makes a re-run ask again for the rows generated on a doubled BOS, while
    the rows of every other prompt (their tokens did not change) keep their keys and stay
    reused."""
    if prompt_ids(tokenizer, rendered) != tokenizer(rendered).input_ids:
        return PROMPT_TOKENISATION
    return None


def prompt_mismatch(tokenizer: Any, rendered: str, length: int, stored: int | None) -> str | None:
    """Why `rendered`, re-tokenised to `length` ids, does not match the `stored` prompt length
    the engine counted (None when it does, or when no count was stored)."""
    if stored is None or stored == length:
        return None
    bos = tokenizer.bos_token
    if bos and rendered.startswith(bos) and stored == length + 1:
        return (f"{stored} tokens at generation, {length} here: the engine added a second"
                f" {bos} to a prompt that already starts with it (generated before engines"
                " tokenised as `compat.prompt_ids` does); generate again, which asks the"
                " teacher anew for such prompts, and cut a new version")
    return f"{stored} tokens at generation, {length} here"


def report(student: Any, teacher: Any, student_vocab: int, *, revisions_recorded: list[str | None],
           revision_used: str | None, prompt_mismatches: Sequence[str], rows: int,
           coverage: Mapping[str, Any]) -> dict[str, Any]:
    """The compatibility of a student (tokenizer, output vocabulary) with a dataset's teacher
    and rows; raises on the first mismatch that would make KD or SFT targets wrong."""
    result = {
        "tokenizer": {"student": tokenizer_fingerprint(student),
                      "teacher": tokenizer_fingerprint(teacher)},
        "vocab": {"tokenizer": len(teacher), "student_logits": student_vocab},
        "chat_template_equal": getattr(student, "chat_template", None)
        == getattr(teacher, "chat_template", None),
        "bos": {"token": teacher.bos_token, "prompt_length_mismatches": len(prompt_mismatches),
                "rows": rows},
        "revision": {"recorded": sorted({r or "" for r in revisions_recorded}),
                     "used": revision_used or ""},
        "soft_labels": dict(coverage),
    }
    if result["tokenizer"]["student"] != result["tokenizer"]["teacher"]:
        raise StillroomError("the student's tokenizer (vocabulary, merges or special tokens)"
                             " is not the teacher's, so the soft labels' ids mean other tokens",
                             where="student tokenizer")
    if student_vocab < len(teacher):
        raise StillroomError(f"the student predicts {student_vocab} token ids, fewer than the"
                             f" teacher's tokenizer's {len(teacher)}", where="student vocabulary")
    if not result["chat_template_equal"]:
        raise StillroomError("the student's chat template differs from the teacher's",
                             where="student tokenizer")
    if len(prompt_mismatches) > PROMPT_MISMATCH_TOLERANCE * rows:
        raise StillroomError(
            f"{len(prompt_mismatches)} of {rows} rendered prompts tokenise to another length"
            " than the teacher saw (responses.prompt_tokens), so the student would not see the"
            f" teacher's prompt; the first: {prompt_mismatches[0]}", where="prompt tokens")
    if result["revision"]["recorded"] != [result["revision"]["used"]]:
        raise StillroomError(
            f"soft labels come from teacher revision(s) {result['revision']['recorded']} but"
            f" the student is cut from revision {result['revision']['used'] or 'unpinned'}",
            where="teacher revision")
    return result


def summary(compat: Mapping[str, Any]) -> list[str]:
    """Model-card lines for a stored report."""
    labels = compat["soft_labels"]
    return [f"- tokenizer: `{compat['tokenizer']['student'][:16]}` (same as the teacher's)",
            f"- vocabulary: {compat['vocab']['tokenizer']} tokens,"
            f" {compat['vocab']['student_logits']} student logits",
            f"- chat template equal: {compat['chat_template_equal']}",
            f"- prompts re-tokenised to the teacher's length: "
            f"{compat['bos']['rows'] - compat['bos']['prompt_length_mismatches']}"
            f" of {compat['bos']['rows']}",
            f"- teacher revision: {compat['revision']['used'] or 'unpinned'}",
            f"- soft labels: {labels.get('labelled')} of {labels.get('rows')} rows"
            f" at k={labels.get('k')}"]
