"""The transformers fallback backend: batched `generate` for machines without vLLM.

It returns what the vLLM engine returns (text, tokens, finish reason, top-k logprobs of
the model's raw distribution: log_softmax of the logits before temperature and top-p, as
vLLM's pinned `raw_logprobs`), from the same prompt ids (`Engine.prompt_ids`), so stored rows
do not depend on the backend.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from typing import Any

import torch

from stillroom.errors import StillroomError
from stillroom.tasks.engine import Completion, Engine, SamplingConfig, package_version

log = logging.getLogger(__name__)


class TransformersEngine(Engine):
    backend = "transformers"

    def __init__(self, model: str, revision: str | None = None, batch_size: int = 16) -> None:
        from transformers import AutoModelForCausalLM, AutoTokenizer

        self.model, self.revision, self.batch_size = model, revision, batch_size
        started = time.monotonic()
        try:
            self.tokenizer = AutoTokenizer.from_pretrained(model, revision=revision)
            self.lm = AutoModelForCausalLM.from_pretrained(model, revision=revision,
                                                           dtype=torch.float32).eval()
        except OSError as exc:
            raise StillroomError(f"cannot load model: {exc}", where=model) from exc
        self.tokenizer.padding_side = "left"
        if self.tokenizer.pad_token_id is None:
            self.tokenizer.pad_token = self.tokenizer.eos_token
        self.start_seconds = time.monotonic() - started

    def capture(self) -> dict[str, Any]:
        return {"engine": "transformers", "engine_version": package_version("transformers"),
                "logprob_mode": "raw"}

    def stream(self, rendered: list[str],
               sampling: SamplingConfig) -> Iterator[tuple[int, list[Completion]]]:
        """Fixed batches: every request of a batch is submitted and completed with it, so
        each one's latency is its batch's `generate` time."""
        for start in range(0, len(rendered), self.batch_size):
            started = time.monotonic()
            batch = self._batch(rendered[start:start + self.batch_size], sampling)
            latency = time.monotonic() - started
            for samples in batch:
                for completion in samples:
                    completion.latency_s = latency
            yield from enumerate(batch, start=start)

    @torch.inference_mode()
    def _batch(self, texts: list[str], sampling: SamplingConfig) -> list[list[Completion]]:
        batch = self.tokenizer.pad({"input_ids": [self.prompt_ids(t) for t in texts]},
                                   return_tensors="pt", padding=True)
        prompt_lengths = batch.attention_mask.sum(dim=1).tolist()
        greedy = sampling.temperature == 0
        torch.manual_seed(sampling.seed)
        out = self.lm.generate(
            **batch, max_new_tokens=sampling.max_tokens, do_sample=not greedy,
            temperature=sampling.temperature if not greedy else None,
            top_p=sampling.top_p if not greedy else None, top_k=None if greedy else 0,
            num_return_sequences=sampling.n, output_logits=True, return_dict_in_generate=True,
            stop_strings=list(sampling.stop) or None, tokenizer=self.tokenizer,
            pad_token_id=self.tokenizer.pad_token_id)
        width = batch.input_ids.shape[1]
        # `out.logits` are the raw logits, before temperature and top-p: raw logprobs.
        logprobs = torch.stack(out.logits, dim=1).float().log_softmax(-1)  # [B*n, T, V]
        completions = [self._completion(out.sequences[row, width:], logprobs[row],
                                        prompt_lengths[row // sampling.n], sampling)
                       for row in range(out.sequences.shape[0])]
        return [completions[i * sampling.n:(i + 1) * sampling.n] for i in range(len(texts))]

    def _completion(self, generated: torch.Tensor, logprobs: torch.Tensor, prompt_tokens: int,
                    sampling: SamplingConfig) -> Completion:
        eos = self.lm.generation_config.eos_token_id
        eos_ids = set(eos if isinstance(eos, list) else [eos]) - {None}
        tokens: list[int] = []
        finish, text = "length", None
        for token in generated.tolist():
            tokens.append(token)
            if token in eos_ids:
                finish = "stop"
                break
            if sampling.stop:  # the text excludes the stop string, as vLLM's does
                partial = self.tokenizer.decode(tokens, skip_special_tokens=True)
                cut = min((partial.find(s) for s in sampling.stop if s in partial), default=-1)
                if cut >= 0:
                    finish, text = "stop", partial[:cut]
                    break
        if text is None:
            text = self.tokenizer.decode(tokens, skip_special_tokens=True)
        top = logprobs[:len(tokens)].topk(sampling.logprobs_k, dim=-1) if sampling.logprobs_k \
            else None
        return Completion(
            text=text, token_ids=tokens, prompt_tokens=prompt_tokens, finish_reason=finish,
            topk_ids=top.indices.tolist() if top is not None else [],
            topk_logprobs=top.values.tolist() if top is not None else [])
