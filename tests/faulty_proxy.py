"""A fault-injecting HTTP proxy on 127.0.0.1 in front of a real OpenAI-compatible server.

A share of requests fails: HTTP 500, a hang past the client's timeout, or a truncated body.
Everything else is forwarded unchanged, so the protocol spoken is the real server's.
"""

from __future__ import annotations

import random
import threading
import time
import urllib.error
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

FAULTS = ("http_500", "hang", "truncated")


class FaultyProxy:
    def __init__(self, upstream: str, fault_rate: float = 0.2, hang_s: float = 3.0,
                 seed: int = 0) -> None:
        self.upstream, self.fault_rate, self.hang_s = upstream.rstrip("/"), fault_rate, hang_s
        self.rng = random.Random(seed)
        self.lock = threading.Lock()
        self.requests = 0
        self.faults = {f: 0 for f in FAULTS}
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: object) -> None:
                pass

            def do_POST(self) -> None:  # noqa: N802 (http.server's naming)
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                fault = proxy.pick_fault()
                if fault == "http_500":
                    self.send_error(500, "injected failure")
                    return
                if fault == "hang":
                    time.sleep(proxy.hang_s)
                request = urllib.request.Request(
                    proxy.upstream + self.path, data=body, method="POST",
                    headers={"Content-Type": "application/json"})
                try:
                    with urllib.request.urlopen(request, timeout=120) as response:
                        status, payload = response.status, response.read()
                except urllib.error.HTTPError as exc:
                    status, payload = exc.code, exc.read()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload[:len(payload) // 2] if fault == "truncated" else payload)
                if fault == "truncated":
                    self.close_connection = True

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def pick_fault(self) -> str | None:
        with self.lock:
            self.requests += 1
            if self.rng.random() >= self.fault_rate:
                return None
            fault = FAULTS[self.requests % len(FAULTS)]
            self.faults[fault] += 1
            return fault

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
