"""A small real dataset version (tiny teacher, transformers backend, top-k soft labels)."""

from __future__ import annotations

from stillroom.catalog import Catalog
from stillroom.tasks import datasets
from stillroom.tasks.curation import CurationConfig, curate
from stillroom.tasks.engine import SamplingConfig
from stillroom.tasks.generate import generate
from stillroom.tasks.prompts import Prompt
from stillroom.tasks.teachers import Teacher

CURATION = CurationConfig({"empty": {}}, {"exact": {}})
TOPICS = ("tea", "rain", "foxes", "maps", "tides", "glass", "bread", "rust")


def cut_dataset(catalog: Catalog, teacher: Teacher, topics: tuple[str, ...] = TOPICS,
                name: str = "tiny-data") -> str:
    """Generate answers for `topics` (only those not answered yet) and cut a version of them."""
    prompts = [Prompt(f"Tell me about {topic}.", "test") for topic in topics]
    generate(catalog, teacher, prompts, SamplingConfig(max_tokens=12, logprobs_k=5),
             backend="transformers", progress=False)
    curate(catalog, CURATION, "test")
    return datasets.cut(catalog, CURATION, name=name)["dataset_id"]
