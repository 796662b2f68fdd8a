"""Student training: SFT on teacher outputs plus KL to the teacher's top-k soft labels.

loss = (1 - kd_weight) * CE(teacher tokens) + kd_weight * T^2 * KL(p_T || q_T) on the top-k ids,
where p_T renormalises the teacher's top-k logprobs at temperature T and q_T is the student's
full-vocabulary distribution at T. Logits are computed only at response positions: with a
262k vocabulary the LM head dominates the cost of a small student.
"""

from __future__ import annotations

import json
import logging
import random
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from tqdm import tqdm

from stillroom.errors import StillroomError
from stillroom.tasks.checkpoints import Checkpoints

log = logging.getLogger(__name__)

DEFAULT_CHECKPOINT_EVERY = 50


@dataclass(frozen=True)
class TrainConfig:
    epochs: int = 1
    max_steps: int | None = None
    batch_size: int = 8
    lr: float = 3e-4
    weight_decay: float = 0.0
    warmup_steps: int = 5
    kd_weight: float = 0.5
    temperature: float = 1.0
    freeze_embeddings: bool = True
    seed: int = 0

    def __post_init__(self) -> None:
        if not 0 <= self.kd_weight <= 1:
            raise StillroomError(f"kd_weight={self.kd_weight} must be in [0, 1]",
                                 where="--kd-weight")
        if self.temperature <= 0:
            raise StillroomError(f"temperature={self.temperature} must be > 0",
                                 where="--temperature")
        if self.batch_size < 1 or self.epochs < 1 or self.lr <= 0:
            raise StillroomError("batch_size and epochs must be >= 1 and lr > 0", where="train")


@dataclass
class Example:
    input_ids: list[int]      # prompt + response tokens
    first_target: int         # position whose next token is the response's first token
    targets: list[int]        # response token ids
    topk_ids: list[list[int]]
    topk_logprobs: list[list[float]]


def build_examples(rows: Any, tokenizer: Any) -> list[Example]:
    """Align each stored response with the prompt tokens the teacher saw."""
    examples = []
    for row in rows:
        prompt_ids = tokenizer(row["prompt"]).input_ids
        targets = list(row["token_ids"])
        if not targets:
            continue
        examples.append(Example(
            input_ids=prompt_ids + targets, first_target=len(prompt_ids) - 1, targets=targets,
            topk_ids=[list(x) for x in row["topk_ids"] or []],
            topk_logprobs=[list(x) for x in row["topk_logprobs"] or []]))
    return examples


def collate(batch: list[Example], pad_id: int) -> dict[str, torch.Tensor]:
    width = max(len(e.input_ids) for e in batch)
    k = max((len(e.topk_ids[0]) for e in batch if e.topk_ids), default=0)
    input_ids = torch.full((len(batch), width), pad_id)
    mask = torch.zeros((len(batch), width), dtype=torch.long)
    where = torch.zeros((len(batch), width), dtype=torch.bool)
    targets, kd_ids, kd_lp, kd_mask = [], [], [], []
    for b, e in enumerate(batch):
        input_ids[b, :len(e.input_ids)] = torch.tensor(e.input_ids)
        mask[b, :len(e.input_ids)] = 1
        where[b, e.first_target:e.first_target + len(e.targets)] = True
        targets += e.targets
        for step in range(len(e.targets)):
            has = step < len(e.topk_ids) and len(e.topk_ids[step]) == k and k > 0
            kd_ids.append(e.topk_ids[step] if has else [0] * k)
            kd_lp.append(e.topk_logprobs[step] if has else [0.0] * k)
            kd_mask.append(has)
    return {"input_ids": input_ids, "attention_mask": mask, "where": where,
            "targets": torch.tensor(targets), "kd_ids": torch.tensor(kd_ids, dtype=torch.long),
            "kd_logprobs": torch.tensor(kd_lp), "kd_mask": torch.tensor(kd_mask)}


def response_logits(model: Any, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """Student logits at the positions that predict response tokens only."""
    hidden = model.model(input_ids=batch["input_ids"],
                         attention_mask=batch["attention_mask"]).last_hidden_state
    logits = model.get_output_embeddings()(hidden[batch["where"]])
    cap = getattr(model.config, "final_logit_softcapping", None)
    return torch.tanh(logits / cap) * cap if cap else logits


def distillation_loss(logits: torch.Tensor, batch: dict[str, torch.Tensor],
                      config: TrainConfig) -> tuple[torch.Tensor, dict[str, float]]:
    ce = F.cross_entropy(logits, batch["targets"])
    kd = torch.zeros((), dtype=logits.dtype)
    if config.kd_weight > 0 and batch["kd_mask"].any():
        t = config.temperature
        sel = batch["kd_mask"]
        teacher = torch.log_softmax(batch["kd_logprobs"][sel] / t, dim=-1)
        student = torch.log_softmax(logits[sel] / t, dim=-1).gather(-1, batch["kd_ids"][sel])
        kd = (teacher.exp() * (teacher - student)).sum(-1).mean() * t * t
    loss = (1 - config.kd_weight) * ce + config.kd_weight * kd
    return loss, {"loss": loss.item(), "ce": ce.item(), "kd": kd.item()}


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


def train(model_dir: Path, rows: Any, config: TrainConfig, out: Path, progress: bool = True,
          checkpoints: Checkpoints | None = None,
          checkpoint_every: int = DEFAULT_CHECKPOINT_EVERY) -> dict[str, Any]:
    """Train the checkpoint in `model_dir` on dataset rows and save it to `out`.

    With `checkpoints`, the full training state (trainable weights, optimizer, scheduler, RNGs,
    position in the data order) is saved every `checkpoint_every` steps and at the end, and a
    run that finds one resumes from it, ending with the weights an uninterrupted run would have.
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer

    check_checkpoint_every(checkpoint_every)
    torch.manual_seed(config.seed)
    rng = random.Random(config.seed)
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    if config.freeze_embeddings:
        model.get_input_embeddings().weight.requires_grad_(False)
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=config.lr, weight_decay=config.weight_decay)
    examples = build_examples(rows, tokenizer)
    if not examples:
        raise StillroomError("the dataset has no rows with response tokens", where="--dataset")
    steps_per_epoch = -(-len(examples) // config.batch_size)
    total = config.max_steps or steps_per_epoch * config.epochs
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: min(1.0, (s + 1) / max(1, config.warmup_steps))
        * max(0.0, 1 - s / total) if total > 1 else 1.0)
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    history: list[dict[str, float]] = []
    step, order, next_batch = 0, None, 0
    saved = checkpoints.latest() if checkpoints else None
    if saved:
        _restore(model, optimizer, schedule, rng, saved)
        step, order, next_batch = saved["step"], saved["order"], saved["next_batch"]
        history = saved["history"]
        log.info("resumed training from step %d of %d (%s)", step, total, checkpoints.directory)
    resumed_from = step
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
            batch = collate([examples[i] for i in order[start:start + config.batch_size]], pad_id)
            loss, parts = distillation_loss(response_logits(model, batch), batch, config)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(params, 1.0)
            optimizer.step()
            schedule.step()
            history.append(parts)
            step += 1
            next_batch += 1
            bar.update(1)
            bar.set_postfix(loss=f"{parts['loss']:.3f}")
            if checkpoints and (step % checkpoint_every == 0 or step == total):
                checkpoints.save(step, {
                    "model": _trainable_state(model), "optimizer": optimizer.state_dict(),
                    "scheduler": schedule.state_dict(), "python_rng": rng.getstate(),
                    "torch_rng": torch.get_rng_state(),
                    "cuda_rng": torch.cuda.get_rng_state_all() if torch.cuda.is_available()
                    else None,
                    "order": order, "next_batch": next_batch, "history": history})
        else:
            order = None  # the epoch is done; the next one reshuffles
    bar.close()
    model.eval()
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    window = max(1, len(history) // 5)
    summary = {
        "steps": step, "resumed_from_step": resumed_from, "examples": len(examples),
        "target_tokens": sum(len(e.targets) for e in examples),
        "trainable_params": sum(p.numel() for p in params),
        "first_loss": round(sum(h["loss"] for h in history[:window]) / window, 4),
        "last_loss": round(sum(h["loss"] for h in history[-window:]) / window, 4),
        "seconds": round(time.monotonic() - started, 2), "config": asdict(config)}
    (out / "training.json").write_text(json.dumps({**summary, "history": history}, indent=1))
    log.info("trained %d steps: loss %.3f -> %.3f", step, summary["first_loss"],
             summary["last_loss"])
    return summary
