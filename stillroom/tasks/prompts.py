"""Prompt sources: a template x topic grid (YAML), seed prompts (JSONL), reasoning-gym tasks.

Each source yields `Prompt`s; every error names the file and, where there is one, the line.
"""

from __future__ import annotations

import itertools
import json
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from stillroom.catalog import Catalog, insert_many
from stillroom.errors import StillroomError
from stillroom.hashing import canonical_json, content_hash

DEFAULT_TEMPLATE = "Question: {question}\nAnswer:"


@dataclass(frozen=True)
class Prompt:
    """A request to a teacher. Chat prompts keep their messages as JSON in `text`."""

    text: str
    source: str
    is_chat: bool = False
    task: str | None = None
    reference: dict[str, Any] | None = None  # what a verifier needs: answer and metadata
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def prompt_id(self) -> str:
        return content_hash(self.text, self.is_chat)

    @property
    def messages(self) -> list[dict[str, str]]:
        return json.loads(self.text) if self.is_chat else [{"role": "user", "content": self.text}]


def few_shot(shots: list[dict[str, Any]], question: str, template: str = DEFAULT_TEMPLATE) -> str:
    """A plain few-shot prompt: solved examples, then the open question (for base models)."""
    solved = "".join(template.format(question=s["question"]) + f" {s['answer']}\n\n" for s in shots)
    return solved + template.format(question=question)


def reasoning_gym_entries(task: str, size: int, seed: int,
                          config: dict[str, Any] | None = None, where: str = "") -> list[dict]:
    """Procedural items from reasoning-gym, with their answers kept for verification."""
    import reasoning_gym

    try:
        dataset = reasoning_gym.create_dataset(task, size=size, seed=seed, **(config or {}))
    except Exception as exc:  # unknown task names and bad configs surface here
        raise StillroomError(f"reasoning-gym task {task!r}: {exc}", where=where or None) from exc
    return [dataset[i] for i in range(size)]


def reasoning_gym_prompts(task: str, size: int, seed: int = 0, shots: int = 3,
                          config: dict[str, Any] | None = None,
                          template: str = DEFAULT_TEMPLATE, where: str = "") -> list[Prompt]:
    """Few-shot prompts for a reasoning-gym task; the shots come from a disjoint seed."""
    entries = reasoning_gym_entries(task, size, seed, config, where)
    examples = reasoning_gym_entries(task, shots, seed + 1_000_003, config, where) if shots else []
    return [
        Prompt(
            text=few_shot(examples, e["question"], template),
            source=f"reasoning_gym:{task}",
            task=task,
            reference={"question": e["question"], "answer": e["answer"],
                       "metadata": json.loads(canonical_json(e["metadata"]))},
            meta={"seed": seed, "index": i},
        )
        for i, e in enumerate(entries)
    ]


def _require(mapping: dict, key: str, kind: type, where: str) -> Any:
    if key not in mapping:
        raise StillroomError(f"missing key {key!r}", where=where)
    value = mapping[key]
    if not isinstance(value, kind) or (isinstance(value, list | str) and not value):
        raise StillroomError(f"{key!r} must be a non-empty {kind.__name__}", where=where)
    return value


def grid_prompts(spec: dict[str, Any], where: str) -> list[Prompt]:
    """Every template filled with every topic: `templates: [...]`, `topics: [...]`."""
    templates = _require(spec, "templates", list, where)
    topics = _require(spec, "topics", list, where)
    prompts = []
    for template, topic in itertools.product(templates, topics):
        if not isinstance(template, str) or "{topic}" not in template:
            raise StillroomError(f"template {template!r} must be a string containing {{topic}}",
                                 where=where)
        prompts.append(Prompt(text=template.format(topic=topic), source="grid",
                              meta={"template": template, "topic": str(topic)}))
    return prompts


def jsonl_prompts(path: Path) -> list[Prompt]:
    """Seed prompts, one JSON object a line: {"prompt": str} or {"messages": [...]}."""
    prompts = []
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        where = f"{path}:{number}"
        try:
            row = json.loads(line)
        except json.JSONDecodeError as exc:
            raise StillroomError(f"not valid JSON ({exc.msg})", where=where) from exc
        if not isinstance(row, dict):
            raise StillroomError("each line must be a JSON object", where=where)
        meta = {k: v for k, v in row.items() if k not in ("prompt", "messages")}
        if isinstance(row.get("prompt"), str) and row["prompt"].strip():
            prompts.append(Prompt(text=row["prompt"], source=f"seed:{path.name}", meta=meta))
        elif _valid_messages(row.get("messages")):
            prompts.append(Prompt(text=canonical_json(row["messages"]), source=f"seed:{path.name}",
                                  is_chat=True, meta=meta))
        else:
            raise StillroomError(
                "needs a non-empty string 'prompt' or a 'messages' list of {role, content}",
                where=where)
    if not prompts:
        raise StillroomError("no prompts in file", where=str(path))
    return prompts


def _valid_messages(messages: Any) -> bool:
    return (isinstance(messages, list) and bool(messages)
            and all(isinstance(m, dict) and isinstance(m.get("role"), str)
                    and isinstance(m.get("content"), str) for m in messages))


def yaml_prompts(path: Path) -> list[Prompt]:
    """A YAML prompt spec: a `grid` section and/or a list of `reasoning_gym` tasks."""
    try:
        spec = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"{path}:{mark.line + 1}" if mark else str(path)
        problem = getattr(exc, "problem", exc)
        raise StillroomError(f"malformed YAML: {problem}", where=where) from exc
    if not isinstance(spec, dict) or not ({"grid", "reasoning_gym"} & spec.keys()):
        raise StillroomError("expected a mapping with 'grid' and/or 'reasoning_gym'",
                             where=str(path))
    unknown = spec.keys() - {"grid", "reasoning_gym", "description"}
    if unknown:
        raise StillroomError(f"unknown keys {sorted(unknown)}", where=str(path))
    prompts: list[Prompt] = []
    if "grid" in spec:
        if not isinstance(spec["grid"], dict):
            raise StillroomError("'grid' must be a mapping", where=f"{path}: grid")
        prompts += grid_prompts(spec["grid"], where=f"{path}: grid")
    tasks = spec.get("reasoning_gym") or []
    if not isinstance(tasks, list):
        raise StillroomError("'reasoning_gym' must be a list of tasks", where=f"{path}")
    for i, task in enumerate(tasks):
        where = f"{path}: reasoning_gym[{i}]"
        if not isinstance(task, dict):
            raise StillroomError("each task must be a mapping", where=where)
        prompts += reasoning_gym_prompts(
            task=_require(task, "task", str, where), size=int(task.get("size", 20)),
            seed=int(task.get("seed", 0)), shots=int(task.get("shots", 3)),
            config=task.get("config"), template=task.get("template", DEFAULT_TEMPLATE),
            where=where)
    return prompts


def load_prompts(spec: str) -> list[Prompt]:
    """Prompts from a .yaml/.yml spec, a .jsonl seed file, or `reasoning_gym:TASK[:SIZE[:SEED]]`."""
    if spec.startswith("reasoning_gym:"):
        parts = spec.split(":")[1:]
        try:
            size = int(parts[1]) if len(parts) > 1 else 20
            seed = int(parts[2]) if len(parts) > 2 else 0
        except ValueError as exc:
            raise StillroomError("expected reasoning_gym:TASK[:SIZE[:SEED]]", where=spec) from exc
        return reasoning_gym_prompts(parts[0], size, seed, where=spec)
    path = Path(spec)
    if not path.is_file():
        raise StillroomError("no such prompt file", where=spec)
    if path.suffix == ".jsonl":
        return jsonl_prompts(path)
    if path.suffix in (".yaml", ".yml"):
        return yaml_prompts(path)
    raise StillroomError("prompt files are .jsonl or .yaml", where=spec)


def store_prompts(catalog: Catalog, prompts: Iterable[Prompt]) -> int:
    """Insert prompts not yet in the catalog; returns how many were new."""
    rows = [(p.prompt_id, p.text, p.is_chat, p.source, p.task,
             canonical_json(p.reference) if p.reference is not None else None,
             canonical_json(p.meta)) for p in prompts]
    with catalog.write() as conn:
        before = conn.execute("SELECT count(*) FROM prompts").fetchone()[0]
        insert_many(conn, "INSERT OR IGNORE INTO prompts VALUES (?, ?, ?, ?, ?, ?, ?, now())", rows)
        after = conn.execute("SELECT count(*) FROM prompts").fetchone()[0]
    return after - before
