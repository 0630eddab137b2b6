#!/usr/bin/env bash
# Sets up and runs every test: the C++ suite (warnings as errors), an install that a separate
# CMake project finds and links, the same suite under
# AddressSanitizer + UndefinedBehaviorSanitizer, the CLI tests, the .bs fuzzer for 60 s, the input
# fuzzer (safetensors files and directory indexes, round trips checked) for 30 s, and the
# Python package's tests on a real transformer model.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$(pwd)
bash scripts/setup-deps.sh
jobs=$(nproc)

echo "== build (Release, -Werror; the CUDA decoder too when nvcc is found) and test"
cmake -S . -B build -G Ninja -DCMAKE_BUILD_TYPE=Release -DBIGSMALL_WERROR=ON >/dev/null
cmake --build build -j "$jobs"
ctest --test-dir build -j "$jobs" --output-on-failure
echo "== install, and build a separate project against it with find_package(bigsmall)"
bash tests/install_test.sh build

echo "== build with ASan + UBSan and test"
cmake -S . -B build-asan -G Ninja -DCMAKE_BUILD_TYPE=RelWithDebInfo -DBIGSMALL_WERROR=ON -DBIGSMALL_SANITIZE=ON \
  -DBIGSMALL_CUDA=OFF >/dev/null
cmake --build build-asan -j "$jobs"
ASAN_OPTIONS=detect_leaks=1 UBSAN_OPTIONS=print_stacktrace=1 ctest --test-dir build-asan -j "$jobs" --output-on-failure

echo "== fuzz the .bs reader and decoders for ${BIGSMALL_FUZZ_SECONDS:-60} s"
CC=clang-14 CXX=clang++-14 cmake -S . -B build-fuzz -G Ninja -DCMAKE_BUILD_TYPE=RelWithDebInfo -DBIGSMALL_FUZZ=ON \
  -DBIGSMALL_TESTS=OFF -DBIGSMALL_CLI=OFF -DBIGSMALL_CUDA=OFF \
  -DCMAKE_C_FLAGS="-fsanitize=fuzzer-no-link,address,undefined" \
  -DCMAKE_CXX_FLAGS="-fsanitize=fuzzer-no-link,address,undefined" >/dev/null
cmake --build build-fuzz -j "$jobs"
seeds=$(mktemp -d)
work=$(mktemp -d)
trap 'rm -rf "$seeds" "$work"' EXIT
mkdir -p "$seeds/bs" "$seeds/inputs" "$work/bs" "$work/inputs"
python3 fuzz/make_seeds.py tests/golden/golden-v1.bs "$seeds/bs"
python3 fuzz/make_input_seeds.py tests/golden/golden-v1.safetensors "$seeds/inputs"
# Run in $work: the fuzzers keep their scratch files in the current directory. On a failure the
# reason and the stack are printed (the input is too large for a log; the fuzzer's mutation
# line and the oracle's message are what it takes to reproduce it with a longer run).
fuzz() {
  local name=$1 seconds=$2 seed_dir=$3 log="$work/$1.log"
  if ! (cd "$work" && "$root/build-fuzz/$name" -max_total_time="$seconds" -rss_limit_mb=2048 -timeout=10 \
        -print_final_stats=1 "$work/$(basename "$seed_dir")" "$seed_dir" >"$log" 2>&1); then
    grep -vE '^#[0-9]+[[:space:]]+(NEW|REDUCE|pulse|INITED|RELOAD)' "$log" | tail -60 || true
    echo "fuzz: $name FAILED"
    return 1
  fi
  tail -4 "$log"
}
fuzz fuzz_bs_reader "${BIGSMALL_FUZZ_SECONDS:-60}" "$seeds/bs"
echo "== fuzz the safetensors reader, the encoders' round trip and directory indexes for ${BIGSMALL_FUZZ_INPUT_SECONDS:-30} s"
fuzz fuzz_inputs "${BIGSMALL_FUZZ_INPUT_SECONDS:-30}" "$seeds/inputs"
echo "fuzz: 2 passed, 0 failed"

echo "== Python package (nanobind) and its tests on a real model"
bash scripts/setup-python.sh
(cd python/tests && ../../.venv/bin/python -m pytest -q .)
