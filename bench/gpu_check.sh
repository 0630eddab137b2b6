#!/usr/bin/env bash
# The device check, one script, for a GPU machine (prepared with bench/make_devpack.sh on a
# machine with nvcc; the GPU machine needs Python with torch, transformers, CMake and nvcc):
#   1. the GPU tests, bit-exact against the reference decoder on every dtype, awkward sizes,
#      special values, damaged input, and every tensor of the carried corpus files;
#   2. gpu_bench: decode throughput on >= 2 GB of tiled BF16, F16 and F32 weights against a
#      device-to-device copy;
#   3. the Python package built there, its GPU tests, and loading to the GPU against
#      safetensors.torch.load_file(device="cuda") of the originals (restored from the .bs files);
#   4. DFloat11's own GPU decoder on the same BF16 weights, if its wheels were carried;
#   5. the GPU tests under compute-sanitizer (memcheck), and an Nsight Compute profile;
#   6. damaged .bs files (bench/gpu_mutation.py) decoded on the GPU and the CPU: same answers.
# Logs and JSON go to $OUT (or ./gpu-check-out). Usage: bench/gpu_check.sh [GB]
set -uo pipefail
cd "$(dirname "$0")/.."
pack=$PWD/.devpack
out=${OUT:-$PWD/gpu-check-out}
gb=${1:-2}
py=${PYTHON:-python3}
mkdir -p "$out"
export LD_LIBRARY_PATH=$pack/lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}
export PYTHONUNBUFFERED=1
t0=$(date +%s)
step() { echo; echo "== [$(($(date +%s) - t0)) s] $*"; }
status=()
# Every GPU test fails rather than skips when the decoder cannot start here (a driver older than
# the CUDA runtime, a build without CUDA): a check that skipped them all would pass.
export BIGSMALL_REQUIRE_GPU=1

step "machine"
nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.sm,clocks.mem --format=csv,noheader
"$py" -c "import torch, sys; print('python', sys.version.split()[0], 'torch', torch.__version__)"

# The Python build takes a minute of CPU: it runs beside the C++ checks.
step "building the Python package (background)"
(
  "$py" -m pip install -q --no-index --no-deps --no-compile --target /tmp/site "$pack"/whl/*.whl &&
  PYTHONPATH=/tmp/site CMAKE_PREFIX_PATH=$pack "$py" -m pip install -q --no-build-isolation --no-deps --no-index \
    -C cmake.define.BIGSMALL_CUDA_ARCHITECTURES=90-real -C build-dir=/tmp/bs-build . 
) >"$out/pybuild.log" 2>&1 &
pybuild=$!

step "GPU tests (C++)"
BIGSMALL_GPU_CORPUS=$pack/bs timeout 180 "$pack/bin/bigsmall_tests" --gtest_filter='Cuda*' 2>&1 | tee "$out/gtest.log" | tail -25
status+=("gtest:${PIPESTATUS[0]}")

step "gpu_bench ($gb GB per dtype)"
timeout 240 "$pack/bin/gpu_bench" "$pack/bs" "$gb" 2>&1 | tee "$out/gpu_bench.log"
status+=("gpu_bench:${PIPESTATUS[0]}")

step "restoring the originals from .bs (CLI)"
rm -rf /tmp/pairs /tmp/model.orig && mkdir -p /tmp/pairs
for f in "$pack"/bs/*.bs; do
  cp "$f" /tmp/pairs/ && "$pack/bin/bigsmall" decompress -q -f "$f" -o "/tmp/pairs/$(basename "${f%.bs}").safetensors"
done
"$pack/bin/bigsmall" decompress -q -f "$pack/model" -o /tmp/model.orig && ls /tmp/pairs | wc -l

step "waiting for the Python build"
wait $pybuild
rc=$?
status+=("pybuild:$rc")
tail -5 "$out/pybuild.log"
if [ $rc -eq 0 ]; then
  step "Python GPU tests"
  ( cd python/tests && BIGSMALL_TEST_MODEL=/tmp/model.orig timeout 180 "$py" -m pytest -q -p no:cacheprovider test_cuda.py \
      -rs 2>&1 | tee "$out/pytest.log" | tail -15 )
  status+=("pytest:${PIPESTATUS[0]}")
  step "damaged files: the GPU decoder against the CPU decoder (60 s)"
  timeout 120 "$py" bench/gpu_mutation.py --bs-dir "$pack/bs" --seconds 60 --json "$out/mutation.json" 2>&1 |
    tee "$out/mutation.log" | tail -12
  status+=("mutation:${PIPESTATUS[0]}")
  step "loading to the GPU: bigsmall vs safetensors"
  timeout 180 "$py" bench/gpu_load_bench.py --pairs /tmp/pairs --model-bs "$pack/model" --model-orig /tmp/model.orig \
    --json "$out/gpu_load.json" 2>"$out/gpu_load.err" | tee "$out/gpu_load.log"
  status+=("load_bench:${PIPESTATUS[0]}")
  tail -3 "$out/gpu_load.err"
fi

if [ -f bench/dfloat11_bench.py ] && ls "$pack"/whl/dfloat11-*.whl >/dev/null 2>&1; then
  step "DFloat11's decoder on the same BF16 weights"
  PYTHONPATH=/tmp/site timeout 150 "$py" bench/dfloat11_bench.py --bs-dir /tmp/pairs --gb "$gb" 2>"$out/dfloat11.err" |
    tee "$out/dfloat11.json"
  status+=("dfloat11:${PIPESTATUS[0]}")
  tail -3 "$out/dfloat11.err"
fi

# Out-of-bounds accesses and uninitialised reads that a bit-exact result can hide (a read past a
# chunk that happens to hit mapped memory): the GPU tests once more under compute-sanitizer, the
# corpus test left out for time.
if command -v compute-sanitizer >/dev/null; then
  step "compute-sanitizer memcheck of the GPU tests"
  timeout 150 compute-sanitizer --tool memcheck --error-exitcode 9 "$pack/bin/bigsmall_tests" \
    --gtest_filter='Cuda*:-*Corpus*' >"$out/memcheck.txt" 2>&1
  status+=("memcheck:$?")
  grep -E 'ERROR SUMMARY|PASSED|FAILED|Invalid' "$out/memcheck.txt" | head -12
fi

# Where the decode kernel's warps wait (for the next round of tuning): one profiled launch of
# the default kernel on a small tile, if Nsight Compute is there.
if command -v ncu >/dev/null; then
  step "ncu: stall reasons of one decode launch"
  timeout 120 ncu --target-processes all -k regex:decode_blocks --launch-skip 1 --launch-count 1 \
    --section SpeedOfLight --section Occupancy --section WarpStateStats --section MemoryWorkloadAnalysis \
    "$pack/bin/gpu_bench" "$pack/bs" 0.25 >"$out/ncu.txt" 2>&1
  status+=("ncu:$?")
  grep -E 'Stall|Warp Cycles|Achieved Occupancy|Memory Throughput|Duration|Registers' "$out/ncu.txt" | head -30
fi

step "summary: ${status[*]}"
grep -A6 '^| dtype' "$out/gpu_bench.log"
grep -E '^\| all|^StreamingLoader|^bigsmall.from' "$out/gpu_load.log" 2>/dev/null
cat "$out/dfloat11.json" 2>/dev/null

# The device tool brings back at most 8 files: the logs travel as one archive.
if [ -n "${OUT:-}" ]; then
  tar czf /tmp/gpu-check-logs.tgz -C "$out" . && find "$out" -mindepth 1 -delete && mv /tmp/gpu-check-logs.tgz "$out/"
fi
# The exit status says whether every step passed (it was always 0: only the summary told).
for s in "${status[@]}"; do
  if [ "${s##*:}" != 0 ]; then
    echo "gpu_check: failed steps in: ${status[*]}" >&2
    exit 1
  fi
done
