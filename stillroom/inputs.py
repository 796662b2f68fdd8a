"""Values and files a user hands Stillroom, checked at the boundary.

The CLI, the flows (whose parameters come from deployments) and the YAML loaders all
check with these, so a bad value fails with one `StillroomError` naming where it came
from, before a model is loaded or a row is written.
"""

from __future__ import annotations

import math
import re
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import yaml

from stillroom.errors import StillroomError

NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")
# A reference may pin a version of a student: NAME@N.
REFERENCE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}(@[1-9][0-9]{0,8})?")
ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


def _bounds(minimum: float | None, maximum: float | None) -> str:
    if minimum is not None and maximum is not None:
        return f"in [{minimum}, {maximum}]"
    if minimum is not None:
        return f">= {minimum}"
    return f"<= {maximum}" if maximum is not None else ""


def whole_number(value: Any, where: str, minimum: int | None = None,
                 maximum: int | None = None) -> int:
    """`value` as an int within the bounds; floats, bools and strings are refused, not cast."""
    if isinstance(value, bool) or not isinstance(value, int):
        bounds = _bounds(minimum, maximum)
        raise StillroomError(f"must be an integer{' ' + bounds if bounds else ''}, not {value!r}",
                             where=where)
    if (minimum is not None and value < minimum) or (maximum is not None and value > maximum):
        raise StillroomError(f"must be {_bounds(minimum, maximum)}, not {value}", where=where)
    return value


def real_number(value: Any, where: str, minimum: float | None = None,
                maximum: float | None = None, positive: bool = False) -> float:
    """`value` as a finite float within the bounds (`positive`: strictly above 0)."""
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise StillroomError(f"must be a finite number, not {value!r}", where=where)
    if positive:
        rule = f"in (0, {maximum}]" if maximum is not None else "> 0"
    else:
        rule = _bounds(minimum, maximum)
    if ((positive and value <= 0) or (minimum is not None and value < minimum)
            or (maximum is not None and value > maximum)):
        raise StillroomError(f"must be {rule}, not {value}", where=where)
    return float(value)


def fraction_below_one(value: Any, where: str) -> float:
    """A finite number in [0, 1): a share of something that must leave some of it over."""
    number = real_number(value, where)
    if not 0 <= number < 1:
        raise StillroomError(f"must be in [0, 1), not {value}", where=where)
    return number


def key_number(value: Any, where: str) -> tuple[str, float]:
    """`KEY=VALUE` with an identifier KEY and a finite number VALUE: (KEY, VALUE)."""
    key, equals, number = value.partition("=") if isinstance(value, str) else ("", "", "")
    if not equals or not key.isidentifier():
        raise StillroomError(f"{value!r} is not KEY=VALUE", where=where)
    try:
        parsed = float(number)
    except ValueError:
        raise StillroomError(f"{value!r}: {number!r} is not a number", where=where) from None
    return key, real_number(parsed, where)


def name(value: Any, where: str) -> str:
    """A name for a teacher, student or dataset version: also a directory name, so no
    separators, no leading dot, no spaces."""
    if not isinstance(value, str) or not NAME.fullmatch(value):
        raise StillroomError(f"{value!r} is not a valid name: use 1-128 letters, digits, '.', "
                             "'_' or '-', starting with a letter or digit", where=where)
    return value


def reference(value: Any, where: str) -> str:
    """A reference to a stored object (a name, an id prefix, or `latest`): same characters
    as a name, so it can never act as a pattern that matches everything."""
    if not isinstance(value, str) or not REFERENCE.fullmatch(value):
        raise StillroomError(f"{value!r} is not a name, id or 'latest'", where=where)
    return value


def path_inside(root: Path, *parts: str) -> Path:
    """`root / parts`, refused unless it stays inside `root`: defence in depth for paths built
    from names users give."""
    path = root.joinpath(*parts)
    if not path.resolve().is_relative_to(root.resolve()):
        raise StillroomError(f"{path} is outside {root}", where="/".join(parts))
    return path


def endpoint_url(value: Any, where: str) -> str:
    """An http(s)://host[:port][/path] URL; credentials belong in an environment variable."""
    if not isinstance(value, str) or any(c.isspace() for c in value):
        raise StillroomError(f"{value!r} is not an http(s)://host[:port][/path] URL", where=where)
    parts = urlsplit(value)
    try:
        parts.port  # noqa: B018 (raises on a port that is not a number in 0-65535)
    except ValueError as exc:
        raise StillroomError(f"{value!r} has a bad port ({exc})", where=where) from exc
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise StillroomError(f"{value!r} is not an http(s)://host[:port][/path] URL", where=where)
    if parts.username or parts.password:
        raise StillroomError("credentials do not belong in the URL: put the key in an "
                             "environment variable and name it with --api-key-env", where=where)
    if parts.query or parts.fragment:
        raise StillroomError(f"{value!r}: a base URL takes no query or fragment", where=where)
    return value


def env_name(value: Any, where: str) -> str:
    if not isinstance(value, str) or not ENV_NAME.fullmatch(value):
        raise StillroomError(f"{value!r} is not an environment variable name", where=where)
    return value


def text(value: Any, where: str) -> str:
    """A non-empty string (a stop sequence may be all whitespace)."""
    if not isinstance(value, str) or not value:
        raise StillroomError("must not be empty", where=where)
    return value


def word(value: Any, where: str) -> str:
    """A non-empty string without whitespace: a revision, a tag, a branch."""
    if not isinstance(value, str) or not value or any(c.isspace() for c in value):
        raise StillroomError(f"{value!r} must be non-empty, without spaces", where=where)
    return value


def strings(value: Any, where: str, allow_empty_list: bool = True) -> list[str]:
    """A list of non-empty strings (a lone string is refused: it is not a list of them)."""
    if not isinstance(value, list) or not all(isinstance(v, str) and v for v in value):
        raise StillroomError(f"must be a list of non-empty strings, not {value!r}", where=where)
    if not value and not allow_empty_list:
        raise StillroomError("must not be empty", where=where)
    return value


def read_text(path: Path | str) -> str:
    """A user's text file as UTF-8, or one error naming it (binary, missing, a directory)."""
    path = Path(path)
    try:
        return path.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise StillroomError(f"not a UTF-8 text file (byte {exc.start} cannot be decoded)",
                             where=str(path)) from exc
    except IsADirectoryError as exc:
        raise StillroomError("is a directory, not a file", where=str(path)) from exc
    except FileNotFoundError as exc:
        raise StillroomError("no such file", where=str(path)) from exc
    except OSError as exc:
        raise StillroomError(f"cannot read: {exc.strerror}", where=str(path)) from exc


def load_yaml(path: Path | str) -> Any:
    """A user's YAML file; malformed YAML is reported with its line."""
    text = read_text(path)
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"{path}:{mark.line + 1}" if mark else str(path)
        raise StillroomError(f"malformed YAML: {getattr(exc, 'problem', None) or exc}",
                             where=where) from exc
