"""OpenAI-compatible HTTP endpoints as a teacher backend: a vLLM server Stillroom starts
itself, or external endpoints by URL.

Each endpoint is probed once before the run with a one-token request: a vLLM server
returns exact token ids (its `return_tokens_as_token_ids` extension); a plain OpenAI server
refuses or ignores that field and its token strings are mapped back to ids (see
`token_map`); a server that cannot give the asked top-k stops the run with one error.
Requests run concurrently (a limit per endpoint), spread over the endpoints, and are
retried with exponential backoff on 429, 5xx, timeouts, broken connections and truncated
bodies. A request that still fails is reported with its reason, never silently dropped.
Its latency runs from its first attempt being sent to the answer, retries and their
backoff included. API keys come from the environment and are sent only as an
Authorization header.
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
    VLLM_DEFAULT_MAX_LOGPROBS,
    Completion,
    Engine,
    RequestFailure,
    SamplingConfig,
    context_length,
    package_version,
)
from stillroom.tasks.token_map import TokenMap

log = logging.getLogger(__name__)
RETRYABLE_STATUS = {408, 409, 425, 429, 500, 502, 503, 504}
VLLM_IDS = "return_tokens_as_token_ids"  # vLLM's extension: tokens as "token_id:123"
OPENAI_MAX_LOGPROBS = 5


class RetryableError(Exception):
    pass


@dataclass
class Endpoint:
    url: str
    semaphore: asyncio.Semaphore | None = None
    in_flight: int = 0
    token_ids: bool = True  # whether the server answers with exact ids (vLLM extension)


class OpenAIEngine(Engine):
    backend = "openai"

    def __init__(self, model: str, revision: str | None, endpoints: list[str],
                 api_key_env: str | None = None, concurrency: int = 8, timeout: float = 60.0,
                 max_retries: int = 4, backoff: float = 0.5, served_model: str | None = None,
                 server: VLLMServer | None = None) -> None:
        """`server`: the local vLLM server Stillroom started for these endpoints (stopped on
        `close`, and its engine and logprob mode known); None for external endpoints."""
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
        self._server = server
        self.max_logprobs = server.max_logprobs if server else None
        self._probed: dict[tuple[str, int], bool] = {}  # (url, k) -> server gives exact ids
        self._token_map: TokenMap | None = None
        try:
            self.tokenizer = AutoTokenizer.from_pretrained(model, revision=revision)
        except OSError as exc:
            raise StillroomError(f"cannot load the tokenizer to render prompts: {exc}",
                                 where=model) from exc

    def capture(self) -> dict[str, Any]:
        """A server Stillroom started is known (vLLM, this version, raw logprobs pinned); an
        external server's engine, version and logprob mode are not visible from here."""
        if self._server is not None:
            return self._server.capture()
        return {"engine": "openai-http", "engine_version": None, "logprob_mode": "unknown"}

    def stream(self, rendered: list[str], sampling: SamplingConfig
               ) -> Iterator[tuple[int, list[Completion] | RequestFailure]]:
        """Results as requests finish; the event loop runs in a thread so callers stay sync.

        An endpoint that answers with exact ids (vLLM) is sent the prompt as ids
        (`prompt_ids`, the rule training uses); a plain OpenAI-compatible server is sent the
        text and tokenises it its own way (its `usage.prompt_tokens` is what is stored)."""
        self.check_logprobs(sampling.logprobs_k)
        results: queue.Queue = queue.Queue()
        done = object()
        error: list[BaseException] = []

        def run() -> None:
            try:
                asyncio.run(self._run_all(rendered, sampling, results))
            except BaseException as exc:  # re-raised in the caller's thread, not lost here
                error.append(exc)
            finally:
                results.put(done)

        worker = threading.Thread(target=run, name="stillroom-http", daemon=True)
        worker.start()
        while (item := results.get()) is not done:
            yield item
        worker.join()
        if error:
            raise error[0]

    async def _run_all(self, rendered: list[str], sampling: SamplingConfig,
                       results: queue.Queue) -> None:
        endpoints = [Endpoint(u, asyncio.Semaphore(self.concurrency)) for u in self.urls]
        headers = {"Authorization": f"Bearer {self.api_key}"} if self.api_key else {}
        limits = httpx.Limits(max_connections=self.concurrency * len(endpoints))
        async with httpx.AsyncClient(timeout=self.timeout, headers=headers,
                                     limits=limits) as client:
            if rendered:
                first = (rendered[0], self.prompt_ids(rendered[0]))
                await asyncio.gather(*(self._probe(client, e, first, sampling)
                                       for e in endpoints))

            async def one(index: int, text: str) -> None:
                prompt = (text, self.prompt_ids(text))
                results.put((index, await self._request(client, endpoints, prompt, sampling)))

            await asyncio.gather(*(one(i, p) for i, p in enumerate(rendered)))

    def _body(self, prompt: tuple[str, list[int]], sampling: SamplingConfig,
              token_ids: bool) -> dict[str, Any]:
        """The request for `prompt` (its text and its ids): ids to a server answering with
        exact ids (vLLM takes a list of ids as the prompt), the text to a plain one."""
        text, ids = prompt
        body = {"model": self.served_model, "prompt": ids if token_ids else text,
                "n": sampling.n,
                "max_tokens": sampling.max_tokens, "temperature": sampling.temperature,
                "top_p": sampling.top_p, "seed": sampling.seed,
                "stop": list(sampling.stop) or None, "logprobs": sampling.logprobs_k or 1}
        return {**body, VLLM_IDS: True} if token_ids else body

    async def _probe(self, client: httpx.AsyncClient, endpoint: Endpoint,
                     prompt: tuple[str, list[int]], sampling: SamplingConfig) -> None:
        """Once per endpoint and k: one token with the run's logprobs, first with vLLM's
        exact-ids extension, then (refused) without; a server that gives neither stops the
        run here with its own reason instead of failing every request after retries."""
        key = (endpoint.url, sampling.logprobs_k)
        if key not in self._probed:
            one_token = SamplingConfig(max_tokens=1, seed=sampling.seed,
                                       logprobs_k=sampling.logprobs_k)
            response = await self._probe_post(client, endpoint.url,
                                              self._body(prompt, one_token, True))
            if 400 <= response.status_code < 500:  # e.g. a strict server: unknown field
                response = await self._probe_post(client, endpoint.url,
                                                  self._body(prompt, one_token, False))
            self._probed[key] = self._check_probe(endpoint.url, response, sampling.logprobs_k)
            log.info("%s answers with %s", endpoint.url, "exact token ids"
                     if self._probed[key] else "token strings (mapped back to ids)")
        endpoint.token_ids = self._probed[key]

    async def _probe_post(self, client: httpx.AsyncClient, url: str,
                          body: dict[str, Any]) -> httpx.Response:
        """The probe's POST, retried like any request (at least 3 times) on transient faults:
        429, 5xx, timeouts, broken connections and bodies that are not JSON."""
        attempts = max(self.max_retries, 3) + 1
        for attempt in range(attempts):
            try:
                response = await client.post(f"{url}/v1/completions", json=body)
                if response.status_code in RETRYABLE_STATUS:
                    raise RetryableError(f"HTTP {response.status_code}")
                if response.status_code == 200:
                    try:
                        response.json()
                    except json.JSONDecodeError as exc:
                        raise RetryableError("malformed body (JSONDecodeError)") from exc
                return response
            except (RetryableError, httpx.TimeoutException, httpx.TransportError) as exc:
                reason = f"{type(exc).__name__}: {exc}"[:300]
            if attempt + 1 < attempts:
                self.retries += 1
                await asyncio.sleep(min(10.0, self.backoff * 2 ** attempt))
        raise StillroomError(f"no answer to a one-token probe after {attempts} attempts "
                             f"({reason})", where=url)

    def _check_probe(self, url: str, response: httpx.Response, k: int) -> bool:
        """True where the probe's answer carries exact ids; a StillroomError where the server
        refuses the request or cannot give `k` logprobs per token."""
        if response.status_code != 200:
            hint = (f"; OpenAI's API allows at most {OPENAI_MAX_LOGPROBS}: lower --logprobs-k"
                    if k > OPENAI_MAX_LOGPROBS else "")
            raise StillroomError(f"the server refuses the run's requests (logprobs={k}): HTTP "
                                 f"{response.status_code}: {response.text[:300]}{hint}",
                                 where=url)
        try:
            logprobs = response.json()["choices"][0]["logprobs"]
            tokens, top = logprobs["tokens"], logprobs.get("top_logprobs") or []
        except (json.JSONDecodeError, KeyError, IndexError, TypeError) as exc:
            raise StillroomError("the server's answer carries no per-token logprobs "
                                 f"({type(exc).__name__}: {exc})", where=url) from exc
        widths = [len(step or {}) for step in top]
        if k and (len(widths) < len(tokens) or min(widths, default=0) < k):
            raise StillroomError(f"asked for the top {k} logprobs per token, the server gave "
                                 f"{min(widths, default=0)}: lower --logprobs-k", where=url)
        return all(str(t).startswith("token_id:") for t in tokens)

    async def _request(self, client: httpx.AsyncClient, endpoints: list[Endpoint],
                       prompt: tuple[str, list[int]],
                       sampling: SamplingConfig) -> list[Completion] | RequestFailure:
        reason = ""
        sent = 0.0
        for attempt in range(self.max_retries + 1):
            endpoint = min(endpoints, key=lambda e: (e.in_flight, random.random()))
            async with endpoint.semaphore:
                if attempt == 0:  # the first send: latency includes every retry and backoff
                    sent = time.monotonic()
                endpoint.in_flight += 1
                try:
                    response = await client.post(
                        f"{endpoint.url}/v1/completions",
                        json=self._body(prompt, sampling, endpoint.token_ids))
                    completions = self._parse(response, sampling, endpoint.token_ids)
                    for completion in completions:
                        completion.latency_s = time.monotonic() - sent
                    return completions
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

    def _parse(self, response: httpx.Response, sampling: SamplingConfig,
               token_ids: bool) -> list[Completion]:
        if response.status_code in RETRYABLE_STATUS:
            raise RetryableError(f"HTTP {response.status_code}")
        if response.status_code != 200:
            raise StillroomError(f"HTTP {response.status_code}: {response.text[:200]}")
        try:
            payload = response.json()
            prompt_tokens = payload["usage"]["prompt_tokens"]
            choices = sorted(payload["choices"], key=lambda c: c["index"])
            if token_ids:
                return [_completion(c, prompt_tokens, sampling.logprobs_k) for c in choices]
            return [self._mapped_completion(c, prompt_tokens, sampling.logprobs_k)
                    for c in choices]
        except (json.JSONDecodeError, KeyError, TypeError, ValueError) as exc:
            raise RetryableError(f"malformed body ({type(exc).__name__})") from exc

    def _mapped_completion(self, choice: dict[str, Any], prompt_tokens: int,
                           k: int) -> Completion:
        """A plain server's choice: ids from its token strings where each names one token of
        the teacher's vocabulary, else the text re-tokenised (inexact, without soft labels,
        whose steps would no longer line up with the ids)."""
        if self._token_map is None:
            self._token_map = TokenMap(self.tokenizer)
        logprobs = choice["logprobs"]
        token_ids = self._token_map.ids(logprobs["tokens"])
        topk_ids: list[list[int]] = []
        topk_logprobs: list[list[float]] = []
        if token_ids is not None and k:
            for step in logprobs["top_logprobs"]:
                ranked = sorted(step.items(), key=lambda item: -item[1])[:k]
                ids = self._token_map.ids([t for t, _ in ranked])
                if ids is None or len(ids) < k:
                    topk_ids, topk_logprobs = [], []
                    break
                topk_ids.append(ids)
                topk_logprobs.append([float(lp) for _, lp in ranked])
        exact = token_ids is not None
        if token_ids is None:
            token_ids = self.tokenizer.encode(choice["text"], add_special_tokens=False)
        return Completion(text=choice["text"], token_ids=token_ids, prompt_tokens=prompt_tokens,
                          finish_reason=choice["finish_reason"], topk_ids=topk_ids,
                          topk_logprobs=topk_logprobs, token_ids_exact=exact)

    def close(self) -> None:
        if self._server is not None:
            self._server.stop()


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
                 startup_timeout: float = 300,
                 max_logprobs: int = VLLM_DEFAULT_MAX_LOGPROBS) -> None:
        self.port = free_port()
        self.max_logprobs = max_logprobs
        self.url = f"http://127.0.0.1:{self.port}"
        command = [sys.executable, "-m", "vllm.entrypoints.openai.api_server", "--model", model,
                   "--host", "127.0.0.1", "--port", str(self.port), "--dtype", "float32",
                   "--enforce-eager", "--max-model-len",
                   str(context_length(model, revision, max_model_len)),
                   "--max-logprobs", str(max_logprobs), "--logprobs-mode", "raw_logprobs"]
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

    def capture(self) -> dict[str, Any]:
        """The server runs this Python's vLLM with raw logprobs pinned (see `__init__`)."""
        return {"engine": "vllm-server", "engine_version": package_version("vllm"),
                "logprob_mode": "raw"}

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
