"""Teacher registry and the license gate: bad specs fail clearly and change nothing."""

from __future__ import annotations

from pathlib import Path

import pytest
from conftest import table_counts

from stillroom.catalog import Catalog
from stillroom.errors import LicenseError, StillroomError
from stillroom.tasks import engine as engine_module
from stillroom.tasks import teachers
from stillroom.tasks.engine import SamplingConfig
from stillroom.tasks.generate import generate
from stillroom.tasks.licenses import policy
from stillroom.tasks.prompts import Prompt


def test_policy_covers_the_required_licenses() -> None:
    terms = policy()
    for lid in ("apache-2.0", "mit", "bsd-3-clause", "llama3", "llama3.1", "llama3.2",
                "llama3.3", "gemma", "qwen", "deepseek-r1", "openai-terms", "anthropic-terms",
                "unknown"):
        assert lid in terms
    assert terms["openai-terms"].verdict == "prohibited"
    assert terms["unknown"].verdict == "prohibited"
    assert terms["gemma"].verdict == "allowed_with_obligations" and terms["gemma"].obligations


def test_add_list_show_grant(catalog: Catalog, tiny_model: Path) -> None:
    t = teachers.add_teacher(catalog, "tiny", str(tiny_model), "mit", gpu_hour_usd=2.0)
    assert teachers.add_teacher(catalog, "tiny", str(tiny_model), "mit").teacher_id == t.teacher_id
    assert [r["name"] for r in teachers.list_teachers(catalog)] == ["tiny"]
    shown = teachers.describe(catalog, "tiny")
    assert shown["verdict"] == "allowed" and shown["grants"] == []
    teachers.grant(catalog, "tiny", "contract #42")
    assert teachers.describe(catalog, "tiny")["grants"] == ["contract #42"]


@pytest.mark.parametrize("kwargs, message", [
    ({"license_id": "wtfpl-9"}, "unknown license 'wtfpl-9'"),
    ({"model": "/does/not/exist"}, "no model checkpoint"),
    ({"model": "not a hub id"}, "neither a local path nor a hub id"),
    ({"name": "bad name!"}, "is not a valid name"),
    ({"gpu_hour_usd": -1.0}, "price must be >= 0"),
])
def test_bad_teacher_specs_fail_and_change_nothing(catalog: Catalog, tiny_model: Path,
                                                   kwargs: dict, message: str) -> None:
    spec = {"name": "t", "model": str(tiny_model), "license_id": "mit", **kwargs}
    before = table_counts(catalog)
    with pytest.raises(StillroomError, match=message):
        teachers.add_teacher(catalog, **spec)
    assert table_counts(catalog) == before


def test_name_clash_is_refused(catalog: Catalog, tiny_model: Path) -> None:
    teachers.add_teacher(catalog, "a", str(tiny_model), "mit")
    with pytest.raises(StillroomError, match="already registered"):
        teachers.add_teacher(catalog, "b", str(tiny_model), "mit")


def test_prohibited_teacher_is_never_queried_until_granted(catalog: Catalog,
                                                           tiny_model: Path) -> None:
    teacher = teachers.add_teacher(catalog, "closed", str(tiny_model), "openai-terms")
    engine_module.close_engine()
    before = table_counts(catalog)
    with pytest.raises(LicenseError, match="may not be used for training data"):
        generate(catalog, teacher, [Prompt("hi", "test")], SamplingConfig())
    assert engine_module._current is None  # no engine was started, no request was sent
    assert table_counts(catalog) == before
    teachers.grant(catalog, "closed", "written permission, ticket LEGAL-7")
    assert teachers.authorize(catalog, teacher).verdict == "prohibited"  # lifted by the grant


def test_noncommercial_license_needs_a_declaration(catalog: Catalog, tiny_model: Path) -> None:
    teacher = teachers.add_teacher(catalog, "research", str(tiny_model), "qwen-research")
    with pytest.raises(LicenseError, match="non-commercial"):
        teachers.authorize(catalog, teacher)
    assert teachers.authorize(catalog, teacher, noncommercial=True).verdict == "noncommercial"


def test_registering_emits_the_prefect_event(catalog: Catalog, tiny_model: Path) -> None:
    import asyncio

    from prefect.client.orchestration import get_client
    from prefect.events.filters import EventFilter, EventNameFilter

    assert teachers.emit_registered(
        teachers.add_teacher(catalog, "evented", str(tiny_model), "apache-2.0"))

    async def find() -> list:
        async with get_client() as client:
            for _ in range(50):
                page = await client.read_events(filter=EventFilter(
                    event=EventNameFilter(name=[teachers.TEACHER_REGISTERED_EVENT])), limit=50)
                hits = [e for e in page.events
                        if e.resource.get("prefect.resource.name") == "evented"]
                if hits:
                    return hits
                await asyncio.sleep(0.2)
            return []

    assert asyncio.run(find())


def test_a_license_change_needs_the_flag_and_is_recorded(catalog: Catalog,
                                                         tiny_model: Path) -> None:
    teachers.add_teacher(catalog, "tiny", str(tiny_model), "mit", gpu_hour_usd=2.0)
    before = table_counts(catalog)
    with pytest.raises(StillroomError, match="--change-license"):
        teachers.add_teacher(catalog, "tiny", str(tiny_model), "openai-terms")
    assert table_counts(catalog) == before
    assert teachers.describe(catalog, "tiny")["license"] == "mit"

    done = teachers.register_teacher(catalog, "tiny", str(tiny_model), "apache-2.0",
                                     change_license=True)
    assert not done.created and done.changes == {"license": ("mit", "apache-2.0")}
    shown = teachers.describe(catalog, "tiny")
    assert shown["license"] == "apache-2.0" and shown["gpu_hour_usd"] == 2.0  # price kept
    [change] = shown["license_history"]
    assert change["previous_license"] == "mit" and change["license"] == "apache-2.0"
    assert change["changed_at"] is not None


def test_a_price_update_proceeds_without_a_license_change(catalog: Catalog,
                                                          tiny_model: Path) -> None:
    teachers.add_teacher(catalog, "tiny", str(tiny_model), "mit", gpu_hour_usd=2.0)
    done = teachers.register_teacher(catalog, "tiny", str(tiny_model), "mit",
                                     per_1m_tokens_usd=0.5)
    assert not done.created and done.changes == {"price": ((2.0, None), (None, 0.5))}
    t = teachers.get_teacher(catalog, "tiny")
    assert (t.gpu_hour_usd, t.per_1m_tokens_usd) == (None, 0.5)
    assert teachers.describe(catalog, "tiny")["license_history"] == []
    same = teachers.register_teacher(catalog, "tiny", str(tiny_model), "mit")
    assert same.changes == {} and same.teacher.per_1m_tokens_usd == 0.5


def test_the_registered_event_goes_out_only_for_a_new_teacher(home, tiny_model: Path,
                                                               capsys) -> None:
    import asyncio
    import json

    from prefect.client.orchestration import get_client
    from prefect.events.filters import EventFilter, EventNameFilter

    from stillroom.cli import main

    add = ["teacher", "add", "once", "--model", str(tiny_model), "--license", "mit"]
    emitted = []
    for extra in ([], [], ["--price-per-1m-tokens", "0.3"],
                  ["--license", "apache-2.0", "--change-license"]):
        assert main(add + extra) == 0
        emitted.append(json.loads(capsys.readouterr().out.strip().splitlines()[-1])[
            "event_emitted"])
    assert emitted == [True, False, False, False]

    async def count() -> int:
        async with get_client() as client:
            async def seen() -> int:
                page = await client.read_events(filter=EventFilter(
                    event=EventNameFilter(name=[teachers.TEACHER_REGISTERED_EVENT])), limit=50)
                return len([e for e in page.events
                            if e.resource.get("prefect.resource.name") == "once"])
            for _ in range(120):  # wait for the first to land...
                if await seen():
                    break
                await asyncio.sleep(0.5)
            await asyncio.sleep(3)  # ...then give any repeat the same chance
            return await seen()

    assert asyncio.run(count()) == 1
