"""Students: cut from a teacher, trained on a dataset version, published as immutable versions.

Every new set of weights is published as `name@N` (N = 1, 2, ...): built in a staging directory
and renamed into place only when done, with the digest of its weight files in both the catalog
row and the model card, so neither can describe other weights than the files hold. Nothing is
overwritten. A plain `name` means its latest version. Re-running a training that already
produced a version of `name` (same dataset, init weights, config and seed) returns that version.
`<name>-init` is versioned the same way: cut from the teacher (`stillroom.tasks.cut`, layers
chosen by `stillroom.tasks.layer_choice`) or brought by the user, and reused while its files are
byte-identical and were chosen the same way.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import asdict
from pathlib import Path
from typing import Any

from stillroom import inputs, settings
from stillroom.catalog import Catalog
from stillroom.errors import StillroomError
from stillroom.hashing import canonical_json, content_hash
from stillroom.runs import recorded_run
from stillroom.tasks import compat, cut, datasets, layer_choice, models, objectives
from stillroom.tasks.checkpoints import Checkpoints, exclusive_lock
from stillroom.tasks.teachers import Teacher, get_teacher
from stillroom.tasks.training import (
    DEFAULT_CHECKPOINT_EVERY,
    TrainConfig,
    check_checkpoint_every,
    preflight,
    train,
)

INIT_SUFFIX = "-init"
COLUMNS = ("student_id, name, version, dataset_id, path, init, config, provenance, metrics,"
           " weights_digest, build_key, run_id, created_at")


def students_dir() -> Path:
    return settings.models_dir() / "students"


def staging_dir() -> Path:
    return students_dir() / ".staging"


def checkpoints_dir() -> Path:
    return settings.models_dir() / "checkpoints"


def validate_student_name(name: str, where: str = "--name") -> str:
    """A name a new student may be trained under (it becomes a directory name)."""
    inputs.name(name, where)
    if name.endswith(INIT_SUFFIX):
        raise StillroomError(f"names ending in {INIT_SUFFIX!r} are reserved for students'"
                             " initialisations", where=where)
    return name


def parse_ref(ref: str, where: str = "STUDENT") -> tuple[str, int | None]:
    """`name` or `name@N` -> (name, N or None)."""
    name, at, version = ref.partition("@")
    inputs.name(name, where)
    if at and not (version.isdigit() and int(version) >= 1):
        raise StillroomError(f"{ref!r}: the version after '@' must be a number >= 1",
                             where=where)
    return name, int(version) if at else None


def resolve_student(catalog: Catalog, ref: str, where: str = "STUDENT") -> dict[str, Any]:
    """The `students` row `ref` names: `name@N` that version, plain `name` the latest one."""
    name, version = parse_ref(ref, where)
    rows = catalog.rows(f"SELECT {COLUMNS} FROM students WHERE name = $name"
                        " AND ($version IS NULL OR version = $version)"
                        " ORDER BY version DESC LIMIT 1", {"name": name, "version": version})
    if not rows:
        raise StillroomError(f"no student named {ref!r}", where=where)
    row = rows[0]
    row["ref"] = f"{row['name']}@{row['version']}"
    for column in ("config", "provenance", "metrics"):
        row[column] = json.loads(row[column]) if row[column] else None
    return row


def list_students(catalog: Catalog) -> list[dict[str, Any]]:
    return catalog.rows(
        "SELECT name || '@' || version AS ref, dataset_id, weights_digest, init, created_at,"
        " json_extract_string(provenance, '$.teachers[0].name') AS teacher"
        " FROM students ORDER BY name, version")


def provenance(catalog: Catalog, ref: str) -> dict[str, Any]:
    return resolve_student(catalog, ref)


def model_card(ref: str, provenance: dict[str, Any]) -> str:
    """A README that states where the student came from and what its teachers' licenses require."""
    lines = [f"# {ref}", "", "A student model distilled with Stillroom.", "",
             f"- weights: `{provenance['weights_digest']}` (sha256 of the weight, config and"
             " tokenizer files)", "", "## Provenance", ""]
    lines += [f"- dataset: `{provenance.get('dataset_id')}`", f"- init: {provenance['init']}"]
    if provenance.get("init_model"):
        lines += [f"- init weights: `{provenance['init_model']['weights_digest']}`"]
    if provenance.get("layer_choice"):
        lines += ["", "## Layer choice", "", *layer_choice.card_lines(provenance["layer_choice"])]
    for t in provenance["teachers"]:
        lines += ["", f"### Teacher {t['name']}", "",
                  f"- model: `{t['model']}` (revision {t.get('revision') or 'unpinned'})",
                  f"- license: {t['license_name']} (`{t['license']}`): {t['verdict']}"]
        lines += [f"- obligation: {o}" for o in t["obligations"]]
        lines += [f"- grant: {g}" for g in t.get("grants", [])]
    if provenance.get("compatibility"):
        config = provenance.get("train_config") or {}
        params = config.get("objective_params")
        lines += ["", "## Training", "",
                  f"- objective: {config.get('objective')}{f' {params}' if params else ''}"
                  f" (kd_weight {config.get('kd_weight')},"
                  f" temperature {config.get('temperature')})",
                  "", "## Compatibility with the teacher", "",
                  *compat.summary(provenance["compatibility"])]
    return "\n".join(lines) + "\n"


def _publish(catalog: Catalog, name: str, staging: Path, *, dataset_id: str | None,
             init: str, config: dict[str, Any], provenance: dict[str, Any],
             metrics: dict[str, Any] | None, build_key: str, run_id: str) -> dict[str, Any]:
    """Register `staging` as the next version of `name` and rename it into place, atomically
    with respect to every other publisher (both happen under the catalog's write lock)."""
    digest = models.weights_digest(staging)
    with catalog.write() as conn:
        version = conn.execute("SELECT coalesce(max(version), 0) + 1 FROM students"
                               " WHERE name = ?", [name]).fetchone()[0]
        ref = f"{name}@{version}"
        final = inputs.path_inside(students_dir(), ref)
        if final.exists():  # left by a publish killed before its commit: no row names it
            shutil.rmtree(final)
        card = {**provenance, "student": ref, "version": version, "weights_digest": digest}
        (staging / "README.md").write_text(model_card(ref, card))
        (staging / "provenance.json").write_text(json.dumps(card, indent=2, default=str))
        student_id = content_hash(name, version, digest)
        staging.rename(final)
        try:
            conn.execute(f"INSERT INTO students ({COLUMNS}) VALUES"
                         " (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, now())",
                         [student_id, name, version, dataset_id, str(final), init,
                          canonical_json(config), canonical_json(card),
                          canonical_json(metrics) if metrics else None, digest, build_key,
                          run_id])
        except BaseException:
            final.rename(staging)
            raise
    return {"ref": ref, "version": version, "student_id": student_id, "path": str(final),
            "weights_digest": digest}


def _fresh_staging(name: str) -> Path:
    """An empty staging directory for `name` (what a killed run left there is discarded)."""
    staging = inputs.path_inside(staging_dir(), name)
    if staging.exists():
        shutil.rmtree(staging)
    staging.parent.mkdir(parents=True, exist_ok=True)
    return staging


def _publish_init(catalog: Catalog, name: str, staging: Path, base: dict[str, Any],
                  config: dict[str, Any], build_key: str, run_id: str) -> dict[str, Any]:
    """Publish `staging` as the next `<name>-init`, unless a version with the same weights
    and the same build key (everything that decided them, how the layers were chosen
    included) exists: then that one is returned, so its provenance stays true of this run."""
    init_name = f"{name}{INIT_SUFFIX}"
    digest = models.weights_digest(staging)
    same = catalog.rows("SELECT name || '@' || version AS ref FROM students WHERE name = ?"
                        " AND weights_digest = ? AND build_key = ? ORDER BY version DESC LIMIT 1",
                        [init_name, digest, build_key])
    if same:
        shutil.rmtree(staging)
        return resolve_student(catalog, same[0]["ref"])
    _publish(catalog, init_name, staging, dataset_id=None, init=base["init"], config=config,
             provenance={**base, "dataset_id": None}, metrics=None, build_key=build_key,
             run_id=run_id)
    return resolve_student(catalog, init_name)


def _cut_init(catalog: Catalog, teacher: Teacher, teachers: list[dict[str, Any]], rows: Any,
              name: str, layers: int, method: str,
              run_id: str) -> tuple[dict[str, Any], dict[str, Any]]:
    """Cut `<name>-init` from the teacher at its pinned revision: (its row, the provenance
    every student trained from it carries)."""
    folder = cut.checkpoint_dir(teacher.model, teacher.revision, where="teacher")
    choice = layer_choice.choose(method, layers, folder, rows, teacher.model, teacher.revision)
    pinned = f" at revision {teacher.revision}" if teacher.revision else ""
    init = (f"layers {choice.layers} of {choice.total} from teacher {teacher.name}{pinned},"
            f" chosen {choice.describe()}")
    base = {"teachers": teachers, "init": init, "layers": choice.layers,
            "layer_choice": choice.record()}
    staging = _fresh_staging(f"{name}{INIT_SUFFIX}")
    cut.cut_student(teacher.model, choice.layers, staging, revision=teacher.revision)
    start = _publish_init(catalog, name, staging, base, {"layers": choice.layers,
                                                         "layer_choice": method},
                          content_hash("init", teacher.teacher_id, choice.record()), run_id)
    return start, base


def _brought_init(catalog: Catalog, teacher: Teacher, teachers: list[dict[str, Any]],
                  rows: Any, name: str, model: str, revision: str | None, config: TrainConfig,
                  run_id: str) -> tuple[dict[str, Any], dict[str, Any]]:
    """Publish the user's own model as `<name>-init`, once it is shown to share the teacher's
    tokenizer (`compat.report` through `preflight`): an incompatible one publishes nothing."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    if Path(model).expanduser().is_dir():
        model = str(Path(model).expanduser().resolve())
    staging = _fresh_staging(f"{name}{INIT_SUFFIX}")
    try:
        cut.copy_checkpoint(model, revision, staging)
        with torch.device("meta"):  # its shapes, without reading its weights
            shape = AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(staging))
        preflight(AutoTokenizer.from_pretrained(staging), shape, rows, config, teacher.model,
                  teacher.revision)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    digest = models.weights_digest(staging)
    base = {"teachers": teachers, "init": f"brought by the user: {model}@{revision or 'unpinned'}",
            "layers": None, "init_model": {"model": model, "revision": revision,
                                           "weights_digest": digest}}
    start = _publish_init(catalog, name, staging, base, {"init_model": model,
                                                         "init_revision": revision},
                          content_hash("init", "brought", model, revision, digest), run_id)
    return start, base


def train_student(catalog: Catalog, dataset_ref: str, name: str, layers: int | None = None,
                  config: TrainConfig | None = None, progress: bool = True,
                  checkpoint_every: int = DEFAULT_CHECKPOINT_EVERY, *,
                  layer_choice_method: str | None = None, init_model: str | None = None,
                  init_revision: str | None = None) -> dict[str, Any]:
    """Make `<name>-init` and train the next version of `name` on it. The init is cut from the
    dataset's teacher (`layers` of them, default 4, chosen `even` or by `importance`), or is
    `init_model` (at `init_revision`), the user's own model sharing the teacher's tokenizer.

    Training checkpoints are keyed by the dataset, the init's weights and the config (seed
    included): a killed run re-run with the same inputs resumes; any other run starts fresh.
    """
    validate_student_name(name)
    layer_choice.check_student_shape(layers, layer_choice_method, init_model, init_revision)
    check_checkpoint_every(checkpoint_every)
    config = config or TrainConfig()
    dataset_id = datasets.resolve(catalog, dataset_ref)
    manifest = datasets.manifest(catalog, dataset_id)
    if len(manifest["teachers"]) != 1:
        raise StillroomError("KD needs one teacher's tokenizer; this dataset mixes "
                             f"{[t['name'] for t in manifest['teachers']]}", where=dataset_ref)
    teacher = get_teacher(catalog, manifest["teachers"][0]["name"])
    rows = datasets.load(catalog, dataset_id)
    # Refused before the init is cut or a run recorded; `train` records the coverage.
    objectives.check_coverage(rows["topk_ids"], config.objective, config.kd_weight)
    shape = ({"init_model": init_model, "init_revision": init_revision} if init_model else
             {"layers": layer_choice.DEFAULT_LAYERS if layers is None else layers,
              "layer_choice": layer_choice_method or "even"})
    params = {"dataset_id": dataset_id, "name": name, **shape, **asdict(config)}
    busy = f"student {name!r} is being trained by another process"
    with exclusive_lock(inputs.path_inside(staging_dir(), f"{name}.lock"), busy, name), \
            recorded_run(catalog, "train", params) as run:
        if init_model:
            start, base = _brought_init(catalog, teacher, manifest["teachers"], rows, name,
                                        init_model, init_revision, config, run.run_id)
        else:
            start, base = _cut_init(catalog, teacher, manifest["teachers"], rows, name,
                                    shape["layers"], shape["layer_choice"], run.run_id)
        init = base["init"]
        build_key = content_hash("train", dataset_id, start["weights_digest"], asdict(config))
        done = catalog.rows("SELECT name || '@' || version AS ref FROM students"
                            " WHERE name = ? AND build_key = ?", [name, build_key])
        if done:
            student = resolve_student(catalog, done[0]["ref"])
            run.summary.update(student=student["ref"], student_id=student["student_id"],
                               dataset_id=dataset_id, path=student["path"], reused=True,
                               init=student["provenance"].get("init_student", start["ref"]),
                               weights_digest=student["weights_digest"],
                               heldout=_final_heldout(student["metrics"]))
            return run.summary
        checkpoints = Checkpoints(checkpoints_dir(), build_key)
        with checkpoints.exclusive():
            staging = _fresh_staging(name)
            metrics = train(Path(start["path"]), rows, config, staging, progress=progress,
                            checkpoints=checkpoints, checkpoint_every=checkpoint_every,
                            teacher_model=teacher.model, teacher_revision=teacher.revision)
            provenance = {**base, "dataset_id": dataset_id, "dataset_name": manifest.get("name"),
                          "init_student": start["ref"], "init_digest": start["weights_digest"],
                          "train_config": asdict(config),
                          "compatibility": metrics["compatibility"]}
            published = _publish(catalog, name, staging, dataset_id=dataset_id, init=init,
                                 config=params, provenance=provenance, metrics=metrics,
                                 build_key=build_key, run_id=run.run_id)
            checkpoints.clear()
        run.summary.update(student=published["ref"], student_id=published["student_id"],
                           dataset_id=dataset_id, path=published["path"], reused=False,
                           init=start["ref"], weights_digest=published["weights_digest"],
                           heldout=_final_heldout(metrics),
                           **{k: metrics[k] for k in ("steps", "resumed_from_step", "examples",
                                                      "first_loss", "last_loss", "seconds",
                                                      "tokens_per_s", "heldout_rows")})
    return run.summary


def _final_heldout(metrics: dict[str, Any] | None) -> dict[str, Any] | None:
    """The last held-out evaluation of a training (None without tracking)."""
    evals = (metrics or {}).get("heldout") or []
    return evals[-1] if evals else None
