"""Training checkpoints, so a killed training resumes instead of starting over.

Each run's checkpoints live in a directory named by the run's key (everything that determines
its weights), so a different run never resumes from them. A checkpoint is written into a
temporary directory and renamed into place: a kill mid-write leaves the previous one intact.
"""

from __future__ import annotations

import fcntl
import logging
import os
import shutil
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch

from stillroom.errors import StillroomError

log = logging.getLogger(__name__)

STEP_PREFIX = "step-"
STATE_FILE = "state.pt"


class Checkpoints:
    """The checkpoints of one training run (`root/key`); only the newest is kept."""

    def __init__(self, root: Path, key: str) -> None:
        self.root, self.key = root, key
        self.directory = root / key

    def _steps(self) -> list[tuple[int, Path]]:
        if not self.directory.is_dir():
            return []
        found = [(int(p.name[len(STEP_PREFIX):]), p) for p in self.directory.iterdir()
                 if p.name.startswith(STEP_PREFIX) and p.name[len(STEP_PREFIX):].isdigit()]
        return sorted(found)

    def latest(self) -> dict[str, Any] | None:
        """The newest complete checkpoint's state, or None when the run has none yet."""
        steps = self._steps()
        if not steps:
            return None
        step, path = steps[-1]
        state = torch.load(path / STATE_FILE, map_location="cpu", weights_only=True)
        if state.get("key") != self.key or state.get("step") != step:
            raise StillroomError("checkpoint does not belong to this run; remove it",
                                 where=str(path))
        return state

    def save(self, step: int, state: dict[str, Any]) -> Path:
        """Write `state` as step `step`: temp dir, fsync, rename; then drop older checkpoints."""
        self.directory.mkdir(parents=True, exist_ok=True)
        staging = self.directory / f".tmp-{uuid.uuid4().hex[:8]}"
        staging.mkdir()
        target = staging / STATE_FILE
        torch.save({**state, "key": self.key, "step": step}, target)
        _fsync(target)
        final = self.directory / f"{STEP_PREFIX}{step:09d}"
        if final.exists():  # the same step again after a resume: identical by construction
            shutil.rmtree(final)
        staging.rename(final)
        _fsync(self.directory)
        for older, path in self._steps():
            if older < step:
                shutil.rmtree(path, ignore_errors=True)
        return final

    def clear(self) -> None:
        """Remove the run's checkpoints (once its result is published)."""
        shutil.rmtree(self.directory, ignore_errors=True)

    def discard_partial(self) -> None:
        """Temporary directories left by a process killed while writing a checkpoint."""
        if self.directory.is_dir():
            for path in self.directory.glob(".tmp-*"):
                shutil.rmtree(path, ignore_errors=True)

    @contextmanager
    def exclusive(self) -> Iterator[None]:
        """Refuse a second process training the same run at the same time."""
        with exclusive_lock(self.root / f"{self.key}.lock", "the same training (same dataset,"
                            " init, config and seed) is already running", self.key):
            self.discard_partial()
            yield


@contextmanager
def exclusive_lock(path: Path, busy: str, where: str) -> Iterator[None]:
    """Hold an exclusive `flock` on `path` for the block, or fail at once with `busy`."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise StillroomError(busy, where=where) from None
        yield
    finally:
        os.close(fd)


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
