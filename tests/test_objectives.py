"""Distillation objectives against dense-logit references on a tiny random model (vocab 50)."""

from __future__ import annotations

import logging

import pytest
import torch
import torch.nn.functional as F

from stillroom.errors import StillroomError
from stillroom.tasks import objectives

VOCAB, HIDDEN, POSITIONS = 50, 16, 40
DIVERGENCES = ["forward_kl", "reverse_kl", "jsd", "tvd"]


def tiny(k: int, seed: int = 0, dtype: torch.dtype = torch.float64, scale: float = 1.0):
    """A teacher's dense logits, its top-k soft labels, and a tiny student (hidden @ head)."""
    g = torch.Generator().manual_seed(seed)
    teacher = torch.randn(POSITIONS, VOCAB, generator=g, dtype=dtype) * 2.5
    hidden = torch.randn(POSITIONS, HIDDEN, generator=g, dtype=dtype)
    head = (torch.randn(HIDDEN, VOCAB, generator=g, dtype=dtype) * 0.5 * scale).requires_grad_()
    top = teacher.log_softmax(-1).topk(k, -1)
    mask = torch.ones(POSITIONS, dtype=torch.bool)
    mask[::7] = False
    return {"teacher": teacher, "hidden": hidden, "head": head, "ids": top.indices,
            "lps": top.values, "tail": -torch.expm1(top.values.logsumexp(-1)),
            "targets": teacher.argmax(-1), "mask": mask}


def run(t: dict, objective: str, temperature: float = 1.0, kd_weight: float = 1.0,
        chunk_size: int = 1024, **params: float):
    return objectives.objective_loss(
        t["hidden"] @ t["head"], t["targets"], t["ids"], t["lps"], t["tail"], t["mask"],
        objective=objective, params=params, temperature=temperature, kd_weight=kd_weight,
        chunk_size=chunk_size)


def dense(name: str, p: torch.Tensor, q: torch.Tensor, beta: float = 0.5) -> torch.Tensor:
    """Each divergence written out over probabilities, independently of the module."""
    if name == "forward_kl":
        return (p * (p / q).log()).sum(-1)
    if name == "reverse_kl":
        return (q * (q / p).log()).sum(-1)
    if name == "jsd":
        m = beta * p + (1 - beta) * q
        return beta * (p * (p / m).log()).sum(-1) + (1 - beta) * (q * (q / m).log()).sum(-1)
    return 0.5 * (p - q).abs().sum(-1)


def coarse(probs: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
    """Dense probabilities merged into (top-k ids, everything else), summed directly."""
    outside = torch.ones_like(probs, dtype=torch.bool).scatter(-1, ids, False)
    return torch.cat([probs.gather(-1, ids), (probs * outside).sum(-1, keepdim=True)], -1)


def tempered(probs: torch.Tensor, temperature: float) -> torch.Tensor:
    powered = probs ** (1 / temperature)
    return powered / powered.sum(-1, keepdim=True)


@pytest.mark.parametrize("temperature", [1.0, 2.0, 0.5])
@pytest.mark.parametrize("name", DIVERGENCES)
def test_exact_when_k_covers_the_vocabulary(name: str, temperature: float) -> None:
    t = tiny(k=VOCAB)
    loss, parts = run(t, name, temperature)
    sel = t["mask"]
    p = (t["teacher"][sel] / temperature).softmax(-1)
    q = ((t["hidden"] @ t["head"])[sel] / temperature).softmax(-1)
    expected = dense(name, p, q).mean() * temperature ** 2
    assert loss.item() == pytest.approx(expected.item(), rel=1e-9, abs=1e-12)
    assert parts["kd_positions"] == int(sel.sum())


@pytest.mark.parametrize("temperature", [1.0, 2.0])
@pytest.mark.parametrize("name", DIVERGENCES)
def test_top_k_matches_the_dense_bucket_reference(name: str, temperature: float) -> None:
    """k < vocab: the objective is the divergence between the coarse-grained, then tempered,
    dense distributions (the tail summed over the vocabulary, not via log1mexp)."""
    t = tiny(k=10, seed=1)
    loss, parts = run(t, name, temperature)
    sel = t["mask"]
    p = coarse(t["teacher"][sel].softmax(-1), t["ids"][sel])
    q = coarse((t["hidden"] @ t["head"])[sel].softmax(-1), t["ids"][sel])
    expected = dense(name, tempered(p, temperature), tempered(q, temperature)).mean()
    assert loss.item() == pytest.approx(expected.item() * temperature ** 2, rel=1e-9)
    assert parts["teacher_tail"] == pytest.approx(p[:, -1].mean().item(), rel=1e-9)
    assert parts["student_tail"] == pytest.approx(q[:, -1].mean().item(), rel=1e-9)


@pytest.mark.parametrize("name", DIVERGENCES)
def test_top_k_within_the_stated_bound_of_the_full_divergence(name: str) -> None:
    """At T=1 the bucket objective is a lower bound of the full-vocabulary divergence, short by
    at most the amount the module docstring states."""
    t = tiny(k=10, seed=2)
    beta = 0.3
    loss, _ = run(t, name, beta=beta) if name == "jsd" else run(t, name)
    sel = t["mask"]
    p, q = t["teacher"][sel].softmax(-1), (t["hidden"] @ t["head"])[sel].softmax(-1)
    full = dense(name, p, q, beta).mean().item()
    outside = torch.ones_like(p, dtype=torch.bool).scatter(-1, t["ids"][sel], False)
    p_tail, q_tail = (p * outside).sum(-1), (q * outside).sum(-1)
    p_in = torch.where(outside, p, 1.0) / p_tail[:, None]   # conditionals within the tail
    q_in = torch.where(outside, q, 1.0) / q_tail[:, None]
    gap = full - loss.item()
    assert gap >= -1e-12
    if name == "forward_kl":
        assert gap == pytest.approx((p_tail * (outside * p_in * (p_in / q_in).log()).sum(-1))
                                    .mean().item(), rel=1e-9)
    elif name == "reverse_kl":
        assert gap == pytest.approx((q_tail * (outside * q_in * (q_in / p_in).log()).sum(-1))
                                    .mean().item(), rel=1e-9)
    elif name == "jsd":
        bound = beta * p_tail * torch.log(torch.tensor(1 / beta)) \
            + (1 - beta) * q_tail * torch.log(torch.tensor(1 / (1 - beta)))
        assert gap <= bound.mean().item()
    else:
        assert gap <= torch.minimum(p_tail, q_tail).mean().item()
    assert gap > 1e-4   # the bound is not vacuous: merging the tail does lose something


@pytest.mark.parametrize("name", [*DIVERGENCES, "forward_kl_zero_tail"])
def test_chunked_equals_unchunked_with_finite_gradients(name: str) -> None:
    t = tiny(k=10, seed=3, dtype=torch.float32)
    results = []
    for chunk_size in (7, 1024):
        t["head"].grad = None
        loss, _ = run(t, name, temperature=2.0, kd_weight=0.7, chunk_size=chunk_size)
        loss.backward()
        assert torch.isfinite(t["head"].grad).all() and t["head"].grad.abs().sum() > 0
        results.append((loss.item(), t["head"].grad.clone()))
    assert results[0][0] == pytest.approx(results[1][0], rel=1e-6)
    torch.testing.assert_close(results[0][1], results[1][1], rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("name", DIVERGENCES)
def test_extreme_inputs_keep_loss_and_gradients_finite(name: str) -> None:
    """A stored tail of 0, a clipped (-2048 nat) teacher entry and a student so confident that
    its fp32 tail underflows: reverse KL and JSD would be infinite without the floor."""
    t = tiny(k=10, seed=4, dtype=torch.float32)
    t["tail"] = torch.zeros(POSITIONS)
    t["lps"][:, -1] = -2047.97
    logits = t["hidden"] @ t["head"] + 80 * F.one_hot(t["ids"][:, 0], VOCAB)
    loss, _ = objectives.objective_loss(logits, t["targets"], t["ids"], t["lps"], t["tail"],
                                        t["mask"], objective=name, temperature=2.0)
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(t["head"].grad).all()


def test_zero_tail_reproduces_the_previous_loss() -> None:
    """forward_kl_zero_tail is the loss training.py used before tail buckets, for benches."""
    for temperature in (1.0, 2.0):
        t = tiny(k=10, seed=5, dtype=torch.float32)
        logits = t["hidden"] @ t["head"]
        sel = t["mask"]
        teacher = torch.log_softmax(t["lps"][sel] / temperature, dim=-1)
        student = torch.log_softmax(logits[sel] / temperature, dim=-1).gather(-1, t["ids"][sel])
        kd = (teacher.exp() * (teacher - student)).sum(-1).mean() * temperature ** 2
        before = 0.4 * F.cross_entropy(logits, t["targets"]) + 0.6 * kd
        loss, _ = run(t, "forward_kl_zero_tail", temperature, kd_weight=0.6)
        assert loss.item() == pytest.approx(before.item(), rel=1e-6)


def test_tail_bucket_removes_the_over_confidence_of_the_zero_tail_loss() -> None:
    """Fit free student logits to a teacher whose top-5 leaves 30% outside: with the tail
    bucket the student keeps ~30% there; the previous loss drives it towards 0."""
    teacher = torch.full((1, VOCAB), -0.8)   # 45 tokens hold the rest
    teacher[0, :5] = torch.tensor([3.0, 2.5, 2.0, 1.5, 1.0])
    lp = teacher.log_softmax(-1)
    top = lp.topk(5, -1)
    true_tail = -torch.expm1(top.values.logsumexp(-1))
    assert 0.25 < true_tail.item() < 0.35
    tails = {}
    for name in ("forward_kl", "forward_kl_zero_tail"):
        logits = torch.zeros(1, VOCAB, requires_grad=True)
        optimizer = torch.optim.Adam([logits], lr=0.1)
        for _ in range(300):
            loss, parts = objectives.objective_loss(
                logits, top.indices[:, 0], top.indices, top.values, true_tail,
                torch.ones(1, dtype=torch.bool), objective=name, kd_weight=1.0)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
        tails[name] = 1 - logits.detach().softmax(-1)[0, top.indices[0]].sum().item()
    assert tails["forward_kl"] == pytest.approx(true_tail.item(), abs=0.01)
    assert tails["forward_kl_zero_tail"] < 0.1


def test_jsd_limits_are_the_two_kls() -> None:
    t = tiny(k=10, seed=6)
    forward, _ = run(t, "forward_kl")
    reverse, _ = run(t, "reverse_kl")
    assert run(t, "jsd", beta=0.0)[0].item() == forward.item()
    assert run(t, "jsd", beta=1.0)[0].item() == reverse.item()
    eps = 1e-6
    assert run(t, "jsd", beta=eps)[0].item() / eps == pytest.approx(forward.item(), rel=1e-3)
    assert run(t, "jsd", beta=1 - eps)[0].item() / eps == pytest.approx(reverse.item(), rel=1e-3)


def test_unknown_tail_is_estimated_from_the_logprobs() -> None:
    """v1 rows carry no tail: NaN (per row) or None (all) estimates it from the top-k."""
    t = tiny(k=10, seed=7)
    known, _ = run(t, "forward_kl", temperature=2.0)
    for unknown in (None, torch.full((POSITIONS,), float("nan"))):
        t2 = {**t, "tail": unknown}
        assert run(t2, "forward_kl", temperature=2.0)[0].item() == pytest.approx(known.item())


def test_sft_and_kd_weight_zero_are_cross_entropy() -> None:
    t = tiny(k=10, seed=8)
    ce = F.cross_entropy(t["hidden"] @ t["head"], t["targets"]).item()
    assert run(t, "sft", kd_weight=0.5)[0].item() == pytest.approx(ce, rel=1e-10)
    loss, parts = run(t, "forward_kl", kd_weight=0.0)
    assert loss.item() == pytest.approx(ce, rel=1e-10) and parts["kd_positions"] == 0
    mix, parts = run(t, "tvd", kd_weight=0.25)
    assert mix.item() == pytest.approx(0.75 * parts["ce"] + 0.25 * parts["kd"], rel=1e-9)


def test_no_full_vocabulary_copy_is_kept_for_backward() -> None:
    """What autograd saves beyond views of the logits stays far below one [N, V] copy."""
    positions, vocab, k = 256, 8192, 20
    logits = torch.randn(positions, vocab, requires_grad=True)
    ids = torch.randint(0, vocab, (positions, k))
    lps = torch.randn(positions, k).abs().neg().sort(-1, descending=True).values - 3
    targets, mask = ids[:, 0], torch.ones(positions, dtype=torch.bool)

    def saved_bytes(compute) -> int:
        own = []

        def pack(tensor: torch.Tensor) -> torch.Tensor:
            if tensor.untyped_storage().data_ptr() != logits.untyped_storage().data_ptr():
                own.append(tensor.numel() * tensor.element_size())
            return tensor

        with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
            compute()
        return sum(own)

    full_copy = positions * vocab * 4
    for name in DIVERGENCES:
        used = saved_bytes(lambda name=name: objectives.objective_loss(
            logits, targets, ids, lps, None, mask, objective=name, temperature=2.0,
            chunk_size=64))
        assert used < full_copy / 10, (name, used)
    dense_loss = saved_bytes(lambda: F.cross_entropy(logits, targets)
                             + torch.log_softmax(logits / 2, -1).gather(-1, ids).sum())
    assert dense_loss > full_copy   # the measurement does see full-size copies


def test_check_coverage_refuses_kd_that_would_train_nothing() -> None:
    no_labels: list[list[list[int]]] = [[], [], []]
    with pytest.raises(StillroomError, match="no soft labels") as error:
        objectives.check_coverage(no_labels, "forward_kl", kd_weight=1.0)
    assert error.value.where == "--kd-weight"
    assert objectives.check_coverage(no_labels, "forward_kl", kd_weight=0.0).labelled == 0
    assert objectives.check_coverage(no_labels, "sft", kd_weight=0.5).labelled == 0
    t = tiny(k=10)
    loss, parts = run({**t, "mask": torch.zeros(POSITIONS, dtype=torch.bool)}, "forward_kl")
    assert loss.item() == 0 and parts["kd_positions"] == 0   # the silent no-op it prevents


def test_check_coverage_counts_rows_with_another_k(caplog: pytest.LogCaptureFixture) -> None:
    rows = [[[1] * 20] * 3] * 4 + [[[1] * 5] * 2] + [[[1] * 8]] * 2 + [[]] * 3
    with caplog.at_level(logging.WARNING, logger="stillroom.tasks.objectives"):
        coverage = objectives.check_coverage(rows, "jsd", kd_weight=0.5)
    assert coverage == objectives.Coverage(rows=10, k=20, labelled=4, unlabelled=3,
                                           other_k={5: 1, 8: 2})
    assert "leaves out 3 rows" in caplog.text


def test_bad_objective_names_and_parameters() -> None:
    with pytest.raises(StillroomError, match="unknown objective 'kl'") as error:
        objectives.resolve("kl")
    assert error.value.where == "--objective"
    with pytest.raises(StillroomError, match=r"beta=1\.5"):
        objectives.resolve("jsd", {"beta": 1.5})
    with pytest.raises(StillroomError, match="bad parameters"):
        objectives.resolve("tvd", {"beta": 0.5})
    with pytest.raises(StillroomError, match="temperature"):
        run(tiny(k=10), "tvd", temperature=0.0)
