"""Dedupe scope on a two-teacher catalog: a one-teacher dataset cut never loses a row to
another teacher's representative."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from rows import add_rows

from stillroom.catalog import Catalog
from stillroom.cli import main
from stillroom.errors import StillroomError
from stillroom.tasks import datasets
from stillroom.tasks.curation import CurationConfig, curate, load_config
from stillroom.tasks.teachers import add_teacher

STAGES = {"exact": {}, "near": {}}
ANSWER = "Paris is the capital of France, on the Seine, and its largest city by far."


def two_teachers(catalog: Catalog) -> dict[str, list[str]]:
    """Teacher B answers first; teacher A gives the same answer (one space more: longer, so
    never the representative across teachers) plus a duplicate of its own answer."""
    ids = {}
    for name in ("B", "A"):
        add_teacher(catalog, name, f"org/model-{name}", "apache-2.0")
    teacher_ids = {r["name"]: r["teacher_id"] for r in catalog.rows(
        "SELECT name, teacher_id FROM teachers")}
    ids["B"] = add_rows(catalog, [{"question": "What is the capital of France?",
                                   "response": ANSWER}], teacher_ids["B"])
    ids["A"] = add_rows(catalog, [
        {"question": "What is the capital of France?", "response": ANSWER.replace(" ", "  ", 1)},
        {"question": "Name a prime.", "response": "Seven is prime."},
        {"question": "Name a prime.", "response": "seven is   prime."}], teacher_ids["A"])
    return ids


def cut_rows(catalog: Catalog, config: CurationConfig, teacher: str | None) -> set[str]:
    dataset_id = datasets.cut(catalog, config, teacher=teacher)["dataset_id"]
    return set(datasets.manifest(catalog, dataset_id)["row_ids"])


def test_teacher_scope_keeps_a_teachers_row_that_another_teacher_duplicated(
        catalog: Catalog) -> None:
    ids = two_teachers(catalog)
    config = CurationConfig({"empty": {}}, STAGES)  # scope: teacher is the default
    assert curate(catalog, config, "run")["dedupe"]["exact"] == {"judged": 4, "dropped": 1}
    a_rows = cut_rows(catalog, config, "A")
    assert a_rows == {ids["A"][0], ids["A"][1]}  # its France answer stays; its own dup goes
    assert cut_rows(catalog, config, "B") == {ids["B"][0]}
    assert cut_rows(catalog, config, None) == {ids["B"][0], ids["A"][0], ids["A"][1]}
    link = catalog.rows("SELECT representative_id FROM duplicate_links")
    assert link == [{"representative_id": ids["A"][1]}]  # the only cluster is inside A


def test_all_scope_dedupes_across_teachers_and_refuses_a_one_teacher_cut(
        catalog: Catalog) -> None:
    ids = two_teachers(catalog)
    config = CurationConfig({"empty": {}}, STAGES, dedupe_scope="all")
    assert curate(catalog, config, "run")["dedupe"]["exact"] == {"judged": 4, "dropped": 2}
    link = catalog.rows("SELECT representative_id FROM duplicate_links WHERE response_id = ?",
                        [ids["A"][0]])
    assert link == [{"representative_id": ids["B"][0]}]
    assert cut_rows(catalog, config, None) == {ids["B"][0], ids["A"][1]}
    with pytest.raises(StillroomError) as error:
        datasets.cut(catalog, config, teacher="A")
    assert error.value.where == "--teacher" and "scope is 'all'" in error.value.message
    assert catalog.scalar("SELECT count(*) FROM datasets") == 1  # only the all-teacher cut


def test_scope_is_part_of_the_dedupe_keys(catalog: Catalog) -> None:
    two_teachers(catalog)
    curate(catalog, CurationConfig({"empty": {}}, STAGES), "run")
    again = curate(catalog, CurationConfig({"empty": {}}, STAGES, dedupe_scope="all"), "run")
    assert again["dedupe"]["exact"] == {"judged": 4, "dropped": 2}  # re-judged, not reused


def test_cli_refuses_a_one_teacher_cut_under_all_scope_before_any_work(
        home: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    catalog = Catalog().ensure()
    two_teachers(catalog)
    path = tmp_path / "curation.yaml"
    path.write_text("filters:\n  empty: {}\ndedupe:\n  scope: all\n  exact: {}\n")
    assert load_config(path).dedupe == {"exact": {}}
    assert main(["dataset", "cut", "--name", "a", "--teacher", "A", "--config", str(path)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("stillroom: error: --teacher: dedupe scope is 'all'")
    assert catalog.scalar("SELECT count(*) FROM verdicts") == 0  # nothing judged or written
    assert catalog.scalar("SELECT count(*) FROM datasets") == 0
    assert main(["dataset", "cut", "--name", "all", "--config", str(path)]) == 0
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1])["rows"] == 2


def test_unknown_scope_names_file_and_line(tmp_path: Path) -> None:
    path = tmp_path / "curation.yaml"
    path.write_text("dedupe:\n  exact: {}\n  scope: everyone\n")
    with pytest.raises(StillroomError) as error:
        load_config(path)
    assert f"{path}:3 (dedupe.scope): unknown scope 'everyone'" in str(error.value)


def test_refresh_flow_refuses_a_one_teacher_cut_under_all_scope_before_generating(
        home: Path, tmp_path: Path) -> None:
    from stillroom.flows.distill import refresh_dataset

    catalog = Catalog().ensure()
    two_teachers(catalog)
    path = tmp_path / "curation.yaml"
    path.write_text("dedupe:\n  scope: all\n  exact: {}\n")
    responses = catalog.scalar("SELECT count(*) FROM responses")
    with pytest.raises(StillroomError) as error:
        refresh_dataset.fn("A", prompts=str(tmp_path / "unused.yaml"), curation=str(path))
    assert error.value.where == "--teacher"
    assert catalog.scalar("SELECT count(*) FROM runs") == 0
    assert catalog.scalar("SELECT count(*) FROM responses") == responses


@pytest.mark.parametrize("text, rows", [
    ("filters:\n  empty: {}\n", 4),  # no dedupe: every row the filter kept
    ("dedupe:\n  exact: {}\n", 3),  # no filters: A's second prime answer is a duplicate
    ("filters:\n  empty: {}\ndedupe: {}\n", 4),
])
def test_a_one_section_config_cuts_a_version(home: Path, tmp_path: Path, text: str, rows: int,
                                             capsys: pytest.CaptureFixture) -> None:
    """An empty filter or dedupe section is a legitimate config: the cut's query must bind
    only the hashes it uses (DuckDB refuses an unused `$dhash` or `$fhash`)."""
    catalog = Catalog().ensure()
    two_teachers(catalog)
    path = tmp_path / "curation.yaml"
    path.write_text(text)
    assert main(["dataset", "cut", "--name", "one", "--config", str(path)]) == 0
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1])["rows"] == rows
    assert catalog.scalar("SELECT n_rows FROM datasets WHERE name = 'one'") == rows
