#!/usr/bin/env bash
# CLI behaviour: outputs and documented exit codes. Usage: cli_test.sh BIGSMALL GOLDEN_DIR
set -u
bs=$1
golden=$2
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
pass=0
fail=0
skipped=0  # checks that could not run here: each says why, and none counts as passed

expect() {  # expect CODE DESCRIPTION -- command...
  local want=$1 what=$2
  shift 3
  "$@" >"$tmp/out" 2>"$tmp/err"
  local got=$?
  if [ "$got" -eq "$want" ]; then pass=$((pass + 1)); else
    fail=$((fail + 1)); echo "FAIL: $what: exit $got, expected $want"; cat "$tmp/err"; fi
}
check() {  # check DESCRIPTION -- test-expression...
  local what=$1
  shift 2
  if "$@"; then pass=$((pass + 1)); else fail=$((fail + 1)); echo "FAIL: $what"; fi
}
skip() {  # skip REASON: a block that cannot run here is counted and said, never passed
  skipped=$((skipped + 1))
  echo "SKIP: $*"
}
failed() {  # failed DESCRIPTION: a check that could not be made (a run ended before it could be looked at)
  fail=$((fail + 1))
  echo "FAIL: $*"
}
waitfor() {  # waitfor SECONDS -- command...: poll (every 10 ms) until the command succeeds; false on timeout
  local n=$(($1 * 100))
  shift 2
  for _ in $(seq "$n"); do "$@" && return 0; sleep 0.01; done
  return 1
}
pstate() {  # pstate PID: the process's state letter (R, S, D, T stopped, Z), or "gone"
  local st
  { read -r st <"/proc/$1/stat"; } 2>/dev/null || { echo gone; return; }
  st=${st##*) }
  echo "${st%% *}"
}
not_running() {  # not_running PID: stopped, or ended
  case $(pstate "$1") in T | Z | gone) return 0 ;; esac
  return 1
}
stop_run() {  # stop_run PID: SIGSTOP it and wait until it is stopped; false if it ended first
  kill -STOP "$1" 2>/dev/null || return 1
  waitfor 10 -- not_running "$1"
  [ "$(pstate "$1")" = T ]
}
# Run as another user than root, for checks of permissions root would pass: the command string
# as `nobody`, through setpriv or su, where this runs as root and that works (else empty).
bs_abs=$(cd "$(dirname "$bs")" && pwd)/$(basename "$bs")
as_nobody=()
if [ "$(id -u)" = 0 ] && id nobody >/dev/null 2>&1; then
  for try in "setpriv --reuid=nobody --regid=$(id -g nobody) --clear-groups bash -c" "su nobody -s /bin/bash -c"; do
    read -r -a cand <<<"$try"
    if command -v "${cand[0]}" >/dev/null 2>&1 &&
      "${cand[@]}" "test \"\$(id -u)\" = $(id -u nobody) && \"$bs_abs\" --version >/dev/null" 2>/dev/null; then
      as_nobody=("${cand[@]}")
      break
    fi
  done
fi

cp "$golden/golden-v1.safetensors" "$tmp/m.safetensors"
expect 0 "compress" -- "$bs" compress -q "$tmp/m.safetensors"
check "default output name" -- test -f "$tmp/m.bs"
expect 2 "existing output without -f" -- "$bs" compress -q "$tmp/m.safetensors"
expect 0 "existing output with -f" -- "$bs" compress -q -f "$tmp/m.safetensors"
expect 0 "verify" -- "$bs" verify -q "$tmp/m.bs"
expect 0 "info" -- "$bs" info "$tmp/m.bs"
check "info lists tensors" -- grep -q "bf16.weight" "$tmp/out"
expect 0 "info --json" -- "$bs" info --json "$tmp/m.bs"
check "info json parses" -- python3 -c "import json,sys; d=json.load(open('$tmp/out')); assert len(d['tensors'])==8" 
check "info json: data_offsets as the original header gives them" -- python3 -c "
import json, struct
d = json.load(open('$tmp/out'))
f = open('$tmp/m.safetensors', 'rb'); h = json.loads(f.read(struct.unpack('<Q', f.read(8))[0]))
assert {t['name']: t['data_offsets'] for t in d['tensors']} == {k: v['data_offsets'] for k, v in h.items() if k != '__metadata__'}"
expect 0 "decompress" -- "$bs" decompress -q "$tmp/m.bs" -o "$tmp/r.safetensors"
check "byte-identical" -- cmp -s "$tmp/m.safetensors" "$tmp/r.safetensors"
# --best (zstd level 19 for tensors with repeated structure): a valid .bs that restores byte for
# byte, never larger than the default's, no tensor larger; smaller where a tensor repeats itself.
# On the golden file and on weight-like values beside tensors with repeated structure.
python3 - "$tmp/like.safetensors" <<'PY'
import json, random, struct, sys
random.seed(2)
ts, data = {}, bytearray()
def add(name, dtype, shape, b):
    ts[name] = {"dtype": dtype, "shape": shape, "data_offsets": [len(data), len(data) + len(b)]}
    data.extend(b)
n = 1 << 18
add("w.bf16", "BF16", [n], b"".join(struct.pack("<f", random.gauss(0, 0.02))[2:] for _ in range(n)))
row = [random.gauss(0, 1) for _ in range(999)]
add("pos.f32", "F32", [256, 999], b"".join(struct.pack("<999f", *[x + (i % 7) * 1e-3 for x in row]) for i in range(256)))
add("ids.i32", "I32", [1 << 16], struct.pack("<65536i", *[(i * 7919) % 50021 for i in range(1 << 16)]))
h = json.dumps(ts).encode()
h += b" " * (-len(h) % 8)
open(sys.argv[1], "wb").write(struct.pack("<Q", len(h)) + h + data)
PY
for f in m like; do
  expect 0 "compress --best $f.safetensors" -- "$bs" compress -q --best "$tmp/$f.safetensors" -o "$tmp/$f.best.bs"
  expect 0 "compress $f.safetensors at the default" -- "$bs" compress -q "$tmp/$f.safetensors" -o "$tmp/$f.default.bs"
  expect 0 "verify its --best .bs" -- "$bs" verify -q "$tmp/$f.best.bs"
  expect 0 "decompress its --best .bs" -- "$bs" decompress -q "$tmp/$f.best.bs" -o "$tmp/$f.best.safetensors"
  check "--best of $f.safetensors restores byte for byte" -- cmp -s "$tmp/$f.safetensors" "$tmp/$f.best.safetensors"
  check "--best of $f.safetensors is no larger than the default's" -- \
    test "$(stat -c %s "$tmp/$f.best.bs")" -le "$(stat -c %s "$tmp/$f.default.bs")"
  expect 0 "info --json of both" -- "$bs" info --json "$tmp/$f.best.bs" "$tmp/$f.default.bs"
  check "--best of $f.safetensors: no tensor larger than at the default" -- python3 -c "
import json; b, d = (json.loads(l) for l in open('$tmp/out').read().splitlines())
d = {t['name']: t['stored_bytes'] for t in d['tensors']}
assert len(b['tensors']) == len(d) > 0 and all(t['stored_bytes'] <= d[t['name']] for t in b['tensors']), (b, d)"
done
check "--best is smaller where a tensor repeats itself" -- \
  test "$(stat -c %s "$tmp/like.best.bs")" -lt "$(stat -c %s "$tmp/like.default.bs")"
expect 0 "compress --json" -- "$bs" compress --json -f -T 1 "$tmp/m.safetensors" -o "$tmp/j.bs"
check "json summary" -- grep -q '"ratio"' "$tmp/out"
check "quiet when not a terminal: no progress bar on stderr" -- test ! -s "$tmp/err"
expect 0 "compress -v" -- "$bs" compress -v -f "$tmp/m.safetensors" -o "$tmp/v.bs"
check "verbose lists tensors with codecs" -- grep -q "bf16.weight: BF16 float" "$tmp/err"
expect 0 "verify -T2 (attached, as zstd takes it)" -- "$bs" verify -q -T2 "$tmp/m.bs"
expect 1 "-Tx is not a thread count" -- "$bs" verify -q -Tx "$tmp/m.bs"
expect 0 "bench" -- "$bs" bench -T 2 "$tmp/m.safetensors"
check "bench prints speeds" -- grep -q "decompress" "$tmp/out"

# directories
mkdir -p "$tmp/model" && cp "$tmp/m.safetensors" "$tmp/model/model.safetensors" && echo '{"a":1}' >"$tmp/model/config.json"
expect 0 "compress dir" -- "$bs" compress -q "$tmp/model"
check "dir output" -- test -f "$tmp/model.bs/model.bs" -a -f "$tmp/model.bs/config.json" -a -f "$tmp/model.bs/bigsmall.index.json"
expect 0 "verify dir" -- "$bs" verify -q "$tmp/model.bs"
expect 0 "info dir" -- "$bs" info "$tmp/model.bs"
check "info dir lists the file's tensors" -- grep -q "bf16.weight" "$tmp/out"
check "info dir ends with the directory's total" -- grep -q "model.bs: 1 .bs file, 8 tensors" "$tmp/out"
expect 0 "info --json dir" -- "$bs" info --json "$tmp/model.bs"
check "info dir json: files and sums" -- python3 -c "import json; d=json.load(open('$tmp/out')); f=d['files']; assert len(f)==1 and len(f[0]['tensors'])==8 and d['file_bytes']==f[0]['file_bytes']>0"
expect 4 "info of a directory without an index" -- "$bs" info "$tmp/model"
check "its error names the index" -- grep -q "bigsmall.index.json" "$tmp/err"
expect 0 "decompress dir" -- "$bs" decompress -q "$tmp/model.bs" -o "$tmp/model2"
check "dir restored" -- diff -r "$tmp/model" "$tmp/model2"
# -f into a directory that holds other files: the summary counts what this run wrote, not them.
head -c 3000000 /dev/urandom >"$tmp/model.bs/other.bin"
expect 0 "compress -f dir into a directory with other files" -- "$bs" compress --json -f "$tmp/model" -o "$tmp/model.bs"
check "its summary counts only what it wrote" -- python3 -c "
import json, os; d = json.load(open('$tmp/out')); b = '$tmp/model.bs'
want = sum(os.path.getsize(os.path.join(b, n)) for n in ('model.bs', 'config.json', 'bigsmall.index.json'))
assert d['compressed_bytes'] == want and d['ratio'] < 1, (d, want)"
rm -f "$tmp/model.bs/other.bin"
head -c 3000000 /dev/urandom >"$tmp/model2/other.bin"
expect 0 "decompress -f dir into a directory with other files" -- "$bs" decompress --json -f "$tmp/model.bs" -o "$tmp/model2"
check "its summary counts only what it wrote" -- python3 -c "
import json, os; d = json.load(open('$tmp/out')); b = '$tmp/model2'
want = sum(os.path.getsize(os.path.join(b, n)) for n in ('model.safetensors', 'config.json'))
assert d['original_bytes'] == want, (d, want)"
rm -f "$tmp/model2/other.bin"
mkdir -p "$tmp/dot" && cp "$tmp/m.safetensors" "$tmp/dot/model.safetensors"
bs_abs=$(cd "$(dirname "$bs")" && pwd)/$(basename "$bs")
expect 0 "compress . inside a model directory" -- sh -c "cd '$tmp/dot' && '$bs_abs' compress -q ."
check "writes the output beside it, named after it" -- test -f "$tmp/dot.bs/model.bs" -a ! -e "$tmp/dot/..bs"
# shards with their index, and files in subdirectories
mkdir -p "$tmp/sharded/1_Pooling"
cp "$tmp/m.safetensors" "$tmp/sharded/model-00001-of-00002.safetensors"
cp "$tmp/m.safetensors" "$tmp/sharded/model-00002-of-00002.safetensors"
echo '{"metadata": {}, "weight_map": {}}' >"$tmp/sharded/model.safetensors.index.json"
echo '{"pooling": "mean"}' >"$tmp/sharded/1_Pooling/config.json"
expect 0 "compress sharded dir" -- "$bs" compress -q "$tmp/sharded"
check "one .bs per shard, index and subdirectory copied" -- test -f "$tmp/sharded.bs/model-00001-of-00002.bs" -a \
  -f "$tmp/sharded.bs/model-00002-of-00002.bs" -a -f "$tmp/sharded.bs/model.safetensors.index.json" -a \
  -f "$tmp/sharded.bs/1_Pooling/config.json" -a ! -e "$tmp/sharded.bs/model-00001-of-00002.safetensors"
expect 0 "info sharded dir" -- "$bs" info "$tmp/sharded.bs"
check "info sums the shards" -- grep -q "sharded.bs: 2 .bs files, 16 tensors" "$tmp/out"
expect 0 "info --json sharded dir, with a trailing slash" -- "$bs" info --json "$tmp/sharded.bs/"
check "its totals are the sums over its files" -- python3 -c "
import json, os
d = json.load(open('$tmp/out')); f = d['files']
assert d['path'] == '$tmp/sharded.bs' and len(f) == 2
assert d['file_bytes'] == sum(x['file_bytes'] for x in f) == sum(os.path.getsize(x['path']) for x in f)
assert d['original_bytes'] == sum(x['original_bytes'] for x in f) == 2 * os.path.getsize('$tmp/m.safetensors')
assert d['floor_bytes'] >= sum(x['floor_bytes'] for x in f) - 1"
expect 0 "decompress sharded dir" -- "$bs" decompress -q "$tmp/sharded.bs" -o "$tmp/sharded2"
check "sharded dir restored byte for byte" -- diff -r "$tmp/sharded" "$tmp/sharded2"
expect 0 "bench dir" -- "$bs" bench --json -T 1 "$tmp/model"
check "bench dir measures its safetensors file" -- grep -q 'model/model.safetensors", "ok": true, "threads": 1' "$tmp/out"
check "bench times compression to a file and in memory" -- grep -q '"compress_GBps": [0-9.]*, "compress_memory_GBps": [0-9.]*[1-9]' "$tmp/out"
check "bench times decompression into memory and verify" -- grep -q '"decompress_GBps": [0-9.]*[1-9][0-9.]*, "verify_GBps": [0-9.]*[1-9]' "$tmp/out"
expect 4 "bench dir without safetensors" -- "$bs" bench "$tmp/model.bs"
expect 4 "compressing a compressed directory" -- "$bs" compress -q "$tmp/model.bs" -o "$tmp/twice.bs"
check "says it is compressed already" -- grep -q "model.bs: already a compressed model directory" "$tmp/err"
check "and writes nothing" -- test ! -e "$tmp/twice.bs"
mkdir -p "$tmp/dotidx" && echo '{"format": "bigsmall", "files": [{"source": "a.safetensors", "bs": "."}]}' >"$tmp/dotidx/bigsmall.index.json"
expect 5 "an index naming the directory itself" -- "$bs" info "$tmp/dotidx"
check "is refused as unsafe" -- grep -q "unsafe path '.'" "$tmp/err"

# --json output parses whatever bytes a file name holds: non-UTF-8 bytes become \udc80..\udcff
# (as in a directory's index), so that each name stays its own
nu="$tmp/nu$(printf '\xff')é"
cp "$tmp/m.safetensors" "$nu.safetensors"
expect 0 "compress a non-UTF-8 name" -- "$bs" compress -q "$nu.safetensors"
expect 0 "info --json of it" -- "$bs" info --json "$nu.bs"
check "its JSON parses, with the valid characters kept" -- python3 -c "
import json, os; d = json.loads(open('$tmp/out', 'rb').read()); assert d['path'].endswith('nu\udcff\u00e9.bs'), d['path']
assert os.fsencode(d['path']) == os.fsencode('$tmp') + b'/nu\xff\xc3\xa9.bs', d['path']"
# such a name inside a model directory goes into its index: it must restore
mkdir -p "$tmp/nudir" && cp "$tmp/m.safetensors" "$tmp/nudir/model-$(printf '\xff').safetensors"
expect 0 "compress a directory holding a non-UTF-8 name" -- "$bs" compress -q "$tmp/nudir"
expect 0 "verify it" -- "$bs" verify -q "$tmp/nudir.bs"
expect 0 "info --json of it" -- "$bs" info --json "$tmp/nudir.bs"
check "its JSON parses" -- python3 -c "import json; json.loads(open('$tmp/out', 'rb').read())"
expect 0 "decompress it" -- "$bs" decompress -q "$tmp/nudir.bs" -o "$tmp/nudir2"
check "restored byte for byte" -- diff -r "$tmp/nudir" "$tmp/nudir2"

# errors: one line naming the file, documented exit code, nothing left behind
expect 1 "no arguments" -- "$bs"
expect 1 "unknown command" -- "$bs" frobnicate x
expect 1 "unknown option" -- "$bs" compress --bogus x
expect 1 "-o with two inputs" -- "$bs" compress -o x "$tmp/m.safetensors" "$tmp/m.safetensors"
expect 2 "missing input" -- "$bs" compress "$tmp/nope.safetensors"
echo "just text, not weights" >"$tmp/text.safetensors"
expect 4 "not safetensors" -- "$bs" compress -q "$tmp/text.safetensors"
check "error names the file" -- grep -q "text.safetensors" "$tmp/err"
check "error is one line" -- test "$(wc -l <"$tmp/err")" -eq 1
check "no output left" -- test ! -e "$tmp/text.bs"
head -c 5000 "$tmp/m.safetensors" >"$tmp/trunc.safetensors"
expect 4 "truncated safetensors" -- "$bs" compress -q "$tmp/trunc.safetensors"
expect 4 "not a .bs" -- "$bs" verify -q "$tmp/m.safetensors"
expect 4 "compressing a .bs" -- "$bs" compress -q "$tmp/m.bs" -o "$tmp/mm.bs"
check "says it is compressed already" -- grep -q "m.bs: already a bigsmall .bs file" "$tmp/err"
check "and leaves no output" -- test ! -e "$tmp/mm.bs"
cp "$tmp/m.bs" "$tmp/bad.bs"
printf '\xff' | dd of="$tmp/bad.bs" bs=1 seek=5000 conv=notrunc status=none
expect 5 "flipped byte" -- "$bs" verify -q "$tmp/bad.bs"
check "corrupt error names the tensor" -- grep -q "tensor '" "$tmp/err"
expect 5 "decompress of a damaged file" -- "$bs" decompress -q "$tmp/bad.bs" -o "$tmp/bad.safetensors"
check "no half-written output" -- test ! -e "$tmp/bad.safetensors"
check "no temporary files" -- test -z "$(ls "$tmp" | grep tmp-bigsmall)"
expect 2 "unwritable output" -- "$bs" compress -q "$tmp/m.safetensors" -o /proc/nope/m.bs
cp "$tmp/m.safetensors" "$tmp/same.safetensors"
expect 1 "output that is the input, even with -f" -- "$bs" compress -q -f "$tmp/same.safetensors" -o "$tmp/same.safetensors"
check "says so" -- grep -q "output and input are the same" "$tmp/err"
check "and leaves the input as it was" -- cmp -s "$tmp/m.safetensors" "$tmp/same.safetensors"
mkdir -p "$tmp/halfdir" && cp "$tmp/m.safetensors" "$tmp/halfdir/a.safetensors" && cp "$tmp/text.safetensors" "$tmp/halfdir/b.safetensors"
expect 4 "a directory with one bad shard" -- "$bs" compress -q "$tmp/halfdir"
check "leaves no output directory" -- test ! -e "$tmp/halfdir.bs"
check "nor a temporary one" -- test -z "$(ls -a "$tmp" | grep tmp-bigsmall)"

# signals: SIGTERM mid-directory removes what was being built; a SIGINT ignored by the parent
# (a background job of a script) stays ignored, as in gzip and zstd
mkdir -p "$tmp/many"
for i in $(seq 1500); do ln -s "$tmp/m.safetensors" "$tmp/many/$i.safetensors"; done
# The runs below are looked at while they work: each waits for what it looks for (bounded), and a
# run that ended before it could be looked at is a failure said as such, never a pass.
has_many_tmp() { ls -a "$1" 2>/dev/null | grep -q "many.bs.tmp-bigsmall"; }
started() { waitfor 10 -- has_many_tmp "${1:-$tmp}"; }
many_files() {  # how many files the run's temporary output directory holds (0: none there)
  local d n=0
  for d in "$tmp"/.many.bs.tmp-bigsmall-*; do [ -d "$d" ] && n=$(ls "$d" 2>/dev/null | wc -l); done
  echo "$n"
}
many_past() { [ "$(many_files)" -ge "$1" ]; }
sig_ignored() {  # sig_ignored PID SIGNUM: the process ignores that signal (its SigIgn mask)
  local m
  m=$(sed -n 's/^SigIgn:[[:space:]]*//p' "/proc/$1/status" 2>/dev/null)
  [ -n "$m" ] && (((0x$m >> ($2 - 1)) & 1))
}
"$bs" compress -q -T1 "$tmp/many" -o "$tmp/many.bs" &
pid=$!
if started; then
  check "a SIGINT the parent ignores (a background job of a script) stays ignored" -- sig_ignored "$pid" 2
  kill -INT "$pid"
  n0=$(many_files)  # an ignored signal is dropped when sent: a handler would have removed the directory
  check "an ignored SIGINT is left ignored: the run goes on (10 more files written after it)" -- \
    waitfor 30 -- many_past $((n0 + 10))
  if [ "$(pstate "$pid")" != gone ]; then
    kill -TERM "$pid"
    wait "$pid"
    rc=$?
    check "SIGTERM mid-directory exits 128+15" -- test "$rc" -eq 143
    check "and leaves neither output nor temporary directory" -- test ! -e "$tmp/many.bs" -a -z "$(ls -a "$tmp" | grep tmp-bigsmall)"
  else
    wait "$pid"
    failed "SIGTERM mid-directory: the run ended (exit $?) before it could be sent"
  fi
else
  failed "a compress of 1500 files showed no temporary output within 10 s: its signals were not tested"
  kill -TERM "$pid" 2>/dev/null
  wait "$pid"
fi
rm -rf "$tmp/many.bs"
# bench's scratch .bs (in TMPDIR) goes too, also between runs, when it is complete
mkdir -p "$tmp/benchtmp" "$tmp/benchin"
# Enough inputs (~20 ms a file here) that bench is still running when its scratch .bs appears;
# it is then stopped (SIGSTOP) while its scratch directory is looked at, and SIGTERM ends it.
for i in $(seq 300); do ln "$tmp/m.safetensors" "$tmp/benchin/$i.safetensors"; done
has_scratch() { find "$tmp/benchtmp" -name '*.bs' | grep -q .; }
TMPDIR="$tmp/benchtmp" "$bs" bench "$tmp/benchin" >/dev/null &
pid=$!
if waitfor 10 -- has_scratch && stop_run "$pid"; then
  check "bench's scratch lies in a private directory of its own" -- test "$(stat -c %a "$tmp"/benchtmp/bigsmall-bench-*)" = 700
  kill -TERM "$pid"
  kill -CONT "$pid"
  wait "$pid"
  rc=$?
  check "SIGTERM during bench exits 128+15" -- test "$rc" -eq 143
  check "SIGTERM during bench leaves no scratch file or directory" -- test -z "$(ls "$tmp/benchtmp")"
else
  kill -TERM "$pid" 2>/dev/null
  kill -CONT "$pid" 2>/dev/null
  wait "$pid"
  failed "bench of 300 files: no scratch .bs seen in 10 s, or the run ended (exit $?) before it could be stopped"
  rm -rf "$tmp/benchtmp" && mkdir "$tmp/benchtmp"
fi
# a link planted where a predictable scratch name would be is never written through
ln -s "$tmp/victim" "$tmp/benchtmp/bigsmall-bench-$$.bs"
expect 0 "bench beside a planted link" -- env TMPDIR="$tmp/benchtmp" "$bs" bench -T1 "$tmp/m.safetensors"
check "leaves its target alone and nothing behind" -- test ! -e "$tmp/victim" -a "$(ls "$tmp/benchtmp")" = "bigsmall-bench-$$.bs"
rm "$tmp/benchtmp/bigsmall-bench-$$.bs"

# other signals whose default action ends the process clean up as well (SIGHUP: a closed terminal)
"$bs" compress -q -T1 "$tmp/many" -o "$tmp/many.bs" &
pid=$!
if started && [ "$(pstate "$pid")" != gone ]; then
  kill -HUP "$pid"
  wait "$pid" 2>/dev/null  # (bash's own "Hangup" notice of the job)
  rc=$?
  check "SIGHUP mid-directory exits 128+1" -- test "$rc" -eq 129
  check "and leaves neither output nor temporary directory" -- test ! -e "$tmp/many.bs" -a -z "$(ls -a "$tmp" | grep tmp-bigsmall)"
else
  kill -TERM "$pid" 2>/dev/null
  wait "$pid"
  failed "SIGHUP mid-directory: no temporary output within 10 s, or the run ended (exit $?) before the signal"
  rm -rf "$tmp/many.bs"
fi

# -f never turns a pipe (or device) into a regular file; through a link, the link's file is written
mkfifo "$tmp/fifo"
expect 2 "-f onto a named pipe" -- "$bs" compress -q -f -o "$tmp/fifo" "$tmp/m.safetensors"
check "says it is not a regular file" -- grep -q "fifo: not a regular file" "$tmp/err"
check "and leaves the pipe a pipe" -- test -p "$tmp/fifo"
expect 2 "-f with a directory output onto a named pipe" -- "$bs" compress -q -f -o "$tmp/fifo" "$tmp/halfdir"
check "leaves the pipe a pipe" -- test -p "$tmp/fifo"
# a named pipe no program writes to reads as empty at once (a plain open would wait for a writer
# for ever); one with a writer is read whole, as stdin is (below)
expect 4 "compress of a named pipe without a writer" -- timeout 20 "$bs" compress -q -o "$tmp/fifo-in.bs" "$tmp/fifo"
check "says it is empty" -- grep -q "fifo: empty file" "$tmp/err"
check "and writes nothing" -- test ! -e "$tmp/fifo-in.bs"
expect 4 "verify of a named pipe without a writer" -- timeout 20 "$bs" verify -q "$tmp/fifo"
echo old >"$tmp/target.bs" && ln -s target.bs "$tmp/link.bs"
expect 0 "-f onto a link" -- "$bs" compress -q -f -o "$tmp/link.bs" "$tmp/m.safetensors"
check "keeps the link" -- test -L "$tmp/link.bs"
expect 0 "and writes the file it points to" -- "$bs" verify -q "$tmp/target.bs"

# argument handling
expect 0 "info --json of two files" -- "$bs" info --json "$tmp/m.bs" "$tmp/target.bs"
check "is one JSON object per line" -- python3 -c "import json; ls=open('$tmp/out').read().splitlines(); assert len(ls)==2 and all(json.loads(l)['tensors'] for l in ls)"
cp "$tmp/m.bs" "$tmp/-dash.bs"
abs_bs=$(cd "$(dirname "$bs")" && pwd)/$(basename "$bs")
cd "$tmp"
expect 0 "-- before a path that starts with a dash" -- "$abs_bs" verify -q -- -dash.bs
cd - >/dev/null
expect 1 "an unknown command" -- "$bs" help "$tmp/m.bs"
check "is named" -- grep -q "unknown command 'help'" "$tmp/err"
expect 1 "-o for a command that writes nothing" -- "$bs" verify -o "$tmp/x" "$tmp/m.bs"
expect 1 "-o given twice" -- "$bs" compress -o "$tmp/a.bs" -o "$tmp/b.bs" "$tmp/m.safetensors"
check "writes nothing" -- test ! -e "$tmp/a.bs" -a ! -e "$tmp/b.bs"
expect 1 "-q with -v" -- "$bs" verify -q -v "$tmp/m.bs"
expect 1 "-v with --json (it would be dropped)" -- "$bs" compress -v --json -f "$tmp/m.safetensors" -o "$tmp/vj.bs"
# zstd's and xz's spellings: long names, --name=value, short flags together
expect 0 "--force --quiet --threads=1 --output=PATH" -- "$bs" compress --force --quiet --threads=1 --output="$tmp/long.bs" "$tmp/m.safetensors"
check "writes there" -- test -f "$tmp/long.bs"
expect 0 "-fq" -- "$bs" compress -fq -o "$tmp/long.bs" "$tmp/m.safetensors"
check "is quiet" -- test ! -s "$tmp/err"
# the value of -o is a name, whatever it looks like
cd "$tmp"
expect 0 "-o --force" -- "$abs_bs" compress -q -o --force m.safetensors
check "writes a file named --force" -- test -f "$tmp/--force"
expect 0 "-o -fq" -- "$abs_bs" compress -o -fq m.safetensors
check "writes a file named -fq, and is not quiet" -- test -f "$tmp/-fq" -a -s "$tmp/err"
cd - >/dev/null
expect 1 "--force=yes" -- "$bs" compress --force=yes "$tmp/m.safetensors"
check "is an unknown option" -- grep -q "unknown option '--force=yes'" "$tmp/err"
# options a command does not take are refused, not ignored
expect 1 "verify -v" -- "$bs" verify -v "$tmp/m.bs"
expect 1 "info -T 2" -- "$bs" info -T 2 "$tmp/m.bs"
expect 1 "info -q" -- "$bs" info -q "$tmp/m.bs"
expect 1 "decompress --best" -- "$bs" decompress --best -o "$tmp/x.safetensors" "$tmp/m.bs"
expect 1 "compress --no-verify" -- "$bs" compress --no-verify -o "$tmp/x.bs" "$tmp/m.safetensors"
check "names the option" -- grep -q "no-verify does not apply to compress" "$tmp/err"
expect 1 "-T ''" -- "$bs" verify -T '' "$tmp/m.bs"
expect 1 "-T ' +2'" -- "$bs" verify -T ' +2' "$tmp/m.bs"
expect 1 "-o ''" -- "$bs" compress -o '' "$tmp/m.safetensors"
# what info and --json print is the product: a full stdout is an error
if [ -w /dev/full ]; then
  expect 3 "info into a full disk" -- sh -c "exec \"$bs\" info \"$tmp/m.bs\" >/dev/full"
  check "says so, naming <stdout> as every other message does" -- grep -q "<stdout>: write error" "$tmp/err"
else
  skip "info into a full disk: /dev/full is not writable here"
fi
# --json gives a line for an input that failed too
expect 2 "compress --json of a missing file then a good one" -- "$bs" compress -f --json "$tmp/missing.safetensors" "$tmp/m.safetensors"
check "one line per input, the failed one with its error" -- python3 -c "
import json; ls=[json.loads(l) for l in open('$tmp/out').read().splitlines()]
assert len(ls)==2 and ls[0]['ok'] is False and 'missing' in ls[0]['error'] and ls[0]['exit_code']==2 and ls[1]['ok'] is True, ls"
expect 2 "bench --json of a missing file then a good one" -- "$bs" bench -T1 --json "$tmp/missing.safetensors" "$tmp/m.safetensors"
check "a line for each" -- python3 -c "
import json; ls=[json.loads(l) for l in open('$tmp/out').read().splitlines()]
assert ls[0]['ok'] is False and ls[0]['exit_code']==2 and ls[1]['ratio'] > 0, ls"
expect 5 "verify --json of a damaged file" -- sh -c "cp \"$tmp/m.bs\" \"$tmp/dmg.bs\" && printf '\\377' | dd of=\"$tmp/dmg.bs\" bs=1 seek=200 conv=notrunc 2>/dev/null && exec \"$bs\" verify --json \"$tmp/dmg.bs\""
check "carries the error" -- python3 -c "import json; d=json.loads(open('$tmp/out').read()); assert d['ok'] is False and d['error'], d"
# raw C1 bytes (0x9b is an 8-bit CSI) and UTF-8 C1 characters are escaped in error lines
expect 1 "-o given twice, with a raw 0x9b byte" -- "$bs" compress -o "$(printf 'a\2331m')" -o b "$tmp/m.safetensors"
check "escapes it" -- grep -q 'a\\x9b1m' "$tmp/err"
expect 1 "-o given twice, with U+009B" -- "$bs" compress -o "$(printf 'a\302\2331m')" -o b "$tmp/m.safetensors"
check "escapes it" -- grep -q 'a\\u009b1m' "$tmp/err"
# short flags together end with an option that takes a value, as getopt takes them
expect 0 "-fqT2 (flags, then -T with its value attached)" -- "$bs" compress -fqT2 "$tmp/m.safetensors" -o "$tmp/bundle.bs"
expect 0 "-fqo OUT (flags, then -o with the next argument)" -- "$bs" compress -fqo "$tmp/bundle2.bs" "$tmp/m.safetensors"
check "both wrote their outputs" -- cmp -s "$tmp/bundle.bs" "$tmp/bundle2.bs"
expect 1 "-fqT with no value" -- "$bs" compress -fqT
# bidirectional controls are escaped too: U+202E would show 'a<RLO>gpj.exe' as 'aexe.jpg'
expect 1 "-o given twice, with U+202E" -- "$bs" compress -o "$(printf 'a\342\200\256gpj.exe')" -o b "$tmp/m.safetensors"
check "escapes it" -- grep -q 'a\\u202egpj.exe' "$tmp/err"
# a tensor name of 200 KB in a header: the error line keeps the file and the problem, not the name
python3 -c "
import struct; h = b'{\"' + b'y' * 200000 + b'\":{\"shape\":[64],\"data_offsets\":[0,256]}}'
open('$tmp/longname.safetensors', 'wb').write(struct.pack('<Q', len(h)) + h + bytes(256))"
expect 4 "a header with a 200 KB tensor name and no dtype" -- "$bs" compress -q "$tmp/longname.safetensors"
check "a short line, file first, problem last" -- sh -c "test \$(wc -c <\"$tmp/err\") -lt 3000 && grep -q '^bigsmall: .*longname.safetensors: .*bytes left out.* lacks dtype, shape or data_offsets\$' \"$tmp/err\""
# a name of 3,000 continuation bytes: the elided error line still names what it is about
expect 2 "a missing file named by 3,000 stray UTF-8 continuation bytes" -- "$bs" verify "$tmp/$(python3 -c "import sys; sys.stdout.buffer.write(b'\\x80' * 3000)")"
check "the line keeps the first kilobyte of the name (it backed up to the name's start)" -- grep -q "^bigsmall: $tmp/\\\\x80\\\\x80" "$tmp/err"
# valid JSON past bigsmall's own caps is not called invalid JSON or "not a safetensors file"
python3 -c "
import json, struct; h = json.dumps({'a': {'dtype': 'U8', 'shape': [1], 'data_offsets': [0, 1], 'x': [0] * 20000}}, separators=(',', ':')).encode()
open('$tmp/dense.safetensors', 'wb').write(struct.pack('<Q', len(h)) + h + bytes(1))
h = b' {\"a\":{\"dtype\":\"U8\",\"shape\":[1],\"data_offsets\":[0,1]}}'
open('$tmp/lead.safetensors', 'wb').write(struct.pack('<Q', len(h)) + h + bytes(1))"
expect 4 "a header denser than bigsmall takes" -- "$bs" compress -q "$tmp/dense.safetensors"
check "names bigsmall's cap" -- sh -c "grep -q 'header has too many values for its size (bigsmall takes at most' \"$tmp/err\" && ! grep -q 'invalid JSON\|not a safetensors file' \"$tmp/err\""
expect 4 "a header with whitespace before '{'" -- "$bs" compress -q "$tmp/lead.safetensors"
check "says bigsmall does not take it (some safetensors versions read it)" -- sh -c "grep -q \"bigsmall takes only headers that start with '{'\" \"$tmp/err\" && ! grep -q 'as safetensors requires' \"$tmp/err\""
# every error is one line, whatever the file name holds
expect 2 "an error about a name with a newline" -- "$bs" verify "$tmp/nl
missing.bs"
check "is one line" -- test "$(wc -l <"$tmp/err")" -eq 1
# bytes appended to a .bs are named as such
cat "$tmp/m.bs" >"$tmp/junk.bs" && echo junk >>"$tmp/junk.bs"
expect 4 "a .bs with bytes appended" -- "$bs" verify "$tmp/junk.bs"
check "says so" -- grep -q "5 bytes after the end of the index" "$tmp/err"
# a directory named like a shard's .bs collides as a file of that name does (it got "already
# exists (use -f to overwrite)", with -f too)
mkdir -p "$tmp/col/a.bs" "$tmp/col2/a.bs" && echo x >"$tmp/col/a.bs/f" && cp "$tmp/m.safetensors" "$tmp/col/a.safetensors" &&
  cp "$tmp/m.safetensors" "$tmp/col2/a.safetensors"
expect 1 "compress -f of a directory holding a.safetensors and a directory a.bs" -- "$bs" compress -q -f "$tmp/col"
check "names the collision" -- grep -q "col/a.bs: would be overwritten by the compressed a.safetensors" "$tmp/err"
expect 1 "the same with an empty directory a.bs" -- "$bs" compress -q "$tmp/col2"
check "names the collision" -- grep -q "col2/a.bs: would be overwritten" "$tmp/err"

# directories: permission bits and empty directories come back; totals count what compress
# reads (links followed) and never the output, even inside the input
mkdir -p "$tmp/perm/empty/deeper" "$tmp/elsewhere"
cp "$tmp/m.safetensors" "$tmp/perm/m.safetensors" && cp "$tmp/m.safetensors" "$tmp/elsewhere/x.safetensors"
printf '#!/bin/sh\necho hi\n' >"$tmp/perm/run.sh" && chmod 755 "$tmp/perm/run.sh"
ln -s ../elsewhere "$tmp/perm/linked"
expect 0 "compress a directory with a script, an empty directory and a linked one" -- "$bs" compress --json "$tmp/perm"
check "original bytes count the linked directory" -- python3 -c "import json,os; d=json.load(open('$tmp/out')); assert d['original_bytes']==2*os.path.getsize('$tmp/m.safetensors')+os.path.getsize('$tmp/perm/run.sh'), d"
expect 0 "and decompress it" -- "$bs" decompress -o "$tmp/perm.back" "$tmp/perm.bs"
check "the script is still executable" -- test -x "$tmp/perm.back/run.sh"
check "the empty directories are there" -- test -d "$tmp/perm.back/empty/deeper"
cd "$tmp/perm"
expect 0 "an output inside its input" -- "$abs_bs" compress --json -o inside.bs .
expect 0 "again, with -f" -- "$abs_bs" compress --json -f -o inside.bs .
cd - >/dev/null
check "counts the input only" -- python3 -c "import json,os; d=json.load(open('$tmp/out')); assert d['original_bytes']==2*os.path.getsize('$tmp/m.safetensors')+os.path.getsize('$tmp/perm/run.sh'), d"
check "and does not hold itself" -- test ! -e "$tmp/perm/inside.bs/inside.bs"

# two links that loop fail at once (once, counting the input walked 2^40 directories)
mkdir -p "$tmp/loop" && ln -s . "$tmp/loop/a" && ln -s . "$tmp/loop/b"
expect 2 "a directory of looping links" -- timeout 20 "$bs" compress -q "$tmp/loop" -o "$tmp/loop.bs"
# -f through a link to a file not there yet creates it, as a shell redirection would
ln -s made.bs "$tmp/dangling.bs"
expect 0 "-f onto a dangling link" -- "$bs" compress -q -f -o "$tmp/dangling.bs" "$tmp/m.safetensors"
check "creates the file it names" -- test -L "$tmp/dangling.bs" -a -f "$tmp/made.bs"
# copied files keep their permission bits less the umask, as cp copies them
mkdir -p "$tmp/um" && cp "$tmp/m.safetensors" "$tmp/um/" && echo x >"$tmp/um/w.txt" && chmod 666 "$tmp/um/w.txt"
expect 0 "compress with umask 022" -- sh -c "umask 022; exec \"$bs\" compress -q \"$tmp/um\""
check "a world-writable file is not copied world-writable" -- test "$(stat -c %a "$tmp/um.bs/w.txt")" = 644


# -f into a directory that holds the input would replace inputs by files of the input's own
# subfolders (anc/src/config.json by src/src/config.json); refused, nothing touched
mkdir -p "$tmp/anc/src/src"
cp "$tmp/m.safetensors" "$tmp/anc/src/model.safetensors" && echo outer >"$tmp/anc/src/config.json"
cp "$tmp/m.safetensors" "$tmp/anc/src/src/model.safetensors" && echo nested >"$tmp/anc/src/src/config.json"
expect 1 "compress -f into a directory holding the input" -- "$bs" compress -q -f -o "$tmp/anc" "$tmp/anc/src"
check "says so" -- grep -q "would replace a file of the input" "$tmp/err"
check "and leaves the inputs as they were" -- test "$(cat "$tmp/anc/src/config.json")" = outer -a ! -e "$tmp/anc/src/model.bs"
expect 0 "compress of that directory elsewhere" -- "$bs" compress -q -o "$tmp/ancz.bs" "$tmp/anc/src"
mkdir -p "$tmp/holder" && mv "$tmp/ancz.bs" "$tmp/holder/"
# restoring into the directory that holds the .bs directory touches nothing of it (allowed)
expect 0 "decompress -f into the directory holding the .bs" -- "$bs" decompress -q -f -o "$tmp/holder" "$tmp/holder/ancz.bs"
check "restores there, and the .bs directory verifies still" -- test -f "$tmp/holder/model.safetensors" -a -f "$tmp/holder/src/config.json"
expect 0 "verify" -- "$bs" verify -q "$tmp/holder/ancz.bs"

# a name that fits must not fail for its longer temporary name (255 bytes a name)
long=$(printf "z%.0s" $(seq 240))
expect 0 "an output name of 253 bytes" -- "$bs" compress -q -o "$tmp/$long.bs" "$tmp/m.safetensors"
check "is written under it, with nothing else left" -- test -f "$tmp/$long.bs" -a -z "$(ls -a "$tmp" | grep tmp-bigsmall)"
mkdir -p "$tmp/longdir" && cp "$tmp/m.safetensors" "$tmp/longdir/$long.safetensors" && echo x >"$tmp/longdir/c$long"
expect 0 "a directory of long names" -- "$bs" compress -q "$tmp/longdir"
expect 0 "and back" -- "$bs" decompress -q -o "$tmp/longdir.out" "$tmp/longdir.bs"
check "byte-identical" -- diff -r "$tmp/longdir" "$tmp/longdir.out"

# -o's parents that cannot be made name the one that failed, and why
# (root may write anywhere: as root, run as nobody, in a directory nobody can reach)
if [ "$(id -u)" != 0 ]; then
  mkdir -p "$tmp/ro" && chmod 555 "$tmp/ro"
  expect 2 "-o under a read-only directory" -- "$bs" compress -q -o "$tmp/ro/new/x.bs" "$tmp/halfdir"
  check "names the directory and the reason" -- grep -q "ro/new: cannot create directory: Permission denied" "$tmp/err"
  chmod 755 "$tmp/ro"
elif [ ${#as_nobody[@]} -gt 0 ]; then
  rodir=$(mktemp -d) && chmod 755 "$rodir" && cp -r "$tmp/halfdir" "$rodir/" && chmod -R a+rX "$rodir/halfdir" &&
    mkdir "$rodir/ro" && chmod 555 "$rodir/ro"
  check "(as nobody: the input is readable, the directory not writable)" -- "${as_nobody[@]}" \
    "test -r \"$rodir/halfdir/a.safetensors\" && ! mkdir \"$rodir/ro/probe\" 2>/dev/null"
  expect 2 "-o under a read-only directory (as nobody)" -- "${as_nobody[@]}" "exec \"$bs_abs\" compress -q -o \"$rodir/ro/new/x.bs\" \"$rodir/halfdir\""
  check "names the directory and the reason" -- grep -q "ro/new: cannot create directory: Permission denied" "$tmp/err"
  check "and writes nothing" -- test -z "$(ls -A "$rodir/ro")"
  rm -rf "$rodir"
else
  skip "-o under a read-only directory: runs as root, and no way to run as nobody here (setpriv, su)"
fi
# parents made for -o go when a signal ends the run
"$bs" compress -q -T1 "$tmp/many" -o "$tmp/made/parent/many.bs" &
pid=$!
if started "$tmp/made/parent" && [ "$(pstate "$pid")" != gone ]; then
  kill -TERM "$pid"
  wait "$pid"
  rc=$?
  check "SIGTERM with parents -o made exits 128+15" -- test "$rc" -eq 143
  check "SIGTERM removes the parents -o made" -- test ! -e "$tmp/made"
else
  kill -TERM "$pid" 2>/dev/null
  wait "$pid"
  failed "-o with parents to make: no temporary output there within 10 s, or the run ended (exit $?) before SIGTERM"
  rm -rf "$tmp/made"
fi

# an input with no directory of its own (/dev/stdin) needs -o: its name would land in /dev
expect 1 "compress /dev/stdin without -o" -- sh -c "\"$bs\" compress -q /dev/stdin <\"$tmp/m.safetensors\""
check "asks for -o" -- grep -q "give the output with -o" "$tmp/err"
expect 0 "compress /dev/stdin -o" -- sh -c "\"$bs\" compress -q -o \"$tmp/stdin.bs\" /dev/stdin <\"$tmp/m.safetensors\""


# stdin and stdout, as zstd takes them: '-' reads stdin (to stdout unless -o), -c writes stdout
m="$tmp/m.safetensors"
gives() {  # gives DESCRIPTION WANT_FILE -- command...: exits 0 and writes exactly WANT_FILE to stdout
  local what=$1 want=$2
  shift 3
  expect 0 "$what" -- "$@"
  check "$what: stdout is $(basename "$want") byte for byte" -- cmp -s "$tmp/out" "$want"
}
gives "compress stdin to stdout" "$tmp/m.bs" -- sh -c "\"$bs\" compress -q - <\"$m\""
gives "compress from a pipe" "$tmp/m.bs" -- sh -c "cat \"$m\" | \"$bs\" compress -q -"
gives "compress -c FILE" "$tmp/m.bs" -- "$bs" compress -c "$m"
check "the summary names stdout" -- grep -q "m.safetensors -> <stdout>:" "$tmp/err"
expect 0 "compress - -o FILE" -- sh -c "\"$bs\" compress -q - -o \"$tmp/p4.bs\" <\"$m\""
check "the same bytes" -- cmp -s "$tmp/p4.bs" "$tmp/m.bs"
gives "decompress a pipe to stdout" "$m" -- sh -c "cat \"$tmp/m.bs\" | \"$bs\" decompress -"
check "the summary names stdin and stdout" -- grep -q "<stdin> -> <stdout>:" "$tmp/err"
gives "decompress -c FILE" "$m" -- "$bs" decompress -qc "$tmp/m.bs"
expect 0 "decompress - -o FILE" -- sh -c "\"$bs\" decompress -q - -o \"$tmp/p3.safetensors\" <\"$tmp/m.bs\""
check "byte-identical" -- cmp -s "$tmp/p3.safetensors" "$m"
gives "compress | decompress" "$m" -- sh -c "\"$bs\" compress -qc \"$m\" | \"$bs\" decompress -q -"
expect 0 "verify stdin" -- sh -c "\"$bs\" verify - <\"$tmp/m.bs\""
check "says <stdin>: OK" -- grep -q "^<stdin>: OK" "$tmp/err"
expect 0 "info stdin" -- sh -c "\"$bs\" info --json - <\"$tmp/m.bs\""
check "lists its tensors" -- python3 -c "import json; d=json.load(open('$tmp/out')); assert len(d['tensors'])==8"
expect 0 "--json with stdin and -o" -- sh -c "\"$bs\" compress --json -f - -o \"$tmp/p4.bs\" <\"$m\""
check "names <stdin>" -- python3 -c "import json; d=json.load(open('$tmp/out')); assert d['input']=='<stdin>' and d['ok'], d"
head -c 3000 "$tmp/m.bs" >"$tmp/cut.bs"
expect 4 "a truncated .bs on stdin" -- sh -c "\"$bs\" decompress - <\"$tmp/cut.bs\" >\"$tmp/cut.out\""
check "the error names <stdin>" -- grep -q "^bigsmall: <stdin>: truncated" "$tmp/err"
cp "$tmp/m.bs" "$tmp/flip.bs" && python3 -c "
import sys; p = sys.argv[1]; b = bytearray(open(p, 'rb').read()); b[len(b) // 2] ^= 0x10; open(p, 'wb').write(b)" "$tmp/flip.bs"
expect 5 "a damaged .bs to stdout" -- sh -c "\"$bs\" decompress -c \"$tmp/flip.bs\" >\"$tmp/flip.out\""
expect 4 "not safetensors on stdin" -- sh -c "\"$bs\" compress - <\"$tmp/m.bs\" >\"$tmp/x.out\""
check "says so, naming <stdin>" -- grep -q "<stdin>: already a bigsmall .bs file" "$tmp/err"
expect 4 "empty stdin" -- sh -c "\"$bs\" compress - </dev/null >\"$tmp/x.out\""
expect 1 "-c and -o" -- "$bs" compress -c -o "$tmp/x.bs" "$m"
expect 1 "-c with two inputs" -- "$bs" compress -c "$m" "$m"
expect 1 "stdin among other inputs" -- "$bs" compress - "$m"
expect 1 "-c for verify" -- "$bs" verify -c "$tmp/m.bs"
expect 1 "bench of stdin" -- "$bs" bench -
expect 1 "--json with the output on stdout" -- sh -c "\"$bs\" compress --json - <\"$m\""
expect 1 "a directory to stdout" -- "$bs" compress -c "$tmp/model"
check "asks for -o" -- grep -q "give the output with -o" "$tmp/err"
if command -v script >/dev/null 2>&1; then
  expect 1 "binary data to a terminal" -- script -qec "\"$bs\" compress -c \"$m\"" /dev/null
  check "is refused" -- grep -q "<stdout>: a terminal" "$tmp/out"
  expect 1 "stdin from a terminal" -- script -qec "\"$bs\" decompress - -o \"$tmp/tty.safetensors\"" /dev/null
  check "is refused" -- grep -q "<stdin>: a terminal" "$tmp/out"
  expect 1 "a terminal given as a path" -- script -qec "\"$bs\" decompress /dev/tty -o \"$tmp/tty.safetensors\"" /dev/null
  check "is refused" -- grep -q "/dev/tty: a terminal" "$tmp/out"
else
  skip "terminals as stdout, stdin and a path: no script(1) here to make one"
fi
# a reader that stops early: the run ends by SIGPIPE (as zstd's does), not with a message
expect 0 "decompress -c into a pipe closed early" -- bash -c "\"$bs\" decompress -c \"$tmp/m.bs\" | head -c 10 >/dev/null; test \${PIPESTATUS[0]} -eq 141"
# stdout is written by a thread of its own while later batches decode: many batches in order,
# and a failing or closing reader seen as before
python3 -c "
import json, os, struct, sys
ts, data = {}, b''
for i, n in enumerate([3 << 20, 5 << 20, 777, 4 << 20, 9]):
    b = os.urandom(2 * n); ts[f't{i}'] = {'dtype': 'BF16', 'shape': [n], 'data_offsets': [len(data), len(data) + len(b)]}; data += b
h = json.dumps(ts).encode(); h += b' ' * (-len(h) % 8)
open(sys.argv[1], 'wb').write(struct.pack('<Q', len(h)) + h + data)" "$tmp/batches.safetensors"
"$bs" compress -q "$tmp/batches.safetensors" -o "$tmp/batches.bs"
gives "decompress -c of many batches" "$tmp/batches.safetensors" -- "$bs" decompress -qc -T2 "$tmp/batches.bs"
# Under an address-space limit, many coding threads once aborted the process: glibc could not
# register a thread's scratch destructor ("failed to register TLS destructor", SIGABRT, at every
# limit from 300 MB to 2 GB with -T 256). The file: many F16 tensors whose exponents spread as
# trained weights' do (random bytes take the planner's shortcut and plan nothing per thread).
# Out of memory is exit 7 with a message; a run that gets its memory succeeds; none may abort.
python3 - "$tmp/planned.safetensors" <<'PY'
import json, os, struct, sys
narrow = bytes((b & 0x80) | (0x30 + b % 7) | (b & 0x03) for b in range(256))
ts, data = {}, bytearray()
for i in range(96):
    b = bytearray(os.urandom(2 * 32768))
    b[1::2] = bytes(b[1::2]).translate(narrow)
    ts[f"layer{i}.weight"] = {"dtype": "F16", "shape": [128, 256], "data_offsets": [len(data), len(data) + len(b)]}
    data += b
h = json.dumps(ts).encode(); h += b" " * (-len(h) % 8)
open(sys.argv[1], "wb").write(struct.pack("<Q", len(h)) + h + data)
PY
"$bs" compress -q "$tmp/planned.safetensors" -o "$tmp/planned.bs"
if grep -aq __asan_init "$bs"; then
  skip "address-space limits: AddressSanitizer's shadow memory needs more address space than any limit here"
else for limit in 300000 700000 2000000; do
  for t in 32 256; do
    for run in "compress -qf -o $tmp/aslimit.bs $tmp/planned.safetensors" "verify -q $tmp/planned.bs"; do
      sh -c "ulimit -v $limit; ulimit -c 0; exec \"$bs\" $run -T $t" >"$tmp/out" 2>"$tmp/err"
      rc=$?
      check "${run%% *} -T $t under ulimit -v $limit: exit 0 or 7, not $rc" -- test "$rc" -eq 0 -o "$rc" -eq 7
      [ "$rc" -ne 7 ] || check "says out of memory (${run%% *} -T $t, ulimit -v $limit)" -- grep -q "planned.*: out of memory" "$tmp/err"
    done
  done
done; fi
if [ -w /dev/full ]; then
  expect 3 "decompress -c into a full disk" -- sh -c "exec \"$bs\" decompress -c \"$tmp/batches.bs\" >/dev/full"
  check "says so, naming stdout" -- grep -q "<stdout>: write error: No space left on device" "$tmp/err"
else
  skip "decompress -c into a full disk: /dev/full is not writable here"
fi
# A file size limit is a full disk, whether or not the caller ignores its signal (left to its
# default, it killed the run without a word).
for ignored in "trap '' XFSZ;" ""; do
  expect 3 "decompress -c past a file size limit (${ignored:-signal not ignored})" -- sh -c "ulimit -f 2000; $ignored exec \"$bs\" decompress -c \"$tmp/batches.bs\" >\"$tmp/limited.out\""
  check "says so, naming stdout" -- grep -q "<stdout>: write error: File too large" "$tmp/err"
done
mkdir -p "$tmp/fsize"
expect 3 "decompress -o past a file size limit" -- sh -c "ulimit -f 2000; exec \"$bs\" decompress -o \"$tmp/fsize/out.safetensors\" \"$tmp/batches.bs\""
check "says so, naming the file" -- grep -q "$tmp/fsize/out.safetensors.*File too large" "$tmp/err"
check "and leaves nothing" -- test -z "$(ls -A "$tmp/fsize")"
expect 3 "compress --json -o past a file size limit" -- sh -c "ulimit -f 1000; exec \"$bs\" compress --json -o \"$tmp/fsize/out.bs\" \"$tmp/batches.safetensors\""
check "reports it in JSON" -- grep -q '"exit_code": 3' "$tmp/out"
check "and leaves nothing" -- test -z "$(ls -A "$tmp/fsize")"
expect 2 "-f -o /dev/stdout into a pipe" -- bash -c "\"$bs\" decompress -q -f \"$tmp/m.bs\" -o /dev/stdout | cat >/dev/null; exit \${PIPESTATUS[0]}"
check "is refused as not a regular file" -- grep -q "/dev/stdout: not a regular file" "$tmp/err"
expect 0 "decompress -c of many batches into a pipe closed early" -- bash -c "\"$bs\" decompress -c \"$tmp/batches.bs\" | head -c 10 >/dev/null; test \${PIPESTATUS[0]} -eq 141"
mkdir -p "$tmp/dash" && cp "$m" "$tmp/dash/-"
expect 0 "a file named '-' given as ./-" -- sh -c "cd \"$tmp/dash\" && \"$abs_bs\" compress -q -o d.bs ./-"
check "compressed" -- cmp -s "$tmp/dash/d.bs" "$tmp/m.bs"
expect 0 "a bare '-' is stdin even beside a file of that name" -- sh -c "cd \"$tmp/dash\" && \"$abs_bs\" decompress -q - <\"$tmp/m.bs\" >out.safetensors"
check "restored from stdin" -- cmp -s "$tmp/dash/out.safetensors" "$m"
gives "-o - is stdout" "$tmp/m.bs" -- "$bs" compress -q -o - "$m"
check "and no file named '-'" -- test ! -e ./-
gives "-c --no-verify" "$m" -- "$bs" decompress -qc --no-verify "$tmp/m.bs"
expect 0 "verify --json of stdin" -- sh -c "\"$bs\" verify --json - <\"$tmp/m.bs\""
check "names <stdin>" -- grep -q '"path": "<stdin>", "ok": true' "$tmp/out"
# named pipes (<(...), /dev/stdin on a pipe) are read whole, as stdin is
gives "decompress -c of a named pipe" "$m" -- bash -c "\"$bs\" decompress -qc <(cat \"$tmp/m.bs\")"
expect 0 "verify of a named pipe" -- bash -c "\"$bs\" verify -q <(cat \"$tmp/m.bs\")"
expect 0 "compress /dev/stdin on a pipe, -o" -- sh -c "cat \"$m\" | \"$bs\" compress -q -o \"$tmp/p6.bs\" /dev/stdin"
check "the same bytes" -- cmp -s "$tmp/p6.bs" "$tmp/m.bs"
# more than the reader's first 1 MiB: its buffer grows while it reads
python3 - "$tmp/grow.safetensors" <<'PY'
import json, os, struct, sys
blob = os.urandom(3 << 20)
h = json.dumps({"noise": {"dtype": "U8", "shape": [len(blob)], "data_offsets": [0, len(blob)]}}).encode()
h += b" " * (-len(h) % 8)
open(sys.argv[1], "wb").write(struct.pack("<Q", len(h)) + h + blob)
PY
gives "3 MiB through pipes both ways" "$tmp/grow.safetensors" -- sh -c "cat \"$tmp/grow.safetensors\" | \"$bs\" compress -q - | cat | \"$bs\" decompress -q -"
# a stream larger than BIGSMALL_SPOOL_BYTES (default: a quarter of memory) is kept in an unnamed
# temporary file under TMPDIR, not in memory; the same bytes come out
# the progress bar fits the terminal's width, in columns (a CJK character takes two): a line that
# wraps leaves a stale row at each redraw
if command -v script >/dev/null 2>&1; then
  for long in "$tmp/model-00001-of-00030-with-a-name-longer-than-the-terminal.safetensors" \
    "$tmp/模型权重文件名比终端还要宽得多的一个很长的名字-00001.safetensors"; do
    ln -s "$tmp/grow.safetensors" "$long"
    for cols in 50 12; do
      expect 0 "a progress bar on a terminal of $cols columns" -- script -qec \
        "stty cols $cols; \"$bs\" compress -f -T1 \"$long\" -o \"$tmp/long.bs\"" /dev/null
      check "drawn, and every redraw within $((cols - 1)) columns" -- python3 -c "
import re, unicodedata
out = open('$tmp/out', encoding='utf-8', errors='replace', newline='').read()
width = lambda s: sum(2 if unicodedata.east_asian_width(c) in 'WF' else 0 if unicodedata.combining(c) else 1 for c in s)
bars = [re.sub(r'\x1b\\[K', '', s) for s in out.split('\r') if '\x1b[K' in s or '%' in s]
bars = [b.rstrip('\n') for b in bars if b.strip() and '->' not in b]
assert bars, repr(out[:300])
assert all(width(b) <= $cols - 1 for b in bars), [b for b in bars if width(b) > $cols - 1][:3]"
    done
    rm -f "$long"
  done
else
  skip "the progress bar's width: no script(1) here to make a terminal"
fi
gives "3 MiB through pipes both ways, kept in temporary files" "$tmp/grow.safetensors" -- sh -c \
  "cat \"$tmp/grow.safetensors\" | BIGSMALL_SPOOL_BYTES=1000 \"$bs\" compress -q - | BIGSMALL_SPOOL_BYTES=1000 \"$bs\" decompress -q -"
expect 0 "verify of a stream kept in a temporary file" -- sh -c "cat \"$tmp/m.bs\" | BIGSMALL_SPOOL_BYTES=0 \"$bs\" verify -q -"
# A TMPDIR that cannot hold the stream is an error naming it, not a silent read into memory of
# what is large for this machine (a mistyped TMPDIR would end as an out-of-memory failure)
expect 2 "a TMPDIR that is no directory, for a stream to keep" -- sh -c \
  "cat \"$tmp/m.bs\" | TMPDIR=\"$tmp/m.bs\" BIGSMALL_SPOOL_BYTES=0 \"$bs\" verify -q -"
check "names it and says what to change" -- grep -qF "<stdin>: cannot make a temporary file in TMPDIR=$tmp/m.bs to hold the stream (" "$tmp/err"
check "with the way out" -- grep -q "BIGSMALL_SPOOL_BYTES to [0-9]* or more to read it into memory)$" "$tmp/err"
expect 0 "which BIGSMALL_SPOOL_BYTES gives" -- sh -c \
  "cat \"$tmp/m.bs\" | TMPDIR=\"$tmp/m.bs\" BIGSMALL_SPOOL_BYTES=1G \"$bs\" verify -q -"
expect 4 "a .bs and more bytes, kept in a temporary file" -- bash -c \
  "cat \"$tmp/m.bs\" /dev/zero | BIGSMALL_SPOOL_BYTES=0 timeout 20 \"$bs\" decompress - -o \"$tmp/joined.safetensors\""
check "read no further than its declared size" -- grep -q "<stdin>: more bytes than its header declares" "$tmp/err"
expect 4 "a truncated .bs kept in a temporary file" -- sh -c "head -c 3000 \"$tmp/m.bs\" | BIGSMALL_SPOOL_BYTES=0 \"$bs\" verify -"
check "is called truncated" -- grep -q "^bigsmall: <stdin>: truncated" "$tmp/err"
expect 3 "a temporary file past the file size limit" -- bash -c \
  "ulimit -f 1024; cat \"$tmp/grow.safetensors\" | TMPDIR=\"$tmp\" BIGSMALL_SPOOL_BYTES=0 \"$bs\" compress -q - -o \"$tmp/limited.bs\""
check "says where it could not keep it" -- grep -qF "<stdin>: cannot keep it in a temporary file in $tmp: File too large" "$tmp/err"
check "and writes nothing" -- test ! -e "$tmp/limited.bs"
# a stream's header is checked before its data arrives: a tensor no file could hold is named so
python3 - "$tmp/hugeoff.safetensors" <<'PY'
import json, struct, sys
h = json.dumps({"t": {"dtype": "U8", "shape": [2**64 - 4], "data_offsets": [0, 2**64 - 4]}}).encode()
h += b" " * (-len(h) % 8)
open(sys.argv[1], "wb").write(struct.pack("<Q", len(h)) + h + bytes(64))
PY
expect 4 "a piped header whose tensor ends past any file" -- sh -c "cat \"$tmp/hugeoff.safetensors\" | \"$bs\" compress -q - -o \"$tmp/hugeoff.bs\""
check "says so (not a size the stream never had)" -- grep -q "<stdin>: not a safetensors file: tensor 't' ends at byte 18446744073709551612 of the data, past the end of any file" "$tmp/err"
# junk and unwritable outputs are refused before a stream is read to its end
expect 4 "an endless stream of zeros" -- timeout 20 "$bs" compress - -o "$tmp/zero.bs" </dev/zero
check "refused at its header" -- grep -q "<stdin>: not a safetensors file" "$tmp/err"
expect 4 "an endless stream of junk for verify" -- timeout 20 "$bs" verify - </dev/zero
expect 4 "a .bs followed by an endless stream" -- bash -c "cat \"$tmp/m.bs\" /dev/zero | timeout 20 \"$bs\" decompress - -o \"$tmp/joined.safetensors\""
check "read no further than its declared size" -- grep -q "<stdin>: more bytes than its header declares" "$tmp/err"
expect 4 "a safetensors file piped to decompress" -- sh -c "cat \"$m\" | \"$bs\" decompress - >\"$tmp/x.out\""
check "is named as one" -- grep -q "<stdin>: not a bigsmall .bs file but a safetensors file" "$tmp/err"
expect 4 "an empty .bs on stdin" -- sh -c "\"$bs\" decompress - </dev/null >\"$tmp/x.out\""
check "is called empty" -- grep -q "<stdin>: empty file" "$tmp/err"
expect 2 "an existing output, before stdin ends" -- bash -c "timeout 20 \"$bs\" compress - -o \"$tmp/m.bs\" < <(sleep 60)"
check "says so" -- grep -q "m.bs: already exists" "$tmp/err"
expect 2 "a missing directory, before stdin ends" -- bash -c "timeout 20 \"$bs\" compress - -o \"$tmp/nodir/x.bs\" < <(sleep 60)"
# a directory the user may not write to (root may write anywhere: checked as nobody where this runs as root)
rodir=$(mktemp -d) && chmod 755 "$rodir" && mkdir "$rodir/ro" && chmod 555 "$rodir/ro"
as_user=(bash -c)
[ "$(id -u)" = 0 ] && as_user=(${as_nobody[@]+"${as_nobody[@]}"})
if [ ${#as_user[@]} -gt 0 ]; then
  expect 2 "an output directory without write permission, before stdin ends" -- "${as_user[@]}" "timeout 20 \"$abs_bs\" compress - -o \"$rodir/ro/x.bs\" < <(sleep 60)"
  check "says so" -- grep -q "ro/x.bs: cannot create: Permission denied" "$tmp/err"
else
  skip "an output directory without write permission: runs as root, and no way to run as nobody here (setpriv, su)"
fi
rm -rf "$rodir"
# an empty tensor inside another one's bytes (safetensors allows it) streams out as it came in
python3 - "$tmp/empty_inside.safetensors" <<'PY'
import json, struct, sys
h = json.dumps({"x": {"dtype": "U8", "shape": [2], "data_offsets": [0, 2]},
                "y": {"dtype": "U8", "shape": [0], "data_offsets": [1, 1]}}).encode()
h += b" " * (-len(h) % 8)
open(sys.argv[1], "wb").write(struct.pack("<Q", len(h)) + h + b"ab")
PY
expect 0 "compress a file with an empty tensor inside another" -- "$bs" compress -q "$tmp/empty_inside.safetensors"
gives "and decompress it to stdout" "$tmp/empty_inside.safetensors" -- "$bs" decompress -qc "$tmp/empty_inside.bs"
# a stream being read shows its progress on a terminal, once its header declares its size
expect 0 "progress while stdin is read" -- python3 - "$bs" "$tmp/grow.safetensors" "$tmp/prog.bs" <<'PY'
import os, pty, subprocess, sys
m, s = pty.openpty()
p = subprocess.Popen([sys.argv[1], "compress", "-f", "-", "-o", sys.argv[3]], stdin=subprocess.PIPE, stderr=s,
                     stdout=subprocess.DEVNULL)
os.close(s)
p.stdin.write(open(sys.argv[2], "rb").read())
p.stdin.close()
out = b""
while True:
    try:
        c = os.read(m, 4096)
    except OSError:
        break
    if not c:
        break
    out += c
assert p.wait() == 0
assert b"stdin (reading) [========================] 100%" in out, out
PY
# descriptors left non-blocking by the caller: waited on, not an error
expect 0 "a non-blocking stdout read slowly" -- python3 - "$bs" "$tmp/grow.safetensors" <<'PY'
import os, subprocess, sys, time
subprocess.run([sys.argv[1], "compress", "-qf", sys.argv[2], "-o", sys.argv[2] + ".bs"], check=True)
r, w = os.pipe()
os.set_blocking(w, False)
p = subprocess.Popen([sys.argv[1], "decompress", "-qc", sys.argv[2] + ".bs"], stdout=w)
os.close(w)
time.sleep(0.5)
got = bytearray()
while chunk := os.read(r, 1 << 16):
    got += chunk
assert p.wait() == 0 and got == open(sys.argv[2], "rb").read()
PY

# an input truncated by another program while it is read: exit 4, the message names the file
# (a shard inside a directory, not the directory), nothing is left behind. Weight-like values
# (random bytes would be stored at memory speed and done before the truncation).
mkdir -p "$tmp/trunc"
python3 - "$tmp/trunc/big.safetensors" <<'PY'
import json, random, struct, sys
random.seed(1)
block = b"".join(struct.pack("<f", random.gauss(0, 0.02))[2:] for _ in range(1 << 19))  # 1 MiB of BF16
n = 96 << 20
h = json.dumps({"w": {"dtype": "BF16", "shape": [n // 2], "data_offsets": [0, n]}}).encode()
h += b" " * (-len(h) % 8)
with open(sys.argv[1], "wb") as f:
    f.write(struct.pack("<Q", len(h)) + h)
    for _ in range(n >> 20):
        f.write(block)
PY
# A .bs truncated while `decompress -c` reads it through its memory map (the pages past the new
# end fault: SIGBUS, which the CLI turns into an error): exit 4, one line naming the file. The
# reader takes the first 64 KiB and nothing more until the file is truncated, so the run, with
# 96 MiB to write, is held on its full pipe with most of the file unread: the truncation lands
# while it reads (that it was still running is checked, and a run that read everything first
# would exit 0 with the whole output, failing the checks below).
expect 0 "compress the 96 MiB file to a .bs" -- "$bs" compress -q "$tmp/trunc/big.safetensors" -o "$tmp/sigbus.bs"
expect 0 "decompress -c of a .bs truncated while it is read (driver)" -- python3 - "$bs" "$tmp/sigbus.bs" "$tmp/sigbus.err" \
  "$(stat -c %s "$tmp/trunc/big.safetensors")" <<'PY'
import os, subprocess, sys
bs, path, errpath, total = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
with open(errpath, "wb") as err:
    p = subprocess.Popen([bs, "decompress", "-c", path], stdout=subprocess.PIPE, stderr=err)
    fd, got = p.stdout.fileno(), 0
    while got < 1 << 16:  # the output has begun
        c = os.read(fd, (1 << 16) - got)
        if not c:
            break
        got += len(c)
    running = p.poll() is None
    os.truncate(path, 1 << 20)
    while c := os.read(fd, 1 << 20):
        got += len(c)
    rc = p.wait()
print(f"running={int(running)} rc={rc} short={int(got < total)}")
PY
f0=$fail
check "the run was still reading when the .bs was truncated" -- grep -q "running=1" "$tmp/out"
check "decompress -c of a .bs truncated while it is read exits 4" -- grep -q " rc=4 " "$tmp/out"
check "and its output stops short" -- grep -q "short=1" "$tmp/out"
check "its error is one line naming the file" -- sh -c "test \$(wc -l <\"$tmp/sigbus.err\") -eq 1 &&
  grep -q '^bigsmall: $tmp/sigbus.bs: .*truncated by another program' \"$tmp/sigbus.err\""
[ "$fail" -eq "$f0" ] || cat "$tmp/out" "$tmp/sigbus.err"
rm -f "$tmp/sigbus.bs" "$tmp/sigbus.err"
# The same for a shard of a directory being compressed, truncated once the shard's output has
# begun: the run is stopped (SIGSTOP) there, the file truncated, the run continued. A run that
# ended before it could be stopped (96 MiB take a fraction of a second) is tried again.
shard_begun() { ls "$tmp"/.trunc.bs.tmp-bigsmall-*/big.bs.tmp-bigsmall-* >/dev/null 2>&1; }
stopped=
for attempt in 1 2 3 4 5; do
  "$bs" compress -q -T1 "$tmp/trunc" >"$tmp/out" 2>"$tmp/err" &
  pid=$!
  if ! waitfor 20 -- shard_begun; then
    kill -CONT "$pid" 2>/dev/null
    wait "$pid"
    echo "note: the compress of a 96 MiB shard showed no output within 20 s (exit $?)"
    break
  fi
  if stop_run "$pid" && [ ! -e "$tmp/trunc.bs" ]; then stopped=1 && break; fi
  kill -CONT "$pid" 2>/dev/null
  wait "$pid"
  echo "note: the compress of a 96 MiB shard ended (exit $?) before it could be stopped (try $attempt)"
  rm -rf "$tmp/trunc.bs"
done
if [ -n "$stopped" ]; then
  truncate -s 1000000 "$tmp/trunc/big.safetensors"
  kill -CONT "$pid"
  wait "$pid"
  rc=$?
  check "a shard truncated while it is read exits 4" -- test "$rc" -eq 4
  check "names the shard" -- grep -q "trunc/big.safetensors: " "$tmp/err"
  check "in one line" -- test "$(wc -l <"$tmp/err")" -eq 1
  check "and leaves no output" -- test ! -e "$tmp/trunc.bs" -a -z "$(ls -a "$tmp" | grep tmp-bigsmall)"
else
  failed "a shard truncated while it is read: the run could not be stopped while it read (see the notes above)"
fi
rm -rf "$tmp/trunc" "$tmp/trunc.bs"


# a compressed directory that also holds a file where one of its .bs restores to was changed
# after compression: said so (it read "already exists (use -f ...)", with -f too)
mkdir -p "$tmp/cc" && cp "$tmp/m.safetensors" "$tmp/cc/model.safetensors"
"$bs" compress -q "$tmp/cc" && echo junk >"$tmp/cc.bs/model.safetensors"
expect 5 "decompress of a directory holding a file where a .bs restores to" -- "$bs" decompress -q -f "$tmp/cc.bs" -o "$tmp/cc.out"
check "names the file and what collides" -- grep -q "cc.bs/model.safetensors: a file of the name model.bs restores to" "$tmp/err"
# inputs that cannot be reached say why
expect 2 "a file given with a trailing slash" -- "$bs" compress -q "$tmp/m.safetensors/"
check "says it is not a directory" -- grep -q "not a directory" "$tmp/err"
ln -s "$tmp/nowhere" "$tmp/dangling.safetensors"
expect 2 "a dangling link" -- "$bs" compress -q "$tmp/dangling.safetensors"
check "says so" -- grep -q "dangling link" "$tmp/err"


# COMMAND --help: that command's synopsis first, then the options; --help alone: the whole text
for c in compress decompress verify info bench; do
  expect 0 "$c --help" -- "$bs" "$c" --help
  check "$c --help: its own synopsis, then the options" -- sh -c "head -1 \"$tmp/out\" | grep -q '^usage: bigsmall $c ' && grep -q '^options:' \"$tmp/out\""
done
# ... and only the options that command takes (the others are refused: listing them misled)
expect 0 "verify --help" -- "$bs" verify --help
check "verify --help lists -T, not -o, -f or --best" -- sh -c "grep -q '^  -T N' \"$tmp/out\" && ! grep -qE '^  (-o|-f|--best|--no-verify|-v,)' \"$tmp/out\""
expect 0 "info --help" -- "$bs" info --help
check "info --help lists --json, not -T or -q" -- sh -c "grep -q '^  --json' \"$tmp/out\" && ! grep -qE '^  (-T|-q)' \"$tmp/out\""
expect 0 "compress --help" -- "$bs" compress --help
check "compress --help lists --best, not --no-verify" -- sh -c "grep -q '^  --best' \"$tmp/out\" && ! grep -q '^  --no-verify' \"$tmp/out\""
expect 0 "--help" -- "$bs" --help
check "--help: every command" -- sh -c "grep -q '^usage: bigsmall COMMAND' \"$tmp/out\" && grep -q '^  bench ' \"$tmp/out\""
# a usage error is its one line and a pointer to --help, not the whole help
expect 1 "unknown option" -- "$bs" compress --bogus "$tmp/m.safetensors"
check "one line and the hint" -- test "$(wc -l <"$tmp/err")" -eq 2 -a "$(tail -1 "$tmp/err")" = "Try 'bigsmall --help' for more information."


# -o through "..": only the parents this run made are removed when it fails, never one that was
# there, and never a file
mkdir -p "$tmp/keep" && echo precious >"$tmp/afile"
expect 2 "-o through a file" -- "$bs" compress -q -o "$tmp/nodir/../afile/x/out.bs" "$tmp/halfdir"
check "names the part that cannot be made" -- grep -q "afile/x: cannot create directory: Not a directory" "$tmp/err"
check "and leaves the file" -- test "$(cat "$tmp/afile")" = precious
expect 4 "a failing run with -o through .." -- "$bs" compress -q -o "$tmp/nodir2/../keep/x/out.bs" "$tmp/halfdir"
check "leaves the directory that was there" -- test -d "$tmp/keep" -a ! -e "$tmp/keep/x" -a ! -e "$tmp/nodir2"
# a file in /dev/shm (a tmpfs) is a file like any other: its output goes beside it
if [ -d /dev/shm ] && [ -w /dev/shm ]; then
  shm=$(mktemp -d /dev/shm/bigsmall-test.XXXXXX)
  cp "$tmp/m.safetensors" "$shm/m.safetensors"
  expect 0 "compress in /dev/shm without -o" -- "$bs" compress -q "$shm/m.safetensors"
  check "writes beside it" -- test -f "$shm/m.bs"
  rm -rf "$shm"
else
  skip "compress in /dev/shm: no writable /dev/shm here"
fi


# bench with a TMPDIR that is not a directory says so, and writes nothing in the current one
abs_bs=$(cd "$(dirname "$bs")" && pwd)/$(basename "$bs")
expect 2 "bench with an unusable TMPDIR" -- sh -c "cd \"$tmp\" && TMPDIR=\"$tmp/no-such-dir\" \"$abs_bs\" bench -T1 m.safetensors"
check "names TMPDIR" -- grep -q "TMPDIR=.*not a usable directory" "$tmp/err"
check "and leaves no scratch directory here" -- test -z "$(ls "$tmp" | grep bigsmall-bench)"


expect 1 "an unknown letter among short flags" -- "$bs" compress -fqz "$tmp/m.safetensors"
check "names the letter" -- grep -q "unknown option '-z' in '-fqz'" "$tmp/err"
expect 0 "an option that takes a value ends a cluster (-vT2: -v -T 2, as getopt)" -- "$bs" compress -fvT2 "$tmp/m.safetensors" -o "$tmp/cluster.bs"
check "-v took effect" -- grep -q "bf16.weight: BF16 float" "$tmp/err"
expect 1 "a cluster with -T in the middle (-Tq is -T with the value q)" -- "$bs" compress -fTq "$tmp/m.safetensors"
check "says -T takes a thread count, and its range" -- grep -q "\-T takes a thread count from 0 (all cores) to 4096, got 'q'" "$tmp/err"
# an empty TMPDIR reads as unset (/tmp), as mktemp and Python take it
expect 0 "bench with TMPDIR empty" -- env TMPDIR= "$bs" bench -T1 "$tmp/m.safetensors"
expect 2 "bench with an unusable TMP and no TMPDIR" -- env -u TMPDIR TMP="$tmp/no-such-dir" "$bs" bench -T1 "$tmp/m.safetensors"
check "names TMP" -- grep -q "TMP=.*no-such-dir: not a usable directory" "$tmp/err"

# two inputs whose outputs share a name: the second must not replace the first's, -f or not
mkdir -p "$tmp/twin" && cp "$tmp/m.safetensors" "$tmp/twin/x.safetensors" && cp "$tmp/m.safetensors" "$tmp/twin/x"
printf 'x' | dd of="$tmp/twin/x" bs=1 seek=20000 conv=notrunc 2>/dev/null  # another tensor value: another x.bs
expect 1 "two inputs, one output name" -- "$bs" compress -q -f "$tmp/twin/x.safetensors" "$tmp/twin/x"
check "names the output and the input that wrote it" -- grep -q "x.bs: already written from .*x.safetensors in this run" "$tmp/err"
expect 0 "and x.bs is still x.safetensors's" -- "$bs" decompress -q "$tmp/twin/x.bs" -o "$tmp/twin/back.safetensors"
check "byte-identical to x.safetensors" -- cmp -s "$tmp/twin/x.safetensors" "$tmp/twin/back.safetensors"
expect 0 "the same input twice is no conflict" -- "$bs" compress -q -f "$tmp/twin/x.safetensors" "$tmp/twin/./x.safetensors"
rm -f "$tmp/twin/x.bs"
expect 0 "the same input twice without -f: done once, not 'already exists'" -- "$bs" compress "$tmp/twin/x.safetensors" "$tmp/twin/./x.safetensors"
check "says it was given twice" -- grep -q "twin/./x.safetensors: given more than once; done once" "$tmp/err"
check "and wrote x.bs" -- test -f "$tmp/twin/x.bs"
expect 0 "--json: still one line per input" -- "$bs" compress --json -f "$tmp/twin/x.safetensors" "$tmp/twin/./x.safetensors"
check "two lines, the second a note" -- test "$(wc -l < "$tmp/out")" = 2 -a -n "$(grep 'given more than once' "$tmp/out")"
# a link under another name is another input with an output of its own, not the same input twice
ln -f "$tmp/twin/x.safetensors" "$tmp/twin/hard.safetensors" && ln -sf x.safetensors "$tmp/twin/soft.safetensors"
expect 0 "a hard and a soft link beside their target" -- "$bs" compress -q -f "$tmp/twin/x.safetensors" "$tmp/twin/hard.safetensors" "$tmp/twin/soft.safetensors"
check "each has its own output" -- test -f "$tmp/twin/hard.bs" -a -f "$tmp/twin/soft.bs"

# bench walks a directory as compress does: links that loop are refused, not walked for ever
mkdir -p "$tmp/linkloop" && cp "$tmp/m.safetensors" "$tmp/linkloop/model.safetensors" && ln -s . "$tmp/linkloop/a" && ln -s . "$tmp/linkloop/b"
expect 2 "bench of a directory whose links loop" -- timeout 60 "$bs" bench -T1 "$tmp/linkloop"
check "says so" -- grep -q "reachable by more than" "$tmp/err"

# -f into an existing directory never writes through a link to a directory there
mkdir -p "$tmp/lm/sub" "$tmp/lt" "$tmp/outside" && cp "$tmp/m.safetensors" "$tmp/lm/model.safetensors" && echo x >"$tmp/lm/sub/a.txt"
ln -s ../outside "$tmp/lt/sub"
expect 0 "compress a model with a subdirectory" -- "$bs" compress -q "$tmp/lm"
expect 2 "decompress -f where that subdirectory is a link" -- "$bs" decompress -q -f "$tmp/lm.bs" -o "$tmp/lt"
check "names the link" -- grep -q "lt/sub: is a link to a directory" "$tmp/err"
check "nothing written where it points, nothing left in the output" -- test -z "$(ls "$tmp/outside")" -a "$(ls "$tmp/lt")" = sub
mkdir -p "$tmp/lm2/e/f" "$tmp/lt2" "$tmp/outside2" && cp "$tmp/m.safetensors" "$tmp/lm2/model.safetensors" && ln -s ../outside2 "$tmp/lt2/e"
expect 2 "compress -f where an empty directory's parent is a link" -- "$bs" compress -q -f "$tmp/lm2" -o "$tmp/lt2"
check "nothing made where it points" -- test -z "$(ls "$tmp/outside2")"

# a restore inside the compressed directory would become part of it
expect 1 "decompress DIR.bs -o DIR.bs/sub" -- "$bs" decompress -q "$tmp/lm.bs" -o "$tmp/lm.bs/restored"
check "says why, and writes nothing there" -- grep -q "lies inside the compressed directory" "$tmp/err"
check "nothing written" -- test ! -e "$tmp/lm.bs/restored"

# files copied along are listed with their checksums: verify and decompress check them
mkdir -p "$tmp/cm/sub" && cp "$tmp/m.safetensors" "$tmp/cm/model.safetensors" && echo '{"a":1}' >"$tmp/cm/config.json" && : >"$tmp/cm/sub/empty.txt"
expect 0 "compress a model with copied files" -- "$bs" compress -q "$tmp/cm"
check "the index lists them" -- python3 -c "
import json; d = json.load(open('$tmp/cm.bs/bigsmall.index.json'))
assert sorted(c['path'] for c in d['copied']) == ['config.json', 'sub/empty.txt'], d"
# a shard decompressed by itself is not restored into its compressed directory (it would become
# a file of it, and the directory would no longer verify)
cp -r "$tmp/cm.bs" "$tmp/cm13.bs"
expect 1 "decompress a shard of DIR.bs without -o" -- "$bs" decompress -q "$tmp/cm13.bs/model.bs"
check "says why" -- grep -q "cm13.bs/model.bs: a file of the compressed directory .*cm13.bs: restored beside it" "$tmp/err"
check "writes nothing there" -- test ! -e "$tmp/cm13.bs/model.safetensors"
expect 0 "the directory still verifies" -- "$bs" verify -q "$tmp/cm13.bs"
expect 0 "with -o it restores" -- "$bs" decompress -q "$tmp/cm13.bs/model.bs" -o "$tmp/cm13-model.safetensors"
check "the shard's original" -- cmp -s "$tmp/cm13-model.safetensors" "$tmp/cm/model.safetensors"
cp -r "$tmp/cm.bs" "$tmp/cm1.bs" && echo '{"a":2}' >"$tmp/cm1.bs/config.json"
expect 5 "verify: a copied file changed after compression" -- "$bs" verify -q "$tmp/cm1.bs"
check "names it" -- grep -q "cm1.bs/config.json: changed after compression" "$tmp/err"
expect 5 "decompress refuses it too" -- "$bs" decompress -q "$tmp/cm1.bs" -o "$tmp/cm1"
check "and leaves nothing" -- test ! -e "$tmp/cm1"
expect 0 "decompress --no-verify restores it as it is" -- "$bs" decompress -q --no-verify "$tmp/cm1.bs" -o "$tmp/cm1"
cp -r "$tmp/cm.bs" "$tmp/cm2.bs" && rm "$tmp/cm2.bs/sub/empty.txt"
expect 2 "verify: a copied file missing (an I/O error, as a missing .bs is)" -- "$bs" verify -q "$tmp/cm2.bs"
check "names it" -- grep -q "cm2.bs/sub/empty.txt: missing (bigsmall.index.json lists it)" "$tmp/err"
expect 2 "decompress: a copied file missing" -- "$bs" decompress -q "$tmp/cm2.bs" -o "$tmp/cm2"
expect 0 "decompress --no-verify restores the rest" -- "$bs" decompress -q --no-verify "$tmp/cm2.bs" -o "$tmp/cm2"
check "without the missing file" -- test -f "$tmp/cm2/model.safetensors" -a -f "$tmp/cm2/config.json" -a ! -e "$tmp/cm2/sub/empty.txt"
# every damaged file is named in one run, and the exit code is the worst problem's
cp -r "$tmp/cm.bs" "$tmp/cm12.bs" && echo '{"a":3}' >"$tmp/cm12.bs/config.json" && rm "$tmp/cm12.bs/sub/empty.txt"
python3 -c "
p = '$tmp/cm12.bs/model.bs'; b = bytearray(open(p, 'rb').read()); b[len(b) // 2] ^= 1; open(p, 'wb').write(b)"
expect 5 "verify: three damaged files" -- "$bs" verify -q "$tmp/cm12.bs"
check "names each, one line each" -- test "$(grep -c '^bigsmall: ' "$tmp/err")" -eq 3
check "the copied file" -- grep -q "cm12.bs/config.json: changed after compression" "$tmp/err"
check "the missing one" -- grep -q "cm12.bs/sub/empty.txt: missing" "$tmp/err"
check "the damaged .bs" -- grep -q "cm12.bs/model.bs" "$tmp/err"
expect 5 "verify --json: three damaged files" -- "$bs" verify -q --json "$tmp/cm12.bs"
check "lists each problem, the exit code the worst" -- python3 -c "
import json; d=json.loads(open('$tmp/out').read()); ps=d['problems']
assert d['ok'] is False and d['exit_code']==5 and len(ps)==3, d
assert sorted(p['exit_code'] for p in ps)==[2,5,5] and any('sub/empty.txt: missing' in p['error'] for p in ps), d
assert d['error']==ps[0]['error'], d"
cp -r "$tmp/cm.bs" "$tmp/cm7.bs" && mkdir "$tmp/cm7.bs/model.safetensors"
expect 5 "verify: a directory where a .bs restores to" -- "$bs" verify -q "$tmp/cm7.bs"
expect 5 "decompress refuses it alike" -- "$bs" decompress -q "$tmp/cm7.bs" -o "$tmp/cm7"
cp -r "$tmp/cm.bs" "$tmp/cm9.bs" && ln -s /nonexistent "$tmp/cm9.bs/model.safetensors"
expect 2 "verify: a dangling link where a .bs restores to" -- "$bs" verify -q "$tmp/cm9.bs"
expect 2 "decompress answers alike" -- "$bs" decompress -q "$tmp/cm9.bs" -o "$tmp/cm9"
cp -r "$tmp/cm.bs" "$tmp/cm6.bs" && echo junk >"$tmp/cm6.bs/model.safetensors"
expect 5 "verify: a file where a .bs restores to (as decompress refuses it)" -- "$bs" verify -q "$tmp/cm6.bs"
expect 5 "decompress refuses it" -- "$bs" decompress -q "$tmp/cm6.bs" -o "$tmp/cm6"
# compress -f over an earlier DIR.bs removes the files that run copied and this one does not
mkdir -p "$tmp/v1" && cp "$tmp/m.safetensors" "$tmp/v1/model.safetensors" && echo a >"$tmp/v1/generation_config.json" && echo b >"$tmp/v1/keep.json"
mkdir -p "$tmp/v2" && cp "$tmp/m.safetensors" "$tmp/v2/model.safetensors" && echo c >"$tmp/v2/keep.json"
expect 0 "compress v1" -- "$bs" compress -q "$tmp/v1" -o "$tmp/vv.bs"
echo mine >"$tmp/vv.bs/notes.txt"
expect 0 "compress -f v2 over it" -- "$bs" compress -q -f "$tmp/v2" -o "$tmp/vv.bs"
check "v1's generation config is gone, v2's file is there, the user's own file stays" -- \
  test ! -e "$tmp/vv.bs/generation_config.json" -a "$(cat "$tmp/vv.bs/keep.json")" = c -a -f "$tmp/vv.bs/notes.txt"
echo a >"$tmp/v2/generation_config.json" && echo d >"$tmp/v2/extra.json"
expect 0 "compress -f v2 with more files" -- "$bs" compress -q -f "$tmp/v2" -o "$tmp/vv.bs"
echo "my edits" >"$tmp/vv.bs/extra.json" && rm "$tmp/v2/extra.json"
expect 0 "compress -f v2 without extra.json" -- "$bs" compress -q -f "$tmp/v2" -o "$tmp/vv.bs"
check "a file the user edited since the earlier run is theirs: kept" -- grep -q "my edits" "$tmp/vv.bs/extra.json"
mkdir -p "$tmp/inner" && cp "$tmp/m.safetensors" "$tmp/inner/model.safetensors" && mkdir -p "$tmp/inner/model" && echo '{}' >"$tmp/inner/model/config.json"
expect 0 "compress a model with a subdirectory" -- "$bs" compress -q "$tmp/inner" -o "$tmp/in.bs"
cp "$tmp/m.safetensors" "$tmp/in.bs/model/model.safetensors"
expect 0 "compress -f a directory inside the output into it" -- "$bs" compress -q -f "$tmp/in.bs/model" -o "$tmp/in.bs"
check "removes nothing of its own input" -- test -f "$tmp/in.bs/model/config.json"
cp -r "$tmp/cm.bs" "$tmp/cm3.bs" && echo extra >"$tmp/cm3.bs/added.txt"
expect 0 "a file added to the compressed directory: verify passes" -- "$bs" verify -q "$tmp/cm3.bs"
expect 0 "and the restore is the model as compressed" -- "$bs" decompress -q "$tmp/cm3.bs" -o "$tmp/cm3"
check "without the added file" -- diff -r "$tmp/cm" "$tmp/cm3"
cp -r "$tmp/cm.bs" "$tmp/cm4.bs" && ln -s nowhere "$tmp/cm4.bs/dangling"
expect 2 "verify refuses what decompress refuses (a dangling link)" -- "$bs" verify -q "$tmp/cm4.bs"
expect 2 "as decompress does" -- "$bs" decompress -q "$tmp/cm4.bs" -o "$tmp/cm4"

for bad in '"../escape", "size": 1, "checksum": "0000000000000000"' '"config.json", "size": 1, "checksum": "00"' \
           '"model.bs", "size": 1, "checksum": "0000000000000000"' '"sub//empty.txt", "size": 0, "checksum": "2d06800538d394c2"'; do
  rm -rf "$tmp/cm5.bs" && cp -r "$tmp/cm.bs" "$tmp/cm5.bs"
  python3 -c "
import json, sys; p = '$tmp/cm5.bs/bigsmall.index.json'; d = json.load(open(p))
d['copied'] = [json.loads('{\"path\": ' + sys.argv[1] + '}')]; json.dump(d, open(p, 'w'))" "$bad"
  expect 5 "an index whose copied entry is invalid: $bad" -- "$bs" verify -q "$tmp/cm5.bs"
done
rm -rf "$tmp/cm8.bs" && cp -r "$tmp/cm.bs" "$tmp/cm8.bs"
python3 -c "
import json; p = '$tmp/cm8.bs/bigsmall.index.json'; d = json.load(open(p))
d['files'].append({'source': 'x//model.safetensors', 'bs': 'x//model.bs'}); json.dump(d, open(p, 'w'))"
expect 5 "a files entry not in normal form" -- "$bs" verify -q "$tmp/cm8.bs"
check "is named unsafe" -- grep -q "unsafe path 'x//model" "$tmp/err"

# outputs take their input's modification time, as zstd's do (make and rsync -u see the model's age)
mkdir -p "$tmp/mt/d" && cp "$tmp/m.safetensors" "$tmp/mt/a.safetensors" && cp "$tmp/m.safetensors" "$tmp/mt/d/model.safetensors"
echo '{}' >"$tmp/mt/d/config.json" && touch -d 2020-01-02T03:04:05 "$tmp/mt/a.safetensors" "$tmp/mt/d/config.json"
expect 0 "compress a file from 2020" -- "$bs" compress -q "$tmp/mt/a.safetensors"
check "its .bs is from 2020 too" -- test "$(stat -c %Y "$tmp/mt/a.bs")" = "$(stat -c %Y "$tmp/mt/a.safetensors")"
expect 0 "decompress it" -- "$bs" decompress -q "$tmp/mt/a.bs" -o "$tmp/mt/r.safetensors"
check "the restored file is from 2020" -- test "$(stat -c %Y "$tmp/mt/r.safetensors")" = "$(stat -c %Y "$tmp/mt/a.safetensors")"
expect 0 "a directory round trip" -- sh -c "\"$bs\" compress -q \"$tmp/mt/d\" && \"$bs\" decompress -q \"$tmp/mt/d.bs\" -o \"$tmp/mt/d2\""
check "a copied file keeps its time both ways" -- test "$(stat -c %Y "$tmp/mt/d2/config.json")" = "$(stat -c %Y "$tmp/mt/d/config.json")"

# -k as zstd users type it: accepted, and the input stays
expect 0 "compress -kfq" -- "$bs" compress -kfq "$tmp/m.safetensors" -o "$tmp/k.bs"
check "the input is there" -- test -f "$tmp/m.safetensors" -a -f "$tmp/k.bs"
expect 1 "-k does not apply to verify" -- "$bs" verify -k "$tmp/k.bs"
# an output that is a directory is named as one at once, -f or not
mkdir -p "$tmp/odir"
expect 2 "compress -o DIR" -- "$bs" compress -q "$tmp/m.safetensors" -o "$tmp/odir"
check "says it is a directory (not 'use -f')" -- grep -q "odir: is a directory$" "$tmp/err"

# as root, outputs keep their input's owner, as zstd's do (checked where this runs as root)
if [ "$(id -u)" = 0 ] && id nobody >/dev/null 2>&1; then
  cp "$tmp/m.safetensors" "$tmp/own.safetensors" && chown nobody "$tmp/own.safetensors"
  expect 0 "compress a file someone else owns" -- "$bs" compress -q "$tmp/own.safetensors"
  check "the .bs is theirs" -- test "$(stat -c %U "$tmp/own.bs")" = nobody
  expect 0 "and back" -- "$bs" decompress -q "$tmp/own.bs" -o "$tmp/own2.safetensors"
  check "the restored file is theirs" -- test "$(stat -c %U "$tmp/own2.safetensors")" = nobody
else
  skip "outputs keep their input's owner: needs root and a user nobody (uid $(id -u))"
fi

# A run killed beyond cleanup (SIGKILL, the OOM killer) leaves its temporary output; the next
# attempt at the same output removes it (unlocked, over a minute old) and says so, unless -q.
mkdir -p "$tmp/stale"
cp "$tmp/m.safetensors" "$tmp/stale/s.safetensors"
printf 'half a .bs' > "$tmp/stale/s.bs.tmp-bigsmall-L4242-0"
mkdir -p "$tmp/stale/.s.bs.tmp-bigsmall-L4242-1" && printf 'x' > "$tmp/stale/.s.bs.tmp-bigsmall-L4242-1/a.bs"
printf 'recent' > "$tmp/stale/s.bs.tmp-bigsmall-L4242-2"
printf 'other' > "$tmp/stale/other.bs.tmp-bigsmall-L4242-3"
touch -d '2 hours ago' "$tmp/stale/s.bs.tmp-bigsmall-L4242-0" "$tmp/stale/.s.bs.tmp-bigsmall-L4242-1" "$tmp/stale/other.bs.tmp-bigsmall-L4242-3"
expect 0 "compress beside temporaries of a killed run" -- "$bs" compress "$tmp/stale/s.safetensors"
check "removes them" -- test ! -e "$tmp/stale/s.bs.tmp-bigsmall-L4242-0" -a ! -e "$tmp/stale/.s.bs.tmp-bigsmall-L4242-1"
check "and says so" -- grep -q "removed .*s.bs.tmp-bigsmall-L4242-0, left by a run that was killed" "$tmp/err"
check "keeps one too recent to judge" -- test -e "$tmp/stale/s.bs.tmp-bigsmall-L4242-2"
check "and another output's" -- test -e "$tmp/stale/other.bs.tmp-bigsmall-L4242-3"
printf 'half' > "$tmp/stale/s.safetensors.tmp-bigsmall-L4242-4" && touch -d '2 hours ago' "$tmp/stale/s.safetensors.tmp-bigsmall-L4242-4"
expect 0 "-q" -- "$bs" decompress -q -f "$tmp/stale/s.bs"
check "removes it silently" -- test ! -e "$tmp/stale/s.safetensors.tmp-bigsmall-L4242-4" -a ! -s "$tmp/err"

# a bench killed beyond cleanup leaves its scratch directory (a .bs as large as the model): the
# next bench removes it when no run holds it locked, and leaves others' and earlier versions'
bt="$tmp/benchtmp"
for d in L-aaaaaa L-bbbbbb cccccc L-dddddd; do mkdir -p "$bt/bigsmall-bench-$d" && echo x >"$bt/bigsmall-bench-$d/scratch.bs"; done
echo y >"$bt/bigsmall-bench-L-dddddd/notes.txt"
touch -d '2 hours ago' "$bt"/bigsmall-bench-*
# (its holder does not keep this script's output open: a reader of it would wait for the sleep)
flock "$bt/bigsmall-bench-L-bbbbbb" sleep 60 </dev/null >/dev/null 2>&1 &
lockpid=$!
held() { ! flock -n "$bt/bigsmall-bench-L-bbbbbb" true 2>/dev/null; }
check "(a run holds bigsmall-bench-L-bbbbbb locked)" -- waitfor 10 -- held
expect 0 "bench beside the scratch of a killed bench" -- env TMPDIR="$bt" "$bs" bench -T1 "$m"
check "removes it" -- test ! -e "$bt/bigsmall-bench-L-aaaaaa"
check "and says so" -- grep -q "removed .*bigsmall-bench-L-aaaaaa, left by a bench that was killed" "$tmp/err"
check "keeps one a live run holds" -- test -e "$bt/bigsmall-bench-L-bbbbbb/scratch.bs"
check "keeps an earlier version's" -- test -e "$bt/bigsmall-bench-cccccc/scratch.bs"
check "keeps one with other files" -- test -e "$bt/bigsmall-bench-L-dddddd/notes.txt"
check "and leaves no scratch of its own" -- test "$(ls "$bt" | wc -l)" -eq 3
pkill -P "$lockpid" sleep 2>/dev/null  # flock's sleep, which holds the lock
kill "$lockpid" 2>/dev/null
wait "$lockpid" 2>/dev/null

# a compress to stdout of an input over the spool bound builds its .bs in a scratch directory,
# not in memory: the same bytes, nothing left; a killed one's directory the next run removes
st="$tmp/stdouttmp"
mkdir -p "$st/bigsmall-stdout-L-eeeeee" && echo x >"$st/bigsmall-stdout-L-eeeeee/scratch.bs"
touch -d '2 hours ago' "$st/bigsmall-stdout-L-eeeeee"
gives "compress -c through a scratch file" "$tmp/m.bs" -- env TMPDIR="$st" BIGSMALL_SPOOL_BYTES=100 "$bs" compress -c "$m"
check "removes the killed run's directory, and says so" -- grep -q "removed .*bigsmall-stdout-L-eeeeee, left by a compress to stdout that was killed" "$tmp/err"
check "and leaves nothing of its own" -- test -z "$(ls "$st")"
gives "-v: its tensors too" "$tmp/m.bs" -- env TMPDIR="$st" BIGSMALL_SPOOL_BYTES=100 "$bs" compress -v -c "$m"
check "lists them" -- grep -q "bf16.weight: BF16 float" "$tmp/err"
gives "stdin to stdout, both through temporary files" "$tmp/m.bs" -- sh -c "cat \"$m\" | TMPDIR=\"$st\" BIGSMALL_SPOOL_BYTES=100 \"$bs\" compress -q -"
expect 2 "a TMPDIR that is no directory, for the .bs sent to stdout" -- env TMPDIR="$tmp/m.bs" BIGSMALL_SPOOL_BYTES=100 "$bs" compress -q -c "$m"
check "names it and says what to change" -- grep -qF "TMPDIR=$tmp/m.bs: not a usable directory for the .bs sent to stdout (set TMPDIR to a usable directory, or BIGSMALL_SPOOL_BYTES to" "$tmp/err"
gives "which BIGSMALL_SPOOL_BYTES gives, in memory" "$tmp/m.bs" -- env TMPDIR="$tmp/m.bs" BIGSMALL_SPOOL_BYTES=1G "$bs" compress -q -c "$m"
expect 3 "a full stdout" -- sh -c "TMPDIR=\"$st\" BIGSMALL_SPOOL_BYTES=100 \"$bs\" compress -q -c \"$m\" >/dev/full"
check "leaves nothing" -- test -z "$(ls "$st")"
expect 3 "no room for the scratch .bs" -- bash -c "ulimit -f 1024; TMPDIR=\"$st\" BIGSMALL_SPOOL_BYTES=100 \"$bs\" compress -q -c \"$tmp/grow.safetensors\" >/dev/null"
check "says where, and what to change" -- grep -qF "grow.safetensors: no room in $st to build the .bs for stdout (set TMPDIR elsewhere, or BIGSMALL_SPOOL_BYTES to" "$tmp/err"
check "and leaves nothing" -- test -z "$(ls "$st")"
# BIGSMALL_SPOOL_BYTES takes K, M, G, T; anything else is named and the default used
expect 3 "1K: a 3 MiB stream goes to a temporary file (which the file size limit stops)" -- bash -c \
  "ulimit -f 1024; cat \"$tmp/grow.safetensors\" | TMPDIR=\"$st\" BIGSMALL_SPOOL_BYTES=1K \"$bs\" compress -q - -o \"$tmp/limited.bs\""
check "kept in a temporary file" -- grep -q "cannot keep it in a temporary file" "$tmp/err"
expect 0 "a value that is no byte count" -- sh -c "cat \"$tmp/m.bs\" | BIGSMALL_SPOOL_BYTES=-1 \"$bs\" verify -"
check "is named, once" -- test "$(grep -c "BIGSMALL_SPOOL_BYTES='-1' is not a byte count (such as 4G): using a quarter of memory" "$tmp/err")" -eq 1
expect 0 "a value that is no byte count, under -q" -- sh -c "cat \"$tmp/m.bs\" | BIGSMALL_SPOOL_BYTES=-1 \"$bs\" verify -q -"
check "says nothing: -q is errors only" -- test ! -s "$tmp/err"
# an empty name is shown as '' (a message opening with ": " names nothing)
for c in compress decompress verify info; do
  expect 2 "$c of an empty name" -- "$bs" $c ''
  check "names it ''" -- grep -q "^bigsmall: '': " "$tmp/err"
done
# a directory with no *.safetensors in it: copied whole, and said (a .bin checkpoint by mistake?)
mkdir -p "$tmp/nost" && echo '{}' >"$tmp/nost/config.json"
expect 0 "compress a directory without safetensors files" -- "$bs" compress "$tmp/nost" -o "$tmp/nost.bs"
check "warns that nothing was compressed" -- grep -q "warning: .*nost: no \*.safetensors file in it: every file was copied as it is" "$tmp/err"
expect 0 "the same under -q" -- "$bs" compress -q -f "$tmp/nost" -o "$tmp/nost.bs"
check "says nothing" -- test ! -s "$tmp/err"

# a TMPDIR with no room for even a temporary file's name (no inode left): exit 3, as a full disk
mkdir -p "$tmp/noinodes"
if mount -t tmpfs -o size=1m,nr_inodes=1 tmpfs "$tmp/noinodes" 2>/dev/null; then
  expect 3 "a stream to keep in a TMPDIR with no inode left" -- sh -c \
    "cat \"$tmp/m.bs\" | TMPDIR=\"$tmp/noinodes\" BIGSMALL_SPOOL_BYTES=0 \"$bs\" verify -q -"
  check "says so" -- grep -q "cannot make a temporary file in TMPDIR=.*noinodes to hold the stream (No space left on device" "$tmp/err"
  expect 3 "the .bs for stdout in a TMPDIR with no inode left" -- env TMPDIR="$tmp/noinodes" BIGSMALL_SPOOL_BYTES=100 "$bs" compress -q -c "$tmp/m.safetensors"
  check "says so" -- grep -q "cannot create a scratch directory: No space left on device" "$tmp/err"
  umount "$tmp/noinodes"
else
  skip "a TMPDIR with no inode left: cannot mount a tmpfs here"
fi

# a Hugging Face cache repository would keep its weights twice: refused, pointing at its snapshot
mkdir -p "$tmp/hubrepo/blobs" "$tmp/hubrepo/snapshots/r1"
cp "$tmp/m.safetensors" "$tmp/hubrepo/blobs/0a1b"
ln -s ../../blobs/0a1b "$tmp/hubrepo/snapshots/r1/model.safetensors"
expect 1 "compress of a Hugging Face cache repository" -- "$bs" compress "$tmp/hubrepo"
check "says why and what to compress instead" -- grep -qF "hubrepo: a Hugging Face cache repository (blobs/ and snapshots/)" "$tmp/err"
check "and writes nothing" -- test ! -e "$tmp/hubrepo.bs"
expect 0 "its snapshot compresses" -- "$bs" compress -q "$tmp/hubrepo/snapshots/r1" -o "$tmp/r1.bs"

echo "$pass passed, $fail failed, $skipped skipped"
[ "$fail" -eq 0 ]
