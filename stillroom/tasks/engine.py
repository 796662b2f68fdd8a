"""The vLLM offline engine behind one small interface: render prompts, generate with top-k logprobs.

One engine lives per process at a time (a flow that generates and then benchmarks
the same teacher reuses it); asking for another model shuts the old one down.
"""

from __future__ import annotations

import gc
import importlib.util
import itertools
import logging
import os
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from typing import Any

from stillroom import inputs, settings
from stillroom.errors import StillroomError
from stillroom.tasks import compat
from stillroom.tasks.prompts import Prompt

log = logging.getLogger(__name__)

LOGPROBS_K_MAX = 255
"""The widest top-k a request may ask for. The soft-label codec stores k in one byte, so 255
is its limit; within it, storage grows linearly (about 3.2 bytes an entry: 0.4 MB a 512-token
response at k=255) and vLLM builds one Python object per entry and step, so a large k costs
throughput on the teacher, not only disk. The tail bucket already carries the mass beyond k."""
VLLM_DEFAULT_MAX_LOGPROBS = 20
"""vLLM's own `max_logprobs`: engines are built with at least this, and more when asked."""


@dataclass(frozen=True)
class SamplingConfig:
    """Everything that shapes a teacher's output; part of every request's cache key."""

    temperature: float = 0.0
    top_p: float = 1.0
    max_tokens: int = 64
    n: int = 1
    seed: int = 0
    stop: tuple[str, ...] = ()
    logprobs_k: int = 20

    def __post_init__(self) -> None:
        """Each field checked with its own name, as the last guard for callers (flows, suites,
        the judge) that build one from user-typed values."""
        inputs.real_number(self.temperature, "sampling.temperature", minimum=0)
        inputs.real_number(self.top_p, "sampling.top_p", maximum=1, positive=True)
        inputs.whole_number(self.max_tokens, "sampling.max_tokens", minimum=1)
        inputs.whole_number(self.n, "sampling.n", minimum=1)
        inputs.whole_number(self.seed, "sampling.seed", minimum=0)
        inputs.whole_number(self.logprobs_k, "sampling.logprobs_k", minimum=0,
                            maximum=LOGPROBS_K_MAX)
        if not isinstance(self.stop, tuple):
            raise StillroomError(f"must be a tuple of strings, not {self.stop!r}",
                                 where="sampling.stop")
        for sequence in self.stop:
            inputs.text(sequence, "sampling.stop")

    def as_dict(self) -> dict[str, Any]:
        return {**asdict(self), "stop": list(self.stop)}


@dataclass
class Completion:
    """One generated sample: text, its tokens, and the teacher's top-k at every step.

    `latency_s` is the request's own latency as the engine saw it: from its submission to
    its completion (each backend documents where it starts the clock). `token_ids_exact`
    is False where the ids could not be taken from the server and were re-tokenised from
    the text (they may then differ from what the teacher sampled).
    """

    text: str
    token_ids: list[int]
    prompt_tokens: int
    finish_reason: str | None
    topk_ids: list[list[int]] = field(default_factory=list)
    topk_logprobs: list[list[float]] = field(default_factory=list)
    latency_s: float | None = None
    token_ids_exact: bool = True


@dataclass(frozen=True)
class RequestFailure:
    """A request that failed for good after its retries; recorded, and re-sent by a re-run."""

    reason: str
    attempts: int


def context_length(model: str, revision: str | None, wanted: int) -> int:
    """`wanted`, capped at what the model's config allows (vLLM refuses longer)."""
    from transformers import AutoConfig

    return min(wanted, AutoConfig.from_pretrained(model, revision=revision)
               .max_position_embeddings)


def render_prompt(tokenizer: Any, prompt: Prompt) -> str:
    """The exact text a model is given: chat template where the tokenizer has one."""
    if getattr(tokenizer, "chat_template", None):
        return tokenizer.apply_chat_template(prompt.messages, tokenize=False,
                                             add_generation_prompt=True)
    if prompt.is_chat:
        return "\n\n".join(m["content"] for m in prompt.messages)
    return prompt.text


class Engine:
    """What every backend shares: the model it serves and how prompts become text and ids."""

    backend = "base"
    model: str
    revision: str | None
    tokenizer: Any
    max_logprobs: int | None = None  # the widest top-k it can return; None: no limit of its own

    def render(self, prompt: Prompt) -> str:
        return render_prompt(self.tokenizer, prompt)

    def prompt_ids(self, rendered: str) -> list[int]:
        """The ids the model is given for a rendered prompt: `compat.prompt_ids`, the one rule
        training re-tokenises with too (no second BOS after a template that writes one)."""
        return compat.prompt_ids(self.tokenizer, rendered)

    def capture(self) -> dict[str, Any]:
        """How this engine captures rows, for the dataset manifest: `engine`, its
        `engine_version` and `logprob_mode` (`raw`: the model's unmodified distribution,
        before temperature and top-p)."""
        raise NotImplementedError

    def check_logprobs(self, k: int) -> None:
        """Refuse a top-k wider than this engine was built for, naming what to do."""
        if self.max_logprobs is not None and k > self.max_logprobs:
            raise StillroomError(f"this engine was started for at most {self.max_logprobs}"
                                 f" logprobs per token, not {k}; get it from `engine_for`"
                                 " with max_logprobs", where="sampling.logprobs_k")

    def generate(self, rendered: list[str], sampling: SamplingConfig) -> list[list[Completion]]:
        """`sampling.n` completions for each rendered prompt, in prompt order."""
        results: list[list[Completion]] = [[] for _ in rendered]
        for index, samples in self.stream(rendered, sampling):
            if isinstance(samples, RequestFailure):
                raise StillroomError(f"request {index} failed after {samples.attempts} "
                                     f"attempt(s): {samples.reason}", where=self.model)
            results[index] = samples
        return results

    def stream(self, rendered: list[str], sampling: SamplingConfig
               ) -> Iterator[tuple[int, list[Completion] | RequestFailure]]:
        """(prompt index, completions or failure) for each prompt as it finishes, any order."""
        raise NotImplementedError

    def close(self) -> None:
        """Free the model; the engine cannot be used afterwards."""


def missing_vllm(exc: ImportError, backend: str) -> StillroomError:
    """The one error for a vLLM backend on a machine without vLLM: what to install or use."""
    return StillroomError(
        f"vLLM cannot be imported in this Python ({exc}); install it (`pip install -e .[cpu]` "
        "on a CPU machine, see scripts/setup.sh, or `.[gpu]`), or choose `--backend "
        "transformers` (or `--backend openai --endpoint URL`)", where=f"--backend {backend}")


def require_vllm(backend: str) -> None:
    """Fail fast, before starting a server process, where vLLM is not installed (found
    without importing it: the server imports it in its own process)."""
    if importlib.util.find_spec("vllm") is None:
        raise missing_vllm(ModuleNotFoundError("No module named 'vllm'"), backend)


class VLLMEngine(Engine):
    """A `vllm.LLM` for one model checkpoint (hub id or local path)."""

    backend = "vllm"

    def __init__(self, model: str, revision: str | None = None, max_model_len: int = 2048,
                 dtype: str = "float32", seed: int = 0,
                 max_logprobs: int = VLLM_DEFAULT_MAX_LOGPROBS) -> None:
        settings.apply_engine_env()
        os.environ.setdefault("VLLM_CPU_OMP_THREADS_BIND", "auto")
        try:
            from vllm import LLM
        except ImportError as exc:
            raise missing_vllm(exc, self.backend) from exc

        from stillroom.tasks import vllm_tokenizer

        vllm_tokenizer.install()
        self.model = model
        self.revision = revision
        self.max_logprobs = max_logprobs
        started = time.monotonic()
        try:
            # On CPU, chunked prefill plus a seeded sampler crashes vLLM ("CPU Generator
            # does not use offset") as soon as a prompt is split across steps.
            cpu_only = {} if settings.has_cuda() else {"enable_chunked_prefill": False}
            # Raw logprobs (before temperature, top-p and logit processors) pinned, not left
            # to the version's default: the soft labels are the teacher's own distribution.
            self.llm = LLM(model=model, revision=revision, dtype=dtype, seed=seed,
                           max_model_len=context_length(model, revision, max_model_len),
                           max_logprobs=max_logprobs, logprobs_mode="raw_logprobs",
                           enforce_eager=True, **cpu_only)
        except (OSError, ValueError, RuntimeError) as exc:
            raise StillroomError(f"cannot load model: {exc}", where=model) from exc
        self.start_seconds = time.monotonic() - started
        self.tokenizer = self.llm.get_tokenizer()
        log.info("vLLM engine for %s ready in %.1fs", model, self.start_seconds)

    def capture(self) -> dict[str, Any]:
        return {"engine": "vllm", "engine_version": package_version("vllm"),
                "logprob_mode": "raw"}

    def stream(self, rendered: list[str], sampling: SamplingConfig,
               max_in_flight: int = 512) -> Iterator[tuple[int, list[Completion]]]:
        """Keep the engine saturated and hand back each request the moment it finishes.

        Continuous batching across the whole run: the caller commits finished rows while
        the rest keep decoding, instead of the engine idling between fixed batches. Each
        completion's latency runs from its request's enqueueing to the step that finished it.
        Prompts go in as ids (`prompt_ids`), never as text for vLLM to tokenise its own way.
        """
        from vllm import SamplingParams, TokensPrompt

        self.check_logprobs(sampling.logprobs_k)
        params = SamplingParams(
            n=sampling.n, temperature=sampling.temperature, top_p=sampling.top_p,
            max_tokens=sampling.max_tokens, seed=sampling.seed, stop=list(sampling.stop) or None,
            logprobs=sampling.logprobs_k or None)
        engine = self.llm.llm_engine
        position: dict[str, int] = {}
        submitted: dict[str, float] = {}
        queued = iter(enumerate(rendered))

        def submit(count: int) -> None:
            batch = list(itertools.islice(queued, count))
            if not batch:
                return
            now = time.monotonic()
            request_ids = self.llm.enqueue(
                [TokensPrompt(prompt_token_ids=self.prompt_ids(text)) for _, text in batch],
                params, use_tqdm=False)
            for (index, _), request_id in zip(batch, request_ids, strict=True):
                # Outputs carry the id's counter part only ("7" for "7-1a2b"), as in LLM itself.
                position[request_id.split("-", 1)[0]] = index
                submitted[request_id.split("-", 1)[0]] = now

        submit(max_in_flight)
        while engine.has_unfinished_requests():
            for out in self._step(engine):
                if out.finished:
                    latency = time.monotonic() - submitted.pop(out.request_id)
                    submit(1)
                    yield position.pop(out.request_id), [
                        _completion(o, len(out.prompt_token_ids or []), sampling.logprobs_k,
                                    latency) for o in out.outputs]

    def _step(self, engine: Any) -> list[Any]:
        """One engine step; a model the engine cannot run (e.g. an attention head size the
        CPU kernels lack) fails here, in the first step, deep inside vLLM."""
        try:
            return engine.step()
        except (RuntimeError, NotImplementedError, ValueError) as exc:
            raise StillroomError(f"vLLM cannot run this model: {exc}", where=self.model) from exc

    def close(self) -> None:
        core = getattr(getattr(self.llm, "llm_engine", None), "engine_core", None)
        if core is not None:
            core.shutdown()
        del self.llm
        gc.collect()


def _completion(output: Any, prompt_tokens: int, k: int, latency: float) -> Completion:
    topk_ids, topk_logprobs = [], []
    for step in output.logprobs or []:
        # vLLM adds the sampled token when it is outside the top k: keep the top k by rank.
        ranked = sorted(step.items(), key=lambda item: item[1].rank)[:k]
        topk_ids.append([token for token, _ in ranked])
        topk_logprobs.append([float(lp.logprob) for _, lp in ranked])
    return Completion(text=output.text, token_ids=list(output.token_ids),
                      prompt_tokens=prompt_tokens, finish_reason=output.finish_reason,
                      topk_ids=topk_ids, topk_logprobs=topk_logprobs, latency_s=latency)


def package_version(name: str) -> str | None:
    """An installed distribution's version, read without importing it (None if absent)."""
    from importlib import metadata

    for candidate in (name, f"{name}-cpu"):  # vLLM's CPU build is packaged as vllm-cpu
        try:
            return metadata.version(candidate)
        except metadata.PackageNotFoundError:
            continue
    return None


BACKENDS = ("vllm", "transformers", "vllm-server", "openai")
_current: Engine | None = None
_current_key: tuple | None = None


def engine_for(model: str, revision: str | None = None, backend: str = "vllm",
               endpoints: list[str] | None = None, api_key_env: str | None = None,
               max_logprobs: int = 0, **options: Any) -> Engine:
    """The process's engine for `model`, started on first use (the previous one shut down).

    Backends: `vllm` (offline engine), `transformers` (fallback), `vllm-server` (a local
    OpenAI-compatible vLLM server started here), `openai` (external endpoints by URL).
    `max_logprobs` is the widest top-k the caller will ask for: a running engine built for
    fewer is restarted for it (vLLM refuses more than it was built for); one built for as
    many or more is reused, so a generation at k=32 followed by an eval at k=0 keeps it.
    """
    global _current, _current_key
    if backend not in BACKENDS:
        raise StillroomError(f"unknown backend {backend!r}; use one of {BACKENDS}",
                             where="--backend")
    key = (model, revision, backend, tuple(endpoints or ()), api_key_env,
           tuple(sorted(options.items())))
    if _current is not None and _current_key == key and \
            (_current.max_logprobs is None or _current.max_logprobs >= max_logprobs):
        return _current
    close_engine()
    max_logprobs = max(max_logprobs, VLLM_DEFAULT_MAX_LOGPROBS)
    if backend == "transformers":
        from stillroom.tasks.hf_engine import TransformersEngine

        _current = TransformersEngine(model, revision)
    elif backend in ("vllm-server", "openai"):
        from stillroom.tasks.http_engine import OpenAIEngine, VLLMServer

        if backend == "openai" and not endpoints:
            raise StillroomError("the openai backend needs --endpoint URL", where="--endpoint")
        if backend == "vllm-server":
            require_vllm(backend)
        server = VLLMServer(model, revision, max_logprobs=max_logprobs) \
            if backend == "vllm-server" else None
        _current = OpenAIEngine(model, revision, [server.url] if server else endpoints or [],
                                api_key_env=api_key_env, server=server, **options)
    else:
        _current = VLLMEngine(model, revision, max_logprobs=max_logprobs)
    _current_key = key
    return _current


def close_engine() -> None:
    global _current, _current_key
    if _current is not None:
        _current.close()
        _current, _current_key = None, None
