"""OpenAI-compatible HTTP endpoints as a teacher backend: a vLLM server Stillroom starts
itself, or external endpoints by URL.

Requests run concurrently (a limit per endpoint), spread over the endpoints, and are
retried with exponential backoff on 429, 5xx, timeouts, broken connections and truncated
bodies. A request that still fails is reported with its reason, never silently dropped.
API keys come from the environment and are sent only as an Authorization header.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import json
import logging
import os
import queue
import random
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import httpx

from stillroom import settings
from stillroom.errors import StillroomError
from stillroom.tasks.engine import (
    Completion,
    Engine,
    RequestFailure,
    SamplingConfig,
    context_length,
)

log = logging.getLogger(__name__)
RETRYABLE_STATUS = {408, 409, 425, 429, 500, 502, 503, 504}


class RetryableError(Exception):
    pass


@dataclass
class Endpoint:
    url: str
    semaphore: asyncio.Semaphore | None = None
    in_flight: int = 0


class OpenAIEngine(Engine):
    backend = "openai"

    def __init__(self, model: str, revision: str | None, endpoints: list[str],
                 api_key_env: str | None = None, concurrency: int = 8, timeout: float = 60.0,
                 max_retries: int = 4, backoff: float = 0.5, served_model: str | None = None,
                 on_close: Any = None) -> None:
        from transformers import AutoTokenizer

        if not endpoints:
            raise StillroomError("give at least one endpoint URL", where="--endpoint")
        self.model, self.revision = model, revision
        self.urls = [u.rstrip("/") for u in endpoints]
        self.served_model = served_model or model
        self.concurrency, self.timeout = concurrency, timeout
        self.max_retries, self.backoff = max_retries, backoff
        self.api_key = os.environ.get(api_key_env) if api_key_env else None
        if api_key_env and not self.api_key:
            raise StillroomError(f"environment variable {api_key_env} is not set",
                                 where="--api-key-env")
        self.retries = 0
        self._on_close = on_close
        try:
            self.tokenizer = AutoTokenizer.from_pretrained(model, revision=revision)
        except OSError as exc:
            raise StillroomError(f"cannot load the tokenizer to render prompts: {exc}",
                                 where=model) from exc

    def stream(self, rendered: list[str], sampling: SamplingConfig
               ) -> Iterator[tuple[int, list[Completion] | RequestFailure]]:
        """Results as requests finish; the event loop runs in a thread so callers stay sync."""
        results: queue.Queue = queue.Queue()
        done = object()

        def run() -> None:
            try:
                asyncio.run(self._run_all(rendered, sampling, results))
            finally:
                results.put(done)

        worker = threading.Thread(target=run, name="stillroom-http", daemon=True)
        worker.start()
        while (item := results.get()) is not done:
            yield item
        worker.join()

    async def _run_all(self, rendered: list[str], sampling: SamplingConfig,
                       results: queue.Queue) -> None:
        endpoints = [Endpoint(u, asyncio.Semaphore(self.concurrency)) for u in self.urls]
        headers = {"Authorization": f"Bearer {self.api_key}"} if self.api_key else {}
        limits = httpx.Limits(max_connections=self.concurrency * len(endpoints))
        async with httpx.AsyncClient(timeout=self.timeout, headers=headers,
                                     limits=limits) as client:
            async def one(index: int, prompt: str) -> None:
                results.put((index, await self._request(client, endpoints, prompt, sampling)))

            await asyncio.gather(*(one(i, p) for i, p in enumerate(rendered)))

    async def _request(self, client: httpx.AsyncClient, endpoints: list[Endpoint], prompt: str,
                       sampling: SamplingConfig) -> list[Completion] | RequestFailure:
        body = {"model": self.served_model, "prompt": prompt, "n": sampling.n,
                "max_tokens": sampling.max_tokens, "temperature": sampling.temperature,
                "top_p": sampling.top_p, "seed": sampling.seed,
                "stop": list(sampling.stop) or None, "logprobs": sampling.logprobs_k or 1,
                "return_tokens_as_token_ids": True}
        reason = ""
        for attempt in range(self.max_retries + 1):
            endpoint = min(endpoints, key=lambda e: (e.in_flight, random.random()))
            async with endpoint.semaphore:
                endpoint.in_flight += 1
                try:
                    response = await client.post(f"{endpoint.url}/v1/completions", json=body)
                    return self._parse(response, sampling)
                except (RetryableError, httpx.TimeoutException, httpx.TransportError) as exc:
                    reason = f"{type(exc).__name__}: {exc}"[:300] or type(exc).__name__
                except StillroomError as exc:  # a request the server will never accept
                    return RequestFailure(str(exc), attempt + 1)
                finally:
                    endpoint.in_flight -= 1
            if attempt < self.max_retries:
                self.retries += 1
                await asyncio.sleep(min(10.0, self.backoff * 2 ** attempt)
                                    * random.uniform(0.5, 1.5))
        return RequestFailure(reason, self.max_retries + 1)

    def _parse(self, response: httpx.Response, sampling: SamplingConfig) -> list[Completion]:
        if response.status_code in RETRYABLE_STATUS:
            raise RetryableError(f"HTTP {response.status_code}")
        if response.status_code != 200:
            raise StillroomError(f"HTTP {response.status_code}: {response.text[:200]}")
        try:
            payload = response.json()
            prompt_tokens = payload["usage"]["prompt_tokens"]
            choices = sorted(payload["choices"], key=lambda c: c["index"])
            return [_completion(c, prompt_tokens, sampling.logprobs_k) for c in choices]
        except (json.JSONDecodeError, KeyError, TypeError, ValueError) as exc:
            raise RetryableError(f"malformed body ({type(exc).__name__})") from exc

    def close(self) -> None:
        if self._on_close is not None:
            self._on_close()


def _token_id(token: str) -> int:
    if not token.startswith("token_id:"):
        raise ValueError("the server ignored return_tokens_as_token_ids (not vLLM?)")
    return int(token.removeprefix("token_id:"))


def _completion(choice: dict[str, Any], prompt_tokens: int, k: int) -> Completion:
    logprobs = choice["logprobs"]
    token_ids = [_token_id(t) for t in logprobs["tokens"]]
    topk_ids, topk_logprobs = [], []
    if k:
        for step in logprobs["top_logprobs"]:
            ranked = sorted(step.items(), key=lambda item: -item[1])[:k]
            topk_ids.append([_token_id(t) for t, _ in ranked])
            topk_logprobs.append([float(lp) for _, lp in ranked])
    return Completion(text=choice["text"], token_ids=token_ids, prompt_tokens=prompt_tokens,
                      finish_reason=choice["finish_reason"], topk_ids=topk_ids,
                      topk_logprobs=topk_logprobs)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class VLLMServer:
    """`python -m vllm.entrypoints.openai.api_server` for one model, on a free local port."""

    def __init__(self, model: str, revision: str | None = None, max_model_len: int = 2048,
                 startup_timeout: float = 300) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        command = [sys.executable, "-m", "vllm.entrypoints.openai.api_server", "--model", model,
                   "--host", "127.0.0.1", "--port", str(self.port), "--dtype", "float32",
                   "--enforce-eager", "--max-model-len",
                   str(context_length(model, revision, max_model_len))]
        if revision:
            command += ["--revision", revision]
        if not settings.has_cuda():  # see VLLMEngine: seeded sampling crashes chunked prefill
            command.append("--no-enable-chunked-prefill")
        # Its own process group, so `stop` reaches the engine-core processes it forks too.
        self.proc = subprocess.Popen(command, stdout=subprocess.DEVNULL,
                                     stderr=subprocess.DEVNULL, start_new_session=True,
                                     preexec_fn=_terminate_with_parent())
        self._stopped = False
        try:
            deadline = time.monotonic() + startup_timeout
            while time.monotonic() < deadline:
                if self.proc.poll() is not None:
                    raise StillroomError(f"the vLLM server exited with code "
                                         f"{self.proc.returncode}", where=model)
                try:
                    if httpx.get(f"{self.url}/health", timeout=2).status_code == 200:
                        return
                except httpx.HTTPError:
                    time.sleep(1)
            raise StillroomError(f"the vLLM server did not come up in {startup_timeout:.0f}s",
                                 where=model)
        except BaseException:  # also Ctrl-C or SIGTERM while it starts: never leave it running
            self.stop()
            raise

    def stop(self) -> None:
        """SIGTERM the server's process group (vLLM shuts its engine core down), wait; then
        SIGKILL whatever of the group is left after 30 s, or 10 s after the server exited."""
        if self._stopped:
            return
        self._stopped = True
        if self.proc.poll() is None:
            self._signal_group(signal.SIGTERM)
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.proc.wait(timeout=30)
        deadline = time.monotonic() + 10
        while self.proc.poll() is not None and self._signal_group(0) and \
                time.monotonic() < deadline:
            time.sleep(0.2)
        self._signal_group(signal.SIGKILL)
        self.proc.wait()

    def _signal_group(self, sig: int) -> bool:
        """Send `sig` to the server's process group; False when the group is gone."""
        try:
            os.killpg(self.proc.pid, sig)
            return True
        except ProcessLookupError:
            return False


PR_SET_PDEATHSIG = 1


def _terminate_with_parent() -> Any:
    """A pre-exec hook giving the server SIGTERM when Stillroom dies, however it dies (even
    SIGKILL, where no cleanup runs). Linux ties this to the thread that started the child, so
    only the main thread asks for it; servers started elsewhere rely on `stop`."""
    if not sys.platform.startswith("linux") or \
            threading.current_thread() is not threading.main_thread():
        return None
    prctl = ctypes.CDLL(None, use_errno=True).prctl
    parent = os.getpid()

    def hook() -> None:
        prctl(PR_SET_PDEATHSIG, signal.SIGTERM)
        if os.getppid() != parent:  # the parent died before the hook ran
            os._exit(1)
    return hook
