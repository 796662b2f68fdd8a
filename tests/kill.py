"""Crash tests: kill a real process with SIGKILL once it has committed some work."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from collections.abc import Callable


def kill_once(victim: subprocess.Popen, committed: Callable[[], bool], what: str,
              timeout: float = 240, poll_s: float = 0.05) -> None:
    """SIGKILL `victim` as soon as `committed()` is true; fail if it finished or stalled
    first (then the test would prove nothing about a crash)."""
    deadline = time.monotonic() + timeout
    while not committed():
        assert victim.poll() is None, f"it finished before {what} could be seen"
        assert time.monotonic() < deadline, f"no {what} within {timeout:.0f}s"
        time.sleep(poll_s)
    os.kill(victim.pid, signal.SIGKILL)
    victim.wait()
