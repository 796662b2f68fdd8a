"""`stillroom serve`: deployments applied, registration triggers `distill`, Ctrl-C stops."""

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
