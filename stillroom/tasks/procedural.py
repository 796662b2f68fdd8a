"""Procedural tasks built into Stillroom, beside reasoning-gym's: items with exact answers.

A task is a function (size, seed, **config) -> entries shaped like reasoning-gym's
(`question`, `answer`, `metadata`), so prompt files and suites name it the same way.
"""

from __future__ import annotations

import hashlib
import random
from collections.abc import Callable
from typing import Any

from stillroom import inputs
from stillroom.errors import StillroomError

Entries = list[dict[str, Any]]
TASKS: dict[str, Callable[..., Entries]] = {}
SCORERS: dict[str, str] = {}  # task -> the name of the scorer that checks its answers

_ONES = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine",
         "ten", "eleven", "twelve", "thirteen", "fourteen", "fifteen", "sixteen", "seventeen",
         "eighteen", "nineteen"]
_TENS = ["_", "_", "twenty", "thirty", "forty", "fifty", "sixty", "seventy", "eighty", "ninety"]


def task(name: str, scorer: str) -> Callable[[Callable[..., Entries]], Callable[..., Entries]]:
    def register(fn: Callable[..., Entries]) -> Callable[..., Entries]:
        TASKS[name] = fn
        SCORERS[name] = scorer
        return fn
    return register


def scorer_for(task: str | None) -> str:
    """The scorer that verifies `task`'s answers: its own for a task built in here,
    reasoning-gym's scorer for the task otherwise."""
    return SCORERS.get(task or "", "reasoning_gym")


def number_words(n: int) -> str:
    """English words for 0 <= n < 1,000,000 ("three thousand forty-two")."""
    if n < 20:
        return _ONES[n]
    if n < 100:
        return _TENS[n // 10] + (f"-{_ONES[n % 10]}" if n % 10 else "")
    if n < 1000:
        rest = f" {number_words(n % 100)}" if n % 100 else ""
        return f"{_ONES[n // 100]} hundred{rest}"
    rest = f" {number_words(n % 1000)}" if n % 1000 else ""
    return f"{number_words(n // 1000)} thousand{rest}"


SPLITS = ("train", "test")


def in_test_split(value: int) -> bool:
    """A fixed fifth of all values, spread evenly over every digit pattern."""
    return hashlib.sha256(str(value).encode()).digest()[0] % 5 == 0


@task("number_words", scorer="exact_match")
def number_words_task(size: int, seed: int, min_value: int = 0, max_value: int = 999,
                      split: str = "train", where: str = "number_words") -> Entries:
    """Numbers written in words; the answer is the number in digits.

    Values are drawn without replacement from one `split` of the range: a fixed fifth of
    the values (by a hash of the value, not of the seed) is `test`, the rest `train`, so a
    suite on `test` never shares a number with training prompts drawn from `train`."""
    low = inputs.whole_number(min_value, f"{where}.min_value", minimum=0)
    high = inputs.whole_number(max_value, f"{where}.max_value", minimum=low, maximum=999_999)
    if split not in SPLITS:
        raise StillroomError(f"split must be one of {', '.join(SPLITS)}, not {split!r}",
                             where=f"{where}.split")
    pool = [v for v in range(low, high + 1) if in_test_split(v) == (split == "test")]
    if size > len(pool):
        raise StillroomError(f"asks for {size} items, but the {split} split of [{low}, {high}]"
                             f" has {len(pool)} values", where=f"{where}.size")
    values = random.Random(seed).sample(pool, size)
    return [{"question": number_words(v), "answer": str(v), "metadata": {"value": v}}
            for v in values]
