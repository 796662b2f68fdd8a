"""Students: cut from a teacher, trained on a dataset version, registered with their provenance."""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path
from typing import Any

from stillroom import settings
from stillroom.catalog import Catalog
from stillroom.errors import StillroomError
from stillroom.hashing import canonical_json, content_hash
from stillroom.runs import recorded_run
from stillroom.tasks import datasets, models
from stillroom.tasks.teachers import get_teacher
from stillroom.tasks.training import TrainConfig, train


def students_dir() -> Path:
    return settings.models_dir() / "students"


def _register(catalog: Catalog, name: str, dataset_id: str | None, path: Path, init: str,
              config: dict[str, Any], provenance: dict[str, Any], metrics: dict[str, Any] | None,
              run_id: str) -> str:
    student_id = content_hash(name, dataset_id, init, config)
    with catalog.write() as conn:
        existing = conn.execute("SELECT student_id FROM students WHERE name = ?",
                                [name]).fetchone()
        if existing and existing[0] != student_id:
            raise StillroomError("a different student already has this name; choose another",
                                 where=name)
        conn.execute("DELETE FROM students WHERE student_id = ?", [student_id])
        conn.execute("INSERT INTO students VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, now())",
                     [student_id, name, dataset_id, str(path), init, canonical_json(config),
                      canonical_json(provenance), canonical_json(metrics) if metrics else None,
                      run_id])
    return student_id


def model_card(name: str, provenance: dict[str, Any]) -> str:
    """A README that states where the student came from and what its teachers' licenses require."""
    lines = [f"# {name}", "", "A student model distilled with Stillroom.", "", "## Provenance", ""]
    lines += [f"- dataset: `{provenance.get('dataset_id')}`", f"- init: {provenance['init']}"]
    for t in provenance["teachers"]:
        lines += ["", f"### Teacher {t['name']}", "",
                  f"- model: `{t['model']}` (revision {t.get('revision') or 'unpinned'})",
                  f"- license: {t['license_name']} (`{t['license']}`): {t['verdict']}"]
        lines += [f"- obligation: {o}" for o in t["obligations"]]
        lines += [f"- grant: {g}" for g in t.get("grants", [])]
    return "\n".join(lines) + "\n"


def _write_card(path: Path, name: str, provenance: dict[str, Any]) -> None:
    (path / "README.md").write_text(model_card(name, provenance))
    (path / "provenance.json").write_text(json.dumps(provenance, indent=2, default=str))


def train_student(catalog: Catalog, dataset_ref: str, name: str, layers: int = 4,
                  config: TrainConfig | None = None, progress: bool = True) -> dict[str, Any]:
    """Cut `<name>-init` from the dataset's teacher, train `<name>` on it, register both."""
    config = config or TrainConfig()
    dataset_id = datasets.resolve(catalog, dataset_ref)
    manifest = datasets.manifest(catalog, dataset_id)
    if len(manifest["teachers"]) != 1:
        raise StillroomError("KD needs one teacher's tokenizer; this dataset mixes "
                             f"{[t['name'] for t in manifest['teachers']]}", where=dataset_ref)
    teacher = get_teacher(catalog, manifest["teachers"][0]["name"])
    params = {"dataset_id": dataset_id, "name": name, "layers": layers, **asdict(config)}
    with recorded_run(catalog, "train", params) as run:
        total = _layer_count(teacher.model)
        keep = models.spread_layers(total, layers)
        init_name = f"{name}-init"
        init_dir = models.cut_student(teacher.model, keep, students_dir() / init_name)
        init = f"layers {keep} of {total} from teacher {teacher.name}"
        base = {"teachers": manifest["teachers"], "init": init, "layers": keep}
        _write_card(init_dir, init_name, {**base, "dataset_id": None})
        _register(catalog, init_name, None, init_dir, init, {"layers": keep},
                  {**base, "dataset_id": None}, None, run.run_id)
        rows = datasets.load(catalog, dataset_id)
        out = students_dir() / name
        metrics = train(init_dir, rows, config, out, progress=progress)
        provenance = {**base, "dataset_id": dataset_id, "dataset_name": manifest.get("name"),
                      "train_config": asdict(config)}
        _write_card(out, name, provenance)
        student_id = _register(catalog, name, dataset_id, out, init, params, provenance,
                               metrics, run.run_id)
        run.summary.update(student=name, student_id=student_id, dataset_id=dataset_id,
                           path=str(out), **{k: metrics[k] for k in (
                               "steps", "examples", "first_loss", "last_loss", "seconds")})
    return run.summary


def _layer_count(model: str) -> int:
    from transformers import AutoConfig

    return AutoConfig.from_pretrained(model).num_hidden_layers


def provenance(catalog: Catalog, name: str) -> dict[str, Any]:
    rows = catalog.rows("SELECT student_id, name, dataset_id, path, init, provenance, metrics,"
                        " created_at FROM students WHERE name = ?", [name])
    if not rows:
        raise StillroomError(f"no student named {name!r}", where="STUDENT")
    row = rows[0]
    row["provenance"] = json.loads(row["provenance"])
    row["metrics"] = json.loads(row["metrics"]) if row["metrics"] else None
    return row
