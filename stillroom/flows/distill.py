"""Prefect flows: refresh a dataset, train a student, benchmark, and all three as `distill`."""

from __future__ import annotations

import json
import logging
from importlib.resources import files
from typing import Any

from prefect import flow, task
from prefect.cache_policies import NONE

from stillroom import inputs
from stillroom.catalog import Catalog
from stillroom.errors import StillroomError
from stillroom.eval.runner import resolve_model, run_suite
from stillroom.eval.suites import load_suite
from stillroom.runs import reconcile, recorded_run
from stillroom.tasks import datasets, students
from stillroom.tasks.curation import CurationConfig, curate, load_config
from stillroom.tasks.diversity import store_report
from stillroom.tasks.engine import SamplingConfig, close_engine
from stillroom.tasks.generate import generate
from stillroom.tasks.prompts import check_on_bad, load_prompts
from stillroom.tasks.teachers import get_teacher
from stillroom.tasks.training import TrainConfig

log = logging.getLogger(__name__)
DEMO_PROMPTS = str(files("stillroom").joinpath("data/demo_prompts.yaml"))
DEMO_SUITE = "number-words"


@task(cache_policy=NONE)
def generate_responses(teacher: str, prompts: str, sampling: dict[str, Any],
                       noncommercial: bool, on_bad_seed: str = "refuse") -> dict[str, Any]:
    catalog = Catalog().ensure()
    return generate(catalog, get_teacher(catalog, teacher), load_prompts(prompts, on_bad_seed),
                    SamplingConfig(**sampling), noncommercial=noncommercial)


@task(cache_policy=NONE)
def filter_and_dedupe(curation: CurationConfig) -> dict[str, Any]:
    catalog = Catalog()
    with recorded_run(catalog, "filter", curation.as_dict()) as run:
        run.summary.update(curate(catalog, curation, run.run_id))
    return run.summary


@task(cache_policy=NONE)
def cut_dataset(curation: CurationConfig, name: str | None,
                teacher: str | None) -> dict[str, Any]:
    catalog = Catalog()
    with recorded_run(catalog, "dataset", {"name": name, "teacher": teacher}) as run:
        run.summary.update(datasets.cut(catalog, curation, name, teacher, run.run_id))
    return run.summary


@task(cache_policy=NONE)
def diversity_report(dataset_id: str) -> dict[str, Any]:
    catalog = Catalog()
    with recorded_run(catalog, "report", {"dataset_id": dataset_id}) as run:
        run.summary.update(store_report(catalog, dataset_id, run.run_id))
    log.info("diversity of %s: %s", dataset_id, json.dumps(
        {k: run.summary[k] for k in ("prompts", "responses", "embedding")}))
    return run.summary


@flow(name="refresh_dataset")
def refresh_dataset(teacher: str, prompts: str = DEMO_PROMPTS, max_tokens: int = 16,
                    stop: list[str] | None = None, logprobs_k: int = 20, seed: int = 0,
                    temperature: float = 0.0, top_p: float = 1.0, curation: str | None = None,
                    dataset_name: str | None = None, noncommercial: bool = False,
                    on_bad_seed: str = "refuse") -> dict[str, Any]:
    """Generate from `teacher`, filter, dedupe, and cut an immutable dataset version.

    `curation` is a curation config YAML (filters and dedupe stages); default: built in.
    Every parameter is checked before any work (deployments pass what users typed).
    """
    reconcile(Catalog())
    stop = inputs.strings(stop, "stop") if stop is not None else ["\n"]
    sampling = {"max_tokens": max_tokens, "stop": tuple(stop),
                "logprobs_k": logprobs_k, "seed": inputs.whole_number(seed, "seed", minimum=0),
                "temperature": temperature, "top_p": top_p}
    SamplingConfig(**sampling)  # refuses out-of-range values
    check_on_bad(on_bad_seed)
    if dataset_name is not None:
        inputs.name(dataset_name, "dataset_name")
    catalog = Catalog().ensure()
    get_teacher(catalog, teacher)
    config = load_config(curation).pinned(catalog)
    datasets.check_teacher_cut(config, teacher)  # before any teacher call, not after
    generated = generate_responses(teacher, prompts, sampling, noncommercial, on_bad_seed)
    judged = filter_and_dedupe(config)
    version = cut_dataset(config, dataset_name, teacher)
    report = diversity_report(version["dataset_id"])
    return {"generate": generated, "filter": judged, "dataset": version, "diversity": report}


@flow(name="train_student")
def train_student(dataset: str, name: str, layers: int = 4, epochs: int = 3,
                  batch_size: int = 8, lr: float = 3e-4, kd_weight: float = 0.5,
                  temperature: float = 1.0, objective: str = "forward_kl",
                  objective_params: dict[str, float] | None = None, seed: int = 0,
                  heldout_fraction: float = 0.1, eval_every: int = 50,
                  max_steps: int | None = None, prompt_format: str = "teacher",
                  warmup_steps: int = 5) -> dict[str, Any]:
    """Cut a student from the dataset's teacher and train it (SFT plus the `objective`'s
    divergence to the teacher's soft labels), tracking it on a held-out share of prompts."""
    reconcile(Catalog())
    inputs.reference(dataset, "dataset")
    inputs.name(name, "name")
    inputs.whole_number(layers, "layers", minimum=1)
    config = TrainConfig(epochs=epochs, max_steps=max_steps, batch_size=batch_size, lr=lr,
                         kd_weight=kd_weight, temperature=temperature, seed=seed,
                         objective=objective,
                         objective_params={} if objective_params is None else objective_params,
                         heldout_fraction=heldout_fraction, eval_every=eval_every,
                         prompt_format=prompt_format, warmup_steps=warmup_steps)
    return students.train_student(Catalog(), dataset, name, layers, config)


@flow(name="run_benchmarks")
def run_benchmarks(models: list[str], suite: str = DEMO_SUITE,
                   prompt_format: str | None = None) -> list[dict[str, Any]]:
    """Run one suite on each model in turn (teachers first, so students get agreement),
    each in its own prompt format unless `prompt_format` names one for all."""
    catalog = Catalog()
    reconcile(catalog)
    if not isinstance(models, list) or not models:
        raise StillroomError("give at least one teacher or student name", where="models")
    for model in models:  # every name resolves before the first model runs
        resolve_model(catalog, model)
    loaded = load_suite(suite)
    results = []
    for model in models:
        results.append(run_suite(catalog, model, loaded, prompt_format=prompt_format))
    close_engine()
    return results


@flow(name="distill")
def distill(teacher: str, prompts: str = DEMO_PROMPTS, suite: str = DEMO_SUITE,
            student: str | None = None, layers: int = 4, epochs: int = 3,
            kd_weight: float = 0.5, max_tokens: int = 16,
            stop: list[str] | None = None, objective: str = "forward_kl",
            objective_params: dict[str, float] | None = None, seed: int = 0,
            heldout_fraction: float = 0.1, eval_every: int = 50, max_steps: int | None = None,
            lr: float = 3e-4, batch_size: int = 8, prompt_format: str = "teacher",
            warmup_steps: int = 5) -> dict[str, Any]:
    """The whole loop for one teacher: dataset, student, and teacher-vs-student benchmarks.

    Parameters the later stages take are checked first, so a bad one fails in seconds, not
    after generation and training."""
    reconcile(Catalog())
    student = students.validate_student_name(student or f"{teacher}-student", "student")
    inputs.whole_number(layers, "layers", minimum=1)
    training = {"epochs": epochs, "kd_weight": kd_weight, "objective": objective,
                "objective_params": {} if objective_params is None else objective_params,
                "seed": seed,
                "heldout_fraction": heldout_fraction, "eval_every": eval_every,
                "max_steps": max_steps, "lr": lr, "batch_size": batch_size,
                "prompt_format": prompt_format, "warmup_steps": warmup_steps}
    TrainConfig(**training)
    SamplingConfig(max_tokens=max_tokens)
    load_suite(suite)
    refreshed = refresh_dataset(teacher, prompts, max_tokens=max_tokens, stop=stop,
                                dataset_name=f"{teacher}-data")
    benchmarks = run_benchmarks([teacher], suite)  # reuses the teacher's warm engine
    trained = train_student(refreshed["dataset"]["dataset_id"], student, layers, **training)
    # The init is asked in the format its trained version learned, so the two compare.
    benchmarks += run_benchmarks([f"{student}-init", student], suite, prompt_format)
    return {"dataset": refreshed["dataset"], "student": trained, "benchmarks": benchmarks}
