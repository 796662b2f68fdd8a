"""One error type for input a user can fix: the CLI prints it as a single clear line."""

from __future__ import annotations


class StillroomError(Exception):
    """A problem the user can fix; `where` names the file, line, flag or object at fault."""

    def __init__(self, message: str, where: str | None = None) -> None:
        self.where = where
        self.message = message
        super().__init__(f"{where}: {message}" if where else message)


class LicenseError(StillroomError):
    """A teacher's license forbids the requested use and no grant lifts it."""
