"""Shared fixtures: an isolated STILLROOM_HOME, one Prefect test server, a tiny real model."""

from __future__ import annotations

import os
import sys
import tempfile
from pathlib import Path

import pytest

_SESSION_HOME = Path(tempfile.mkdtemp(prefix="stillroom-tests-"))
os.environ["STILLROOM_HOME"] = str(_SESSION_HOME / "home")
os.environ["PREFECT_HOME"] = str(_SESSION_HOME / "prefect")
os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")

from stillroom import settings  # noqa: E402

settings.apply_engine_env()
settings.apply_prefect_env()
sys.path.insert(0, str(Path(__file__).parent))

from tiny import build_tiny_model  # noqa: E402

from stillroom.catalog import Catalog  # noqa: E402


@pytest.fixture(scope="session", autouse=True)
def prefect_server():
    """One Prefect test server for the whole session (it costs ~10 s to start)."""
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=90):
        yield


@pytest.fixture(scope="session", autouse=True)
def engines_closed_at_exit():
    """Shut the process's vLLM engine down before pytest closes its output streams."""
    yield
    from stillroom.tasks.engine import close_engine

    close_engine()


@pytest.fixture(scope="session")
def tiny_model() -> Path:
    return build_tiny_model(_SESSION_HOME / "tiny-teacher")


@pytest.fixture
def catalog(tmp_path: Path) -> Catalog:
    """A fresh, empty catalog file of its own."""
    return Catalog(tmp_path / "catalog.duckdb").ensure()


@pytest.fixture
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A fresh STILLROOM_HOME for code that uses the default catalog."""
    monkeypatch.setenv("STILLROOM_HOME", str(tmp_path / "home"))
    return tmp_path / "home"


@pytest.fixture
def with_dataset(tiny_model: Path, home: Path) -> Catalog:
    """The default catalog holding the tiny teacher and its dataset version `first`."""
    from tiny_dataset import cut_dataset

    from stillroom.tasks import teachers

    catalog = Catalog().ensure()
    teacher = teachers.add_teacher(catalog, "tiny", str(tiny_model), "apache-2.0")
    cut_dataset(catalog, teacher, name="first")
    return catalog


def table_counts(catalog: Catalog) -> dict[str, int]:
    tables = [r["table_name"] for r in catalog.rows(
        "SELECT table_name FROM information_schema.tables WHERE table_schema = 'main'")]
    return {t: catalog.scalar(f"SELECT count(*) FROM {t}") for t in sorted(tables)}
