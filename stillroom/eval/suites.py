"""Benchmark suites are data: a YAML file names tasks, prompt format, generation and metrics."""

from __future__ import annotations

from dataclasses import dataclass, field
from importlib.resources import files
from pathlib import Path
from typing import Any

from stillroom import inputs
from stillroom.errors import StillroomError
from stillroom.eval.metrics import METRICS, SCORERS
from stillroom.hashing import content_hash
from stillroom.tasks import procedural
from stillroom.tasks.engine import SamplingConfig
from stillroom.tasks.prompts import (
    DEFAULT_TEMPLATE,
    Prompt,
    check_template,
    task_options,
    task_prompts,
)

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
    if not isinstance(spec.get("description", ""), str):
        raise _fail("'description' must be a string", f"{where}: description")
    metrics = inputs.strings(spec.get("metrics", ["accuracy"]), f"{where}: metrics",
                             allow_empty_list=False)
    bad = [m for m in metrics if m not in METRICS]
    if bad:
        raise _fail(f"unknown metrics {bad}; known: {sorted(METRICS)}", f"{where}: metrics")
    sampling = _sampling(spec.get("generation", {}), f"{where}: generation")
    template = check_template(spec.get("template", DEFAULT_TEMPLATE), f"{where}: template")
    shots = inputs.whole_number(spec.get("shots", 3), f"{where}: shots", minimum=0)
    items, seen = [], set()
    for i, task in enumerate(tasks):
        at = f"{where}: tasks[{i}]"
        if not isinstance(task, dict):
            raise _fail("each task is a mapping with a 'task' name", at)
        if task.keys() - TASK_KEYS:
            raise _fail(f"unknown keys {sorted(task.keys() - TASK_KEYS)}; allowed: "
                        f"{sorted(TASK_KEYS)}", at)
        scorer = task.get("scorer") or procedural.scorer_for(task.get("task"))
        if scorer not in SCORERS:
            raise _fail(f"unknown scorer {scorer!r}; known: {sorted(SCORERS)}", at)
        options = task_options({k: v for k, v in task.items() if k != "scorer"}, at, size=50)
        if (options["task"], options["seed"]) in seen:
            raise _fail(f"{options['task']!r} with seed {options['seed']} is already in the "
                        "suite: its items would repeat", at)
        seen.add((options["task"], options["seed"]))
        prompts = task_prompts(**{**options, "shots": shots, "template": template},
                                        where=at)
        items += [SuiteItem(f"{options['task']}/{options['seed']}/{p.meta['index']}", p, scorer)
                  for p in prompts]
    return Suite(spec["name"], items, sampling, list(metrics), spec)


def _sampling(generation: Any, where: str) -> SamplingConfig:
    """Greedy decoding with the suite's token limit and stop sequences."""
    if not isinstance(generation, dict) or generation.keys() - {"max_tokens", "stop"}:
        raise _fail("'generation' takes max_tokens and stop", where)
    return SamplingConfig(
        max_tokens=inputs.whole_number(generation.get("max_tokens", 32), f"{where}.max_tokens",
                                       minimum=1),
        stop=tuple(inputs.strings(generation.get("stop", ["\n"]), f"{where}.stop")),
        logprobs_k=0)


def builtin_suite_names() -> list[str]:
    return sorted(p.name.removesuffix(".yaml") for p in BUILTIN.iterdir()
                  if p.name.endswith(".yaml"))


def load_suite(ref: str) -> Suite:
    """A suite from a YAML path, or a built-in suite by name (see `stillroom/eval/suites`)."""
    path = Path(ref)
    if not path.is_file():
        builtin = BUILTIN.joinpath(f"{ref}.yaml")
        if not inputs.NAME.fullmatch(ref) or not builtin.is_file():
            raise _fail(f"no suite file or built-in suite; built-ins: {builtin_suite_names()}",
                        ref)
        path = Path(str(builtin))
    return parse_suite(inputs.load_yaml(path), str(path))
