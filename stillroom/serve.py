"""The long-running commands: `stillroom serve` (a local Prefect server, the work pool, the
deployments and a worker) and `stillroom dashboard` (Streamlit). Whatever ends them (Ctrl-C,
SIGTERM, SIGHUP, an error) stops the child processes they started before they exit."""

from __future__ import annotations

import ipaddress
import logging
import os
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

from stillroom.errors import StillroomError

log = logging.getLogger(__name__)
WORK_POOL = "stillroom"


def _prefect(*args: str) -> list[str]:
    return [sys.executable, "-m", "prefect", *args]


def _wait_healthy(url: str, server: subprocess.Popen, stop: threading.Event,
                  timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and not stop.is_set():
        if server.poll() is not None:
            raise StillroomError(f"the Prefect server exited with code {server.returncode}")
        try:
            with urllib.request.urlopen(f"{url}/health", timeout=2) as response:
                if response.status == 200:
                    return
        except OSError:
            time.sleep(0.5)
    if stop.is_set():
        return
    raise StillroomError(f"the Prefect server did not answer at {url} within {timeout:.0f}s")


def stop_processes(processes: list[subprocess.Popen]) -> None:
    """SIGTERM each one still running, then wait; a process still up after 15 s is killed."""
    for proc in processes:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
    for proc in processes:
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()


def serve(project: Path, port: int = 4200) -> None:
    """Run until Ctrl-C, SIGTERM or SIGHUP; then stop the worker and the server cleanly."""
    project = project.resolve()
    if not (project / "prefect.yaml").is_file():
        raise StillroomError("no prefect.yaml here; run from the Stillroom project directory",
                             where=str(project))
    api = f"http://127.0.0.1:{port}/api"
    env = {**os.environ, "PREFECT_API_URL": api}
    processes: list[subprocess.Popen] = []
    # Ctrl-C reaches the whole process group at once: the children may exit before we look,
    # so a stop request is a flag checked before calling their exit unexpected.
    stop = threading.Event()
    previous = {sig: signal.signal(sig, lambda *_: stop.set())
                for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)}
    try:
        server = subprocess.Popen(_prefect("server", "start", "--host", "127.0.0.1", "--port",
                                           str(port)), env=env, cwd=project)
        processes.append(server)
        _wait_healthy(api, server, stop)
        if stop.is_set():
            return
        subprocess.run(_prefect("work-pool", "create", WORK_POOL, "--type", "process",
                                "--overwrite"), env=env, cwd=project, check=True,
                       stdout=subprocess.DEVNULL)
        subprocess.run(_prefect("--no-prompt", "deploy", "--all"), env=env, cwd=project,
                       check=True, stdout=subprocess.DEVNULL)
        worker = subprocess.Popen(_prefect("worker", "start", "--pool", WORK_POOL), env=env,
                                  cwd=project)
        processes.append(worker)
        print(f"Stillroom is serving: Prefect UI http://127.0.0.1:{port}  (Ctrl-C to stop)",
              flush=True)
        while not stop.wait(1):
            if any(p.poll() is not None for p in processes) and not stop.wait(3):
                raise StillroomError("a Prefect process exited unexpectedly; stopping the rest")
        print("stopping the worker and the Prefect server", flush=True)
    except subprocess.CalledProcessError as exc:
        raise StillroomError(f"setting up deployments failed: {' '.join(exc.cmd[2:])}") from exc
    finally:
        stop_processes(list(reversed(processes)))
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def is_loopback(address: str) -> bool:
    if address == "localhost":
        return True
    try:
        return ipaddress.ip_address(address).is_loopback
    except ValueError:  # a host name: assume it may be reachable from elsewhere
        return False


def dashboard(app: Path, port: int = 8501, address: str = "127.0.0.1") -> int:
    """Run the Streamlit dashboard on `address` until it exits or this process is stopped;
    returns Streamlit's exit code. It has no authentication, so only loopback is private."""
    if not is_loopback(address):
        log.warning("the dashboard has no authentication: listening on %s shows prompts, "
                    "responses and license grants to anyone who can reach this machine", address)
    streamlit = subprocess.Popen([sys.executable, "-m", "streamlit", "run", str(app),
                                  "--server.headless=true", f"--server.address={address}",
                                  f"--server.port={port}", "--browser.gatherUsageStats=false",
                                  "--client.toolbarMode=viewer"])
    try:
        return streamlit.wait()
    finally:
        stop_processes([streamlit])
