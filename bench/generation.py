"""Generation throughput: raw vLLM vs Stillroom's generation stage vs batched transformers.

All three run the same prompts with the same greedy settings in one process; the two vLLM
sides alternate for `--rounds` rounds (best of each kept), each from a cold prefix cache,
on the demo teacher (Gemma 3 270M, fp32, CPU unless a GPU is present). Engine start
and model load are excluded; what is timed is generation (and, for Stillroom, everything its
stage does around it: rendering, the request-cache lookup, top-20 soft-label packing and
batch commits to the DuckDB catalog). The last line is JSON.

    .venv/bin/python bench/generation.py [--prompts 96] [--max-tokens 48] [--rounds 2]
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

TOPICS = ["tides", "compound interest", "photosynthesis", "the TCP handshake", "sourdough",
          "black holes", "vaccines", "supply and demand", "glaciers", "the printing press",
          "volcanoes", "bees"]
TEMPLATES = ["Explain {topic} to a curious child.", "Write a short paragraph about {topic}.",
             "What are three surprising facts about {topic}?",
             "Describe how {topic} works, step by step.", "Why does {topic} matter?",
             "Summarise the history of {topic}.", "Teach {topic} in four sentences.",
             "What do people often get wrong about {topic}?"]


def timed(fn):
    started = time.monotonic()
    result = fn()
    return result, time.monotonic() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--prompts", type=int, default=96)
    parser.add_argument("--max-tokens", type=int, default=48)
    parser.add_argument("--batch-size", type=int, default=48, help="Stillroom's commit batch")
    parser.add_argument("--k", type=int, default=20)
    parser.add_argument("--rounds", type=int, default=2, help="interleaved vLLM rounds")
    args = parser.parse_args()
    os.environ.setdefault("STILLROOM_HOME", str(Path(".stillroom").resolve()))

    from stillroom import settings
    settings.apply_engine_env()
    settings.apply_prefect_env()
    from stillroom.catalog import Catalog
    from stillroom.tasks.engine import SamplingConfig, VLLMEngine
    from stillroom.tasks.generate import generate
    from stillroom.tasks.models import materialize_demo_teacher
    from stillroom.tasks.prompts import Prompt
    from stillroom.tasks.teachers import add_teacher

    model = str(materialize_demo_teacher())
    texts = [t.format(topic=topic) for t in TEMPLATES for topic in TOPICS][:args.prompts]
    sampling = SamplingConfig(max_tokens=args.max_tokens, logprobs_k=args.k)
    engine = VLLMEngine(model)
    from vllm import SamplingParams

    raw_params = SamplingParams(temperature=0, max_tokens=args.max_tokens, logprobs=args.k,
                                seed=0)
    engine.llm.generate(texts[:4], raw_params, use_tqdm=False)  # warm-up

    def raw_run() -> tuple[float, int]:
        engine.llm.reset_prefix_cache()  # every timed run starts from a cold prefix cache
        outputs, seconds = timed(lambda: engine.llm.generate(texts, raw_params, use_tqdm=False))
        return seconds, sum(len(o.outputs[0].token_ids) for o in outputs)

    def stillroom_run(scratch: Path, round_: int) -> tuple[float, int, float]:
        catalog = Catalog(scratch / f"catalog-{round_}.duckdb").ensure()
        teacher = add_teacher(catalog, "bench-teacher", model, "gemma")
        prompts = [Prompt(t, "bench") for t in texts]
        engine.llm.reset_prefix_cache()
        summary, seconds = timed(lambda: generate(
            catalog, teacher, prompts, sampling, batch_size=args.batch_size, engine=engine,
            progress=False))
        return seconds, summary["output_tokens"], summary["topk_bytes_per_entry"]

    # Interleaved rounds, best of each: the machine's noise hits both sides alike.
    raw_times, stillroom_times = [], []
    with tempfile.TemporaryDirectory() as scratch:
        for round_ in range(args.rounds):
            raw_s, raw_tokens = raw_run()
            raw_times.append(raw_s)
            stillroom_s, stillroom_tokens, bytes_per_entry = stillroom_run(Path(scratch), round_)
            stillroom_times.append(stillroom_s)
    raw_s, stillroom_s = min(raw_times), min(stillroom_times)
    engine.close()

    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model, padding_side="left")
    lm = AutoModelForCausalLM.from_pretrained(model, dtype=torch.float32).eval()

    def hf_generate() -> int:
        produced = 0
        with torch.inference_mode():
            for start in range(0, len(texts), args.batch_size):
                batch = tokenizer(texts[start:start + args.batch_size], return_tensors="pt",
                                  padding=True)
                out = lm.generate(**batch, max_new_tokens=args.max_tokens, do_sample=False,
                                  pad_token_id=tokenizer.pad_token_id)
                new = out[:, batch.input_ids.shape[1]:]
                produced += int((new != tokenizer.pad_token_id).sum())
        return produced

    hf_tokens, hf_s = timed(hf_generate)

    rates = {"raw_vllm": raw_tokens / raw_s, "stillroom": stillroom_tokens / stillroom_s,
             "transformers": hf_tokens / hf_s}
    print(f"model: {model} (Gemma 3 270M, fp32), {len(texts)} prompts, greedy, "
          f"max_tokens={args.max_tokens}, top-{args.k} logprobs")
    for name, tokens, seconds in (("raw vLLM.generate", raw_tokens, raw_s),
                                  ("Stillroom generate stage", stillroom_tokens, stillroom_s),
                                  ("transformers generate", hf_tokens, hf_s)):
        print(f"{name:<26} {tokens:>7} tokens {seconds:>8.2f} s {tokens / seconds:>8.1f} tok/s")
    print(f"rounds: raw {[round(t, 2) for t in raw_times]} s, "
          f"stillroom {[round(t, 2) for t in stillroom_times]} s (best of each is used)")
    print(f"soft labels: {bytes_per_entry} bytes per top-{args.k} entry")
    print(json.dumps({
        "stillroom_vs_raw_vllm": round(rates["stillroom"] / rates["raw_vllm"], 3),
        "stillroom_vs_transformers": round(rates["stillroom"] / rates["transformers"], 3),
        "tokens_per_s": {k: round(v, 1) for k, v in rates.items()},
        "topk_bytes_per_entry": bytes_per_entry, "prompts": len(texts),
        "max_tokens": args.max_tokens, "k": args.k, "rounds": args.rounds}))


if __name__ == "__main__":
    main()
