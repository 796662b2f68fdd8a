"""Nightly refresh cost: a full refresh, then one with 5% new prompts, each in a fresh process.

Both nights are the real `refresh_dataset` Prefect flow (generate with top-k soft labels,
every default filter, exact + near + semantic dedupe, cut a version, diversity report)
against one catalog, and each runs in a fresh Python process, as a deployment's worker
starts one per flow run: each night pays interpreter start, imports, Prefect's flow-run
set-up, the vLLM engine start and the MiniLM load. What is timed is that child process's
wall time, from spawn to exit. A Prefect server runs for the whole bench (as `stillroom
serve` keeps one running) and its start is not timed. The teacher is the demo's Gemma 3
270M (converted once into ./.stillroom/models), sampled at temperature 1 so responses
are varied text; `--teacher tiny` uses the tests' tiny Llama instead.

    .venv/bin/python bench/refresh.py [--prompts 4000] [--new-share 0.05] [--teacher tiny]

The last line is JSON with `incremental_cost_ratio` (second night's wall time / first's)
and `"night_process": "fresh"`.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ADJECTIVES = ["ancient", "modern", "tiny", "vast", "quiet", "urban", "coastal", "frozen",
              "digital", "medieval", "tropical", "industrial", "rural", "orbital", "hidden",
              "famous", "common", "rare", "electric", "organic", "northern", "desert",
              "floating", "mechanical", "royal", "golden", "silent", "crowded", "sunken",
              "volcanic"]
NOUNS = ["bridges", "forests", "markets", "engines", "libraries", "rivers", "castles",
         "gardens", "railways", "harbours", "bakeries", "observatories", "mines", "islands",
         "clocks", "ships", "glaciers", "museums", "farms", "cities", "volcanoes", "deserts",
         "telescopes", "lighthouses", "monasteries", "factories", "canals", "caves",
         "orchards", "windmills", "theatres", "schools", "hospitals", "stadiums", "temples",
         "airports", "reefs", "swamps", "valleys", "bazaars"]
TEMPLATES = ["Tell me about {topic}.", "Write two sentences about {topic}.",
             "As {persona}, describe {topic}.", "Why do people care about {topic}?"]
PERSONAS = ["a historian", "an engineer"]


def prompt_spec(path: Path, topics: list[str]) -> str:
    import yaml

    path.write_text(yaml.safe_dump({"grid": {"templates": TEMPLATES, "topics": topics,
                                             "personas": PERSONAS}}))
    return str(path)


def prompts_per_topic() -> int:
    return sum(len(PERSONAS) if "{persona}" in t else 1 for t in TEMPLATES)


def stage_seconds(catalog, first_run_id: str) -> dict[str, float]:
    """Wall seconds of each stage's recorded run, from the night's generate run onwards."""
    rows = catalog.rows(
        "SELECT kind, epoch(finished_at - started_at) AS s FROM runs WHERE started_at >="
        " (SELECT started_at FROM runs WHERE run_id = ?) ORDER BY started_at", [first_run_id])
    return {r["kind"]: round(r["s"], 1) for r in rows}


def run_night(spec: str, name: str, max_tokens: int, out: Path) -> None:
    """The child process: one nightly refresh, its result written to `out` as JSON."""
    from stillroom import settings

    settings.apply_engine_env()
    settings.apply_prefect_env()
    from stillroom.catalog import Catalog
    from stillroom.flows.distill import refresh_dataset

    result = refresh_dataset(teacher="teacher", prompts=spec, max_tokens=max_tokens,
                             temperature=1.0, dataset_name=name)
    result["stages_s"] = stage_seconds(Catalog(), result["generate"]["run_id"])
    out.write_text(json.dumps(result, default=str))


def night(spec: str, name: str, max_tokens: int, root: Path, env: dict[str, str]
          ) -> tuple[float, dict]:
    """Spawn a fresh process for one night; its wall time, spawn to exit, and its result."""
    out = root / f"{name}.json"
    command = [sys.executable, __file__, "--night", spec, name, str(out),
               "--max-tokens", str(max_tokens)]
    started = time.perf_counter()
    subprocess.run(command, env=env, check=True)
    return time.perf_counter() - started, json.loads(out.read_text())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--prompts", type=int, default=4000)
    parser.add_argument("--new-share", type=float, default=0.05)
    parser.add_argument("--max-tokens", type=int, default=48)
    parser.add_argument("--teacher", choices=["gemma", "tiny"], default="gemma")
    parser.add_argument("--night", nargs=3, metavar=("SPEC", "NAME", "OUT"),
                        help=argparse.SUPPRESS)  # the child process's entry
    args = parser.parse_args()
    if args.night:
        spec, name, out = args.night
        run_night(spec, name, args.max_tokens, Path(out))
        return
    models = Path(".stillroom/models").resolve()

    root = Path(tempfile.mkdtemp(prefix="stillroom-bench-refresh-"))
    os.environ["STILLROOM_HOME"] = str(root / "home")
    os.environ["PREFECT_HOME"] = str(root / "prefect")
    os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "2")
    from stillroom import settings

    settings.apply_engine_env()
    settings.apply_prefect_env()
    from prefect.settings import get_current_settings
    from prefect.testing.utilities import prefect_test_harness

    from stillroom.catalog import Catalog
    from stillroom.tasks import teachers

    if args.teacher == "gemma":
        from stillroom.tasks.models import DEMO_TEACHER_DIR, materialize_demo_teacher

        model = materialize_demo_teacher(models / DEMO_TEACHER_DIR)
    else:
        sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
        from tiny import build_tiny_model

        model = build_tiny_model(root / "tiny")
    catalog = Catalog().ensure()
    teachers.add_teacher(catalog, "teacher", str(model), "apache-2.0", gpu_hour_usd=1.0)

    all_topics = [f"{a} {n}" for a, n in itertools.product(ADJECTIVES, NOUNS)]
    base = max(1, args.prompts // prompts_per_topic())
    extra = max(1, round(base * args.new_share))
    if base + extra > len(all_topics):
        raise SystemExit(f"at most {len(all_topics) * prompts_per_topic()} prompts")
    first_spec = prompt_spec(root / "night1.yaml", all_topics[:base])
    second_spec = prompt_spec(root / "night2.yaml", all_topics[:base + extra])

    with prefect_test_harness(server_startup_timeout=90):  # one server for both nights
        env = {**os.environ, "PREFECT_API_URL": str(get_current_settings().api.url)}
        full_s, full = night(first_spec, "night-1", args.max_tokens, root, env)
        incremental_s, incremental = night(second_spec, "night-2", args.max_tokens, root, env)
    for label, seconds, result in (("full", full_s, full), ("incremental", incremental_s,
                                                             incremental)):
        gen, dedupe = result["generate"], result["filter"]["dedupe"]
        print(f"{label:<12} {seconds:7.1f} s  sent {gen['requests_sent']:>5}  cached "
              f"{gen['cache_hits']:>5}  dedupe judged "
              + ", ".join(f"{k} {v['judged']}" for k, v in dedupe.items())
              + f"  -> {result['dataset']['rows']} rows")
    print(json.dumps({
        "incremental_cost_ratio": round(incremental_s / full_s, 4),
        "night_process": "fresh",
        "full_s": round(full_s, 1), "incremental_s": round(incremental_s, 1),
        "prompts": {"full": full["generate"]["requests_sent"],
                    "new": incremental["generate"]["requests_sent"]},
        "rows": {"full": full["dataset"]["rows"], "incremental": incremental["dataset"]["rows"]},
        "stage_ratio": {kind: round(incremental["stages_s"][kind] / seconds, 3)
                        for kind, seconds in full["stages_s"].items() if seconds},
        "stages_s": {"full": full["stages_s"], "incremental": incremental["stages_s"]},
        "diversity_full": {k: full["diversity"][k] for k in ("prompts", "responses",
                                                             "embedding")}}))


if __name__ == "__main__":
    main()
