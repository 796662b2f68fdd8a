"""The `distill` flow end to end under a Prefect test server, then the CLI and dashboard on it."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from stillroom.catalog import Catalog
from stillroom.tasks import teachers

SUITE = """
name: tiny-suite
template: "Question: {question}\\nAnswer:"
shots: 2
generation: {max_tokens: 8, stop: ["\\n"]}
tasks:
  - {task: basic_arithmetic, size: 12, seed: 5,
     config: {min_terms: 2, max_terms: 2, min_digits: 1, max_digits: 1}}
metrics: [accuracy, agreement]
"""


@pytest.fixture(scope="module")
def distilled(tiny_model: Path, tmp_path_factory: pytest.TempPathFactory):
    from stillroom.flows.distill import distill

    root = tmp_path_factory.mktemp("flow")
    home = root / "home"
    prompts = root / "prompts.jsonl"
    prompts.write_text("\n".join(json.dumps({"prompt": f"Tell me about {t}."})
                                 for t in ("tea", "rain", "foxes", "maps", "tides", "glass")))
    suite = root / "suite.yaml"
    suite.write_text(SUITE)
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("STILLROOM_HOME", str(home))
        catalog = Catalog().ensure()
        teachers.add_teacher(catalog, "tiny", str(tiny_model), "gemma", gpu_hour_usd=1.0)
        state = distill(teacher="tiny", prompts=str(prompts), suite=str(suite), layers=2,
                        epochs=4, max_tokens=24, return_state=True)
    return home, catalog, state


def test_distill_flow_completes_and_records_everything(distilled) -> None:
    _, catalog, state = distilled
    assert state.is_completed()
    result = state.result()
    assert result["dataset"]["rows"] > 0
    assert [b["model"] for b in result["benchmarks"]] == ["tiny", "tiny-student-init",
                                                          "tiny-student"]
    student = next(b for b in result["benchmarks"] if b["model"] == "tiny-student")
    assert student["agreement"] is not None and student["tokens_per_s"] > 0
    runs = catalog.rows("SELECT kind, status, flow_run_id FROM runs")
    assert {r["kind"] for r in runs} >= {"generate", "filter", "dataset", "report", "train",
                                         "eval"}
    assert all(r["status"] == "completed" and r["flow_run_id"] for r in runs)
    evals = catalog.rows("SELECT model_name, n_items, ci_low, accuracy, ci_high,"
                         " usd_per_1m_tokens FROM eval_results")
    assert len(evals) == 3
    for e in evals:
        assert e["n_items"] == 12 and e["ci_low"] <= e["accuracy"] <= e["ci_high"]
        assert e["usd_per_1m_tokens"] > 0
    card = json.loads(catalog.scalar("SELECT provenance FROM students WHERE name = 'tiny-student'"))
    assert card["teachers"][0]["license"] == "gemma"
    assert any("Gemma Terms of Use" in o for o in card["teachers"][0]["obligations"])


def run_cli(home: Path, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "STILLROOM_HOME": str(home)}
    return subprocess.run([sys.executable, "-m", "stillroom.cli", *args], env=env,
                          capture_output=True, text=True, timeout=300)


def test_cli_reads_the_catalog(distilled) -> None:
    home, _, _ = distilled
    shown = run_cli(home, "provenance", "tiny-student")
    assert shown.returncode == 0, shown.stderr
    assert json.loads(shown.stdout)["provenance"]["teachers"][0]["name"] == "tiny"
    listed = run_cli(home, "dataset", "list")
    assert listed.returncode == 0 and "tiny-data" in listed.stdout
    teachers_out = run_cli(home, "teacher", "list")
    assert "tiny" in teachers_out.stdout and "gemma" in teachers_out.stdout


def test_diversity_report_is_stored_with_the_version(distilled) -> None:
    _, catalog, state = distilled
    dataset_id = state.result()["dataset"]["dataset_id"]
    report = json.loads(catalog.scalar("SELECT report FROM diversity_reports WHERE scope = ?",
                                       [f"dataset:{dataset_id}"]))
    assert report["rows"] == state.result()["dataset"]["rows"]
    assert 0 < report["prompts"]["distinct_1"] <= 1 and 0 < report["responses"]["distinct_2"] <= 1
    assert report["embedding"]["k"] >= 1 and 0 < report["embedding"]["coverage"] <= 1
    assert report["balance"]["source"]["counts"] == {"seed": report["rows"]}


def test_cli_cuts_with_a_config_and_diffs_versions(distilled, tmp_path: Path) -> None:
    home, catalog, _ = distilled
    config = tmp_path / "loose.yaml"
    config.write_text("filters:\n  empty: {}\ndedupe:\n  exact: {}\n")
    cut = run_cli(home, "dataset", "cut", "--config", str(config), "--name", "loose")
    assert cut.returncode == 0, cut.stderr
    summary = json.loads(cut.stdout.strip().splitlines()[-1])
    assert summary["diversity"]["rows"] == summary["rows"]
    diff = run_cli(home, "dataset", "diff", "tiny-data", "loose")
    assert diff.returncode == 0, diff.stderr
    changes = json.loads(diff.stdout.strip().splitlines()[-1])
    full = json.loads(diff.stdout[:diff.stdout.rindex("\n{")])
    assert changes["unchanged"] + changes["removed"] == full["rows"]["a"]
    assert changes["unchanged"] + changes["added"] == full["rows"]["b"]
    assert set(full["config_changes"]) >= {"filters", "dedupe", "fhash", "dhash"}
    bad = tmp_path / "bad.yaml"
    bad.write_text("filters:\n  empty: {}\n  lenght: {}\n")
    refused = run_cli(home, "dataset", "cut", "--config", str(bad))
    assert refused.returncode == 2
    assert f"{bad}:3 (filters.lenght): unknown filter 'lenght'" in refused.stderr


def test_a_suite_evaluated_later_decontaminates_the_next_cut(distilled) -> None:
    from stillroom.eval.contamination import known_suites
    from stillroom.tasks import datasets
    from stillroom.tasks.curation import CurationConfig, curate
    from stillroom.tasks.engine import SamplingConfig
    from stillroom.tasks.generate import generate
    from stillroom.tasks.prompts import Prompt

    _, catalog, _ = distilled
    question = catalog.scalar("SELECT i.prompt FROM eval_items i JOIN eval_results r"
                              " USING (eval_id) WHERE r.suite = 'tiny-suite' ORDER BY i.item_id")
    generate(catalog, teachers.get_teacher(catalog, "tiny"), [Prompt(question, "seed")],
             SamplingConfig(max_tokens=4, logprobs_k=2), progress=False)
    leaked = catalog.scalar("SELECT r.response_id FROM responses r JOIN prompts p"
                            " USING (prompt_id) WHERE p.text = ?", [question])
    stages = {"length": {"min_chars": 0}, "decontaminate": {}}
    builtins = list(known_suites(None))
    before = CurationConfig({**stages, "decontaminate": {"against": builtins}}, {"exact": {}})
    curate(catalog, before, "before-eval")
    assert leaked in datasets.manifest(catalog, datasets.cut(catalog, before)["dataset_id"]
                                       )["row_ids"]

    now = CurationConfig(stages, {"exact": {}}).pinned(catalog)
    added = set(now.filters["decontaminate"]["against"]) - set(builtins)
    assert [label.split("@")[0] for label in added] == ["tiny-suite"]
    counts = "SELECT count(*) FROM verdicts WHERE stage = ?"
    length_verdicts = catalog.scalar(counts, ["filter:length"])
    checked = catalog.scalar(counts, ["filter:decontaminate"])
    result = curate(catalog, now, "after-eval")
    assert catalog.scalar(counts, ["filter:length"]) == length_verdicts  # earlier filter stands
    rechecked = catalog.scalar(counts, ["filter:decontaminate"]) - checked
    assert rechecked == catalog.scalar("SELECT count(*) FROM responses")
    assert result["filters"]["dropped"]["decontaminate"] >= 1
    reason = catalog.scalar("SELECT reason FROM verdicts WHERE response_id = ?"
                            " AND stage = 'filter:decontaminate' AND NOT keep", [leaked])
    assert reason.startswith("contaminated:") and "tiny-suite/basic_arithmetic/5/" in reason
    manifest = datasets.manifest(catalog, datasets.cut(catalog, now)["dataset_id"])
    assert leaked not in manifest["row_ids"]
    assert added <= set(manifest["config"]["filters"]["decontaminate"]["against"])


def test_cli_errors_are_one_clear_line(distilled, tmp_path: Path) -> None:
    home, catalog, _ = distilled
    before = catalog.scalar("SELECT count(*) FROM teachers")
    cases = [
        (["teacher", "add", "x", "--model", "/no/such/model", "--license", "mit"],
         "no model checkpoint"),
        (["teacher", "add", "x", "--model", "org/name", "--license", "nope"], "unknown license"),
        (["generate", "--teacher", "ghost", "--prompts", "x.jsonl"], "no teacher named 'ghost'"),
        (["eval", "--model", "tiny", "--suite", str(tmp_path / "missing.yaml")], "no suite file"),
        (["provenance", "nobody"], "no student named"),
    ]
    for args, message in cases:
        result = run_cli(home, *args)
        assert result.returncode == 2, (args, result.stderr)
        last = result.stderr.strip().splitlines()[-1]
        assert last.startswith("stillroom: error:") and message in last, last
    assert catalog.scalar("SELECT count(*) FROM teachers") == before


def test_dashboard_pages_render_the_catalog(distilled) -> None:
    from streamlit.testing.v1 import AppTest

    home, _, _ = distilled
    app = Path(__file__).parents[1] / "stillroom" / "dashboard" / "app.py"
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("STILLROOM_HOME", str(home))
        at = AppTest.from_file(str(app), default_timeout=60).run()
        assert not at.exception
        assert at.title[0].value == "Teachers and students"
        table = at.dataframe[0].value
        assert set(table["model"]) == {"tiny", "tiny-student-init", "tiny-student"}
        at.sidebar.radio[0].set_value("Responses").run()
        assert not at.exception
        assert at.title[0].value == "Responses"
        rows = next(f.value for f in at.dataframe if "response" in f.value.columns)
        assert len(rows) > 0 and {"kept", "dropped_because"} <= set(rows.columns)
        at.radio[0].set_value("dropped").run()
        assert not at.exception
        at.sidebar.radio[0].set_value("Datasets").run()
        assert not at.exception and at.title[0].value == "Dataset versions"
        assert "tiny-data" in set(at.dataframe[0].value["name"])
        versions = at.selectbox[0]
        versions.set_value(next(o for o in versions.options if "tiny-data" in o)).run()
        assert {m.label for m in at.metric} >= {"prompt distinct-2", "embedding coverage"}


def test_dashboard_in_a_real_browser(distilled, tmp_path: Path) -> None:
    import shutil
    import urllib.request

    from browser import Chromium

    from stillroom.tasks.http_engine import free_port

    binary = shutil.which("chromium")
    if binary is None and not os.environ.get("CI"):
        pytest.skip("chromium is not installed (CI installs it)")
    home, _, _ = distilled
    port = free_port()
    app = Path(__file__).parents[1] / "stillroom" / "dashboard" / "app.py"
    server = subprocess.Popen(
        [sys.executable, "-m", "streamlit", "run", str(app), "--server.headless=true",
         f"--server.port={port}", "--browser.gatherUsageStats=false"],
        env={**os.environ, "STILLROOM_HOME": str(home)},
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        for _ in range(120):
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{port}/_stcore/health", timeout=1)
                break
            except OSError:
                time.sleep(0.5)
        with Chromium(binary or "chromium") as browser:
            browser.open(f"http://127.0.0.1:{port}")
            page = browser.text()
            browser.screenshot(tmp_path / "overview.png")
            assert "Teachers and students" in page
            assert "Suite: tiny-suite" in page and "Students and their provenance" in page
            assert "Traceback" not in page and "Error" not in page
    finally:
        server.terminate()
        server.wait(timeout=20)
