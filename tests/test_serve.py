"""`stillroom serve`: deployments applied, registration triggers `distill`, Ctrl-C stops; and
every command that starts child processes (serve, dashboard, the vLLM server backend) stops them
when it is stopped, and the dashboard listens only on loopback unless told otherwise."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from stillroom.tasks.http_engine import free_port

ROOT = Path(__file__).parents[1]


def api(url: str, path: str, body: dict | None = None) -> object:
    request = urllib.request.Request(f"{url}{path}", method="POST" if body is not None else "GET",
                                     data=json.dumps(body).encode() if body is not None else None,
                                     headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=10) as response:
        return json.loads(response.read())


def wait_for(predicate, timeout: float, what: str):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            value = predicate()
            if value:
                return value
        except OSError:
            pass
        time.sleep(1)
    raise AssertionError(f"timed out waiting for {what}")


def test_serve_deploys_triggers_on_registration_and_stops_on_ctrl_c(tmp_path: Path,
                                                                    tiny_model: Path) -> None:
    port = free_port()
    url = f"http://127.0.0.1:{port}/api"
    env = {**os.environ, "STILLROOM_HOME": str(tmp_path / "home"),
           "PREFECT_HOME": str(tmp_path / "prefect"), "PREFECT_API_URL": url}
    serve = subprocess.Popen([sys.executable, "-m", "stillroom.cli", "serve", "--project",
                              str(ROOT), "--port", str(port)], env=env, cwd=ROOT,
                             stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                             start_new_session=True)
    try:
        deployments = wait_for(
            lambda: {d["name"] for d in api(url, "/deployments/filter", {})} >= {
                "nightly-refresh", "distill-on-new-teacher"}, 180, "deployments")
        assert deployments
        nightly = next(d for d in api(url, "/deployments/filter", {})
                       if d["name"] == "nightly-refresh")
        assert nightly["schedules"][0]["schedule"]["cron"] == "0 2 * * *"
        added = subprocess.run([sys.executable, "-m", "stillroom.cli", "teacher", "add",
                                "fresh-teacher", "--model", str(tiny_model), "--license", "mit"],
                               env=env, capture_output=True, text=True, timeout=120)
        assert added.returncode == 0, added.stderr
        run = wait_for(lambda: [r for r in api(url, "/flow_runs/filter", {})
                                if r["parameters"].get("teacher") == "fresh-teacher"],
                       120, "a distill run triggered by the registration event")
        assert run[0]["deployment_id"] == next(
            d["id"] for d in api(url, "/deployments/filter", {})
            if d["name"] == "distill-on-new-teacher")
    finally:
        os.killpg(serve.pid, signal.SIGINT)
        output, _ = serve.communicate(timeout=60)
    assert serve.returncode == 0, output
    assert "stopping the worker and the Prefect server" in output
    with socket.socket() as s:
        assert s.connect_ex(("127.0.0.1", port)) != 0  # the server is gone


# Every command that starts child processes stops them however it is stopped.

def process_table() -> dict[int, tuple[int, int, str]]:
    """pid -> (parent pid, process group, state) for every process."""
    table = {}
    for entry in Path("/proc").iterdir():
        try:
            if entry.name.isdigit():
                fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
                table[int(entry.name)] = (int(fields[1]), int(fields[2]), fields[0])
        except (OSError, IndexError):
            pass
    return table


def descendants(pid: int) -> set[int]:
    table, found, frontier = process_table(), set(), {pid}
    while frontier:
        frontier = {p for p, (parent, _, _) in table.items() if parent in frontier} - found
        found |= frontier
    return found


def running(pids: set[int] = frozenset(), groups: set[int] = frozenset()) -> set[int]:
    """Those of `pids`, and members of `groups`, that are still alive (not zombies)."""
    return {p for p, (_, group, state) in process_table().items()
            if state != "Z" and (p in pids or group in groups)}


def stop_and_check(command: subprocess.Popen, stop_signal: int, children: set[int],
                   what: str) -> tuple[str, str]:
    """Signal the command alone (not its process group) and assert its children went too."""
    command.send_signal(stop_signal)
    streams = command.communicate(timeout=60)
    assert running(children) == set(), f"{what} outlived the command"
    return streams


def reap(command: subprocess.Popen, children: set[int]) -> None:
    """Whatever a failed test left running."""
    for pid in running(children):
        os.kill(pid, signal.SIGKILL)
    if command.poll() is None:
        command.kill()


def listening_addresses(port: int) -> set[str]:
    """The local addresses of the TCP sockets listening on `port`, from /proc/net/tcp{,6}."""
    found = set()
    for table in ("tcp", "tcp6"):
        for line in Path(f"/proc/net/{table}").read_text().splitlines()[1:]:
            local, state = line.split()[1], line.split()[3]
            address, hex_port = local.split(":")
            if state == "0A" and int(hex_port, 16) == port:
                raw = bytes.fromhex(address)
                if table == "tcp":
                    found.add(socket.inet_ntop(socket.AF_INET, raw[::-1]))
                else:
                    words = b"".join(raw[i:i + 4][::-1] for i in range(0, 16, 4))
                    found.add(socket.inet_ntop(socket.AF_INET6, words))
    return found


@pytest.mark.parametrize(("address", "stop_signal"), [(None, signal.SIGTERM),
                                                       ("0.0.0.0", signal.SIGHUP)])
def test_dashboard_binds_loopback_unless_told_and_stops_streamlit_on_signals(
        home: Path, address: str | None, stop_signal: signal.Signals) -> None:
    from stillroom.catalog import Catalog

    Catalog().ensure()
    port = free_port()
    command = [sys.executable, "-m", "stillroom.cli", "dashboard", "--port", str(port)]
    dashboard = subprocess.Popen(command + (["--address", address] if address else []),
                                 env={**os.environ, "STILLROOM_HOME": str(home)},
                                 stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                 start_new_session=True)
    children: set[int] = set()
    try:
        wait_for(lambda: listening_addresses(port), 90, "streamlit to listen")
        children = descendants(dashboard.pid)
        assert children, "streamlit runs as a child process"
        assert listening_addresses(port) == {address or "127.0.0.1"}
        _, errors = stop_and_check(dashboard, stop_signal, children, "streamlit")
    finally:
        reap(dashboard, children)
    assert dashboard.returncode == 128 + stop_signal
    assert f"stillroom: stopped by {stop_signal.name}" in errors
    assert ("the dashboard has no authentication" in errors) == (address is not None)


def test_serve_stops_the_prefect_server_and_worker_on_sighup(tmp_path: Path) -> None:
    port = free_port()
    env = {**os.environ, "STILLROOM_HOME": str(tmp_path / "home"),
           "PREFECT_HOME": str(tmp_path / "prefect")}
    serve = subprocess.Popen([sys.executable, "-m", "stillroom.cli", "serve", "--project",
                              str(ROOT), "--port", str(port)], env=env, cwd=ROOT,
                             stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                             start_new_session=True)
    children: set[int] = set()
    try:
        def worker_started() -> bool:
            table = process_table()
            return any(b"worker\x00start" in Path(f"/proc/{pid}/cmdline").read_bytes()
                       for pid in descendants(serve.pid) if pid in table)
        wait_for(worker_started, 180, "the Prefect worker")
        children = descendants(serve.pid)
        output, _ = stop_and_check(serve, signal.SIGHUP, children, "Prefect processes")
    finally:
        reap(serve, children)
    assert serve.returncode == 0, output
    assert "stopping the worker and the Prefect server" in output


VLLM_SERVER_SCRIPT = """
import sys, time
from stillroom.tasks.http_engine import VLLMServer
server = VLLMServer(sys.argv[1])
print("server up", flush=True)
time.sleep(600)
"""


def test_a_vllm_server_does_not_outlive_the_process_that_started_it(tiny_model: Path) -> None:
    # A plain script: no handler of Stillroom's runs when it gets SIGTERM.
    starter = subprocess.Popen([sys.executable, "-c", VLLM_SERVER_SCRIPT, str(tiny_model)],
                               env={**os.environ, "PYTHONPATH": str(ROOT)},
                               stdout=subprocess.PIPE, text=True, start_new_session=True)
    server: set[int] = set()
    try:
        assert starter.stdout.readline().strip() == "server up"
        server = descendants(starter.pid)
        assert server, "the vLLM server runs as a child process"
        groups = {process_table()[pid][1] for pid in server}
        starter.send_signal(signal.SIGTERM)
        starter.wait(timeout=30)
        wait_for(lambda: not running(server, groups), 90, "the vLLM server to stop")
    finally:
        for pid in running(server):
            os.kill(pid, signal.SIGKILL)
        if starter.poll() is None:
            starter.kill()


def test_generate_stopped_while_its_vllm_server_starts_stops_it_first(
        tiny_model: Path, tmp_path: Path) -> None:
    from stillroom.catalog import Catalog
    from stillroom.tasks import teachers

    home = tmp_path / "home"
    teachers.add_teacher(Catalog(home / "catalog.duckdb").ensure(), "tiny", str(tiny_model),
                         "mit")
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text(json.dumps({"prompt": "Tell me about anything."}) + "\n")
    generate = subprocess.Popen(
        [sys.executable, "-m", "stillroom.cli", "generate", "--teacher", "tiny", "--prompts",
         str(prompts), "--backend", "vllm-server", "--max-tokens", "4"],
        env={**os.environ, "STILLROOM_HOME": str(home)}, stdout=subprocess.PIPE,
        stderr=subprocess.PIPE, text=True, start_new_session=True)
    server: set[int] = set()
    try:
        def server_started() -> set[int]:
            return {pid for pid in descendants(generate.pid)
                    if b"api_server" in Path(f"/proc/{pid}/cmdline").read_bytes()}
        server = wait_for(server_started, 120, "the vLLM server process")
        time.sleep(3)  # well into its start-up
        server |= descendants(generate.pid)
        groups = {generate.pid} | {process_table()[pid][1] for pid in server}
        generate.send_signal(signal.SIGTERM)
        _, errors = generate.communicate(timeout=120)
        # Stopped before `generate` exited, not by the kernel after its death.
        assert running(server, groups) == set(), "the vLLM server outlived `stillroom generate`"
    finally:
        for pid in running(server):
            os.kill(pid, signal.SIGKILL)
        if generate.poll() is None:
            generate.kill()
    assert generate.returncode == 128 + signal.SIGTERM, errors[-2000:]
    assert "stillroom: stopped by SIGTERM" in errors
