"""Bad input anywhere -> one `stillroom: error: WHERE: WHAT` line, exit 2, nothing written.

Every case runs the real CLI in-process against a catalog holding a registered tiny teacher,
from a directory of malformed prompt files, suites and configs, and checks that no row, file
or engine appeared. A few run as real subprocesses to show no traceback reaches a terminal.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import table_counts

from stillroom.catalog import Catalog
from stillroom.cli import main
from stillroom.errors import StillroomError
from stillroom.tasks import engine, teachers

BINARY = bytes(range(128, 256)) * 4  # not UTF-8 from its first byte
SUITE = "name: s\ntasks: [{task: gcd, size: 2}]\n"
FILES = {
    "binary.jsonl": BINARY,
    "binary.yaml": BINARY,
    "binary-suite.yaml": BINARY,
    "notes.txt": "hello",
    "broken.jsonl": '{"prompt": "ok"}\n{"prompt": \n',
    "no-prompt.jsonl": '{"text": "no prompt key"}\n',
    "good.jsonl": '{"prompt": "Say hi"}\n',
    "task-size.yaml": "reasoning_gym:\n  - {task: gcd, size: abc}\n",
    "task-float.yaml": "reasoning_gym:\n  - {task: gcd, size: 2.5}\n",
    "task-shots.yaml": "reasoning_gym:\n  - {task: gcd, size: 2, shots: -1}\n",
    "task-key.yaml": "reasoning_gym:\n  - {task: gcd, sise: 2}\n",
    "task-template.yaml": "reasoning_gym:\n  - {task: gcd, template: 'Q {question} {x}'}\n",
    "task-config.yaml": "reasoning_gym:\n  - {task: gcd, size: 2, config: [1, 2]}\n",
    "grid-braces.yaml": "grid:\n  templates: ['{topic} and {}']\n  topics: [tea]\n",
    "grid-unclosed.yaml": "grid:\n  templates: ['{topic} and {x']\n  topics: [tea]\n",
    "humaneval.yaml": "humaneval: {size: 0}\n",
    "chatterbot.yaml": "seeds:\n  - chatterbot: science\n",
    "seed-key.yaml": "seeds:\n  - {jsonl: good.jsonl, field: question}\n",
    "suite-shots.yaml": "name: s\nshots: -1\ntasks: [{task: gcd, size: 2}]\n",
    "suite-size.yaml": "name: s\ntasks: [{task: gcd, size: 0}]\n",
    "suite-seed.yaml": "name: s\ntasks: [{task: gcd, size: 2, seed: x}]\n",
    "suite-tokens.yaml": "name: s\ngeneration: {max_tokens: 0}\ntasks: [{task: gcd, size: 2}]\n",
    "suite-stop.yaml": "name: s\ngeneration: {stop: '\\n'}\ntasks: [{task: gcd, size: 2}]\n",
    "suite-metrics.yaml": "name: s\nmetrics: accuracy\ntasks: [{task: gcd, size: 2}]\n",
    "suite-template.yaml": "name: s\ntemplate: '{question} = {answer}'\ntasks: [{task: gcd}]\n",
    "suite-repeat.yaml": "name: s\ntasks: [{task: gcd, size: 2}, {task: gcd, size: 3}]\n",
    "suite.yaml": SUITE,
    "cur-scripts.yaml": "filters:\n  charset: {scripts: latin}\n",
    "cur-phrases.yaml": "filters:\n  empty: {}\n  refusal: {phrases: 'no'}\n",
    "cur-length.yaml": "filters:\n  length:\n    min_chars: 2\n    max_chars: true\n",
    "cur-suites.yaml": "filters:\n  decontaminate: {suites: gsm8k}\n",
    "cur-judge.yaml": "filters:\n  judge: {teacher: nobody}\n",
    "cur-judge-template.yaml": "filters:\n  judge: {teacher: tiny, template: '{question} {x}'}\n",
    "cur-ngram.yaml": "dedupe:\n  near: {ngram: 2.5}\n",
    "cur-seed.yaml": "dedupe:\n  near: {seed: -1}\n",
    "cur-nan.yaml": "dedupe:\n  exact: {}\n  semantic: {threshold: nan}\n",
    "cur-inf.yaml": "dedupe:\n  semantic: {min_content_overlap: .inf}\n",
}

# (argv, what the one error line must say)
CASES = [
    # prompt files and prompt specs
    (["generate", "--teacher", "tiny", "--prompts", "binary.jsonl"], "binary.jsonl: not a UTF-8"),
    (["generate", "--teacher", "tiny", "--prompts", "binary.yaml"], "binary.yaml: not a UTF-8"),
    (["generate", "--teacher", "tiny", "--prompts", "notes.txt"], "are .jsonl or .yaml"),
    (["generate", "--teacher", "tiny", "--prompts", "missing.jsonl"], "no such prompt file"),
    (["generate", "--teacher", "tiny", "--prompts", "broken.jsonl"], "broken.jsonl:2: not valid"),
    (["generate", "--teacher", "tiny", "--prompts", "no-prompt.jsonl"], "no-prompt.jsonl:1:"),
    (["generate", "--teacher", "tiny", "--prompts", "reasoning_gym:gcd:-5"], "SIZE >= 1"),
    (["generate", "--teacher", "tiny", "--prompts", "reasoning_gym:gcd:0"], "SIZE is 0"),
    (["generate", "--teacher", "tiny", "--prompts", "reasoning_gym:gcd:3:-1"], "SEED >= 0"),
    (["generate", "--teacher", "tiny", "--prompts", "reasoning_gym:gcd:3:1:9"], "TASK[:SIZE"),
    (["generate", "--teacher", "tiny", "--prompts", "reasoning_gym:"], "TASK[:SIZE"),
    (["generate", "--teacher", "tiny", "--prompts", "reasoning_gym:no_such_task:2"],
     "reasoning-gym task 'no_such_task'"),
    (["generate", "--teacher", "tiny", "--prompts", "task-size.yaml"], "size: must be an integer"),
    (["generate", "--teacher", "tiny", "--prompts", "task-float.yaml"], "not 2.5"),
    (["generate", "--teacher", "tiny", "--prompts", "task-shots.yaml"], "shots: must be >= 0"),
    (["generate", "--teacher", "tiny", "--prompts", "task-key.yaml"], "unknown keys ['sise']"),
    (["generate", "--teacher", "tiny", "--prompts", "task-template.yaml"], "only {question}"),
    (["generate", "--teacher", "tiny", "--prompts", "task-config.yaml"], "'config' must be"),
    (["generate", "--teacher", "tiny", "--prompts", "grid-braces.yaml"], "uses {}"),
    (["generate", "--teacher", "tiny", "--prompts", "grid-unclosed.yaml"], "valid format"),
    (["generate", "--teacher", "tiny", "--prompts", "humaneval.yaml"], "size: must be >= 1"),
    (["generate", "--teacher", "tiny", "--prompts", "chatterbot.yaml"], "list of non-empty"),
    (["generate", "--teacher", "tiny", "--prompts", "seed-key.yaml"], "unknown keys ['field']"),
    (["expand", "--teacher", "tiny", "--seeds", "binary.jsonl", "--out", "o.jsonl"], "UTF-8"),
    # numbers
    (["generate", "--teacher", "tiny", "--prompts", "good.jsonl", "--batch-size", "0"],
     "--batch-size: must be >= 1, not 0"),
    (["generate", "--teacher", "tiny", "--prompts", "good.jsonl", "--max-tokens", "0"],
     "--max-tokens: must be >= 1"),
    (["generate", "--teacher", "tiny", "--prompts", "good.jsonl", "--n", "0"], "--n: must be"),
    (["generate", "--teacher", "tiny", "--prompts", "good.jsonl", "--logprobs-k", "256"],
     "--logprobs-k: must be in [0, 255]"),
    (["generate", "--teacher", "tiny", "--prompts", "good.jsonl", "--temperature", "nan"],
     "--temperature: must be a finite number"),
    (["generate", "--teacher", "tiny", "--prompts", "good.jsonl", "--top-p", "1.5"],
     "--top-p: must be in (0, 1]"),
    (["generate", "--teacher", "tiny", "--prompts", "good.jsonl", "--seed", "-1"],
     "--seed: must be >= 0"),
    (["generate", "--teacher", "tiny", "--prompts", "good.jsonl", "--max-tokens", "ten"],
     "--max-tokens: 'ten' is not an integer"),
    (["expand", "--teacher", "tiny", "--seeds", "good.jsonl", "--method", "self-instruct",
      "--count", "0", "--out", "o.jsonl"], "--count: must be >= 1"),
    (["train", "--dataset", "latest", "--name", "s", "--layers", "0"], "--layers: must be >= 1"),
    (["train", "--dataset", "latest", "--name", "s", "--epochs", "0"], "--epochs: must be >= 1"),
    (["train", "--dataset", "latest", "--name", "s", "--max-steps", "0"], "--max-steps: must"),
    (["train", "--dataset", "latest", "--name", "s", "--batch-size", "-3"], "--batch-size: must"),
    (["train", "--dataset", "latest", "--name", "s", "--lr", "0"], "--lr: must be > 0"),
    (["train", "--dataset", "latest", "--name", "s", "--warmup-steps", "-1"],
     "--warmup-steps: must be >= 0"),
    (["train", "--dataset", "latest", "--name", "s", "--kd-weight", "1.5"], "--kd-weight: must"),
    (["train", "--dataset", "latest", "--name", "s", "--temperature", "0"], "--temperature: must"),
    (["train", "--dataset", "latest", "--name", "s", "--layer-choice", "best"],
     "--layer-choice: invalid choice: 'best'"),
    (["train", "--dataset", "latest", "--name", "s", "--init", "MODEL", "--layers", "2"],
     "--layers: chooses the teacher layers to cut; a student brought with --init keeps its own"),
    (["train", "--dataset", "latest", "--name", "s", "--init", "MODEL", "--layer-choice", "even"],
     "--layer-choice: chooses the teacher layers to cut"),
    (["train", "--dataset", "latest", "--name", "s", "--init-revision", "abc123"],
     "--init-revision: a revision applies only to a student brought with --init"),
    (["train", "--dataset", "latest", "--name", "s", "--init", "MODEL", "--init-revision", "a b"],
     "--init-revision: 'a b' must be non-empty, without spaces"),
    (["train", "--dataset", "latest", "--name", "s", "--init", "./no-such-model"],
     "--init: no model checkpoint (config.json) at no-such-model"),
    (["train", "--dataset", "latest", "--name", "s", "--init", "not a hub id"],
     "--init: 'not a hub id' is neither a local path nor a hub id"),
    (["train", "--dataset", "latest", "--name", "s", "--heldout-fraction", "1"],
     "--heldout-fraction: must be in [0, 1), not 1.0"),
    (["train", "--dataset", "latest", "--name", "s", "--heldout-fraction", "-0.1"],
     "--heldout-fraction: must be in [0, 1), not -0.1"),
    (["train", "--dataset", "latest", "--name", "s", "--heldout-fraction", "nan"],
     "--heldout-fraction: must be a finite number"),
    (["train", "--dataset", "latest", "--name", "s", "--heldout-fraction", "some"],
     "--heldout-fraction: 'some' is not a number"),
    (["train", "--dataset", "latest", "--name", "s", "--eval-every", "0"],
     "--eval-every: must be >= 1, not 0"),
    (["train", "--dataset", "latest", "--name", "s", "--eval-every", "2.5"],
     "--eval-every: '2.5' is not an integer"),
    (["serve", "--port", "70000"], "--port: must be in [1, 65535]"),
    (["dashboard", "--port", "0"], "--port: must be in [1, 65535]"),
    (["demo", "--layers", "0"], "--layers: must be >= 1"),
    (["demo", "--steps", "-1"], "--steps: must be >= 1"),
    (["teacher", "add", "t2", "--model", "MODEL", "--license", "mit", "--gpu-hour-price", "-1"],
     "--gpu-hour-price: must be >= 0"),
    (["teacher", "add", "t2", "--model", "MODEL", "--license", "mit", "--price-per-1m-tokens",
      "inf"], "--price-per-1m-tokens: must be a finite number"),
    # URLs and backends
    (["generate", "--teacher", "tiny", "--prompts", "good.jsonl", "--backend", "openai",
      "--endpoint", "notaurl"], "--endpoint: 'notaurl' is not an http(s)://"),
    (["generate", "--teacher", "tiny", "--prompts", "good.jsonl", "--backend", "openai",
      "--endpoint", "ftp://host/v1"], "is not an http(s)://"),
    (["generate", "--teacher", "tiny", "--prompts", "good.jsonl", "--backend", "openai",
      "--endpoint", "http://host:99999"], "bad port"),
    (["generate", "--teacher", "tiny", "--prompts", "good.jsonl", "--backend", "openai",
      "--endpoint", "http://me:secret@host/v1"], "credentials do not belong in the URL"),
    (["generate", "--teacher", "tiny", "--prompts", "good.jsonl", "--backend", "openai"],
     "--endpoint: --backend openai needs at least one"),
    (["generate", "--teacher", "tiny", "--prompts", "good.jsonl", "--endpoint", "http://h:1"],
     "only --backend openai uses endpoints"),
    (["generate", "--teacher", "tiny", "--prompts", "good.jsonl", "--backend", "openai",
      "--endpoint", "http://h:1", "--api-key-env", "STILLROOM_TEST_UNSET_KEY"],
     "--api-key-env: environment variable STILLROOM_TEST_UNSET_KEY is not set"),
    (["generate", "--teacher", "tiny", "--prompts", "good.jsonl", "--backend", "openai",
      "--endpoint", "http://h:1", "--api-key-env", "1-bad"], "not an environment variable"),
    (["generate", "--teacher", "tiny", "--prompts", "good.jsonl", "--backend", "gpt"],
     "--backend: invalid choice: 'gpt'"),
    # suites
    (["eval", "--model", "tiny", "--suite", "suite-shots.yaml"], "shots: must be >= 0"),
    (["eval", "--model", "tiny", "--suite", "suite-size.yaml"], "size: must be >= 1"),
    (["eval", "--model", "tiny", "--suite", "suite-seed.yaml"], "seed: must be an integer"),
    (["eval", "--model", "tiny", "--suite", "suite-tokens.yaml"], "max_tokens: must be >= 1"),
    (["eval", "--model", "tiny", "--suite", "suite-stop.yaml"], "stop: must be a list"),
    (["eval", "--model", "tiny", "--suite", "suite-metrics.yaml"], "metrics: must be a list"),
    (["eval", "--model", "tiny", "--suite", "suite-template.yaml"], "only {question}"),
    (["eval", "--model", "tiny", "--suite", "suite-repeat.yaml"], "items would repeat"),
    (["eval", "--model", "tiny", "--suite", "binary-suite.yaml"], "not a UTF-8 text file"),
    (["eval", "--model", "tiny", "--suite", "../../licenses"], "no suite file or built-in"),
    # curation configs: each parameter typed and ranged, at its file:line
    (["dataset", "cut", "--config", "binary.yaml"], "binary.yaml: not a UTF-8 text file"),
    (["dataset", "cut", "--config", "cur-scripts.yaml"],
     "cur-scripts.yaml:2 (filters.charset.scripts): must be a list of non-empty strings"),
    (["dataset", "cut", "--config", "cur-phrases.yaml"],
     "cur-phrases.yaml:3 (filters.refusal.phrases): must be a list of non-empty strings"),
    (["dataset", "cut", "--config", "cur-length.yaml"],
     "cur-length.yaml:4 (filters.length.max_chars): must be an integer >= 0, not True"),
    (["dataset", "cut", "--config", "cur-suites.yaml"],
     "cur-suites.yaml:2 (filters.decontaminate.suites): must be a list"),
    (["dataset", "cut", "--config", "cur-judge.yaml"],
     "cur-judge.yaml:2 (filters.judge.teacher): no teacher named 'nobody'"),
    (["dataset", "cut", "--config", "cur-judge-template.yaml"],
     "cur-judge-template.yaml:2 (filters.judge.template): may use only {question} and"),
    (["dataset", "cut", "--config", "cur-ngram.yaml"],
     "cur-ngram.yaml:2 (dedupe.near.ngram): must be an integer >= 1, not 2.5"),
    (["dataset", "cut", "--config", "cur-seed.yaml"],
     "cur-seed.yaml:2 (dedupe.near.seed): must be >= 0, not -1"),
    (["dataset", "cut", "--config", "cur-nan.yaml"],
     "cur-nan.yaml:3 (dedupe.semantic.threshold): must be a finite number, not 'nan'"),
    (["dataset", "cut", "--config", "cur-inf.yaml"],
     "cur-inf.yaml:2 (dedupe.semantic.min_content_overlap): must be a finite number, not inf"),
    # names and references
    (["eval", "--model", "nobody", "--suite", "suite.yaml"], "no teacher or student named"),
    (["generate", "--teacher", "nobody", "--prompts", "good.jsonl"], "no teacher named 'nobody'"),
    (["train", "--dataset", "%", "--name", "s"], "--dataset: '%' is not a name"),
    (["train", "--dataset", "latest", "--name", "../escape"], "--name: '../escape' is not a"),
    (["train", "--dataset", "latest", "--name", "s"], "dataset 'latest': no such dataset"),
    (["dataset", "cut", "--name", "has space"], "--name: 'has space' is not a valid name"),
    (["dataset", "cut", "--teacher", "nobody"], "--teacher: no teacher named 'nobody'"),
    (["dataset", "export", "", "--out", "exports"], "version: '' is not a name"),
    (["dataset", "diff", "latest", "_"], "b: '_' is not a name"),
    (["provenance", "nobody"], "no student named 'nobody'"),
    (["teacher", "show", "a/b"], "name: 'a/b' is not a name"),
    (["teacher", "add", "t2", "--model", "MODEL", "--license", "mit", "--revision", "a b"],
     "--revision: 'a b' must be non-empty, without spaces"),
    (["teacher", "grant", "tiny", "--reference", "  "], "a grant needs a non-empty reference"),
    # outputs, commands and flags
    (["expand", "--teacher", "tiny", "--seeds", "good.jsonl", "--out", "."], "is a directory"),
    (["dataset", "export", "latest", "--out", "notes.txt"], "exists and is not a directory"),
    (["dataset", "export", "latest", "--format", "xml"], "--format: invalid choice"),
    (["serve", "--project", "no-such-dir"], "no prefect.yaml here"),
    (["bogus"], "COMMAND: invalid choice: 'bogus'"),
    (["dataset"], "stillroom dataset: the following arguments are required: ACTION"),
    (["generate", "--teacher", "tiny"], "the following arguments are required: --prompts"),
    (["train", "--dataset", "latest", "--name", "s", "--layerz", "2"], "unrecognized arguments"),
    (["teacher", "add", "t2", "--model", "MODEL", "--license", "mit", "--gpu-hour-price", "1",
      "--price-per-1m-tokens", "1"], "not allowed with argument --gpu-hour-price"),
]


@pytest.fixture(scope="module")
def workspace(tiny_model: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A home whose catalog has the tiny teacher, and a directory of malformed inputs.

    Its table counts and files are taken once: no case may change them."""
    root = tmp_path_factory.mktemp("bad-input")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("STILLROOM_HOME", str(root / "home"))
        teachers.add_teacher(Catalog().ensure(), "tiny", str(tiny_model), "mit")
    work = root / "work"
    work.mkdir()
    for name, content in FILES.items():
        target = work / name
        if isinstance(content, bytes):
            target.write_bytes(content)
        else:
            target.write_text(content)
    BASELINE.update(counts=table_counts(Catalog(root / "home" / "catalog.duckdb")),
                    files=snapshot(root))
    return root


BASELINE: dict[str, dict[str, int]] = {}


def snapshot(root: Path) -> dict[str, int]:
    """Every file under `root` with its size (the lock file is the catalog's own)."""
    return {str(p.relative_to(root)): p.stat().st_size for p in root.rglob("*")
            if p.is_file() and p.name != "catalog.lock"}


@pytest.mark.parametrize("argv, message", CASES, ids=[" ".join(a) for a, _ in CASES])
def test_bad_input_is_one_line_exit_2_and_nothing_written(
        workspace: Path, tiny_model: Path, argv: list[str], message: str,
        monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture) -> None:
    monkeypatch.setenv("STILLROOM_HOME", str(workspace / "home"))
    monkeypatch.delenv("STILLROOM_TEST_UNSET_KEY", raising=False)
    monkeypatch.chdir(workspace / "work")
    argv = [str(tiny_model) if a == "MODEL" else a for a in argv]
    try:
        code = main(argv)
    except SystemExit as exc:  # argparse's own errors exit from the parser
        code = exc.code
    err = capsys.readouterr().err
    assert code == 2, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("stillroom: error: "), err
    assert message in lines[0]
    assert table_counts(Catalog()) == BASELINE["counts"]
    assert snapshot(workspace) == BASELINE["files"]
    assert engine._current is None  # failed before any model was loaded


def test_there_are_at_least_45_cases() -> None:
    assert len(CASES) >= 45


SUBPROCESS_CASES = [
    (["generate", "--teacher", "tiny", "--prompts", "binary.jsonl"], "not a UTF-8 text file"),
    (["eval", "--model", "tiny", "--suite", "suite-shots.yaml"], "shots: must be >= 0"),
    (["generate", "--teacher", "tiny", "--prompts", "good.jsonl", "--batch-size", "0"],
     "--batch-size: must be >= 1"),
    (["train", "--dataset", "latest", "--name", "s", "--epochs", "many"],
     "--epochs: 'many' is not an integer"),
]


@pytest.mark.parametrize("argv, message", SUBPROCESS_CASES, ids=[a[0] + " " + a[-1] for a, _ in
                                                                 SUBPROCESS_CASES])
def test_no_traceback_reaches_the_terminal(workspace: Path, argv: list[str],
                                           message: str) -> None:
    env = {**os.environ, "STILLROOM_HOME": str(workspace / "home"),
           "PYTHONPATH": str(Path(__file__).parents[1])}
    done = subprocess.run([sys.executable, "-m", "stillroom.cli", *argv], env=env,
                          cwd=workspace / "work", capture_output=True, text=True, timeout=300)
    assert done.returncode == 2
    assert done.stdout == ""
    assert done.stderr.count("\n") == 1 and done.stderr.startswith("stillroom: error: ")
    assert message in done.stderr and "Traceback" not in done.stderr
    assert table_counts(Catalog(workspace / "home" / "catalog.duckdb")) == BASELINE["counts"]
    assert snapshot(workspace) == BASELINE["files"]


def test_flows_check_their_parameters_before_any_work(workspace: Path,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    """Deployments pass user-typed parameters: each bad one fails before a row is written."""
    from stillroom.flows.distill import distill, refresh_dataset, run_benchmarks, train_student

    monkeypatch.setenv("STILLROOM_HOME", str(workspace / "home"))
    monkeypatch.chdir(workspace / "work")
    calls = [
        (lambda: refresh_dataset(teacher="tiny", prompts="good.jsonl", max_tokens=0),
         "sampling.max_tokens: must be >= 1, not 0"),
        (lambda: refresh_dataset(teacher="tiny", prompts="reasoning_gym:gcd:2", seed=-1),
         "seed: must be >= 0"),
        (lambda: refresh_dataset(teacher="tiny", prompts="reasoning_gym:gcd:2",
                                 on_bad_seed="ignore"), "must be one of refuse, report"),
        (lambda: refresh_dataset(teacher="tiny", prompts="reasoning_gym:gcd:2",
                                 dataset_name="../x"), "dataset_name: '../x'"),
        (lambda: refresh_dataset(teacher="nobody", prompts="reasoning_gym:gcd:2"),
         "no teacher named 'nobody'"),
        (lambda: train_student(dataset="latest", name="s", layers=0), "layers: must be >= 1"),
        (lambda: train_student(dataset="latest", name="s", epochs=0), "--epochs: must be >= 1"),
        (lambda: train_student(dataset="latest", name="s", heldout_fraction=1.0),
         "--heldout-fraction: must be in [0, 1), not 1.0"),
        (lambda: train_student(dataset="latest", name="s", eval_every=0),
         "--eval-every: must be >= 1, not 0"),
        (lambda: train_student(dataset="latest", name="s", seed=-1), "--seed: must be >= 0"),
        (lambda: train_student(dataset="latest", name="s", max_steps=0),
         "--max-steps: must be >= 1"),
        (lambda: train_student(dataset="latest", name="s", objective="kl"),
         "unknown objective 'kl'"),
        (lambda: distill(teacher="tiny", prompts="good.jsonl", suite="suite.yaml",
                         heldout_fraction=-0.5), "--heldout-fraction: must be in [0, 1)"),
        (lambda: distill(teacher="tiny", prompts="good.jsonl", suite="suite.yaml",
                         objective="jsd", objective_params={"beta": 2.0}), "beta=2.0 must be"),
        (lambda: distill(teacher="tiny", prompts="good.jsonl", suite="suite.yaml", lr=0.0),
         "--lr: must be > 0"),
        (lambda: distill(teacher="tiny", prompts="good.jsonl", suite="suite.yaml",
                         batch_size=0), "--batch-size: must be >= 1"),
        (lambda: run_benchmarks(models=["tiny", "nobody"], suite="suite.yaml"),
         "no teacher or student named 'nobody'"),
        (lambda: distill(teacher="tiny", prompts="good.jsonl", suite="suite.yaml", epochs=0),
         "--epochs: must be >= 1"),
        (lambda: distill(teacher="tiny", prompts="good.jsonl", suite="suite-shots.yaml"),
         "shots: must be >= 0"),
    ]
    for call, message in calls:
        with pytest.raises(StillroomError, match=re.escape(message)):
            call()
        assert table_counts(Catalog()) == BASELINE["counts"], message
    assert snapshot(workspace) == BASELINE["files"]
    assert engine._current is None


@pytest.mark.parametrize("fields, message", [
    ({"seed": -1}, "sampling.seed: must be >= 0, not -1"),
    ({"seed": 1.5}, "sampling.seed: must be an integer >= 0, not 1.5"),
    ({"temperature": "hot"}, "sampling.temperature: must be a finite number, not 'hot'"),
    ({"n": True}, "sampling.n: must be an integer >= 1, not True"),
    ({"stop": ("",)}, "sampling.stop: must not be empty"),
])
def test_sampling_config_names_the_field_at_fault(fields: dict, message: str) -> None:
    """The last guard for callers that build one from user values (flows, suites, the judge)."""
    with pytest.raises(StillroomError) as error:
        engine.SamplingConfig(**fields)
    assert str(error.value) == message
