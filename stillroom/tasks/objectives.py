"""Distillation objectives: divergences over the teacher's top-k plus a tail bucket.

The teacher's soft labels hold, per response token, its top-k ids with raw (T=1) logprobs and
the tail mass outside them (soft labels v2). Every token-level objective compares two
(k+1)-way distributions over the same buckets, the k ids plus "everything else":
  teacher  p = (top-k probs, tail mass), renormalised (quantised logprobs do not sum exactly)
  student  q = (softmax at the k ids, 1 - their sum), from one logsumexp per position; the
           tail is log1mexp(logsumexp(gathered log-probs)), stable without a second pass
Treating the teacher's tail as zero (renormalising the top-k alone, `forward_kl_zero_tail`,
the loss before this module) pulls the student's own tail towards zero: over-confidence.
Merging tokens into one bucket never increases an f-divergence, so each objective here is a
lower bound of the full-vocabulary one at T=1; the tests pin the gaps (forward KL misses
exactly p_tail * KL(p|tail || q|tail), reverse KL q_tail * KL(q|tail || p|tail), JSD(beta) at
most beta p_tail log(1/beta) + (1-beta) q_tail log(1/(1-beta)), TVD at most min(p_tail,
q_tail)). When k covers the vocabulary there is no tail and every objective is the exact
full-vocabulary divergence.

Temperature: both bucket distributions are tempered the same way, log_softmax(log p / T) over
the k+1 buckets, i.e. the tail is tempered as if it were one token. Why: how the teacher's
tail mass is spread over the remaining vocabulary is not stored, so its tempered mass is
unknown (it lies between tail^(1/T) for one token and far more for a flat spread); the
one-token choice needs nothing unstored, keeps the ratios between top-k entries exactly those
of full-vocabulary tempering, keeps the minimum at student buckets == teacher buckets for
every T, and is exact when k covers the vocabulary. Divergences are multiplied by T^2 (Hinton
et al.): the gradient of a tempered divergence w.r.t. the logits shrinks like 1/T^2, so T^2
keeps its scale comparable with CE as T changes (for TVD and JSD this is a convention).

The run's loss is (1 - kd_weight) * CE(teacher tokens) + kd_weight * T^2 * mean divergence;
`sft` is CE alone (sequence-level KD). Positions are processed in chunks (1024 by default):
with fp32 logits the graph keeps only views of the logits and per-position values, never a
full-vocabulary copy (tests/test_objectives.py checks what autograd saves). The exceptions:
lower-precision logits are upcast per chunk, and `forward_kl_zero_tail` at T != 1 needs a
second logsumexp over logits / T.
"""

from __future__ import annotations

import logging
import math
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

import torch

from stillroom.errors import StillroomError

log = logging.getLogger(__name__)

TAIL_FLOOR = 1e-12
"""Smallest tail mass and teacher probability used: keeps reverse KL and JSD finite (a stored
tail of 0 or a clipped -inf entry would make them infinite) at a negligible cost: log(1e-12)
is -27.6 nats, far below the student's fp32 resolution of its own tail (about 1e-7)."""

Pair = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def forward_kl(p: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
    """KL(teacher || student) per position, from log-probs over the last dim: mode-covering."""
    return (p.exp() * (p - q)).sum(-1)


def reverse_kl(p: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
    """KL(student || teacher) per position: mode-seeking."""
    return (q.exp() * (q - p)).sum(-1)


def jsd(p: torch.Tensor, q: torch.Tensor, beta: float = 0.5) -> torch.Tensor:
    """Generalised Jensen-Shannon divergence (GKD): beta KL(p || m) + (1-beta) KL(q || m),
    m = beta p + (1-beta) q. It vanishes at beta = 0 and 1; its scaled limits are the two KLs:
    JSD/beta -> forward KL as beta -> 0, JSD/(1-beta) -> reverse KL as beta -> 1, and as in
    GKD beta=0 and beta=1 here mean forward and reverse KL (not the vanishing JSD)."""
    if beta == 0:
        return forward_kl(p, q)
    if beta == 1:
        return reverse_kl(p, q)
    m = torch.logaddexp(p + math.log(beta), q + math.log1p(-beta))
    return beta * forward_kl(p, m) + (1 - beta) * forward_kl(q, m)


def tvd(p: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
    """Total variation distance per position: half the L1 distance, bounded by 1."""
    return 0.5 * (p.exp() - q.exp()).abs().sum(-1)


@dataclass(frozen=True)
class Divergence:
    """A registered token-level objective: the pair function and how buckets are formed."""
    name: str
    pair: Pair
    tail: bool = True   # False: today's renormalised top-k with no tail bucket


OBJECTIVES: dict[str, Callable[..., Divergence | None]] = {}


def register(name: str) -> Callable:
    def decorate(factory: Callable[..., Divergence | None]) -> Callable[..., Divergence | None]:
        OBJECTIVES[name] = factory
        return factory
    return decorate


@register("sft")
def _sft() -> None:
    """Cross-entropy on the teacher's tokens only: no soft labels needed."""
    return None


@register("forward_kl")
def _forward_kl() -> Divergence:
    return Divergence("forward_kl", forward_kl)


@register("reverse_kl")
def _reverse_kl() -> Divergence:
    return Divergence("reverse_kl", reverse_kl)


@register("jsd")
def _jsd(beta: float = 0.5) -> Divergence:
    if not 0 <= beta <= 1:
        raise StillroomError(f"beta={beta} must be in [0, 1]", where="objective jsd")
    return Divergence(f"jsd(beta={beta})", lambda p, q: jsd(p, q, beta))


@register("tvd")
def _tvd() -> Divergence:
    return Divergence("tvd", tvd)


@register("forward_kl_zero_tail")
def _forward_kl_zero_tail() -> Divergence:
    """The loss before tail buckets: teacher top-k renormalised at T, student full softmax at T
    gathered at the k ids (not a distribution: it rewards moving all mass into the top-k)."""
    return Divergence("forward_kl_zero_tail", forward_kl, tail=False)


def resolve(name: str, params: Mapping[str, float] | None = None) -> Divergence | None:
    """The registered objective `name` built with `params` (None for `sft`)."""
    if name not in OBJECTIVES:
        raise StillroomError(f"unknown objective {name!r}; known: {', '.join(sorted(OBJECTIVES))}",
                             where="--objective")
    try:
        return OBJECTIVES[name](**(params or {}))
    except TypeError as error:
        raise StillroomError(f"bad parameters {dict(params or {})} for {name}: {error}",
                             where="--objective") from None


def log1mexp(x: torch.Tensor) -> torch.Tensor:
    """log(1 - exp(x)) for x < 0, accurate at both ends and with finite gradients."""
    near = x > -math.log(2)
    one = torch.full_like(x, -1.0)
    small = torch.log(-torch.expm1(torch.where(near, x, one)))
    large = torch.log1p(-torch.exp(torch.where(near, one, x)))
    return torch.where(near, small, large)


def teacher_buckets(logprobs: torch.Tensor, tail: torch.Tensor | None) -> torch.Tensor:
    """[n, k+1] teacher log-probs at T=1: top-k then the tail (estimated where unknown)."""
    logprobs = logprobs.clamp_min(math.log(TAIL_FLOOR))
    estimate = -torch.expm1(torch.logsumexp(logprobs, -1))   # v1 rows: from quantised values
    tail = estimate if tail is None else torch.where(tail.isnan(), estimate, tail.to(estimate))
    return torch.cat([logprobs, tail.clamp_min(TAIL_FLOOR).log().unsqueeze(-1)], -1)


def student_buckets(gathered: torch.Tensor, lse: torch.Tensor) -> torch.Tensor:
    """[n, k+1] student log-probs at T=1 from the logits at the k ids and the logsumexp."""
    top = gathered - lse.unsqueeze(-1)
    covered = torch.logsumexp(top, -1).clamp_max(math.log1p(-TAIL_FLOOR))
    return torch.cat([top, log1mexp(covered).unsqueeze(-1)], -1)


def objective_loss(
    logits: torch.Tensor, targets: torch.Tensor, topk_ids: torch.Tensor,
    topk_logprobs: torch.Tensor, topk_tail: torch.Tensor | None, mask: torch.Tensor, *,
    objective: str = "forward_kl", params: Mapping[str, float] | None = None,
    temperature: float = 1.0, kd_weight: float = 0.5, chunk_size: int = 1024,
) -> tuple[torch.Tensor, dict[str, float]]:
    """The run's loss and its parts, over N response positions.

    logits [N, V] student logits at response positions; targets [N] teacher tokens;
    topk_ids [N, k] long, topk_logprobs [N, k] raw T=1 teacher logprobs, topk_tail [N] tail
    mass (NaN where unknown, e.g. v1 rows, or None for all: estimated from the logprobs);
    mask [N] bool, the positions whose soft labels count. Parts: loss, ce, kd, kd_positions,
    and the mean T=1 tail mass of teacher and student at those positions.
    """
    if temperature <= 0:
        raise StillroomError(f"temperature={temperature} must be > 0", where="--temperature")
    resolved = resolve(objective, params)
    divergence = resolved if kd_weight > 0 else None
    count, vocab = logits.shape
    with_tail = divergence is not None and divergence.tail and topk_ids.shape[-1] < vocab
    dtype = torch.promote_types(logits.dtype, torch.float32)
    ce_sum = logits.new_zeros((), dtype=dtype)
    kd_sum = logits.new_zeros((), dtype=dtype)
    tails = torch.zeros(2, dtype=torch.float64)
    kd_positions = 0
    for start in range(0, count, chunk_size):
        rows = slice(start, start + chunk_size)
        chunk = logits[rows].to(dtype)   # a view, not a copy, for fp32 logits
        lse = torch.logsumexp(chunk, -1)
        ce_sum = ce_sum + (lse - chunk.gather(-1, targets[rows, None]).squeeze(-1)).sum()
        keep = mask[rows]
        if divergence is None or not keep.any():
            continue
        gathered = chunk.gather(-1, topk_ids[rows])[keep]
        teacher = topk_logprobs[rows][keep].to(dtype)
        if divergence.tail:
            tail = topk_tail[rows][keep] if topk_tail is not None else None
            p, q = teacher_buckets(teacher, tail), student_buckets(gathered, lse[keep])
            if with_tail:
                tails += torch.stack([p[:, -1].exp().sum(), q[:, -1].exp().sum()]).detach().cpu()
            else:   # k covers the vocabulary: there is no tail bucket
                p, q = p[:, :-1], q[:, :-1]
            p = torch.log_softmax(p / temperature, -1)
            q = torch.log_softmax(q / temperature, -1)
        else:
            p = torch.log_softmax(teacher / temperature, -1)
            lse_t = lse[keep] if temperature == 1 else torch.logsumexp(
                chunk[keep] / temperature, -1)
            q = gathered / temperature - lse_t.unsqueeze(-1)
        kd_sum = kd_sum + divergence.pair(p, q).sum()
        kd_positions += int(keep.sum())
    ce = ce_sum / max(count, 1)
    kd = kd_sum / max(kd_positions, 1) * temperature ** 2
    loss = ce if divergence is None else (1 - kd_weight) * ce + kd_weight * kd
    mean_tail = (tails / max(kd_positions, 1)).tolist() if with_tail else [0.0, 0.0]
    return loss, {"loss": loss.item(), "ce": ce.item(), "kd": kd.item(),
                  "kd_positions": float(kd_positions), "teacher_tail": mean_tail[0],
                  "student_tail": mean_tail[1]}


@dataclass(frozen=True)
class Coverage:
    """Which rows' soft labels the KD term can use: those whose top-k width is the run's k."""
    rows: int
    k: int
    labelled: int                      # rows with soft labels of width k
    unlabelled: int                    # rows with no soft labels at all
    other_k: dict[int, int] = field(default_factory=dict)   # width -> rows left out of KD


def check_coverage(topk_ids: Sequence[Sequence[Sequence[int]]], objective: str,
                   kd_weight: float) -> Coverage:
    """Count the rows KD can use and refuse a run whose KD term would train nothing.

    `topk_ids` holds each row's per-step top-k ids. The run's k is the most common width
    (the larger on a tie); rows of another width are counted, logged and left out of KD.
    """
    widths = Counter(len(steps[0]) if steps and steps[0] else 0 for steps in topk_ids)
    unlabelled = widths.pop(0, 0)
    k = max(widths, key=lambda w: (widths[w], w)) if widths else 0
    coverage = Coverage(rows=len(topk_ids), k=k, labelled=widths.pop(k, 0),
                        unlabelled=unlabelled, other_k=dict(sorted(widths.items())))
    needs_labels = kd_weight > 0 and resolve(objective) is not None
    if needs_labels and not coverage.labelled:
        raise StillroomError(
            f"the dataset's {coverage.rows} rows have no soft labels (top-k logprobs), so "
            f"objective {objective} with kd_weight={kd_weight} would train nothing: regenerate "
            "with --logprobs-k, or train with --kd-weight 0", where="--kd-weight")
    if needs_labels and coverage.other_k:
        log.warning("KD leaves out %d rows whose top-k width is not %d: %s",
                    sum(coverage.other_k.values()), k, coverage.other_k)
    return coverage
