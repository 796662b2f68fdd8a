"""Scorers (one item) and metrics (a whole run) behind registries, so suites name them as data."""

from __future__ import annotations

import random
import re
import unicodedata
from collections.abc import Callable, Sequence
from functools import cache
from typing import Any

from stillroom.errors import StillroomError

Scorer = Callable[..., float]
SCORERS: dict[str, Scorer] = {}
METRICS: dict[str, Callable[..., dict[str, float]]] = {}


def scorer(name: str) -> Callable[[Scorer], Scorer]:
    def decorate(fn: Scorer) -> Scorer:
        SCORERS[name] = fn
        return fn
    return decorate


def metric(name: str) -> Callable:
    def decorate(fn: Callable[..., dict[str, float]]) -> Callable[..., dict[str, float]]:
        METRICS[name] = fn
        return fn
    return decorate


# Bump when `normalize` changes: stored dedupe hashes of normalised text are keyed by it.
NORMALIZE_VERSION = 1


def normalize(text: str) -> str:
    """Case-, width- and whitespace-insensitive form used for exact matches and dedupe."""
    text = unicodedata.normalize("NFKC", text).casefold()
    return re.sub(r"\s+", " ", text).strip()


@cache
def _reasoning_gym_scorer(task: str) -> Callable[[str, dict], float]:
    import reasoning_gym

    return reasoning_gym.get_score_answer_fn(task)


@scorer("reasoning_gym")
def reasoning_gym_score(output: str, reference: dict[str, Any], task: str) -> float:
    """The task's own scorer from reasoning-gym (answer and metadata travel in `reference`)."""
    entry = {"question": reference.get("question", ""), "answer": reference["answer"],
             "metadata": {**reference.get("metadata", {}), "source_dataset": task}}
    return float(_reasoning_gym_scorer(task)(output.strip(), entry) or 0.0)


@scorer("exact_match")
def exact_match(output: str, reference: dict[str, Any], task: str | None = None) -> float:
    return float(normalize(output) == normalize(str(reference["answer"])))


def score_with(name: str, output: str, reference: dict[str, Any], task: str | None = None) -> float:
    if name not in SCORERS:
        raise StillroomError(f"unknown scorer {name!r}; known: {', '.join(sorted(SCORERS))}")
    return SCORERS[name](output, reference, task=task)


def bootstrap_interval(values: Sequence[float], level: float = 0.95, resamples: int = 2000,
                       seed: int = 0) -> tuple[float, float]:
    """Percentile bootstrap interval of the mean (seeded, so reports are reproducible)."""
    if not values:
        return (0.0, 0.0)
    rng = random.Random(seed)
    n = len(values)
    means = sorted(sum(rng.choices(values, k=n)) / n for _ in range(resamples))
    tail = (1 - level) / 2
    return (means[int(tail * (resamples - 1))], means[int((1 - tail) * (resamples - 1))])


@metric("accuracy")
def accuracy(scores: Sequence[float], **_: Any) -> dict[str, float]:
    low, high = bootstrap_interval(scores)
    return {"accuracy": sum(scores) / len(scores) if scores else 0.0, "ci_low": low,
            "ci_high": high}


@metric("agreement")
def agreement(outputs: Sequence[str], reference_outputs: Sequence[str] | None = None,
              **_: Any) -> dict[str, float]:
    """Share of items where the model says what the teacher said (normalised exact match)."""
    if not reference_outputs:
        return {}
    same = [normalize(a) == normalize(b) for a, b in zip(outputs, reference_outputs, strict=True)]
    return {"agreement": sum(same) / len(same)}
