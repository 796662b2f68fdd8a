"""The license policy (data in licenses.yaml) and the gate every training-data request passes."""

from __future__ import annotations

from dataclasses import dataclass
from functools import cache
from importlib.resources import files

import yaml

from stillroom.errors import LicenseError, StillroomError

VERDICTS = ("allowed", "allowed_with_obligations", "noncommercial", "prohibited")


@dataclass(frozen=True)
class LicenseTerms:
    license_id: str
    name: str
    verdict: str
    obligations: tuple[str, ...]
    note: str = ""


@cache
def policy() -> dict[str, LicenseTerms]:
    raw = yaml.safe_load(files("stillroom").joinpath("licenses.yaml").read_text())
    terms = {}
    for license_id, entry in raw.items():
        if entry.get("verdict") not in VERDICTS:
            raise StillroomError(f"license {license_id!r} has verdict {entry.get('verdict')!r}")
        terms[license_id] = LicenseTerms(
            license_id=license_id,
            name=entry["name"],
            verdict=entry["verdict"],
            obligations=tuple(entry.get("obligations") or ()),
            note=entry.get("note", ""),
        )
    return terms


def terms_for(license_id: str) -> LicenseTerms:
    """The policy entry for `license_id`, or a clear error listing the known ids."""
    known = policy()
    if license_id not in known:
        raise StillroomError(
            f"unknown license {license_id!r}; known: {', '.join(sorted(known))}", where="--license"
        )
    return known[license_id]


def check_distillation_allowed(
    teacher_name: str, license_id: str, grants: list[str], noncommercial: bool = False
) -> LicenseTerms:
    """Raise LicenseError unless this teacher may be queried for training data."""
    terms = terms_for(license_id)
    if grants:
        return terms
    if terms.verdict == "prohibited":
        reason = terms.note or f"{terms.name} forbids distillation"
        raise LicenseError(
            f"teacher {teacher_name!r} ({license_id}) may not be used for training data: {reason}."
            f" Record a grant first: stillroom teacher grant {teacher_name} --reference '...'"
        )
    if terms.verdict == "noncommercial" and not noncommercial:
        raise LicenseError(
            f"teacher {teacher_name!r} ({license_id}) allows non-commercial use only;"
            " declare it with --noncommercial or record a grant"
        )
    return terms
