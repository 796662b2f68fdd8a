"""Where Stillroom keeps its state, and the process environment its engines need."""

from __future__ import annotations

import os
from pathlib import Path

HOME_ENV = "STILLROOM_HOME"


def home() -> Path:
    """The state directory: catalog, checkpoints and artifacts (STILLROOM_HOME or ./.stillroom)."""
    return Path(os.environ.get(HOME_ENV, ".stillroom")).resolve()


def catalog_path() -> Path:
    return home() / "catalog.duckdb"


def models_dir() -> Path:
    return home() / "models"


def datasets_dir() -> Path:
    return home() / "datasets"


def has_cuda() -> bool:
    import torch

    return torch.cuda.is_available()


def apply_engine_env() -> None:
    """Defaults that keep vLLM on a CPU host bounded and quiet; explicit settings win."""
    os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "2")
    os.environ.setdefault("VLLM_NO_USAGE_STATS", "1")
    os.environ.setdefault("VLLM_LOGGING_LEVEL", "WARNING")
    if "VLLM_ENABLE_V1_MULTIPROCESSING" not in os.environ and not has_cuda():
        # On CPU the engine core in-process starts ~5x faster (no worker spawn and re-import).
        os.environ["VLLM_ENABLE_V1_MULTIPROCESSING"] = "0"
    os.environ.setdefault("DO_NOT_TRACK", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")


def apply_prefect_env() -> None:
    """Keep Prefect's state beside the catalog and offline; call before importing prefect."""
    os.environ.setdefault("PREFECT_HOME", str(home() / "prefect"))
    Path(os.environ["PREFECT_HOME"]).mkdir(parents=True, exist_ok=True)
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "90")
    os.environ.setdefault("DO_NOT_TRACK", "1")
