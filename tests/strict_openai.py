"""A strict OpenAI-compatible completions server on 127.0.0.1, with none of vLLM's extensions.

It answers `POST /v1/completions` as OpenAI's legacy API does: tokens are named by their
text (`bytes:\\xNN` where a token is not valid UTF-8 on its own), `top_logprobs` is a list
of {token string: logprob}, an unknown request field is refused with HTTP 400 (as
`return_tokens_as_token_ids` is by strict servers) and so is `logprobs` above 5. The text
and tokens are real: the tiny model generates them with transformers.
"""

from __future__ import annotations

import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from transformers.convert_slow_tokenizer import bytes_to_unicode

from stillroom.tasks.engine import SamplingConfig
from stillroom.tasks.hf_engine import TransformersEngine

KNOWN_FIELDS = {"model", "prompt", "suffix", "max_tokens", "temperature", "top_p", "n",
                "stream", "stream_options", "logprobs", "echo", "stop", "presence_penalty",
                "frequency_penalty", "best_of", "logit_bias", "user", "seed"}
MAX_LOGPROBS = 5


class StrictOpenAIServer:
    def __init__(self, model: str, max_logprobs: int = MAX_LOGPROBS) -> None:
        self.engine = TransformersEngine(model)
        self.model, self.max_logprobs = model, max_logprobs
        self.bodies: list[dict[str, Any]] = []
        self.lock = threading.Lock()
        byte_decoder = {char: byte for byte, char in bytes_to_unicode().items()}
        tokenizer = self.engine.tokenizer
        special = set(tokenizer.all_special_ids)
        self.token_text = {}
        for piece, token_id in tokenizer.get_vocab().items():
            raw = piece.encode() if token_id in special else bytes(byte_decoder[c] for c in piece)
            try:
                self.token_text[token_id] = raw.decode("utf-8")
            except UnicodeDecodeError:
                self.token_text[token_id] = "bytes:" + "".join(f"\\x{b:02x}" for b in raw)
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: object) -> None:
                pass

            def do_POST(self) -> None:  # noqa: N802 (http.server's naming)
                raw = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                status, payload = server.answer(self.path, raw)
                data = json.dumps(payload).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def answer(self, path: str, raw: bytes) -> tuple[int, dict[str, Any]]:
        if path != "/v1/completions":
            return 404, _error(f"Unknown path {path}")
        try:
            body = json.loads(raw)
        except json.JSONDecodeError:
            return 400, _error("We could not parse the JSON body of your request.")
        with self.lock:
            self.bodies.append(body)
        unknown = sorted(set(body) - KNOWN_FIELDS)
        if unknown:
            return 400, _error(f"Unrecognized request argument supplied: {unknown[0]}")
        k = body.get("logprobs")
        if k is not None and not 0 <= k <= self.max_logprobs:
            return 400, _error(f"Invalid value for 'logprobs': must be between 0 and "
                               f"{self.max_logprobs}.", param="logprobs")
        stop = body.get("stop") or ()
        sampling = SamplingConfig(
            temperature=body.get("temperature", 1.0), top_p=body.get("top_p", 1.0),
            max_tokens=body.get("max_tokens", 16), n=body.get("n", 1),
            seed=body.get("seed") or 0, stop=(stop,) if isinstance(stop, str) else tuple(stop),
            logprobs_k=k or 0)
        with self.lock:  # one generation at a time: the model is shared
            samples = self.engine.generate([body["prompt"]], sampling)[0]
        choices = [{"index": i, "text": c.text, "finish_reason": c.finish_reason,
                    "logprobs": self._logprobs(c) if k is not None else None}
                   for i, c in enumerate(samples)]
        completion = sum(len(c.token_ids) for c in samples)
        return 200, {"id": f"cmpl-{len(self.bodies)}", "object": "text_completion",
                     "created": int(time.time()), "model": body["model"], "choices": choices,
                     "usage": {"prompt_tokens": samples[0].prompt_tokens,
                               "completion_tokens": completion,
                               "total_tokens": samples[0].prompt_tokens + completion}}

    def _logprobs(self, completion: Any) -> dict[str, Any]:
        tokens = [self.token_text[t] for t in completion.token_ids]
        top = [{self.token_text[t]: lp for t, lp in zip(ids, lps, strict=True)}
               for ids, lps in zip(completion.topk_ids, completion.topk_logprobs, strict=True)]
        sampled = [step.get(token) for token, step in zip(tokens, top, strict=False)]
        offsets, offset = [], 0
        for token in tokens:
            offsets.append(offset)
            offset += len(token)
        return {"tokens": tokens, "token_logprobs": sampled, "top_logprobs": top,
                "text_offset": offsets}

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def _error(message: str, param: str | None = None) -> dict[str, Any]:
    return {"error": {"message": message, "type": "invalid_request_error", "param": param,
                      "code": None}}
