"""Names users give to teachers and students: one rule, because they become file names.

A name is letters, digits, '-', '_' and '.', and not made of dots alone, so it can never
climb out of the directory it is placed in ('..', '../x', '/x' are all refused).
"""

from __future__ import annotations

from pathlib import Path

from stillroom.errors import StillroomError

MAX_LENGTH = 100


def validate_name(name: str, kind: str, where: str = "NAME") -> str:
    """Return `name` unchanged, or raise naming what is wrong with it."""
    if not isinstance(name, str) or not name:
        raise StillroomError(f"{kind} name is empty", where=where)
    if not name.replace("-", "").replace("_", "").replace(".", "").isalnum():
        raise StillroomError(f"{kind} name {name!r} must be letters, digits, '-', '_' or '.'",
                             where=where)
    if len(name) > MAX_LENGTH:
        raise StillroomError(f"{kind} name is {len(name)} characters; at most {MAX_LENGTH}",
                             where=where)
    return name


def path_inside(root: Path, *parts: str) -> Path:
    """`root / parts`, refused unless it stays inside `root` (defence in depth for user names)."""
    path = root.joinpath(*parts)
    if not path.resolve().is_relative_to(root.resolve()):
        raise StillroomError(f"{path} is outside {root}", where="/".join(parts))
    return path
