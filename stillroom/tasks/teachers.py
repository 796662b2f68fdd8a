"""The teacher registry: who may be distilled, at which revision, license and price."""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

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


def validate_spec(name: str, model: str, license_id: str, gpu_hour_usd: float | None,
                  per_1m_tokens_usd: float | None) -> None:
    """Check a teacher spec fully before anything is written."""
    if not name or not name.replace("-", "").replace("_", "").replace(".", "").isalnum():
        raise StillroomError(f"teacher name {name!r} must be letters, digits, '-', '_' or '.'",
                             where="NAME")
    if not model.strip():
        raise StillroomError("model is empty", where="--model")
    if _looks_like_path(model):
        path = Path(model).expanduser()
        if not (path / "config.json").exists():
            raise StillroomError(f"no model checkpoint (config.json) at {path}", where="--model")
    elif model.count("/") != 1 or " " in model:
        raise StillroomError(f"{model!r} is neither a local path nor a hub id like 'org/name'",
                             where="--model")
    terms_for(license_id)
    if gpu_hour_usd is not None and per_1m_tokens_usd is not None:
        raise StillroomError("give one price model, not both",
                             where="--gpu-hour-price/--price-per-1m-tokens")
    for flag, price in (("--gpu-hour-price", gpu_hour_usd),
                        ("--price-per-1m-tokens", per_1m_tokens_usd)):
        if price is not None and price < 0:
            raise StillroomError(f"price must be >= 0, got {price}", where=flag)


def add_teacher(catalog: Catalog, name: str, model: str, license_id: str,
                revision: str | None = None, gpu_hour_usd: float | None = None,
                per_1m_tokens_usd: float | None = None) -> Teacher:
    """Register a teacher (idempotent for an identical spec); see `emit_registered`."""
    validate_spec(name, model, license_id, gpu_hour_usd, per_1m_tokens_usd)
    if _looks_like_path(model):
        model = str(Path(model).expanduser().resolve())
    teacher = Teacher(content_hash(model, revision), name, model, revision, license_id,
                      gpu_hour_usd, per_1m_tokens_usd)
    catalog.ensure()
    with catalog.write() as conn:
        clash = conn.execute(
            "SELECT name, teacher_id FROM teachers WHERE name = ? OR teacher_id = ?",
            [name, teacher.teacher_id],
        ).fetchall()
        existing = {row[0]: row[1] for row in clash}
        if existing.get(name) == teacher.teacher_id:
            conn.execute(
                "UPDATE teachers SET license = ?, gpu_hour_usd = ?, per_1m_tokens_usd = ?"
                " WHERE teacher_id = ?",
                [license_id, gpu_hour_usd, per_1m_tokens_usd, teacher.teacher_id],
            )
        elif existing:
            other = next(iter(existing))
            raise StillroomError(
                f"teacher {other!r} is already registered with "
                + ("this name" if other == name else "this model and revision"),
                where=name,
            )
        else:
            conn.execute(
                "INSERT INTO teachers VALUES (?, ?, ?, ?, ?, ?, ?, now())",
                [teacher.teacher_id, name, model, revision, license_id, gpu_hour_usd,
                 per_1m_tokens_usd],
            )
    log.info("registered teacher %s (%s, license %s)", name, model, license_id)
    return teacher


def emit_registered(teacher: Teacher) -> bool:
    """Emit `stillroom.teacher.registered` so the event-triggered distill deployment runs.

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
            "obligations": list(terms.obligations), "grants": grants_for(catalog, teacher)}


def authorize(catalog: Catalog, teacher: Teacher, noncommercial: bool = False) -> LicenseTerms:
    """The license gate: call before the first request for training data."""
    return check_distillation_allowed(teacher.name, teacher.license,
                                      grants_for(catalog, teacher), noncommercial)
