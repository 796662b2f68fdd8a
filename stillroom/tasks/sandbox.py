"""Run untrusted Python (a teacher's code plus its tests) in a separate, limited process.

Never `exec` in-process: the program runs in `python -I` (isolated: no site
packages of the user, no PYTHON* variables) in an empty temporary directory,
with an empty environment, CPU-time and address-space limits set before exec,
no core dumps, and a wall-clock timeout after which its whole process group is
killed. This is resource isolation, not a security boundary against a determined
attacker; run teachers you trust, or wrap this in a container.
"""

from __future__ import annotations

import os
import resource
import signal
import subprocess
import sys
import tempfile
from dataclasses import dataclass


@dataclass(frozen=True)
class SandboxResult:
    passed: bool
    reason: str | None  # why it failed: "timeout after 5s", "exit 1: AssertionError", ...


def _limits(cpu_s: int, memory_mb: int) -> None:
    resource.setrlimit(resource.RLIMIT_CPU, (cpu_s, cpu_s))
    memory = memory_mb * 1024 * 1024
    resource.setrlimit(resource.RLIMIT_AS, (memory, memory))
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
    os.setsid()  # its own process group, so a timeout kills every child too


def run_python(program: str, timeout_s: float = 5.0, memory_mb: int = 512) -> SandboxResult:
    """Run `program`; it passes when it exits 0 within the limits."""
    with tempfile.TemporaryDirectory(prefix="stillroom-sandbox-") as workdir:
        path = os.path.join(workdir, "program.py")
        with open(path, "w", encoding="utf-8") as f:
            f.write(program)
        proc = subprocess.Popen(
            [sys.executable, "-I", "-B", path], cwd=workdir, env={},
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
            preexec_fn=lambda: _limits(int(timeout_s) + 1, memory_mb))
        try:
            _, stderr = proc.communicate(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.communicate()
            return SandboxResult(False, f"timeout after {timeout_s:g}s")
    if proc.returncode == 0:
        return SandboxResult(True, None)
    lines = stderr.decode("utf-8", "replace").strip().splitlines()
    last = lines[-1][:200] if lines else ""
    if proc.returncode < 0:
        return SandboxResult(False, f"killed by {signal.Signals(-proc.returncode).name} {last}"
                             .strip())
    return SandboxResult(False, f"exit {proc.returncode}: {last}".strip())


def humaneval_program(prompt: str, completion: str, test: str, entry_point: str) -> str:
    """HumanEval's check: the prompt's signature, the completion, its tests, then `check`."""
    return f"{prompt}{completion}\n\n{test}\n\ncheck({entry_point})\n"
