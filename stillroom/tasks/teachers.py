"""The teacher registry: who may be distilled, at which revision, license and price."""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

from stillroom import inputs
from stillroom.catalog import Catalog
from stillroom.errors import StillroomError
from stillroom.hashing import content_hash
from stillroom.tasks.licenses import LicenseTerms, check_distillation_allowed, terms_for

log = logging.getLogger(__name__)

TEACHER_REGISTERED_EVENT = "stillroom.teacher.registered"


@dataclass(frozen=True)
class Teacher:
    teacher_id: str
    name: str
    model: str
    revision: str | None
    license: str
    gpu_hour_usd: float | None = None
    per_1m_tokens_usd: float | None = None

    def usd_for(self, output_tokens: int, engine_seconds: float) -> float | None:
        """Dollars for a piece of work under this teacher's price model (None when unpriced)."""
        if self.per_1m_tokens_usd is not None:
            return self.per_1m_tokens_usd * output_tokens / 1e6
        if self.gpu_hour_usd is not None:
            return self.gpu_hour_usd * engine_seconds / 3600
        return None


def _looks_like_path(model: str) -> bool:
    return model.startswith(("/", ".", "~")) or Path(model).expanduser().exists()


def validate_model(model: str, where: str) -> None:
    """A local checkpoint directory (with its config.json) or a hub id like 'org/name'."""
    if not model.strip():
        raise StillroomError("model is empty", where=where)
    if _looks_like_path(model):
        path = Path(model).expanduser()
        if not (path / "config.json").exists():
            raise StillroomError(f"no model checkpoint (config.json) at {path}", where=where)
    elif model.count("/") != 1 or " " in model:
        raise StillroomError(f"{model!r} is neither a local path nor a hub id like 'org/name'",
                             where=where)


def validate_spec(name: str, model: str, license_id: str, gpu_hour_usd: float | None,
                  per_1m_tokens_usd: float | None) -> None:
    """Check a teacher spec fully before anything is written."""
    inputs.name(name, "NAME")
    validate_model(model, "--model")
    terms_for(license_id)
    if gpu_hour_usd is not None and per_1m_tokens_usd is not None:
        raise StillroomError("give one price model, not both",
                             where="--gpu-hour-price/--price-per-1m-tokens")
    for flag, price in (("--gpu-hour-price", gpu_hour_usd),
                        ("--price-per-1m-tokens", per_1m_tokens_usd)):
        if price is not None and price < 0:
            raise StillroomError(f"price must be >= 0, got {price}", where=flag)


@dataclass(frozen=True)
class Registration:
    """What `register_teacher` did: the teacher as stored, whether it is new, and each
    changed field of an existing one as (previous, new)."""

    teacher: Teacher
    created: bool
    changes: dict[str, tuple[Any, Any]]


def register_teacher(catalog: Catalog, name: str, model: str, license_id: str,
                     revision: str | None = None, gpu_hour_usd: float | None = None,
                     per_1m_tokens_usd: float | None = None,
                     change_license: bool = False) -> Registration:
    """Register a teacher, or update an existing one (same name, model and revision).

    An existing teacher's license changes only with `change_license`, and each change is
    recorded in `teacher_license_changes` with the license it replaced. A given price
    replaces the price model; none keeps the stored one.
    """
    validate_spec(name, model, license_id, gpu_hour_usd, per_1m_tokens_usd)
    if _looks_like_path(model):
        model = str(Path(model).expanduser().resolve())
    teacher = Teacher(content_hash(model, revision), name, model, revision, license_id,
                      gpu_hour_usd, per_1m_tokens_usd)
    catalog.ensure()
    with catalog.write() as conn:
        clash = conn.execute(
            "SELECT name, teacher_id, license, gpu_hour_usd, per_1m_tokens_usd FROM teachers"
            " WHERE name = ? OR teacher_id = ?", [name, teacher.teacher_id]).fetchall()
        existing = {row[0]: row for row in clash}
        if name in existing and existing[name][1] == teacher.teacher_id:
            _, _, license_was, *prices_were = existing[name]
            return _update(conn, teacher, license_was, tuple(prices_were), change_license)
        if existing:
            other = next(iter(existing))
            raise StillroomError(
                f"teacher {other!r} is already registered with "
                + ("this name" if other == name else "this model and revision"),
                where=name,
            )
        conn.execute(
            "INSERT INTO teachers VALUES (?, ?, ?, ?, ?, ?, ?, now())",
            [teacher.teacher_id, name, model, revision, license_id, gpu_hour_usd,
             per_1m_tokens_usd],
        )
    log.info("registered teacher %s (%s, license %s)", name, model, license_id)
    return Registration(teacher, True, {})


def _update(conn: Any, teacher: Teacher, license_was: str,
            prices_were: tuple[float | None, float | None],
            change_license: bool) -> Registration:
    """Apply a re-registration to the stored teacher (inside the caller's transaction)."""
    changes: dict[str, tuple[Any, Any]] = {}
    if teacher.license != license_was:
        if not change_license:
            raise StillroomError(
                f"teacher {teacher.name!r} is registered under license {license_was!r}; "
                f"pass --change-license to change it to {teacher.license!r} (the change is "
                "recorded)", where="--license")
        conn.execute("INSERT INTO teacher_license_changes VALUES (?, ?, ?, now())",
                     [teacher.teacher_id, license_was, teacher.license])
        changes["license"] = (license_was, teacher.license)
    prices = (teacher.gpu_hour_usd, teacher.per_1m_tokens_usd)
    if prices == (None, None):  # no price given: keep the stored price model
        teacher = replace(teacher, gpu_hour_usd=prices_were[0],
                          per_1m_tokens_usd=prices_were[1])
    elif prices != prices_were:
        changes["price"] = (prices_were, prices)
    if changes:
        conn.execute("UPDATE teachers SET license = ?, gpu_hour_usd = ?, per_1m_tokens_usd = ?"
                     " WHERE teacher_id = ?", [teacher.license, teacher.gpu_hour_usd,
                                               teacher.per_1m_tokens_usd, teacher.teacher_id])
        log.info("updated teacher %s: %s", teacher.name, changes)
    return Registration(teacher, False, changes)


def add_teacher(catalog: Catalog, name: str, model: str, license_id: str,
                revision: str | None = None, gpu_hour_usd: float | None = None,
                per_1m_tokens_usd: float | None = None,
                change_license: bool = False) -> Teacher:
    """Register a teacher (idempotent for an identical spec); see `register_teacher`."""
    return register_teacher(catalog, name, model, license_id, revision, gpu_hour_usd,
                            per_1m_tokens_usd, change_license).teacher


def license_history(catalog: Catalog, teacher: Teacher) -> list[dict[str, Any]]:
    """Every license change of `teacher`, oldest first."""
    return catalog.rows(
        "SELECT previous_license, license, changed_at FROM teacher_license_changes"
        " WHERE teacher_id = ? ORDER BY changed_at", [teacher.teacher_id])


def emit_registered(teacher: Teacher) -> bool:
    """Emit `stillroom.teacher.registered` so the event-triggered distill deployment runs;
    only for a new teacher (`Registration.created`), never for an update.

    Only where a Prefect API is configured (`stillroom serve`, a server, Cloud): with none,
    Prefect would start a throwaway server that dies with this process, so nobody could react.
    """
    from prefect.events import emit_event
    from prefect.settings import get_current_settings

    if not get_current_settings().api.url:
        log.warning("no Prefect API configured (PREFECT_API_URL); %s not emitted",
                    TEACHER_REGISTERED_EVENT)
        return False
    event = emit_event(
        event=TEACHER_REGISTERED_EVENT,
        resource={"prefect.resource.id": f"stillroom.teacher.{teacher.name}",
                  "prefect.resource.name": teacher.name,
                  "stillroom.license": teacher.license},
        payload={"teacher": teacher.name, "model": teacher.model, "revision": teacher.revision},
    )
    return event is not None


def get_teacher(catalog: Catalog, name: str) -> Teacher:
    rows = catalog.rows(
        "SELECT teacher_id, name, model, revision, license, gpu_hour_usd, per_1m_tokens_usd"
        " FROM teachers WHERE name = ?", [name])
    if not rows:
        known = [r["name"] for r in catalog.rows("SELECT name FROM teachers ORDER BY name")]
        raise StillroomError(f"no teacher named {name!r}; registered: {known or 'none'}",
                             where="--teacher")
    return Teacher(**rows[0])


def list_teachers(catalog: Catalog) -> list[dict[str, Any]]:
    if not catalog.path.exists():
        return []
    return catalog.rows(
        "SELECT t.name, t.model, t.revision, t.license, t.gpu_hour_usd, t.per_1m_tokens_usd,"
        " count(g.reference) AS grants FROM teachers t"
        " LEFT JOIN license_grants g USING (teacher_id) GROUP BY ALL ORDER BY t.name")


def grants_for(catalog: Catalog, teacher: Teacher) -> list[str]:
    return [r["reference"] for r in catalog.rows(
        "SELECT reference FROM license_grants WHERE teacher_id = ? ORDER BY granted_at",
        [teacher.teacher_id])]


def grant(catalog: Catalog, name: str, reference: str) -> Teacher:
    """Record an explicit permission (a contract, an email) that lifts the license gate."""
    if not reference.strip():
        raise StillroomError("a grant needs a non-empty reference", where="--reference")
    teacher = get_teacher(catalog, name)
    with catalog.write() as conn:
        conn.execute("INSERT OR IGNORE INTO license_grants VALUES (?, ?, now())",
                     [teacher.teacher_id, reference.strip()])
    return teacher


def describe(catalog: Catalog, name: str) -> dict[str, Any]:
    teacher = get_teacher(catalog, name)
    terms = terms_for(teacher.license)
    return {**asdict(teacher), "license_name": terms.name, "verdict": terms.verdict,
            "obligations": list(terms.obligations), "grants": grants_for(catalog, teacher),
            "license_history": license_history(catalog, teacher)}


def authorize(catalog: Catalog, teacher: Teacher, noncommercial: bool = False) -> LicenseTerms:
    """The license gate: call before the first request for training data."""
    return check_distillation_allowed(teacher.name, teacher.license,
                                      grants_for(catalog, teacher), noncommercial)
