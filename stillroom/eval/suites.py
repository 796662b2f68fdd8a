"""Benchmark suites are data: a YAML file names tasks, prompt format, generation and metrics."""

from __future__ import annotations

from dataclasses import dataclass, field
from importlib.resources import files
from pathlib import Path
from typing import Any

import yaml

from stillroom.errors import StillroomError
from stillroom.eval.metrics import METRICS, SCORERS
from stillroom.hashing import content_hash
from stillroom.tasks.engine import SamplingConfig
from stillroom.tasks.prompts import DEFAULT_TEMPLATE, Prompt, reasoning_gym_prompts

BUILTIN = files("stillroom").joinpath("eval/suites")
SUITE_KEYS = {"name", "description", "template", "shots", "generation", "tasks", "metrics"}
TASK_KEYS = {"task", "size", "seed", "config", "scorer"}


@dataclass(frozen=True)
class SuiteItem:
    item_id: str
    prompt: Prompt
    scorer: str


@dataclass
class Suite:
    name: str
    items: list[SuiteItem]
    sampling: SamplingConfig
    metrics: list[str]
    spec: dict[str, Any] = field(repr=False, default_factory=dict)

    @property
    def suite_hash(self) -> str:
        return content_hash(self.spec)


def _fail(message: str, where: str) -> StillroomError:
    return StillroomError(message, where=where)


def parse_suite(spec: Any, where: str) -> Suite:
    if not isinstance(spec, dict):
        raise _fail("a suite is a mapping with name, tasks and metrics", where)
    unknown = spec.keys() - SUITE_KEYS
    if unknown:
        raise _fail(f"unknown keys {sorted(unknown)}; allowed: {sorted(SUITE_KEYS)}", where)
    if not isinstance(spec.get("name"), str) or not spec["name"]:
        raise _fail("'name' must be a non-empty string", where)
    tasks = spec.get("tasks")
    if not isinstance(tasks, list) or not tasks:
        raise _fail("'tasks' must be a non-empty list", where)
    metrics = spec.get("metrics", ["accuracy"])
    bad = [m for m in metrics if m not in METRICS] if isinstance(metrics, list) else [metrics]
    if bad:
        raise _fail(f"unknown metrics {bad}; known: {sorted(METRICS)}", f"{where}: metrics")
    generation = spec.get("generation", {})
    if not isinstance(generation, dict) or generation.keys() - {"max_tokens", "stop"}:
        raise _fail("'generation' takes max_tokens and stop", f"{where}: generation")
    sampling = SamplingConfig(max_tokens=int(generation.get("max_tokens", 32)),
                              stop=tuple(generation.get("stop", ["\n"])), logprobs_k=0)
    template = spec.get("template", DEFAULT_TEMPLATE)
    if "{question}" not in template:
        raise _fail("'template' must contain {question}", f"{where}: template")
    items = []
    for i, task in enumerate(tasks):
        at = f"{where}: tasks[{i}]"
        if not isinstance(task, dict) or not isinstance(task.get("task"), str):
            raise _fail("each task is a mapping with a 'task' name", at)
        if task.keys() - TASK_KEYS:
            raise _fail(f"unknown keys {sorted(task.keys() - TASK_KEYS)}", at)
        scorer = task.get("scorer", "reasoning_gym")
        if scorer not in SCORERS:
            raise _fail(f"unknown scorer {scorer!r}; known: {sorted(SCORERS)}", at)
        try:
            size, seed, shots = int(task.get("size", 50)), int(task.get("seed", 0)), int(
                spec.get("shots", 3))
        except (TypeError, ValueError) as exc:
            raise _fail("size, seed and shots must be integers", at) from exc
        prompts = reasoning_gym_prompts(task["task"], size, seed, shots, task.get("config"),
                                        template, where=at)
        items += [SuiteItem(f"{task['task']}/{seed}/{p.meta['index']}", p, scorer)
                  for p in prompts]
    return Suite(spec["name"], items, sampling, list(metrics), spec)


def builtin_suite_names() -> list[str]:
    return sorted(p.name.removesuffix(".yaml") for p in BUILTIN.iterdir()
                  if p.name.endswith(".yaml"))


def load_suite(ref: str) -> Suite:
    """A suite from a YAML path, or a built-in suite by name (see `stillroom/eval/suites`)."""
    path = Path(ref)
    if not path.is_file():
        builtin = BUILTIN.joinpath(f"{ref}.yaml")
        if not builtin.is_file():
            raise _fail(f"no suite file or built-in suite; built-ins: {builtin_suite_names()}",
                        ref)
        path = Path(str(builtin))
    try:
        spec = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        raise _fail(f"malformed YAML: {getattr(exc, 'problem', exc)}",
                    f"{path}:{mark.line + 1}" if mark else str(path)) from exc
    return parse_suite(spec, str(path))
