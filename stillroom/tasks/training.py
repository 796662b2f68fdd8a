"""Student training: SFT on teacher outputs plus a divergence to the teacher's soft labels.

loss = (1 - kd_weight) * CE(teacher tokens) + kd_weight * T^2 * divergence, where the
divergence is the configured objective (`stillroom.tasks.objectives`; default forward KL over
the teacher's top-k plus a tail bucket). Before any step the run checks that the student can
learn from the dataset (`stillroom.tasks.compat`) and which rows carry soft labels. Logits are
computed only at response positions: with a 262k vocabulary the LM head dominates the cost of
a small student. A held-out share of the prompts (`stillroom.tasks.heldout`) is never trained
on; the student is measured on it before the first step, every `eval_every` steps and at the
end, and that history is part of every checkpoint.
"""

from __future__ import annotations

import json
import logging
import math
import random
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from tqdm import tqdm

from stillroom import inputs, settings
from stillroom.errors import StillroomError
from stillroom.tasks import compat, heldout, objectives
from stillroom.tasks.checkpoints import Checkpoints
from stillroom.tasks.engine import render_prompt
from stillroom.tasks.prompts import PROMPT_FORMATS, Prompt

log = logging.getLogger(__name__)

DEFAULT_CHECKPOINT_EVERY = 50
DEFAULT_EVAL_EVERY = 50


@dataclass(frozen=True)
class TrainConfig:
    epochs: int = 1
    max_steps: int | None = None
    batch_size: int = 8
    lr: float = 3e-4
    weight_decay: float = 0.0
    warmup_steps: int = 5     # linear warm-up, then linear decay to 0 at the last step
    kd_weight: float = 0.5
    temperature: float = 1.0
    freeze_embeddings: bool = True
    seed: int = 0
    objective: str = "forward_kl"
    objective_params: dict[str, float] = field(default_factory=dict)
    heldout_fraction: float = 0.1     # of the dataset's prompts, never trained on; 0: none
    eval_every: int = DEFAULT_EVAL_EVERY   # steps between held-out evaluations
    # What the student is trained to answer: the prompt the teacher saw ("teacher"), or the
    # question alone without the teacher's few-shot examples ("zero_shot", context
    # distillation: a shorter prompt at inference). Evals give a student the same format.
    prompt_format: str = "teacher"

    def __post_init__(self) -> None:
        """Every field checked, each naming its CLI flag (flows pass what users typed)."""
        if not isinstance(self.objective_params, dict):
            raise StillroomError(f"must be a mapping of names to numbers, not "
                                 f"{self.objective_params!r}", where="--objective-param")
        for key, value in self.objective_params.items():
            inputs.real_number(value, f"--objective-param {key}")
        objectives.resolve(self.objective, self.objective_params)
        inputs.real_number(self.kd_weight, "--kd-weight", minimum=0, maximum=1)
        inputs.real_number(self.temperature, "--temperature", positive=True)
        inputs.whole_number(self.epochs, "--epochs", minimum=1)
        if self.max_steps is not None:
            inputs.whole_number(self.max_steps, "--max-steps", minimum=1)
        inputs.whole_number(self.batch_size, "--batch-size", minimum=1)
        inputs.real_number(self.lr, "--lr", positive=True)
        inputs.whole_number(self.warmup_steps, "--warmup-steps", minimum=0)
        inputs.whole_number(self.seed, "--seed", minimum=0)
        heldout.check_fraction(self.heldout_fraction)
        inputs.whole_number(self.eval_every, "--eval-every", minimum=1)
        if self.prompt_format not in PROMPT_FORMATS:
            raise StillroomError(f"must be one of {', '.join(PROMPT_FORMATS)}, not"
                                 f" {self.prompt_format!r}", where="--prompt-format")


@dataclass
class Example:
    input_ids: list[int]      # prompt + response tokens
    first_target: int         # position whose next token is the response's first token
    targets: list[int]        # response token ids
    topk_ids: list[list[int]]
    topk_logprobs: list[list[float]]
    topk_tail: list[float] | None = None   # None: not stored (v1 soft labels)
    prompt_key: str = ""      # the prompt it answers (`heldout.prompt_key`): the split's unit
    response_id: str = ""


def build_examples(rows: Any, tokenizer: Any,
                   prompt_format: str = "teacher") -> tuple[list[Example], list[str]]:
    """Align each stored response with the prompt the student is trained on.

    The teacher's prompt is always re-tokenised and compared with the length the engine
    counted; returns the examples and, for each row left out because they differ, why
    (`compat.report` decides whether that many are tolerable). With `prompt_format`
    "zero_shot" the student's prompt is the row's question alone, rendered the way engines
    render it (`render_prompt`)."""
    examples, mismatches, missing = [], [], 0
    for row in rows:
        prompt_ids = compat.prompt_ids(tokenizer, row["prompt"])
        mismatch = compat.prompt_mismatch(tokenizer, row["prompt"], len(prompt_ids),
                                          row.get("prompt_tokens"))
        if mismatch:
            mismatches.append(f"response {row.get('response_id', '?')}: {mismatch}")
            continue
        targets = list(row["token_ids"])
        if not targets:
            continue
        if prompt_format == "zero_shot":
            if not row.get("zero_shot_prompt"):
                missing += 1
                continue
            prompt_ids = compat.prompt_ids(tokenizer, render_prompt(
                tokenizer, Prompt(row["zero_shot_prompt"], source="zero_shot")))
        tail = row.get("topk_tail")
        examples.append(Example(
            input_ids=prompt_ids + targets, first_target=len(prompt_ids) - 1, targets=targets,
            topk_ids=[list(x) for x in row["topk_ids"] or []],
            topk_logprobs=[list(x) for x in row["topk_logprobs"] or []],
            topk_tail=list(tail) if tail is not None else None,
            prompt_key=heldout.prompt_key(row), response_id=str(row.get("response_id", ""))))
    if missing:
        raise StillroomError(f"{missing} rows have no zero-shot prompt (only prompts built from"
                             " procedural tasks have one): train them with --prompt-format"
                             " teacher", where="--prompt-format")
    return examples, mismatches


def collate(batch: list[Example], pad_id: int) -> dict[str, torch.Tensor]:
    width = max(len(e.input_ids) for e in batch)
    k = max((len(e.topk_ids[0]) for e in batch if e.topk_ids), default=0)
    input_ids = torch.full((len(batch), width), pad_id)
    mask = torch.zeros((len(batch), width), dtype=torch.long)
    where = torch.zeros((len(batch), width), dtype=torch.bool)
    targets, kd_ids, kd_lp, kd_tail, kd_mask = [], [], [], [], []
    for b, e in enumerate(batch):
        input_ids[b, :len(e.input_ids)] = torch.tensor(e.input_ids)
        mask[b, :len(e.input_ids)] = 1
        where[b, e.first_target:e.first_target + len(e.targets)] = True
        targets += e.targets
        for step in range(len(e.targets)):
            has = step < len(e.topk_ids) and len(e.topk_ids[step]) == k and k > 0
            kd_ids.append(e.topk_ids[step] if has else [0] * k)
            kd_lp.append(e.topk_logprobs[step] if has else [0.0] * k)
            known = has and e.topk_tail is not None and step < len(e.topk_tail)
            kd_tail.append(e.topk_tail[step] if known else math.nan)
            kd_mask.append(has)
    return {"input_ids": input_ids, "attention_mask": mask, "where": where,
            "targets": torch.tensor(targets), "kd_ids": torch.tensor(kd_ids, dtype=torch.long),
            "kd_logprobs": torch.tensor(kd_lp).reshape(len(kd_ids), k),
            "kd_tail": torch.tensor(kd_tail, dtype=torch.float32),
            "kd_mask": torch.tensor(kd_mask, dtype=torch.bool)}


def response_logits(model: Any, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """Student logits at the positions that predict response tokens only."""
    hidden = model.model(input_ids=batch["input_ids"],
                         attention_mask=batch["attention_mask"]).last_hidden_state
    logits = model.get_output_embeddings()(hidden[batch["where"]])
    cap = getattr(model.config, "final_logit_softcapping", None)
    return torch.tanh(logits / cap) * cap if cap else logits


def distillation_loss(logits: torch.Tensor, batch: dict[str, torch.Tensor],
                      config: TrainConfig) -> tuple[torch.Tensor, dict[str, float]]:
    """The configured objective's loss at the batch's response positions."""
    return objectives.objective_loss(
        logits, batch["targets"], batch["kd_ids"], batch["kd_logprobs"], batch.get("kd_tail"),
        batch["kd_mask"], objective=config.objective, params=config.objective_params,
        temperature=config.temperature, kd_weight=config.kd_weight)


def evaluate(model: Any, examples: list[Example], pad_id: int, device: torch.device,
             batch_size: int, step: int) -> dict[str, Any]:
    """Held-out metrics at `step`, teacher-forced, without gradients, in eval mode (the model
    is left in the mode it was in)."""
    was_training = model.training
    model.eval()
    tally = heldout.Tally()
    with torch.no_grad():
        for start in range(0, len(examples), batch_size):
            batch = {name: tensor.to(device) for name, tensor in
                     collate(examples[start:start + batch_size], pad_id).items()}
            with torch.autocast("cuda", dtype=torch.bfloat16, enabled=device.type == "cuda"):
                logits = response_logits(model, batch)
            tally.add(logits.float(), batch)
    model.train(was_training)
    return tally.result(step)


def split_heldout(examples: list[Example],
                  fraction: float) -> tuple[list[Example], list[Example]]:
    """(examples to train on, held-out examples), split by prompt (`heldout.split`)."""
    held = heldout.split([e.prompt_key for e in examples], fraction)
    return ([e for e, h in zip(examples, held, strict=True) if not h],
            [e for e, h in zip(examples, held, strict=True) if h])


def _device() -> torch.device:
    """A GPU when there is one (trained under bf16 autocast), else the CPU in fp32."""
    return torch.device("cuda" if settings.has_cuda() else "cpu")


def check_checkpoint_every(steps: int) -> None:
    if steps < 1:
        raise StillroomError(f"checkpoint every {steps} steps: must be >= 1",
                             where="--checkpoint-every")


def _trainable_state(model: Any) -> dict[str, torch.Tensor]:
    """The model's state without its frozen parameters (those come back from the init)."""
    return {k: v.detach() for k, v in model.state_dict(keep_vars=True).items()
            if not (isinstance(v, torch.nn.Parameter) and not v.requires_grad)}


def _restore(model: Any, optimizer: Any, schedule: Any, rng: random.Random,
             state: dict[str, Any]) -> None:
    missing, unexpected = model.load_state_dict(state["model"], strict=False)
    frozen = {k for k, v in model.state_dict(keep_vars=True).items()
              if isinstance(v, torch.nn.Parameter) and not v.requires_grad}
    if unexpected or set(missing) - frozen:
        raise StillroomError("checkpoint does not fit this model", where=str(state.get("key")))
    optimizer.load_state_dict(state["optimizer"])
    schedule.load_state_dict(state["scheduler"])
    rng.setstate(state["python_rng"])
    torch.set_rng_state(state["torch_rng"])
    if state.get("cuda_rng") is not None and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda_rng"])


def preflight(tokenizer: Any, model: Any, rows: Any, config: TrainConfig, teacher_model: str,
              teacher_revision: str | None) -> tuple[list[Example], dict[str, Any]]:
    """The examples and the compatibility report (soft-label coverage included), or one
    `StillroomError` for a run that would train on wrong or missing targets."""
    from transformers import AutoTokenizer

    coverage = objectives.check_coverage(rows["topk_ids"], config.objective, config.kd_weight)
    examples, mismatches = build_examples(rows, tokenizer, config.prompt_format)
    teacher_tokenizer = AutoTokenizer.from_pretrained(teacher_model, revision=teacher_revision)
    report = compat.report(
        tokenizer, teacher_tokenizer, model.get_output_embeddings().weight.shape[0],
        revisions_recorded=list(rows["teacher_revision"]), revision_used=teacher_revision,
        prompt_mismatches=mismatches, rows=len(rows), coverage=asdict(coverage))
    if not examples:
        raise StillroomError("the dataset has no rows with response tokens", where="--dataset")
    return examples, report


def train(model_dir: Path, rows: Any, config: TrainConfig, out: Path, progress: bool = True,
          checkpoints: Checkpoints | None = None,
          checkpoint_every: int = DEFAULT_CHECKPOINT_EVERY, *, teacher_model: str,
          teacher_revision: str | None = None) -> dict[str, Any]:
    """Train the checkpoint in `model_dir` on dataset rows and save it to `out`.

    `teacher_model` (at `teacher_revision`) is the teacher that labelled the rows: the
    student is checked against it before any step (`preflight`).

    With `checkpoints`, the full training state (trainable weights, optimizer, scheduler, RNGs,
    position in the data order) is saved every `checkpoint_every` steps and at the end, and a
    run that finds one resumes from it, ending with the weights an uninterrupted run would have
    and the same held-out history (`summary["heldout"]`).
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer

    check_checkpoint_every(checkpoint_every)
    torch.manual_seed(config.seed)
    rng = random.Random(config.seed)
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    device = _device()
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).to(device)
    if config.freeze_embeddings:
        model.get_input_embeddings().weight.requires_grad_(False)
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=config.lr, weight_decay=config.weight_decay)
    examples, compatibility = preflight(tokenizer, model, rows, config, teacher_model,
                                        teacher_revision)
    examples, tracked = split_heldout(examples, config.heldout_fraction)
    if tracked:
        log.info("holding out %d rows (%d prompts) of %d for evaluation, never trained on",
                 len(tracked), len({e.prompt_key for e in tracked}),
                 len(tracked) + len(examples))
    steps_per_epoch = -(-len(examples) // config.batch_size)
    total = config.max_steps or steps_per_epoch * config.epochs
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: min(1.0, (s + 1) / max(1, config.warmup_steps))
        * max(0.0, 1 - s / total) if total > 1 else 1.0)
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    history: list[dict[str, float]] = []
    evals: list[dict[str, Any]] = []
    step, order, next_batch = 0, None, 0
    saved = checkpoints.latest() if checkpoints else None
    if saved:
        _restore(model, optimizer, schedule, rng, saved)
        step, order, next_batch = saved["step"], saved["order"], saved["next_batch"]
        history, evals = saved["history"], saved.get("heldout", [])
        log.info("resumed training from step %d of %d (%s)", step, total, checkpoints.directory)
    resumed_from = step
    speed = Throughput()

    def track(step: int) -> None:
        """Evaluate on the held-out rows and say how training stands."""
        entry = evaluate(model, tracked, pad_id, device, config.batch_size, step)
        evals.append(entry)
        since = history[evals[-2]["step"] if len(evals) > 1 else 0:step]  # since the last one
        loss = f"loss {sum(h['loss'] for h in since) / len(since):.3f}, " if since else ""
        log.info("step %d/%d: %s%s, %s", step, total, loss, heldout.describe(entry),
                 f"{speed.rate():.0f} tok/s" if step > resumed_from else "before training")

    if tracked and not saved:
        track(0)
    model.train()
    started = time.monotonic()
    bar = tqdm(total=total, initial=step, desc="train", unit="step", disable=not progress)
    while step < total:
        if order is None:
            order = list(range(len(examples)))
            rng.shuffle(order)
            next_batch = 0
        for start in range(next_batch * config.batch_size, len(order), config.batch_size):
            if step >= total:
                break
            chosen = [examples[i] for i in order[start:start + config.batch_size]]
            speed.begin()
            batch = {name: tensor.to(device) for name, tensor in collate(chosen, pad_id).items()}
            with torch.autocast("cuda", dtype=torch.bfloat16, enabled=device.type == "cuda"):
                logits = response_logits(model, batch)
            loss, parts = distillation_loss(logits, batch, config)   # upcasts to fp32 itself
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(params, 1.0)
            optimizer.step()
            schedule.step()
            speed.end(sum(len(e.targets) for e in chosen))
            history.append(parts)
            step += 1
            next_batch += 1
            bar.update(1)
            bar.set_postfix(loss=f"{parts['loss']:.3f}", tok_s=f"{speed.rate():.0f}")
            if tracked and (step % config.eval_every == 0 or step == total):
                track(step)
            if checkpoints and (step % checkpoint_every == 0 or step == total):
                checkpoints.save(step, {
                    "model": _trainable_state(model), "optimizer": optimizer.state_dict(),
                    "scheduler": schedule.state_dict(), "python_rng": rng.getstate(),
                    "torch_rng": torch.get_rng_state(),
                    "cuda_rng": torch.cuda.get_rng_state_all() if torch.cuda.is_available()
                    else None,
                    "order": order, "next_batch": next_batch, "history": history,
                    "heldout": evals})
        else:
            order = None  # the epoch is done; the next one reshuffles
    bar.close()
    model.eval()
    out.mkdir(parents=True, exist_ok=True)
    model.to("cpu").save_pretrained(out)
    tokenizer.save_pretrained(out)
    window = max(1, len(history) // 5)
    summary = {
        "steps": step, "resumed_from_step": resumed_from, "examples": len(examples),
        "target_tokens": sum(len(e.targets) for e in examples),
        "trainable_params": sum(p.numel() for p in params),
        "first_loss": round(sum(h["loss"] for h in history[:window]) / window, 4),
        "last_loss": round(sum(h["loss"] for h in history[-window:]) / window, 4),
        "seconds": round(time.monotonic() - started, 2),
        "tokens_per_s": round(speed.rate(), 1), "config": asdict(config),
        "heldout_rows": len(tracked), "heldout_prompts": len({e.prompt_key for e in tracked}),
        "heldout": evals, "coverage": compatibility["soft_labels"],
        "compatibility": compatibility}
    (out / "training.json").write_text(json.dumps(
        {**summary, "heldout_response_ids": [e.response_id for e in tracked],
         "history": history}, indent=1))
    final = f", {heldout.describe(evals[-1])}" if evals else ""
    log.info("trained %d steps: loss %.3f -> %.3f%s", step, summary["first_loss"],
             summary["last_loss"], final)
    return summary


class Throughput:
    """Response (target) tokens per second over the training steps this process ran, held-out
    evaluations and checkpoint writes excluded."""

    def __init__(self) -> None:
        self.tokens, self.seconds, self._since = 0, 0.0, 0.0

    def begin(self) -> None:
        self._since = time.perf_counter()

    def end(self, tokens: int) -> None:
        self.seconds += time.perf_counter() - self._since
        self.tokens += tokens

    def rate(self) -> float:
        return self.tokens / self.seconds if self.seconds else 0.0
