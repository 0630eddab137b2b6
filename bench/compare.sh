#!/usr/bin/env bash
# A/B speed of two commits on the corpus, on a noisy machine: builds the library of each commit
# in a temporary worktree, then alternates the two builds three times per file and reports the
# median MB/s of each (compress_file and verify, medians of 5 calls per run) and their ratio, and
# the ratio of the fastest calls (of 15): on a machine whose speed drifts by 20-40%, the fastest
# run is the steadiest estimate of what the code itself costs.
#   bench/compare.sh OLD_COMMIT [NEW_COMMIT=HEAD] [THREADS=1]
# MODE=restore measures decompress_file to a file (restore) instead of verify (decode only).
set -euo pipefail
cd "$(dirname "$0")/.."
old=$1; new=${2:-HEAD}; threads=${3:-1}; mode=${MODE:-verify}
corpus=${CORPUS:-../shared/corpus}
work=$(mktemp -d)
trap 'git worktree remove --force "$work/old" 2>/dev/null; git worktree remove --force "$work/new" 2>/dev/null; rm -rf "$work"' EXIT
for side in old new; do
  rev=$old; [ "$side" = new ] && rev=$new
  git worktree add -q "$work/$side" "$rev"
  cmake -S "$work/$side" -B "$work/$side/b" -G Ninja -DCMAKE_BUILD_TYPE=Release -DBIGSMALL_TESTS=OFF \
    -DBIGSMALL_CLI=OFF -DBIGSMALL_CUDA=OFF >/dev/null
  cmake --build "$work/$side/b" --target bigsmall >/dev/null
  c++ -std=c++20 -O2 -I"$work/$side/include" bench/ab_run.cpp "$work/$side/b/libbigsmall.a" -lzstd -lxxhash -lpthread \
    -o "$work/ab_$side"
done
echo "| file | comp $old | comp $new | ratio | fastest ratio | decomp $old | decomp $new | ratio | fastest ratio |"
echo "|---|---|---|---|---|---|---|---|---|"
for f in "$corpus"/*.safetensors; do
  o=(); n=()
  for _ in 1 2 3; do
    o+=("$("$work/ab_old" "$f" "$work/o.bs" "$threads" "$mode")")
    n+=("$("$work/ab_new" "$f" "$work/n.bs" "$threads" "$mode")")
  done
  python3 - "$f" "${o[@]}" "${n[@]}" <<'PY'
import os, statistics as s, sys
f = sys.argv[1]; runs = [tuple(map(float, r.split())) for r in sys.argv[2:]]
o, n = runs[:3], runs[3:]
size = os.path.getsize(f) / 1e6
mb = lambda rs, i: size / s.median(r[i] for r in rs)
best = lambda rs, i: size / min(r[i] for r in rs)
print(f"| {os.path.basename(f)} | {mb(o,0):.0f} | {mb(n,0):.0f} | {mb(n,0)/mb(o,0):.2f}x | {best(n,2)/best(o,2):.2f}x | "
      f"{mb(o,1):.0f} | {mb(n,1):.0f} | {mb(n,1)/mb(o,1):.2f}x | {best(n,3)/best(o,3):.2f}x |")
PY
done
