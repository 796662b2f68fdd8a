"""`stillroom demo`: the whole loop on Gemma 3 270M from PyPI, then a teacher-vs-student table."""

from __future__ import annotations

import logging
import time
from typing import Any

from stillroom import settings
from stillroom.catalog import Catalog
from stillroom.tasks.models import materialize_demo_teacher
from stillroom.tasks.teachers import add_teacher

log = logging.getLogger(__name__)

DEMO_TEACHER = "gemma-3-270m"
# An illustrative hourly price for the machine both models run on (a small CPU VM);
# the dashboard's $/1M tokens follows from it and each model's measured speed.
DEMO_HOUR_PRICE_USD = 0.10


# The demo's student, chosen by measuring on this 2-core machine (see README, "The demo"):
# two thirds of the teacher's blocks, trained on each question alone (the teacher needs
# three examples in its prompt; the student learns to answer without them).
DEMO_LAYERS = 12
DEMO_STEPS = 200
DEMO_TRAINING = {"prompt_format": "zero_shot", "lr": 1e-3, "warmup_steps": 20,
                 "batch_size": 8, "objective": "forward_kl", "kd_weight": 0.5,
                 "eval_every": 50}
DEMO_SAMPLING = {"max_tokens": 8, "stop": ["\n"]}


def comparison_table(benchmarks: list[dict[str, Any]]) -> str:
    header = (f"{'model':<28} {'kind':<8} {'prompt':<9} {'accuracy':>9} {'95% CI':>15}"
              f" {'agree':>6} {'tok/s':>8} {'$/1M tok':>9}")
    lines = [header, "-" * len(header)]
    for b in benchmarks:
        agree = f"{b['agreement']:.2f}" if b.get("agreement") is not None else "-"
        cost = f"{b['usd_per_1m_tokens']:.3f}" if b.get("usd_per_1m_tokens") is not None else "-"
        interval = f"[{b['ci_low']:.2f}, {b['ci_high']:.2f}]"
        prompt = b.get("prompt_format", "teacher").replace("teacher", "3-shot")
        lines.append(f"{b['model']:<28} {b['kind']:<8} {prompt:<9} {b['accuracy']:>9.3f}"
                     f" {interval:>15} {agree:>6}"
                     f" {b['tokens_per_s']:>8.1f} {cost:>9}")
    return "\n".join(lines)


def run_demo(student_layers: int = DEMO_LAYERS, steps: int = DEMO_STEPS) -> dict[str, Any]:
    from stillroom.flows.distill import distill

    started = time.monotonic()
    log.info("preparing the demo teacher (Gemma 3 270M, Gemma Terms of Use)")
    model_dir = materialize_demo_teacher()
    catalog = Catalog().ensure()
    add_teacher(catalog, DEMO_TEACHER, str(model_dir), "gemma", gpu_hour_usd=DEMO_HOUR_PRICE_USD)
    result = distill(teacher=DEMO_TEACHER, layers=student_layers, max_steps=steps,
                     **DEMO_TRAINING, **DEMO_SAMPLING)
    print()
    print(comparison_table(result["benchmarks"]))
    print()
    print(f"Catalog: {settings.catalog_path()}")
    print("Browse it: stillroom dashboard   (then open http://localhost:8501)")
    print(f"Student provenance: stillroom provenance {DEMO_TEACHER}-student")
    by_model = {b["model"]: b for b in result["benchmarks"]}
    return {"dataset_id": result["dataset"]["dataset_id"], "rows": result["dataset"]["rows"],
            "student": result["student"]["student"],
            "accuracy": {m: b["accuracy"] for m, b in by_model.items()},
            "seconds": round(time.monotonic() - started, 1)}
