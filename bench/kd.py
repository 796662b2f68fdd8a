"""What the teacher's soft labels add over SFT on its text: KD arms against SFT, same everything.

One dataset version from the demo teacher (Gemma 3 270M, `stillroom.tasks.models`) on the
demo's prompts (`stillroom.flows.distill.DEMO_PROMPTS`), greedy, top-20 logprobs, curated with
the default filters and dedupe, exactly as `refresh_dataset` does. Then, for each seed, every
arm trains a student through the real `students.train_student` from the same init (the
teacher's evenly spread layers, cut deterministically), on the same rows (the same held-out
split, which depends on the prompts only), for the same number of steps, with held-out
teacher-forced KL / NLL / top-1 agreement recorded every `--eval-every` steps:

  sft            cross-entropy on the teacher's tokens only (sequence-level KD)
  fkl_zero_tail  forward KL over the teacher's renormalised top-k, tail treated as zero
                 (the loss before tail buckets)
  fkl_tail       forward KL over the top-k plus the tail bucket (the default objective)
  rkl            reverse KL over top-k plus tail
  jsd            generalised JSD, beta 0.5, over top-k plus tail

KD arms use `--kd-weight` (default 0.5, the CLI's default: half CE, half divergence). Each
student then runs the demo suite (`DEMO_SUITE`); strict accuracy (score 1) with a 95%
bootstrap interval, and McNemar's exact test (binomial on the discordant items) of each arm
against SFT of the same seed on per-item correctness.

    .venv/bin/python bench/kd.py [--steps 300] [--seeds 0 1] [--layers 4]
        [--arms sft fkl_zero_tail fkl_tail jsd] [--catalog DIR] [--quick]

`--catalog DIR` (or STILLROOM_HOME) reuses a state directory: teacher calls already made are
not made again, and a student already trained with the same dataset, init and config is reused
(its recorded held-out history is read back). Without either, a fresh temporary directory.
`--quick` is a smoke run on the tests' tiny Llama (transformers backend, a few steps).

Expected run time on the project's 2-core CPU machine at the defaults (4 arms x 2 seeds x the
demo's 200 steps, 12 layers, batch 8): measured 2026-11-23 with `--catalog` reusing the
demo's dataset, 76 min wall, but with a full test suite running beside it and 13.5 min paused;
a student took 396-514 s to train (held-out evaluation every 20 steps included) and about 30 s
to benchmark. On a quiet machine a student trains in about 4.5 min, so the 8 arms take about
40 min plus generation (1 min) and the teacher's suite run. Lower `--steps`, `--seeds` or
`--arms` to fit a tighter budget.

It prints a table, then one JSON line: `kd_vs_sft_heldout_kl` (best KD arm's final held-out KL
/ SFT's, worst seed), `kd_steps_to_sft_kl` (fraction of the steps the best KD arm needs to
reach SFT's final held-out KL, interpolated between evaluations, worst seed; null if it never
does), `best_student_vs_teacher_accuracy`, `teacher_accuracy`, per-seed lists and every arm's
figures.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ARMS: dict[str, dict[str, Any]] = {
    "sft": {"objective": "sft", "kd_weight": 0.0},
    "fkl_zero_tail": {"objective": "forward_kl_zero_tail"},
    "fkl_tail": {"objective": "forward_kl"},
    "rkl": {"objective": "reverse_kl"},
    "jsd": {"objective": "jsd", "objective_params": {"beta": 0.5}},
}
DEFAULT_ARMS = ["sft", "fkl_zero_tail", "fkl_tail", "jsd"]
QUICK_TOPICS = [f"{a} {b}" for a in ("red", "old", "wet", "big")
                for b in ("tea", "rain", "maps", "foxes", "clocks", "ships")]
QUICK_SUITE = """name: kd-quick
template: "Question: {question}\\nAnswer:"
generation: {max_tokens: 4, stop: ["\\n"]}
tasks:
  - {task: basic_arithmetic, size: 6, seed: 5,
     config: {min_terms: 2, max_terms: 2, min_digits: 1, max_digits: 1}}
metrics: [accuracy]
"""


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int,
                        help="training steps per arm (the demo's; --quick 6)")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    parser.add_argument("--layers", type=int,
                        help="teacher layers the student keeps (the demo's; --quick 2)")
    parser.add_argument("--arms", nargs="+", default=DEFAULT_ARMS, choices=sorted(ARMS))
    parser.add_argument("--catalog", help="state directory to use and reuse (STILLROOM_HOME)")
    parser.add_argument("--kd-weight", type=float, default=0.5, help="KD arms' KD weight")
    parser.add_argument("--lr", type=float, help="learning rate (the demo's)")
    parser.add_argument("--warmup-steps", type=int, help="warm-up steps (the demo's)")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--eval-every", type=int, help="held-out evaluation period (steps/10)")
    parser.add_argument("--heldout-fraction", type=float, default=0.1)
    parser.add_argument("--quick", action="store_true",
                        help="smoke run: the tests' tiny Llama, a few steps, transformers")
    args = parser.parse_args(argv)
    if "sft" not in args.arms or len(args.arms) < 2:
        parser.error("--arms needs sft and at least one KD arm")
    from stillroom.demo import DEMO_LAYERS, DEMO_STEPS, DEMO_TRAINING

    args.steps = args.steps or (6 if args.quick else DEMO_STEPS)
    args.layers = args.layers or (2 if args.quick else DEMO_LAYERS)
    # The demo's students answer the bare question; the quick run's free-form prompts have none.
    args.prompt_format = "teacher" if args.quick else DEMO_TRAINING["prompt_format"]
    args.lr = args.lr or DEMO_TRAINING["lr"]
    args.warmup_steps = DEMO_TRAINING["warmup_steps"] if args.warmup_steps is None \
        else args.warmup_steps
    if args.steps < 1 or args.layers < 1 or not args.seeds:
        parser.error("--steps and --layers must be >= 1 and --seeds not empty")
    args.eval_every = args.eval_every or max(1, args.steps // 10)
    return args


def quick_teacher(catalog: Any, work: Path) -> tuple[str, str, dict[str, Any]]:
    """The tests' tiny Llama as teacher, a grid of prompts, a six-item suite."""
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
    from tiny import build_tiny_model

    from stillroom.tasks.teachers import add_teacher

    work.mkdir(parents=True, exist_ok=True)
    model = build_tiny_model(work / "tiny-teacher")
    add_teacher(catalog, "tiny", str(model), "apache-2.0", gpu_hour_usd=0.1)
    prompts = work / "prompts.jsonl"
    prompts.write_text("".join(json.dumps({"prompt": f"Tell me about {t}."}) + "\n"
                               for t in QUICK_TOPICS))
    suite = work / "suite.yaml"
    suite.write_text(QUICK_SUITE)
    return "tiny", str(suite), {"prompts": str(prompts), "max_tokens": 12,
                                "backend": "transformers"}


def demo_teacher(catalog: Any) -> tuple[str, str, dict[str, Any]]:
    from stillroom.demo import DEMO_HOUR_PRICE_USD, DEMO_SAMPLING, DEMO_TEACHER
    from stillroom.flows.distill import DEMO_PROMPTS, DEMO_SUITE
    from stillroom.tasks.models import materialize_demo_teacher
    from stillroom.tasks.teachers import add_teacher

    add_teacher(catalog, DEMO_TEACHER, str(materialize_demo_teacher()), "gemma",
                gpu_hour_usd=DEMO_HOUR_PRICE_USD)
    return DEMO_TEACHER, DEMO_SUITE, {"prompts": DEMO_PROMPTS,
                                      "max_tokens": DEMO_SAMPLING["max_tokens"],
                                      "backend": "vllm"}


def build_dataset(catalog: Any, teacher: str, source: dict[str, Any], quick: bool) -> str:
    """Generate (only what is missing), curate and cut one version, as `refresh_dataset`
    does, with the flow's own sampling defaults."""
    import inspect

    from stillroom.flows.distill import cut_dataset, filter_and_dedupe, refresh_dataset
    from stillroom.tasks import datasets
    from stillroom.tasks.curation import CurationConfig, load_config
    from stillroom.tasks.engine import SamplingConfig
    from stillroom.tasks.generate import generate
    from stillroom.tasks.prompts import load_prompts
    from stillroom.tasks.teachers import get_teacher

    defaults = {name: p.default for name, p in
                inspect.signature(refresh_dataset.fn).parameters.items()}
    config = (CurationConfig({"empty": {}}, {"exact": {}}) if quick
              else load_config(None)).pinned(catalog)
    datasets.check_teacher_cut(config, teacher)
    sampling = SamplingConfig(max_tokens=source["max_tokens"] or defaults["max_tokens"],
                              stop=("\n",), logprobs_k=20, seed=defaults["seed"],
                              temperature=defaults["temperature"], top_p=defaults["top_p"])
    generate(catalog, get_teacher(catalog, teacher), load_prompts(source["prompts"]), sampling,
             backend=source["backend"], progress=False)
    filter_and_dedupe.fn(config)
    return cut_dataset.fn(config, f"{teacher}-kd-bench", teacher)["dataset_id"]


def strict_items(catalog: Any, eval_id: str) -> dict[str, bool]:
    """Per-item strict correctness (the scorer gave full marks) of one stored eval."""
    rows = catalog.rows("SELECT item_id, score FROM eval_items WHERE eval_id = ?", [eval_id])
    return {r["item_id"]: r["score"] >= 1.0 for r in rows}


def evaluate(catalog: Any, model: str, suite: Any, backend: str) -> dict[str, Any]:
    from stillroom.eval.metrics import bootstrap_interval
    from stillroom.eval.runner import resolve_model, run_suite
    from stillroom.tasks.engine import engine_for

    engine = engine_for(resolve_model(catalog, model).path, backend=backend) \
        if backend != "vllm" else None
    result = run_suite(catalog, model, suite, engine=engine)
    items = strict_items(catalog, result["eval_id"])
    values = [float(v) for v in items.values()]
    low, high = bootstrap_interval(values)
    return {"accuracy": sum(values) / len(values), "ci": [low, high], "items": items,
            "tokens_per_s": result["tokens_per_s"]}


def mcnemar_p(arm: dict[str, bool], baseline: dict[str, bool]) -> float:
    """Exact two-sided McNemar: binomial test on the items exactly one of the two got right."""
    from scipy.stats import binomtest

    wins = sum(arm[i] and not baseline[i] for i in baseline)
    losses = sum(baseline[i] and not arm[i] for i in baseline)
    return 1.0 if wins + losses == 0 else float(binomtest(wins, wins + losses, 0.5).pvalue)


def steps_to_reach(curve: list[dict[str, Any]], target: float) -> float | None:
    """The step (linearly interpolated between evaluations) at which a held-out KL curve first
    reaches `target`; None if it never does."""
    points = [(e["step"], e["kl"]) for e in curve if e["kl"] is not None]
    if points and points[0][1] <= target:
        return float(points[0][0])
    for (s0, k0), (s1, k1) in zip(points, points[1:], strict=False):
        if k1 <= target:   # k0 > target here, so k0 > k1
            return s0 + (k0 - target) / (k0 - k1) * (s1 - s0)
    return None


def train_arm(catalog: Any, dataset_id: str, arm: str, seed: int,
              args: argparse.Namespace) -> dict[str, Any]:
    from stillroom.tasks import students
    from stillroom.tasks.training import TrainConfig

    spec = {"kd_weight": args.kd_weight, **ARMS[arm]}
    config = TrainConfig(max_steps=args.steps, batch_size=args.batch_size, lr=args.lr,
                         seed=seed, heldout_fraction=args.heldout_fraction,
                         eval_every=args.eval_every, prompt_format=args.prompt_format,
                         warmup_steps=args.warmup_steps, **spec)
    started = time.monotonic()
    summary = students.train_student(catalog, dataset_id, f"kd-{arm}-s{seed}", args.layers,
                                     config, progress=False)
    record = students.resolve_student(catalog, summary["student"])
    curve = record["metrics"]["heldout"]
    if not curve:
        raise SystemExit("no held-out rows: raise --heldout-fraction")
    return {"student": summary["student"], "reused": summary["reused"], "curve": curve,
            "final": curve[-1], "train_s": round(time.monotonic() - started, 1)}


def table(results: dict[str, dict[int, dict[str, Any]]], teacher: dict[str, Any]) -> str:
    header = (f"{'arm':<15} {'seed':>4} {'held-out KL':>11} {'NLL':>7} {'top-1':>6}"
              f" {'accuracy':>8} {'95% CI':>14} {'McNemar p':>10} {'train s':>8}")
    lines = [header, "-" * len(header)]
    for arm, seeds in results.items():
        for seed, r in seeds.items():
            kl = "-" if r["final"]["kl"] is None else f"{r['final']['kl']:.4f}"
            p = "-" if arm == "sft" else f"{r['mcnemar_p']:.3f}"
            lines.append(
                f"{arm:<15} {seed:>4} {kl:>11} {r['final']['nll']:>7.3f}"
                f" {r['final']['top1_agreement']:>6.3f} {r['accuracy']:>8.3f}"
                f" {interval(r['ci']):>14} {p:>10} {r['train_s']:>8.1f}")
    lines.append(f"{'teacher':<15} {'':>4} {'':>11} {'':>7} {'':>6} {teacher['accuracy']:>8.3f}"
                 f" {interval(teacher['ci']):>14}")
    return "\n".join(lines)


def interval(bounds: list[float]) -> str:
    return f"[{bounds[0]:.2f}, {bounds[1]:.2f}]"


def summarise(results: dict[str, dict[int, dict[str, Any]]], teacher: dict[str, Any],
              args: argparse.Namespace) -> dict[str, Any]:
    """The JSON line: best KD arm vs SFT on held-out KL and steps, best student vs teacher."""
    seeds = args.seeds
    kd_arms = [a for a in results if a != "sft"]

    def mean_kl(arm: str) -> float:
        finals = [results[arm][s]["final"]["kl"] for s in seeds]
        return sum(finals) / len(finals) if None not in finals else float("inf")

    best_kd = min(kd_arms, key=mean_kl)
    ratios, fractions = [], []
    for s in seeds:
        sft_kl = results["sft"][s]["final"]["kl"]
        best = results[best_kd][s]
        ratios.append(round(best["final"]["kl"] / sft_kl, 4) if sft_kl else None)
        reached = steps_to_reach(best["curve"], sft_kl) if sft_kl is not None else None
        fractions.append(None if reached is None else round(reached / args.steps, 4))
    accuracy = {a: sum(results[a][s]["accuracy"] for s in seeds) / len(seeds) for a in results}
    best_student = max(accuracy, key=accuracy.__getitem__)
    return {
        "kd_vs_sft_heldout_kl": None if None in ratios else max(ratios),
        "kd_vs_sft_heldout_kl_per_seed": ratios,
        "kd_steps_to_sft_kl": None if None in fractions else max(fractions),
        "kd_steps_to_sft_kl_per_seed": fractions,
        "best_kd_arm": best_kd,
        "best_student_vs_teacher_accuracy": round(accuracy[best_student] / teacher["accuracy"], 4)
        if teacher["accuracy"] else None,
        "best_student_arm": best_student, "teacher_accuracy": round(teacher["accuracy"], 4),
        "teacher_ci": [round(x, 4) for x in teacher["ci"]],
        "seeds": seeds, "steps": args.steps, "layers": args.layers, "kd_weight": args.kd_weight,
        "arms": {a: {str(s): {"heldout_kl": r["final"]["kl"], "heldout_nll": r["final"]["nll"],
                              "heldout_top1": r["final"]["top1_agreement"],
                              "accuracy": round(r["accuracy"], 4),
                              "ci": [round(x, 4) for x in r["ci"]],
                              "mcnemar_p_vs_sft": r.get("mcnemar_p"),
                              "student": r["student"], "reused": r["reused"],
                              "train_s": r["train_s"]}
                          for s, r in by_seed.items()}
                 for a, by_seed in results.items()},
    }


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    home = Path(args.catalog or os.environ.get("STILLROOM_HOME")
                or tempfile.mkdtemp(prefix="stillroom-kd-bench-")).resolve()
    os.environ["STILLROOM_HOME"] = str(home)
    from stillroom import settings

    settings.apply_engine_env()
    settings.apply_prefect_env()
    logging.basicConfig(level=logging.WARNING,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("stillroom").setLevel(logging.INFO)
    from stillroom.catalog import Catalog
    from stillroom.eval.suites import load_suite
    from stillroom.tasks.engine import close_engine

    started = time.monotonic()
    catalog = Catalog().ensure()
    teacher, suite_ref, source = (quick_teacher(catalog, home / "quick") if args.quick
                                  else demo_teacher(catalog))
    dataset_id = build_dataset(catalog, teacher, source, args.quick)
    suite = load_suite(suite_ref)
    teacher_result = evaluate(catalog, teacher, suite, source["backend"])
    results: dict[str, dict[int, dict[str, Any]]] = {arm: {} for arm in args.arms}
    for seed in args.seeds:
        for arm in ["sft", *[a for a in args.arms if a != "sft"]]:
            trained = train_arm(catalog, dataset_id, arm, seed, args)
            scored = evaluate(catalog, trained["student"], suite, source["backend"])
            results[arm][seed] = {**trained, **scored}
        for arm in args.arms:
            if arm != "sft":
                results[arm][seed]["mcnemar_p"] = round(
                    mcnemar_p(results[arm][seed]["items"], results["sft"][seed]["items"]), 4)
    close_engine()
    print(table(results, teacher_result))
    line = summarise(results, teacher_result, args)
    line.update(dataset_id=dataset_id, rows=catalog.scalar(
        "SELECT count(*) FROM dataset_rows WHERE dataset_id = ?", [dataset_id]),
        quick=args.quick, seconds=round(time.monotonic() - started, 1))
    print(json.dumps(line))


if __name__ == "__main__":
    main()
