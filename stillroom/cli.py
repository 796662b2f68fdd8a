"""The `stillroom` command. Every command that does work ends with one JSON line summarising it."""

from __future__ import annotations

import argparse
import json
import logging
import os
import re
import signal
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, NoReturn

from stillroom import inputs, settings
from stillroom.catalog import Catalog
from stillroom.demo import DEMO_LAYERS, DEMO_STEPS
from stillroom.errors import StillroomError
from stillroom.runs import reconcile
from stillroom.tasks.prompts import PROMPT_FORMATS


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
        from stillroom.tasks.teachers import get_teacher

        if args.teacher:  # an unknown teacher fails before any filter runs
            get_teacher(catalog, args.teacher)
        config = load_config(args.config).pinned(catalog)
        datasets.check_teacher_cut(config, args.teacher)
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
                         lr=args.lr, kd_weight=args.kd_weight, temperature=args.temperature,
                         seed=args.seed, objective=args.objective,
                         objective_params=dict(args.objective_param),
                         prompt_format=args.prompt_format, warmup_steps=args.warmup_steps,
                         **{key: getattr(args, key) for key in ("heldout_fraction", "eval_every")
                            if getattr(args, key) is not None})  # else TrainConfig's defaults
    every = {"checkpoint_every": args.checkpoint_every} if args.checkpoint_every else {}
    return train_student(Catalog(), args.dataset, args.name, args.layers, config, **every,
                         layer_choice_method=args.layer_choice, init_model=args.init,
                         init_revision=args.init_revision)


def _check_train(args: argparse.Namespace) -> None:
    """A student is cut (--layers, --layer-choice) or brought (--init), not both."""
    from stillroom.tasks.layer_choice import check_student_shape

    check_student_shape(args.layers, args.layer_choice, args.init, args.init_revision)


def cmd_student(args: argparse.Namespace) -> None:
    from stillroom.tasks import students

    catalog = Catalog()
    if args.action == "list":
        for row in students.list_students(catalog):
            print(f"{row['ref']:<32} {row['teacher'] or '-':<20} {row['dataset_id'] or '-':<16}"
                  f" {(row['weights_digest'] or '-')[:19]:<19} {row['created_at']:%Y-%m-%d %H:%M}")
        return
    print(json.dumps(students.resolve_student(catalog, args.ref), indent=2, default=str))


def cmd_eval(args: argparse.Namespace) -> dict[str, Any]:
    from stillroom.eval.runner import run_suite
    from stillroom.eval.suites import load_suite

    return run_suite(Catalog(), args.model, load_suite(args.suite),
                     prompt_format=args.prompt_format)


def cmd_provenance(args: argparse.Namespace) -> None:
    from stillroom.tasks.students import provenance

    print(json.dumps(provenance(Catalog(), args.student), indent=2, default=str))


def cmd_serve(args: argparse.Namespace) -> None:
    from stillroom.serve import serve

    serve(Path(args.project), args.port)


def cmd_dashboard(args: argparse.Namespace) -> None:
    from stillroom.serve import dashboard

    app = Path(__file__).parent / "dashboard" / "app.py"
    if not settings.catalog_path().exists():
        raise StillroomError("no catalog yet; run `stillroom demo` first",
                             where=str(settings.catalog_path()))
    dashboard(app, args.port, args.address)


def cmd_demo(args: argparse.Namespace) -> dict[str, Any]:
    from stillroom.demo import run_demo

    return run_demo(student_layers=args.layers, steps=args.steps)


def fail(where: str, what: str) -> NoReturn:
    """The one line every bad input ends with, then exit code 2."""
    print(" ".join(f"stillroom: error: {where}: {what}".splitlines()), file=sys.stderr,
          flush=True)
    sys.exit(2)


class Parser(argparse.ArgumentParser):
    """argparse whose errors are one `stillroom: error: WHERE: WHAT` line instead of a usage
    block, and which runs each command's cross-argument `check` before anything is loaded."""

    def error(self, message: str) -> NoReturn:
        flag = re.fullmatch(r"argument ([^:]+): (.*)", message, flags=re.DOTALL)
        where, what = flag.groups() if flag else (self.prog, message)
        fail(where, f"{what} (see `{self.prog} --help`)")

    def parse_args(self, args: Any = None, namespace: Any = None) -> argparse.Namespace:
        parsed = super().parse_args(args, namespace)
        try:
            getattr(parsed, "check", lambda _: None)(parsed)
        except StillroomError as exc:
            fail(exc.where or parsed.command, exc.message)
        return parsed


def _typed(parse: Callable[[str], Any], check: Callable[..., Any],
           **bounds: Any) -> Callable[[str], Any]:
    """An argparse `type`: parse the text, then check the value with a `stillroom.inputs`
    function (the same checks the flows and YAML loaders use)."""
    kind = "an integer" if parse is int else "a number"

    def convert(text: str) -> Any:
        try:
            value = parse(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not {kind}") from None
        try:
            return check(value, "", **bounds)
        except StillroomError as exc:
            raise argparse.ArgumentTypeError(exc.message) from None

    return convert


COUNT = _typed(int, inputs.whole_number, minimum=1)
SEED = _typed(int, inputs.whole_number, minimum=0)
PORT = _typed(int, inputs.whole_number, minimum=1, maximum=65535)
PRICE = _typed(float, inputs.real_number, minimum=0)
POSITIVE = _typed(float, inputs.real_number, positive=True)
FRACTION = _typed(float, inputs.real_number, minimum=0, maximum=1)
HELDOUT = _typed(float, inputs.fraction_below_one)
NAME = _typed(str, inputs.name)
REF = _typed(str, inputs.reference)
URL = _typed(str, inputs.endpoint_url)
KEY_NUMBER = _typed(str, inputs.key_number)
ENV = _typed(str, inputs.env_name)
TEXT = _typed(str, inputs.text)
WORD = _typed(str, inputs.word)


def _no_file_above(path: Path, text: str) -> Path:
    if any(parent.exists() and not parent.is_dir() for parent in path.parents):
        raise argparse.ArgumentTypeError(f"{text!r}: a parent is a file, not a directory")
    return path


def _output_file(text: str) -> Path:
    """A file to write: not a directory, and not under something that is a file."""
    path = Path(text)
    if not text:
        raise argparse.ArgumentTypeError("give a file path")
    if path.is_dir():
        raise argparse.ArgumentTypeError(f"{text!r} is a directory; give a file path")
    return _no_file_above(path, text)


def _output_dir(text: str) -> Path:
    """A directory to write into: absent (it is created) or a directory."""
    path = Path(text)
    if not text:
        raise argparse.ArgumentTypeError("give a directory path")
    if path.exists() and not path.is_dir():
        raise argparse.ArgumentTypeError(f"{text!r} exists and is not a directory")
    return _no_file_above(path, text)


def _check_generate(args: argparse.Namespace) -> None:
    """Backend options that only make sense together; checked before prompts are stored."""
    if args.backend == "openai" and not args.endpoint:
        raise StillroomError("--backend openai needs at least one --endpoint URL",
                             where="--endpoint")
    if args.endpoint and args.backend != "openai":
        raise StillroomError(f"only --backend openai uses endpoints, not {args.backend}",
                             where="--endpoint")
    if args.api_key_env:
        if args.backend not in ("openai", "vllm-server"):
            raise StillroomError(f"--backend {args.backend} sends no HTTP requests",
                                 where="--api-key-env")
        if not os.environ.get(args.api_key_env):
            raise StillroomError(f"environment variable {args.api_key_env} is not set",
                                 where="--api-key-env")


def build_parser() -> argparse.ArgumentParser:
    from stillroom.tasks.engine import LOGPROBS_K_MAX

    parser = Parser(
        prog="stillroom", description="Distil licensed teachers into small students, with "
        f"provenance on every row. State lives in ${settings.HOME_ENV} (default ./.stillroom).")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    teacher = sub.add_parser("teacher", help="register, list, show and grant teachers")
    tsub = teacher.add_subparsers(dest="action", required=True, metavar="ACTION")
    add = tsub.add_parser("add", help="register a teacher (a new one emits "
                                      "stillroom.teacher.registered) or update its price")
    add.add_argument("name", type=NAME)
    add.add_argument("--model", required=True, help="local checkpoint path or hub id (org/name)")
    add.add_argument("--license", required=True, help="license id from the policy table")
    add.add_argument("--revision", type=WORD, help="hub revision (commit, tag or branch) to pin")
    price = add.add_mutually_exclusive_group()
    price.add_argument("--gpu-hour-price", type=PRICE, help="USD per GPU-hour of serving (>= 0)")
    price.add_argument("--price-per-1m-tokens", type=PRICE,
                       help="USD per 1M output tokens (>= 0)")
    add.add_argument("--change-license", action="store_true",
                     help="allow changing a registered teacher's license (recorded with the "
                          "previous one)")
    tsub.add_parser("list", help="registered teachers")
    show = tsub.add_parser("show", help="a teacher, its license terms and grants")
    show.add_argument("name", type=REF)
    grant = tsub.add_parser("grant", help="record a permission that lifts the license gate")
    grant.add_argument("name", type=REF)
    grant.add_argument("--reference", required=True, help="where the permission is written down")
    teacher.set_defaults(func=cmd_teacher)

    gen = sub.add_parser("generate", help="query a teacher for every prompt not answered yet")
    gen.add_argument("--teacher", required=True, type=REF)
    gen.add_argument("--prompts", required=True,
                     help="prompt file (.yaml grid/reasoning_gym, .jsonl seeds) or "
                          "reasoning_gym:TASK[:SIZE[:SEED]]")
    gen.add_argument("--on-bad-seed", choices=["refuse", "report"], default="refuse",
                     help="a seed row that cannot be used stops the run (refuse), or is set "
                          "aside in the catalog's rejected_seeds with its reason (report)")
    gen.add_argument("--max-tokens", type=COUNT, default=64, help="(>= 1)")
    gen.add_argument("--n", type=COUNT, default=1, help="samples per prompt (>= 1)")
    gen.add_argument("--temperature", type=_typed(float, inputs.real_number, minimum=0),
                     default=0.0, help="(>= 0; 0 is greedy)")
    gen.add_argument("--top-p", type=_typed(float, inputs.real_number, positive=True, maximum=1),
                     default=1.0, help="(in (0, 1])")
    gen.add_argument("--seed", type=SEED, default=0, help="(>= 0)")
    gen.add_argument("--stop", action="append", default=[], type=TEXT,
                     help="stop sequence (repeatable)")
    gen.add_argument("--logprobs-k", type=_typed(int, inputs.whole_number, minimum=0,
                                                 maximum=LOGPROBS_K_MAX),
                     default=20, help=f"top-k logprobs kept per token (0-{LOGPROBS_K_MAX})")
    gen.add_argument("--batch-size", type=COUNT, default=64,
                     help="requests per committed batch (>= 1)")
    gen.add_argument("--backend", choices=["vllm", "transformers", "vllm-server", "openai"],
                     default="vllm",
                     help="offline vLLM engine; transformers where vLLM is missing; a local "
                          "vLLM OpenAI server started here; or OpenAI-compatible --endpoint(s)")
    gen.add_argument("--endpoint", action="append", default=[], type=URL,
                     help="http(s)://host[:port][/path] of an OpenAI-compatible server, with "
                          "--backend openai (repeatable: requests are spread over all)")
    gen.add_argument("--api-key-env", type=ENV,
                     help="environment variable holding the endpoint's key")
    gen.add_argument("--noncommercial", action="store_true",
                     help="declare non-commercial use (needed for research-only licenses)")
    gen.set_defaults(func=cmd_generate, check=_check_generate)

    exp = sub.add_parser("expand", help="new prompts from a teacher (Self-Instruct, "
                                        "Evol-Instruct), quality-gated, written as JSONL")
    exp.add_argument("--teacher", required=True, type=REF)
    exp.add_argument("--seeds", required=True, help="seed prompts (any --prompts source)")
    exp.add_argument("--method", choices=["evol", "self-instruct"], default="evol")
    exp.add_argument("--operations", type=lambda v: v.split(","),
                     default=["deepen", "constrain", "concretise", "widen"],
                     help="evol operations, comma-separated")
    exp.add_argument("--count", type=COUNT, default=20,
                     help="self-instruct: new instructions (>= 1)")
    exp.add_argument("--seed", type=SEED, default=0, help="self-instruct: example sampling")
    exp.add_argument("--on-bad-seed", choices=["refuse", "report"], default="refuse")
    exp.add_argument("--out", required=True, type=_output_file,
                     help="JSONL file of accepted prompts")
    exp.set_defaults(func=cmd_expand)

    ds = sub.add_parser("dataset", help="cut, list and export dataset versions")
    dsub = ds.add_subparsers(dest="action", required=True, metavar="ACTION")
    cut = dsub.add_parser("cut", help="filter, dedupe and snapshot the kept rows")
    cut.add_argument("--name", type=NAME, help="a label for the version")
    cut.add_argument("--teacher", type=REF, help="only this teacher's rows")
    cut.add_argument("--config", help="curation YAML: filters and dedupe stages "
                                      "(default: every built-in filter, exact+near+semantic)")
    dsub.add_parser("list", help="dataset versions, newest first")
    diff = dsub.add_parser("diff", help="rows, sources, config and teachers changed from A to B")
    diff.add_argument("a", type=REF, help="dataset id, id prefix, name, or 'latest'")
    diff.add_argument("b", type=REF)
    report = dsub.add_parser("report", help="a version's diversity report")
    report.add_argument("version", type=REF, help="dataset id, id prefix, name, or 'latest'")
    export = dsub.add_parser("export", help="write a version to disk")
    export.add_argument("version", type=REF, help="dataset id, id prefix, name, or 'latest'")
    export.add_argument("--format", choices=["jsonl", "parquet", "hf"], default="jsonl")
    export.add_argument("--out", type=_output_dir, help="output directory")
    ds.set_defaults(func=cmd_dataset)

    train = sub.add_parser("train", help="train a student on a dataset version")
    train.add_argument("--dataset", required=True, type=REF,
                       help="dataset id, prefix, name or 'latest'")
    train.add_argument("--name", required=True, type=NAME,
                       help="the student's name; each training publishes the next NAME@N")
    train.add_argument("--layers", type=COUNT,
                       help="teacher layers the student keeps (>= 1; default 4)")
    train.add_argument("--layer-choice", choices=["even", "importance"],
                       help="which teacher layers: spread evenly (default), or the most"
                            " influential on a sample of the dataset (first and last kept)")
    train.add_argument("--init", metavar="MODEL",
                       help="bring your own student instead of a cut: a local checkpoint or"
                            " hub id sharing the teacher's tokenizer")
    train.add_argument("--init-revision", type=WORD, metavar="REV",
                       help="hub revision of --init to pin")
    train.add_argument("--epochs", type=COUNT, default=3, help="(>= 1)")
    train.add_argument("--max-steps", type=COUNT, help="stop after this many steps (>= 1)")
    train.add_argument("--batch-size", type=COUNT, default=8, help="(>= 1)")
    train.add_argument("--lr", type=POSITIVE, default=3e-4, help="learning rate (> 0)")
    train.add_argument("--warmup-steps", type=SEED, default=5,
                       help="steps of linear learning-rate warm-up (>= 0, default 5)")
    train.add_argument("--kd-weight", type=FRACTION, default=0.5,
                       help="weight of the KD term (0-1)")
    train.add_argument("--temperature", type=POSITIVE, default=1.0, help="KD temperature (> 0)")
    train.add_argument("--seed", type=SEED, default=0, help="data order and initial RNG state")
    train.add_argument("--objective", type=WORD, default="forward_kl",
                       help="sft, forward_kl (default: over the teacher's top-k plus a tail"
                            " bucket), reverse_kl, jsd, tvd or forward_kl_zero_tail")
    train.add_argument("--objective-param", type=KEY_NUMBER, action="append", default=[],
                       metavar="KEY=VALUE", help="an objective parameter, e.g. beta=0.5 for jsd"
                                                 " (repeatable)")
    train.add_argument("--prompt-format", choices=PROMPT_FORMATS, default="teacher",
                       help="train on the prompts as the teacher saw them (default), or on"
                            " each question alone without the teacher's few-shot examples"
                            " (zero_shot; procedural-task prompts only)")
    train.add_argument("--heldout-fraction", type=HELDOUT, metavar="FRACTION",
                       help="share of the dataset's prompts held out, never trained on, to "
                            "measure the student against the teacher on (in [0, 1), default "
                            "0.1; 0: off)")
    train.add_argument("--eval-every", type=COUNT, metavar="STEPS",
                       help="steps between held-out evaluations (>= 1, default 50; also before "
                            "the first step and at the end)")
    train.add_argument("--checkpoint-every", type=COUNT, metavar="STEPS",
                       help="steps between checkpoints (default 50); a re-run after a crash "
                            "resumes from the last one")
    train.set_defaults(func=cmd_train, check=_check_train)

    student = sub.add_parser("student", help="list and show student versions")
    ssub = student.add_subparsers(dest="action", required=True, metavar="ACTION")
    ssub.add_parser("list", help="every version of every student")
    sshow = ssub.add_parser("show", help="one student version: row, provenance, weights digest")
    sshow.add_argument("ref", type=REF, help="NAME (its latest version) or NAME@N")
    student.set_defaults(func=cmd_student)

    ev = sub.add_parser("eval", help="run a benchmark suite on a teacher or student")
    ev.add_argument("--model", required=True, type=REF, help="teacher or student name")
    ev.add_argument("--suite", default="arithmetic-mini", help="suite YAML or built-in name")
    ev.add_argument("--prompt-format", choices=PROMPT_FORMATS,
                    help="the suite's prompts as written (teacher) or each question alone"
                         " (zero_shot); default: the format the model was trained on")
    ev.set_defaults(func=cmd_eval)

    prov = sub.add_parser("provenance", help="where a student came from, and its obligations")
    prov.add_argument("student", type=REF, help="NAME (its latest version) or NAME@N")
    prov.set_defaults(func=cmd_provenance)

    serve = sub.add_parser("serve", help="run a Prefect server and worker for the deployments")
    serve.add_argument("--project", default=".", help="directory holding prefect.yaml")
    serve.add_argument("--port", type=PORT, default=4200, help="(1-65535)")
    serve.set_defaults(func=cmd_serve)

    dash = sub.add_parser("dashboard", help="open the read-only Streamlit dashboard")
    dash.add_argument("--port", type=PORT, default=8501, help="(1-65535)")
    dash.add_argument("--address", default="127.0.0.1",
                      help="interface to listen on (default: this machine only); the dashboard "
                           "has no authentication, so a wider one exposes the catalog")
    dash.set_defaults(func=cmd_dashboard)

    demo = sub.add_parser("demo", help="the whole loop on Gemma 3 270M, on this machine")
    demo.add_argument("--layers", type=COUNT, default=DEMO_LAYERS,
                      help=f"student layers (>= 1, default {DEMO_LAYERS})")
    demo.add_argument("--steps", type=COUNT, default=DEMO_STEPS,
                      help=f"training steps (>= 1, default {DEMO_STEPS})")
    demo.set_defaults(func=cmd_demo)
    return parser


def configure_logging() -> None:
    settings.apply_engine_env()
    settings.apply_prefect_env()
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    logging.getLogger("stillroom").setLevel(logging.INFO)


class Stopped(BaseException):
    """SIGTERM or SIGHUP, raised like Ctrl-C's KeyboardInterrupt so that every `finally`
    (child processes stopped, runs marked failed, engines closed) runs before the exit."""

    def __init__(self, signum: int) -> None:
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


STOP_SIGNALS = (signal.SIGTERM, signal.SIGHUP)


def _raise_stopped(signum: int, _frame: object) -> None:
    for sig in STOP_SIGNALS:  # a second signal must not cut the cleanup short
        signal.signal(sig, signal.SIG_IGN)
    raise Stopped(signum)


def main(argv: list[str] | None = None) -> int:
    """Run one command; its exit code (2 for bad input, whether argparse or a command found it)."""
    try:
        args = build_parser().parse_args(argv)
    except SystemExit as exc:  # argparse has printed its one line (or --help)
        return exc.code if isinstance(exc.code, int) else 2
    configure_logging()
    started = time.monotonic()
    previous = {sig: signal.signal(sig, _raise_stopped) for sig in STOP_SIGNALS
                if threading.current_thread() is threading.main_thread()}
    try:
        reconcile(Catalog())  # runs left `running` by a killed process become `crashed`
        summary = args.func(args)
    except StillroomError as exc:
        print(f"stillroom: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("stillroom: interrupted", file=sys.stderr)
        return 130
    except Stopped as stopped:
        print(f"stillroom: stopped by {stopped}", file=sys.stderr)
        return 128 + stopped.signum
    finally:
        try:
            if "stillroom.tasks.engine" in sys.modules:  # stop engines and servers it started
                sys.modules["stillroom.tasks.engine"].close_engine()
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)
    if summary is not None:
        emit({"command": args.command, **summary,
              "seconds": summary.get("seconds", round(time.monotonic() - started, 2))})
    return 0


if __name__ == "__main__":
    sys.exit(main())
