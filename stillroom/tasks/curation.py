"""What curation runs with: filters, then dedupe stages, from a YAML file or the defaults.

    filters:              # name: parameters, run in this order
      verifier: {}
      length: {max_chars: 4000}
    dedupe:               # run as exact -> near -> semantic, whichever are named
      scope: teacher      # or `all`: compare rows across teachers (see stillroom.tasks.dedupe)
      exact: {}
      near: {threshold: 0.7}

Every problem (malformed YAML, an unknown filter or stage, a parameter out of range)
is reported once, naming the file and line.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import yaml

from stillroom import inputs
from stillroom.catalog import Catalog
from stillroom.errors import StillroomError
from stillroom.tasks import dedupe, filters
from stillroom.tasks.dedupe import DEFAULT_SCOPE

Stages = dict[str, dict[str, Any]]


@dataclass(frozen=True)
class CurationConfig:
    filters: Stages = field(default_factory=lambda: dict(filters.DEFAULT_FILTERS))
    dedupe: Stages = field(default_factory=lambda: dict(dedupe.DEFAULT_DEDUPE))
    dedupe_scope: str = DEFAULT_SCOPE

    @property
    def hashes(self) -> dict[str, str]:
        """`fhash` is the last filter's verdict key, `dhash` the last dedupe stage's (each
        covers everything before it)."""
        fhash = filters.config_hash(self.filters)
        return {"fhash": fhash,
                "dhash": dedupe.config_hash(fhash, self.dedupe, self.dedupe_scope)}

    @property
    def pool(self) -> dict[str, str | None]:
        """The first filter's stage and verdict key: it judges every generated row, so its
        verdicts mark the pool a version's rows were chosen from, dropped rows included."""
        if not self.filters:
            return {"stage": None, "key": None}
        name, key = next(iter(filters.verdict_keys(self.filters).items()))
        return {"stage": f"filter:{name}", "key": key}

    def pinned(self, catalog: Catalog) -> CurationConfig:
        """This config with `decontaminate` pinned to the benchmark suites known now.

        The pinned list is part of that filter's verdict key, so when a suite is added or
        evaluated, the next run re-checks every row against it (and redoes the filters after
        it and dedupe) while earlier filters' verdicts stand. Pin once per run, so that
        filtering and cutting agree on the key."""
        params = self.filters.get("decontaminate")
        if params is None or params.get("against") is not None:
            return self
        from stillroom.eval.contamination import known_suites

        against = list(known_suites(catalog, params.get("suites", ())))
        return replace(self, filters={**self.filters,
                                      "decontaminate": {**params, "against": against}})

    def as_dict(self) -> dict[str, Any]:
        return {"filters": self.filters, "dedupe": self.dedupe,
                "dedupe_scope": self.dedupe_scope, **self.hashes}

    def validate(self) -> CurationConfig:
        filters.build(self.filters)
        dedupe.check_scope(self.dedupe_scope)
        dedupe.build(self.dedupe)
        return self


def curate(catalog: Catalog, config: CurationConfig, run_id: str) -> dict[str, Any]:
    """Judge every row not yet judged under `config`: filters first, then dedupe stages."""
    config = config.pinned(catalog)
    return {"filters": filters.apply_filters(catalog, config.filters, run_id),
            "dedupe": dedupe.dedupe(catalog, list(config.filters), config.hashes, config.dedupe,
                                    run_id, config.dedupe_scope)}


def load_config(path: Path | str | None) -> CurationConfig:
    """The config in `path`, validated; the defaults when `path` is None."""
    if path is None:
        return CurationConfig()
    spec = inputs.load_yaml(path)  # a missing, binary or malformed file: one error naming it
    root = yaml.compose(inputs.read_text(path))
    lines = _key_lines(root)
    if not isinstance(spec, dict) or not spec:
        raise StillroomError("expected a mapping with 'filters' and/or 'dedupe'", where=str(path))
    unknown = spec.keys() - {"filters", "dedupe"}
    if unknown:
        key = sorted(unknown)[0]
        raise StillroomError(f"unknown key {key!r}; expected 'filters' and/or 'dedupe'",
                             where=f"{path}:{lines.get(key, 1)}")
    sections = {}
    scope = DEFAULT_SCOPE
    for section in ("filters", "dedupe"):
        value = spec.get(section) or {}
        if section == "dedupe" and isinstance(value, dict) and "scope" in value:
            value = dict(value)
            scope = value.pop("scope")
        if not isinstance(value, dict) or not all(isinstance(p, dict | None) for p in
                                                   value.values()):
            raise StillroomError(f"'{section}' must map names to parameter mappings",
                                 where=f"{path}:{lines.get(section, 1)}")
        sections[section] = {name: dict(params or {}) for name, params in value.items()}
    config = CurationConfig(sections["filters"], sections["dedupe"], str(scope))
    try:
        return config.validate()
    except StillroomError as exc:  # `where` is e.g. "filters.length.max_chars"
        key = exc.where or ""
        raise StillroomError(exc.message, where=f"{path}:{_line_of(lines, key)} ({key})"
                             ) from exc


def _line_of(lines: dict[str, int], key: str) -> int:
    """The line of `key` or of its nearest enclosing key: a parameter's filter, a section."""
    parts = key.split(".")
    prefixes = (".".join(parts[:n]) for n in range(len(parts), 0, -1))
    return next((lines[prefix] for prefix in prefixes if prefix in lines), 1)


def _key_lines(root: Any, prefix: str = "") -> dict[str, int]:
    """1-based line of every key, by dotted path: `filters`, `filters.length`,
    `filters.length.max_chars`."""
    lines: dict[str, int] = {}
    if not isinstance(root, yaml.MappingNode):
        return lines
    for key, value in root.value:
        path = f"{prefix}{key.value}"
        lines[path] = key.start_mark.line + 1
        lines.update(_key_lines(value, f"{path}."))
    return lines
