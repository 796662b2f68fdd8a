"""Run untrusted Python (a teacher's code plus its tests) in a bubblewrap sandbox.

Teacher-written code is hostile until proven otherwise, so it never runs in-process
nor as a plain subprocess. `bwrap` gives it its own pid, network, ipc, uts and mount
namespaces. It runs as `nobody`: a real one (setpriv drops to it, with no capabilities)
when Stillroom runs as root, so that process limits hold; the caller's uid mapped to
nobody in a user namespace otherwise. It sees only the read-only system directories and
the Python standard library (no site-packages, so no DuckDB; no project, no
$STILLROOM_HOME, no /root), a private size-limited /tmp, no network and no other
process. CPU, memory, process, open-file and file-size limits are set before exec. On
timeout the sandbox's pid 1 is killed, which kills every process in it, `setsid` and
double-forked ones included; `--die-with-parent` does the same if Stillroom itself
dies. Without a working bubblewrap nothing runs: `run_python` raises
`SandboxUnavailable` instead of falling back to a weaker isolation.
"""

from __future__ import annotations

import contextlib
import os
import re
import resource
import shutil
import signal
import subprocess
import sys
import sysconfig
import tempfile
from dataclasses import dataclass
from pathlib import Path

from stillroom.errors import StillroomError

NOBODY = 65534
SYSTEM_DIRS = ("/usr", "/bin", "/sbin", "/lib", "/lib64", "/lib32", "/libx32")
PROGRAM = "/sandbox/program.py"
OUTPUT_TAIL = 4000  # characters of the program's output kept for the caller


class SandboxUnavailable(StillroomError):
    """No sandbox tool works here; untrusted code is refused rather than run unisolated."""


@dataclass(frozen=True)
class SandboxResult:
    passed: bool
    reason: str | None  # why it failed: "timeout after 5s", "exit 1: AssertionError", ...
    output: str = ""  # the tail of what the program printed (stdout, then stderr)


@dataclass(frozen=True)
class Limits:
    timeout_s: float = 5.0
    memory_mb: int = 512  # address space of each process
    max_processes: int = 32  # processes and threads of the sandbox user (RLIMIT_NPROC)
    max_file_mb: int = 16  # largest file it may write, its output included
    tmp_mb: int = 64  # the whole private /tmp


def _interpreter() -> Path:
    """The base Python (not the venv's, whose site-packages hold the catalog's DuckDB)."""
    return Path(os.path.realpath(getattr(sys, "_base_executable", None) or sys.executable))


def _hidden_site_packages(prefix: Path) -> list[Path]:
    """The base install's site-packages, covered by an empty tmpfs inside the sandbox."""
    paths = sysconfig.get_paths(vars={"base": str(prefix), "platbase": str(prefix)})
    return sorted({Path(paths[key]) for key in ("purelib", "platlib")
                   if Path(paths[key]).is_dir()})


def _bwrap_args(bwrap: str, program_fd: int, info_fd: int, limits: Limits) -> list[str]:
    args = [bwrap, "--die-with-parent", "--new-session", "--clearenv", "--info-fd", str(info_fd)]
    if os.geteuid() == 0:
        # Root's bwrap needs no user namespace; inside, setpriv drops to nobody for real
        # (a user namespace would map its "nobody" back to root, which ignores RLIMIT_NPROC).
        args += ["--unshare-pid", "--unshare-net", "--unshare-ipc", "--unshare-uts",
                 "--unshare-cgroup-try"]
        drop = [_setpriv(), f"--reuid={NOBODY}", f"--regid={NOBODY}", "--clear-groups",
                "--inh-caps=-all", "--bounding-set=-all", "--no-new-privs", "--"]
    else:
        args += ["--unshare-all", "--unshare-user", "--uid", str(NOBODY), "--gid", str(NOBODY),
                 "--disable-userns"]
        drop = []
    args += ["--hostname", "sandbox"]
    for name in SYSTEM_DIRS:
        if os.path.islink(name):
            args += ["--symlink", os.readlink(name), name]
        elif os.path.isdir(name):
            args += ["--ro-bind", name, name]
    args += ["--ro-bind-try", "/etc/ld.so.cache", "/etc/ld.so.cache"]
    prefix = Path(os.path.realpath(sys.base_prefix))
    if not prefix.is_relative_to("/usr"):
        for parent in reversed(prefix.parents[:-1]):  # e.g. /root: bwrap would make it 0700
            args += ["--perms", "0755", "--dir", str(parent)]
        args += ["--ro-bind", str(prefix), str(prefix)]
    for site in _hidden_site_packages(prefix):
        args += ["--tmpfs", str(site)]
    args += ["--proc", "/proc", "--dev", "/dev",
             "--perms", "01777", "--size", str(limits.tmp_mb * 2**20), "--tmpfs", "/tmp",
             "--perms", "0444", "--ro-bind-data", str(program_fd), PROGRAM, "--chdir", "/tmp", "--",
             *drop, str(_interpreter()), "-I", "-S", "-B", "-X", "utf8", PROGRAM]
    return args


def _setpriv() -> str:
    """util-linux's setpriv, which drops root to nobody inside the sandbox (so it must be
    in the system directories the sandbox sees)."""
    setpriv = shutil.which("setpriv", path=os.pathsep.join(f"{d}/bin" for d in ("/usr", "")))
    if setpriv is None:
        raise SandboxUnavailable("no sandbox for teacher-written code: running as root needs "
                                 "`setpriv` (util-linux) to drop to nobody", where="sandbox")
    return setpriv


def _set_limits(limits: Limits) -> None:
    """In the child, before exec (after it became nobody)."""
    cpu = int(limits.timeout_s) + 1
    memory = limits.memory_mb * 2**20
    file_size = limits.max_file_mb * 2**20
    for limit, value in ((resource.RLIMIT_CPU, cpu), (resource.RLIMIT_AS, memory),
                         (resource.RLIMIT_NPROC, limits.max_processes),
                         (resource.RLIMIT_FSIZE, file_size), (resource.RLIMIT_NOFILE, 256),
                         (resource.RLIMIT_CORE, 0)):
        resource.setrlimit(limit, (value, value))


def _tail(path: Path) -> str:
    with path.open("rb") as f:
        f.seek(max(0, path.stat().st_size - OUTPUT_TAIL))
        return f.read().decode("utf-8", "replace")


def _kill_sandbox(proc: subprocess.Popen, info_read: int) -> None:
    """Kill the sandbox's pid 1 (the kernel then kills everything in its pid namespace),
    then bubblewrap; returns once bubblewrap has seen its child go, i.e. all of it is gone."""
    os.set_blocking(info_read, False)
    try:
        info = os.read(info_read, 4096).decode("utf-8", "replace")
    except BlockingIOError:
        info = ""
    child = re.search(r'"child-pid"\s*:\s*(\d+)', info)
    if child:
        with contextlib.suppress(ProcessLookupError):
            os.kill(int(child.group(1)), signal.SIGKILL)
        try:
            proc.wait(timeout=10)
            return
        except subprocess.TimeoutExpired:
            pass
    proc.kill()  # --die-with-parent kills the sandbox's pid 1 in turn
    proc.wait()


def _run(bwrap: str, program: str, limits: Limits) -> SandboxResult:
    with tempfile.TemporaryDirectory(prefix="stillroom-sandbox-") as workdir:
        source, out, err = (Path(workdir) / name for name in ("program.py", "stdout", "stderr"))
        source.write_text(program, encoding="utf-8")
        info_read, info_write = os.pipe()
        program_fd = os.open(source, os.O_RDONLY)
        try:
            with out.open("wb") as stdout, err.open("wb") as stderr:
                proc = subprocess.Popen(
                    _bwrap_args(bwrap, program_fd, info_write, limits),
                    env={}, stdin=subprocess.DEVNULL, stdout=stdout, stderr=stderr,
                    pass_fds=(program_fd, info_write), preexec_fn=lambda: _set_limits(limits))
            os.close(info_write)
            info_write = -1
            try:
                proc.wait(timeout=limits.timeout_s)
            except subprocess.TimeoutExpired:
                _kill_sandbox(proc, info_read)
                return SandboxResult(False, f"timeout after {limits.timeout_s:g}s",
                                     _tail(out) + _tail(err))
            except BaseException:  # interrupted: never leave the sandbox behind
                _kill_sandbox(proc, info_read)
                raise
        finally:
            for fd in (info_read, info_write, program_fd):
                if fd >= 0:
                    os.close(fd)
        output, errors = _tail(out), _tail(err)
    if proc.returncode == 0:
        return SandboxResult(True, None, output + errors)
    lines = errors.strip().splitlines()
    last = lines[-1][:200] if lines else ""
    if proc.returncode < 0:
        reason = f"killed by {signal.Signals(-proc.returncode).name} {last}".strip()
    else:
        reason = f"exit {proc.returncode}: {last}".strip()
    return SandboxResult(False, reason, output + errors)


_WORKING: set[tuple[str, Path]] = set()  # (bwrap, interpreter) pairs that ran Python here


def _probe(bwrap: str, interpreter: Path) -> str | None:
    """Why the sandbox cannot run Python here, or None when it can. Only success is
    remembered, so a passing problem (a busy machine) is not a refusal for good."""
    if (bwrap, interpreter) in _WORKING:
        return None
    marker = "stillroom-sandbox-ok"
    result = _run(bwrap, f"print({marker!r})\n", Limits(timeout_s=30))
    if result.passed and marker in result.output:
        _WORKING.add((bwrap, interpreter))
        return None
    return (result.reason or "no output").replace("\n", " ")


def sandbox_tool() -> str:
    """The bubblewrap binary to use, once it has run Python here; else SandboxUnavailable."""
    bwrap = shutil.which("bwrap")
    if bwrap is None:
        raise SandboxUnavailable(
            "no sandbox for teacher-written code: bubblewrap (`bwrap`) is not installed; "
            "install it (`apt-get install bubblewrap`, or run scripts/setup.sh as root)",
            where="sandbox")
    problem = _probe(bwrap, _interpreter())
    if problem:
        raise SandboxUnavailable(
            f"no sandbox for teacher-written code: {bwrap} cannot run Python here ({problem})",
            where="sandbox")
    return bwrap


def run_python(program: str, timeout_s: float = 5.0, memory_mb: int = 512, *,
               max_processes: int = 32, max_file_mb: int = 16) -> SandboxResult:
    """Run `program` in the sandbox; it passes when it exits 0 within the limits."""
    limits = Limits(timeout_s, memory_mb, max_processes, max_file_mb)
    return _run(sandbox_tool(), program, limits)


def humaneval_program(prompt: str, completion: str, test: str, entry_point: str) -> str:
    """HumanEval's check: the prompt's signature, the completion, its tests, then `check`."""
    return f"{prompt}{completion}\n\n{test}\n\ncheck({entry_point})\n"
