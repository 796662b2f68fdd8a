"""The `stillroom` command. Every command that does work ends with one JSON line summarising it."""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from pathlib import Path
from typing import Any

from stillroom import settings
from stillroom.catalog import Catalog
from stillroom.errors import StillroomError
from stillroom.runs import reconcile


def emit(summary: dict[str, Any]) -> None:
    print(json.dumps(summary, default=str), flush=True)


def cmd_teacher(args: argparse.Namespace) -> dict[str, Any] | None:
    from stillroom.tasks import teachers

    catalog = Catalog()
    if args.action == "add":
        done = teachers.register_teacher(catalog, args.name, args.model, args.license,
                                         args.revision, args.gpu_hour_price,
                                         args.price_per_1m_tokens, args.change_license)
        t = done.teacher
        emitted = teachers.emit_registered(t) if done.created else False  # new teachers only
        return {"teacher": t.name, "teacher_id": t.teacher_id, "license": t.license,
                "created": done.created, "changes": done.changes, "event_emitted": emitted}
    if args.action == "list":
        for row in teachers.list_teachers(catalog):
            print(f"{row['name']:<24} {row['license']:<18} {row['model']}"
                  + (f"  [{row['grants']} grant(s)]" if row["grants"] else ""))
        return None
    if args.action == "show":
        print(json.dumps(teachers.describe(catalog, args.name), indent=2, default=str))
        return None
    t = teachers.grant(catalog, args.name, args.reference)
    return {"teacher": t.name, "granted": args.reference}


def cmd_generate(args: argparse.Namespace) -> dict[str, Any]:
    from stillroom.tasks.engine import SamplingConfig
    from stillroom.tasks.generate import generate
    from stillroom.tasks.prompts import load_prompts
    from stillroom.tasks.teachers import get_teacher

    catalog = Catalog()
    teacher = get_teacher(catalog, args.teacher)
    sampling = SamplingConfig(temperature=args.temperature, top_p=args.top_p,
                              max_tokens=args.max_tokens, n=args.n, seed=args.seed,
                              stop=tuple(args.stop), logprobs_k=args.logprobs_k)
    prompts = load_prompts(args.prompts, args.on_bad_seed)
    return generate(catalog, teacher, prompts, sampling, batch_size=args.batch_size,
                    noncommercial=args.noncommercial, backend=args.backend,
                    endpoints=args.endpoint or None, api_key_env=args.api_key_env)


def cmd_expand(args: argparse.Namespace) -> dict[str, Any]:
    from stillroom.tasks import expand
    from stillroom.tasks.prompts import load_prompts
    from stillroom.tasks.teachers import get_teacher

    catalog = Catalog()
    teacher = get_teacher(catalog, args.teacher)
    seeds = load_prompts(args.seeds, args.on_bad_seed)
    if args.method == "evol":
        unknown = set(args.operations) - set(expand.EVOLUTIONS)
        if unknown:
            raise StillroomError(f"unknown operations {sorted(unknown)}; known: "
                                 f"{', '.join(expand.EVOLUTIONS)}", where="--operations")
        requests = expand.evol_requests(seeds, args.operations)
    else:
        requests = expand.self_instruct_requests(seeds, args.count, seed=args.seed)
    accepted = expand.expand(catalog, teacher, requests, pool=[seed.text for seed in seeds])
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    with out.open("w", encoding="utf-8") as f:
        for prompt in accepted:
            f.write(json.dumps({"prompt": prompt.text, **prompt.meta}) + "\n")
    return {"out": str(out), "accepted": len(accepted), "gated_out": len(accepted.rejected)}


def cmd_dataset(args: argparse.Namespace) -> dict[str, Any] | None:
    from stillroom.tasks import datasets

    catalog = Catalog()
    if args.action == "cut":
        from stillroom.flows.distill import cut_dataset, diversity_report, filter_and_dedupe
        from stillroom.tasks.curation import load_config

        config = load_config(args.config).pinned(catalog)
        judged = filter_and_dedupe.fn(config)
        version = cut_dataset.fn(config, args.name, args.teacher)
        return {**version, "filter": judged,
                "diversity": diversity_report.fn(version["dataset_id"])}
    if args.action == "diff":
        changes = datasets.diff(catalog, args.a, args.b)
        print(json.dumps(changes, indent=2, default=str))
        return {"a": changes["a"], "b": changes["b"], "added": changes["added"],
                "removed": changes["removed"], "unchanged": changes["unchanged"]}
    if args.action == "report":
        from stillroom.tasks.diversity import store_report

        report = store_report(catalog, datasets.resolve(catalog, args.version), "cli")
        print(json.dumps(report, indent=2))
        return None
    if args.action == "list":
        for row in datasets.list_versions(catalog):
            print(f"{row['dataset_id']}  {row['n_rows']:>6} rows  {row['name'] or '-':<24}"
                  f" {row['created_at']:%Y-%m-%d %H:%M}")
        return None
    dataset_id = datasets.resolve(catalog, args.version)
    out = Path(args.out) if args.out else datasets.default_export_dir(dataset_id)
    path = datasets.export(catalog, dataset_id, out, args.format)
    return {"dataset_id": dataset_id, "format": args.format, "path": str(path)}


def cmd_train(args: argparse.Namespace) -> dict[str, Any]:
    from stillroom.tasks.students import train_student
    from stillroom.tasks.training import TrainConfig

    config = TrainConfig(epochs=args.epochs, max_steps=args.max_steps, batch_size=args.batch_size,
                         lr=args.lr, kd_weight=args.kd_weight, temperature=args.temperature)
    return train_student(Catalog(), args.dataset, args.name, args.layers, config)


def cmd_eval(args: argparse.Namespace) -> dict[str, Any]:
    from stillroom.eval.runner import run_suite
    from stillroom.eval.suites import load_suite

    return run_suite(Catalog(), args.model, load_suite(args.suite))


def cmd_provenance(args: argparse.Namespace) -> None:
    from stillroom.tasks.students import provenance

    print(json.dumps(provenance(Catalog(), args.student), indent=2, default=str))


def cmd_serve(args: argparse.Namespace) -> None:
    from stillroom.serve import serve

    serve(Path(args.project), args.port)


def cmd_dashboard(args: argparse.Namespace) -> None:
    import subprocess

    app = Path(__file__).parent / "dashboard" / "app.py"
    if not settings.catalog_path().exists():
        raise StillroomError("no catalog yet; run `stillroom demo` first",
                             where=str(settings.catalog_path()))
    subprocess.run([sys.executable, "-m", "streamlit", "run", str(app), "--server.headless=true",
                    f"--server.port={args.port}", "--browser.gatherUsageStats=false",
                    "--client.toolbarMode=viewer"], check=False)


def cmd_demo(args: argparse.Namespace) -> dict[str, Any]:
    from stillroom.demo import run_demo

    return run_demo(student_layers=args.layers, epochs=args.epochs)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="stillroom", description="Distil licensed teachers into small students, with "
        f"provenance on every row. State lives in ${settings.HOME_ENV} (default ./.stillroom).")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    teacher = sub.add_parser("teacher", help="register, list, show and grant teachers")
    tsub = teacher.add_subparsers(dest="action", required=True, metavar="ACTION")
    add = tsub.add_parser("add", help="register a teacher (a new one emits "
                                      "stillroom.teacher.registered) or update its price")
    add.add_argument("name")
    add.add_argument("--model", required=True, help="local checkpoint path or hub id (org/name)")
    add.add_argument("--license", required=True, help="license id from the policy table")
    add.add_argument("--revision", help="hub revision (commit, tag or branch) to pin")
    price = add.add_mutually_exclusive_group()
    price.add_argument("--gpu-hour-price", type=float, help="USD per GPU-hour of serving")
    price.add_argument("--price-per-1m-tokens", type=float, help="USD per 1M output tokens")
    add.add_argument("--change-license", action="store_true",
                     help="allow changing a registered teacher's license (recorded with the "
                          "previous one)")
    tsub.add_parser("list", help="registered teachers")
    show = tsub.add_parser("show", help="a teacher, its license terms and grants")
    show.add_argument("name")
    grant = tsub.add_parser("grant", help="record a permission that lifts the license gate")
    grant.add_argument("name")
    grant.add_argument("--reference", required=True, help="where the permission is written down")
    teacher.set_defaults(func=cmd_teacher)

    gen = sub.add_parser("generate", help="query a teacher for every prompt not answered yet")
    gen.add_argument("--teacher", required=True)
    gen.add_argument("--prompts", required=True,
                     help="prompt file (.yaml grid/reasoning_gym, .jsonl seeds) or "
                          "reasoning_gym:TASK[:SIZE[:SEED]]")
    gen.add_argument("--on-bad-seed", choices=["refuse", "report"], default="refuse",
                     help="a seed row that cannot be used stops the run (refuse), or is set "
                          "aside in the catalog's rejected_seeds with its reason (report)")
    gen.add_argument("--max-tokens", type=int, default=64)
    gen.add_argument("--n", type=int, default=1, help="samples per prompt")
    gen.add_argument("--temperature", type=float, default=0.0)
    gen.add_argument("--top-p", type=float, default=1.0)
    gen.add_argument("--seed", type=int, default=0)
    gen.add_argument("--stop", action="append", default=[], help="stop sequence (repeatable)")
    gen.add_argument("--logprobs-k", type=int, default=20, help="top-k logprobs kept per token")
    gen.add_argument("--batch-size", type=int, default=64, help="requests per committed batch")
    gen.add_argument("--backend", choices=["vllm", "transformers", "vllm-server", "openai"],
                     default="vllm",
                     help="offline vLLM engine; transformers where vLLM is missing; a local "
                          "vLLM OpenAI server started here; or OpenAI-compatible --endpoint(s)")
    gen.add_argument("--endpoint", action="append", default=[],
                     help="base URL of an OpenAI-compatible server (repeatable: requests are "
                          "spread over all)")
    gen.add_argument("--api-key-env", help="environment variable holding the endpoint's key")
    gen.add_argument("--noncommercial", action="store_true",
                     help="declare non-commercial use (needed for research-only licenses)")
    gen.set_defaults(func=cmd_generate)

    exp = sub.add_parser("expand", help="new prompts from a teacher (Self-Instruct, "
                                        "Evol-Instruct), quality-gated, written as JSONL")
    exp.add_argument("--teacher", required=True)
    exp.add_argument("--seeds", required=True, help="seed prompts (any --prompts source)")
    exp.add_argument("--method", choices=["evol", "self-instruct"], default="evol")
    exp.add_argument("--operations", type=lambda v: v.split(","),
                     default=["deepen", "constrain", "concretise", "widen"],
                     help="evol operations, comma-separated")
    exp.add_argument("--count", type=int, default=20, help="self-instruct: new instructions")
    exp.add_argument("--seed", type=int, default=0, help="self-instruct: example sampling")
    exp.add_argument("--on-bad-seed", choices=["refuse", "report"], default="refuse")
    exp.add_argument("--out", required=True, help="JSONL file of accepted prompts")
    exp.set_defaults(func=cmd_expand)

    ds = sub.add_parser("dataset", help="cut, list and export dataset versions")
    dsub = ds.add_subparsers(dest="action", required=True, metavar="ACTION")
    cut = dsub.add_parser("cut", help="filter, dedupe and snapshot the kept rows")
    cut.add_argument("--name", help="a label for the version")
    cut.add_argument("--teacher", help="only this teacher's rows")
    cut.add_argument("--config", help="curation YAML: filters and dedupe stages "
                                      "(default: every built-in filter, exact+near+semantic)")
    dsub.add_parser("list", help="dataset versions, newest first")
    diff = dsub.add_parser("diff", help="rows, sources, config and teachers changed from A to B")
    diff.add_argument("a", help="dataset id, id prefix, name, or 'latest'")
    diff.add_argument("b")
    report = dsub.add_parser("report", help="a version's diversity report")
    report.add_argument("version", help="dataset id, id prefix, name, or 'latest'")
    export = dsub.add_parser("export", help="write a version to disk")
    export.add_argument("version", help="dataset id, id prefix, name, or 'latest'")
    export.add_argument("--format", choices=["jsonl", "parquet", "hf"], default="jsonl")
    export.add_argument("--out", help="output directory")
    ds.set_defaults(func=cmd_dataset)

    train = sub.add_parser("train", help="train a student on a dataset version")
    train.add_argument("--dataset", required=True, help="dataset id, prefix, name or 'latest'")
    train.add_argument("--name", required=True, help="the student's name")
    train.add_argument("--layers", type=int, default=4, help="teacher layers the student keeps")
    train.add_argument("--epochs", type=int, default=3)
    train.add_argument("--max-steps", type=int)
    train.add_argument("--batch-size", type=int, default=8)
    train.add_argument("--lr", type=float, default=3e-4)
    train.add_argument("--kd-weight", type=float, default=0.5, help="weight of the KD term")
    train.add_argument("--temperature", type=float, default=1.0, help="KD temperature")
    train.set_defaults(func=cmd_train)

    ev = sub.add_parser("eval", help="run a benchmark suite on a teacher or student")
    ev.add_argument("--model", required=True, help="teacher or student name")
    ev.add_argument("--suite", default="arithmetic-mini", help="suite YAML or built-in name")
    ev.set_defaults(func=cmd_eval)

    prov = sub.add_parser("provenance", help="where a student came from, and its obligations")
    prov.add_argument("student")
    prov.set_defaults(func=cmd_provenance)

    serve = sub.add_parser("serve", help="run a Prefect server and worker for the deployments")
    serve.add_argument("--project", default=".", help="directory holding prefect.yaml")
    serve.add_argument("--port", type=int, default=4200)
    serve.set_defaults(func=cmd_serve)

    dash = sub.add_parser("dashboard", help="open the read-only Streamlit dashboard")
    dash.add_argument("--port", type=int, default=8501)
    dash.set_defaults(func=cmd_dashboard)

    demo = sub.add_parser("demo", help="the whole loop on Gemma 3 270M, on this machine")
    demo.add_argument("--layers", type=int, default=4)
    demo.add_argument("--epochs", type=int, default=3)
    demo.set_defaults(func=cmd_demo)
    return parser


def configure_logging() -> None:
    settings.apply_engine_env()
    settings.apply_prefect_env()
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    logging.getLogger("stillroom").setLevel(logging.INFO)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    configure_logging()
    started = time.monotonic()
    try:
        reconcile(Catalog())  # runs left `running` by a killed process become `crashed`
        summary = args.func(args)
    except StillroomError as exc:
        print(f"stillroom: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("stillroom: interrupted", file=sys.stderr)
        return 130
    finally:
        if "stillroom.tasks.engine" in sys.modules:  # stop engines and servers this run started
            sys.modules["stillroom.tasks.engine"].close_engine()
    if summary is not None:
        emit({"command": args.command, **summary,
              "seconds": summary.get("seconds", round(time.monotonic() - started, 2))})
    return 0


if __name__ == "__main__":
    sys.exit(main())
