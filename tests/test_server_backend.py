"""`stillroom generate --backend vllm-server` starts its own OpenAI server and stops it after."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from stillroom.catalog import Catalog
from stillroom.tasks import teachers


def test_cli_backend_starts_and_stops_its_own_vllm_server(tiny_model: Path,
                                                          tmp_path: Path) -> None:
    home = tmp_path / "home"
    teachers.add_teacher(Catalog(home / "catalog.duckdb").ensure(), "tiny", str(tiny_model),
                         "mit")
    prompt_file = tmp_path / "prompts.jsonl"
    prompt_file.write_text("\n".join(json.dumps({"prompt": f"Tell me about thing {i}."})
                                      for i in range(3)))
    result = subprocess.run(
        [sys.executable, "-m", "stillroom.cli", "generate", "--teacher", "tiny", "--prompts",
         str(prompt_file), "--backend", "vllm-server", "--max-tokens", "8"],
        env={**os.environ, "STILLROOM_HOME": str(home)}, capture_output=True, text=True,
        timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    summary = json.loads(result.stdout.strip().splitlines()[-1])
    assert summary["responses_stored"] == 3 and summary["failed"] == 0
    servers = [line for line in subprocess.run(["ps", "-eo", "args"], capture_output=True,
                                               text=True).stdout.splitlines()
               if "api_server" in line and str(tiny_model) in line]  # not other sessions'
    assert not servers  # stopped with the run
