#!/usr/bin/env bash
# The device check, one script: builds with CUDA, runs the GPU tests (bit-exact against the
# reference decoder, damaged input), then times GPU decode on >= 2 GB of tiled corpus tensors
# against a device-to-device copy. Needs CMake, nvcc, ninja or make, libzstd, libxxhash, gtest.
# Usage: bench/gpu_check.sh [CORPUS_DIR] [GB]
set -euo pipefail
cd "$(dirname "$0")/.."
corpus=${1:-../shared/corpus}
gb=${2:-2}
gen=""
command -v ninja >/dev/null && gen="-G Ninja"
cmake -S . -B build-gpu $gen -DCMAKE_BUILD_TYPE=Release -DBIGSMALL_GPU_BENCH=ON >/dev/null
cmake --build build-gpu -j "$(nproc)"
echo "== GPU tests"
build-gpu/tests/bigsmall_tests --gtest_filter='Cuda*'
echo "== GPU decode throughput"
build-gpu/gpu_bench "$corpus" "$gb"
