"""Dataset references: `latest`, ids, names and id prefixes resolve to one version or fail
with the candidates listed, never a silent pick."""

from __future__ import annotations

import pytest

from stillroom.catalog import Catalog
from stillroom.cli import main
from stillroom.errors import StillroomError
from stillroom.tasks.datasets import resolve

VERSIONS = [  # (dataset_id, name, created_at), oldest first
    ("ab12cd", "nightly", "2026-11-01 02:00:00"),
    ("ab34ef", "nightly", "2026-11-02 02:00:00"),
    ("cafe01", "beef", "2026-11-03 02:00:00"),
    ("beef99", None, "2026-11-04 02:00:00"),
    ("x%_1", "pct", "2026-11-05 02:00:00"),
    ("d00d42", "cafe01", "2026-11-06 02:00:00"),   # a name that is another version's id
]


@pytest.fixture
def versions(catalog: Catalog) -> Catalog:
    with catalog.write() as conn:
        for dataset_id, name, created_at in VERSIONS:
            conn.execute("INSERT INTO datasets VALUES (?, ?, 1, '{}', '{}', 'test', ?)",
                         [dataset_id, name, created_at])
    return catalog


@pytest.mark.parametrize("ref, expected", [
    ("latest", "d00d42"),
    ("ab12cd", "ab12cd"),     # a full id
    ("cafe01", "cafe01"),     # a full id wins over a name
    ("ab12", "ab12cd"),       # a unique prefix
    ("nightly", "ab34ef"),    # a reused name means its newest version
    ("cafe", "cafe01"),
    ("x%_", "x%_1"),          # % and _ are plain characters, not wildcards
])
def test_references_that_name_one_version(versions: Catalog, ref: str, expected: str) -> None:
    assert resolve(versions, ref) == expected


@pytest.mark.parametrize("ref, message", [
    ("ab", r"ambiguous: id prefix match 2 versions: ab34ef \(nightly, 2026-11-02 02:00:00\);"
           r" ab12cd \(nightly, 2026-11-01 02:00:00\)"),
    ("beef", r"ambiguous: name and id prefix match 2 versions: cafe01 \(beef, .*beef99"
             r" \(unnamed,"),
    ("_b12", "no such dataset version"),   # as LIKE patterns, this matched ab12cd ...
    ("%", "no such dataset version"),      # ... and this one every version
    ("zz", "no such dataset version"),
    ("", "empty reference"),
])
def test_ambiguous_or_unknown_references_are_errors(versions: Catalog, ref: str,
                                                    message: str) -> None:
    with pytest.raises(StillroomError, match=message):
        resolve(versions, ref)


def test_cli_reports_an_ambiguous_reference_in_one_line(versions: Catalog, monkeypatch,
                                                        capsys: pytest.CaptureFixture) -> None:
    monkeypatch.setattr("stillroom.cli.Catalog", lambda: versions)
    assert main(["dataset", "export", "ab"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("stillroom: error: dataset 'ab': ambiguous")
