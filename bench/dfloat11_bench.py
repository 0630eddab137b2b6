#!/usr/bin/env python3
"""GPU decode throughput of DFloat11's own decoder on BF16 weights, for comparison with bigsmall.

Reads the largest BF16 tensors of a folder of safetensors files, compresses them with DFloat11's
own encoder (dfloat11/dfloat11_utils.py: get_codec, get_32bit_codec, get_luts, encode_weights,
the functions its compress_model uses), tiles the result to --gb GB of BF16 output, and times
DFloat11's own CUDA kernel (`decode` in the package's decode.ptx, the kernel its model loader
launches before each forward pass) with the launch parameters the loader uses. Prints one line
of JSON on stdout; any failure prints {"error": ...} and exits 0. Progress goes to stderr.

Tiling. DFloat11's encoder is a Python loop (a few million weights per second per core), so the
distinct weights are cut into pieces encoded in parallel, and the encoded pieces are repeated to
reach the output size. This is exact, not an approximation: every piece but the last is cut
where the Huffman bit count before it is a multiple of one kernel block's span
(threads_per_block * bytes_per_thread * 8 bits), so the encoder's state there (bit buffer
empty, new thread, new block) is the same as at the start of a stream, and concatenating the
pieces' encoded bytes, gaps and output positions (shifted by the element offset) gives
byte-identical arrays to encoding the concatenated weights in one call. The script checks this
on a small sample before the run ("concat_selfcheck") and the GPU checks the decoded output bit
for bit against the tiled weights ("small_exact", "exact").

LUT limit. The kernel follows a LUT byte as a pointer to another LUT row only when it is
240..255 (row 256 - byte, so rows 1..16) and at most 3 times; get_luts numbers its rows
without that bound. A codec with more than 17 decode LUT rows therefore has codes the kernel
reads as exponent 234..239 with code length 0, and its counting loop (`free_bits += len`)
never ends: the kernel hangs. DFloat11 builds one codec per transformer block, where this does
not arise; one codec over all tensors of several small vision models needs 23 rows. So tensors
are taken largest first and a tensor whose exponents would make the shared codec undecodable
by the kernel is left out ("tensors_skipped_lut"); the LUT is checked exhaustively against
the kernel's lookup rule before any GPU work.

Safety. A small run (about --small-mb of output, the same code path) is decoded and checked
first; the GPU is never waited on with a blocking call (events are polled with a time limit),
and a watchdog (thread, and a forked process as a backstop) prints the JSON with
"error": "timed out in stage ..." after --deadline-s seconds.

Usage: PYTHONPATH=/tmp/site python3 bench/dfloat11_bench.py --bs-dir DIR [--gb 2] [--runs 10]
"""
import argparse
import contextlib
import importlib.util
import json
import math
import multiprocessing as mp
import os
import select
import shutil
import signal
import statistics
import sys
import tempfile
import threading
import time

os.environ.setdefault("TQDM_DISABLE", "1")  # the encoder wraps its loop in tqdm

RESULT = {}
NOTES = []
T0 = time.time()
STAGE = ["start"]
_EMIT_LOCK = threading.Lock()
_WD = {}  # watchdog: token dir, pipe write fd

# Kernel launch constants of dfloat11 0.5.0 (dfloat11/dfloat11.py: bytes_per_thread = 8,
# threads_per_block = (512,)); checked against the package when its module imports.
BYTES_PER_THREAD = 8
THREADS_PER_BLOCK = 512
MAX_DECODE_LUT_ROWS = 17  # row 0 + rows 1..16 reachable through pointer bytes 255..240
MAX_LOOKUPS = 4           # the kernel's unrolled lookup chain (codes up to 32 bits)


def elapsed():
    return round(time.time() - T0, 2)


def log(msg):
    sys.stderr.write(f"[dfloat11_bench {elapsed():8.2f}s] {msg}\n")
    sys.stderr.flush()


def snapshot(error=None):
    r = dict(RESULT)
    if error is not None:
        r["error"] = " ".join(str(error).split())[:600]
    if NOTES:
        r["note"] = "; ".join(NOTES)
    r["stage"] = STAGE[0]
    r["total_s"] = elapsed()
    return r


def _push_state():
    fd = _WD.get("wfd")
    if fd is None:
        return
    try:
        os.write(fd, (json.dumps(snapshot()) + "\n").encode())
    except OSError:
        _WD["wfd"] = None


def stage(name, **measured):
    RESULT.update(measured)
    STAGE[0] = name
    log(f"stage: {name}" + (f" {json.dumps(measured)}" if measured else ""))
    _push_state()


def _claim_print():
    """Only one of main / watchdog thread / watchdog process prints the JSON line."""
    d = _WD.get("dir")
    if d is None:
        return True
    try:
        os.close(os.open(os.path.join(d, "printed"), os.O_CREAT | os.O_EXCL | os.O_WRONLY))
        return True
    except OSError:
        return False


def emit_and_exit(error=None):
    with _EMIT_LOCK:
        if _claim_print():
            sys.stdout.write(json.dumps(snapshot(error)) + "\n")
            sys.stdout.flush()
            log(f"result printed ({'error: ' + str(error)[:200] if error else 'ok'})")
        sys.stderr.flush()
        os._exit(0)


def start_watchdogs(deadline_s, grace_s=8.0):
    """A daemon thread prints the JSON and os._exit(0)s at the deadline (works while the main
    thread waits in a C call that released the GIL). A forked process, started before torch or
    CUDA exist, does the same grace_s later from the last state the main process sent it and
    kills the main process, in case the GIL is held by a blocked call."""
    _WD["dir"] = tempfile.mkdtemp(prefix="df11wd")
    rfd, wfd = os.pipe()
    parent = os.getpid()
    pid = os.fork()
    if pid == 0:  # watchdog process: plain Python, no torch
        os.close(wfd)
        last, buf = None, b""
        end = T0 + deadline_s + grace_s
        try:
            while True:
                left = end - time.time()
                if left <= 0:
                    break
                r, _, _ = select.select([rfd], [], [], min(left, 1.0))
                if os.getppid() != parent:  # main process gone
                    shutil.rmtree(_WD["dir"], ignore_errors=True)
                    os._exit(0)
                if r:
                    chunk = os.read(rfd, 1 << 16)
                    if not chunk:  # main process gone (it printed, or was killed)
                        shutil.rmtree(_WD["dir"], ignore_errors=True)
                        os._exit(0)
                    buf += chunk
                    *lines, buf = buf.split(b"\n")
                    if lines:
                        last = lines[-1]
            state = {}
            with contextlib.suppress(Exception):
                state = json.loads(last) if last else {}
            if _claim_print():
                state["error"] = (f"timed out in stage {state.get('stage', '?')} "
                                  f"(watchdog process, main process unresponsive; killed)")
                state["total_s"] = round(time.time() - T0, 2)
                sys.stdout.write(json.dumps(state) + "\n")
                sys.stdout.flush()
                sys.stderr.write(f"[dfloat11_bench watchdog] {state['error']}\n")
                sys.stderr.flush()
            with contextlib.suppress(OSError):
                os.kill(parent, signal.SIGKILL)
            shutil.rmtree(_WD["dir"], ignore_errors=True)
        finally:
            os._exit(0)
    os.close(rfd)
    _WD["wfd"] = wfd
    _WD["pid"] = pid

    def fire():
        time.sleep(max(0.0, T0 + deadline_s - time.time()))
        log(f"deadline {deadline_s}s reached in stage {STAGE[0]}")
        emit_and_exit(f"timed out in stage {STAGE[0]}")

    threading.Thread(target=fire, name="df11-watchdog", daemon=True).start()


def quiet():
    """The package prints its code tables and LUTs on stdout; keep stdout for the JSON line."""
    return contextlib.redirect_stdout(sys.stderr)


def devnull_stdout():
    return contextlib.redirect_stdout(open(os.devnull, "w"))


def package_dir():
    spec = importlib.util.find_spec("dfloat11")  # locates the package without importing it
    if spec is None or not spec.submodule_search_locations:
        raise ImportError("dfloat11 package not found on sys.path")
    return list(spec.submodule_search_locations)[0]


def load_utils(pkgdir):
    """dfloat11/dfloat11_utils.py, loaded on its own: importing the package runs its
    __init__, which imports dfloat11.dfloat11 (accelerate, pkg_resources, and a CUDA module
    load), none of which the encoder needs, and CUDA must stay untouched before forking."""
    path = os.path.join(pkgdir, "dfloat11_utils.py")
    spec = importlib.util.spec_from_file_location("dfloat11_utils_standalone", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    for name in ("get_codec", "get_32bit_codec", "get_luts", "encode_weights"):
        if not hasattr(mod, name):
            raise AttributeError(f"dfloat11_utils has no {name}")
    return mod


# ---- LUT check (the kernel's lookup rule, exhaustively) ---------------------------------------

def lut_problems(luts, table=None):
    """Every 32-bit window the kernel can see, walked through its lookup: byte >= 240 is a
    pointer to row 256 - byte (followed at most MAX_LOOKUPS - 1 times), anything else is the
    exponent, whose code length is the last row. Returns a list of problems (empty: every bit
    pattern decodes to a symbol with a non-zero length, so the counting loops terminate)."""
    import numpy as np
    luts = np.asarray(luts)
    n_decode = luts.shape[0] - 1
    lens = luts[-1]
    probs = []
    if n_decode > MAX_DECODE_LUT_ROWS:
        probs.append(f"{n_decode} decode LUT rows > {MAX_DECODE_LUT_ROWS} the kernel can address")
    if table is not None:
        big = [k for k in table if isinstance(k, int) and k >= 240]
        if big:
            probs.append(f"exponent symbols >= 240 {big[:4]} collide with pointer bytes")
    seen = set()

    def walk(row, level):
        if (row, level) in seen:
            return
        seen.add((row, level))
        for b in range(256):
            v = int(luts[row, b])
            if v >= 240 and level < MAX_LOOKUPS - 1:
                r = 256 - v
                if r >= n_decode:
                    probs.append(f"row {row} byte {b}: pointer to row {r} beyond the {n_decode} decode rows")
                else:
                    walk(r, level + 1)
            elif lens[v] == 0:
                probs.append(f"row {row} byte {b} (lookup {level + 1}): value {v} has code length 0 (kernel loops forever)")

    walk(0, 0)
    return probs


def codec_from_hist(utils, hist):
    """Counter exactly as get_codec builds it (torch.unique: ascending exponent order)."""
    import numpy as np
    counter = {int(i): int(hist[i]) for i in np.nonzero(hist)[0]}
    with devnull_stdout():
        codec, _, table = utils.get_32bit_codec(counter)
        luts = utils.get_luts(table)
    return codec, table, luts


def read_weights(bs_dir, cap_elems, utils):
    """Largest BF16 tensors first, flattened and concatenated, up to cap_elems weights; a tensor
    whose exponents would make the shared codec's LUT undecodable by the kernel is skipped."""
    import numpy as np
    import torch
    from safetensors import safe_open

    files = sorted(os.path.join(bs_dir, f) for f in os.listdir(bs_dir) if f.endswith(".safetensors"))
    if not files:
        raise FileNotFoundError(f"no .safetensors files in {bs_dir}")
    cands = []
    for path in files:
        with safe_open(path, framework="pt") as f:
            for key in f.keys():
                sl = f.get_slice(key)
                if str(sl.get_dtype()).upper() not in ("BF16", "BFLOAT16"):
                    continue
                n = math.prod(sl.get_shape())
                if n >= 4096:
                    cands.append((n, path, key))
    if not cands:
        raise ValueError(f"no BF16 tensor of 4096+ weights in {bs_dir}")
    cands.sort(key=lambda c: (-c[0], c[1], c[2]))
    parts, total, skipped = [], 0, []
    acc = np.zeros(256, dtype=np.int64)
    all_hist = np.zeros(256, dtype=np.int64)
    for n, path, key in cands:
        if total >= cap_elems:
            break
        with safe_open(path, framework="pt") as f:
            t = f.get_tensor(key)
        assert t.dtype == torch.bfloat16
        t = t.reshape(-1)[: cap_elems - total]
        e = (t.view(torch.int16).numpy().astype(np.int32) >> 7) & 0xFF
        h = np.bincount(e, minlength=256).astype(np.int64)
        all_hist += h
        try:
            _, table, luts = codec_from_hist(utils, acc + h)
            ok = not lut_problems(luts.numpy(), table)
        except Exception:  # noqa: BLE001  (get_luts can raise on odd tables)
            ok = False
        if not ok:
            skipped.append((os.path.basename(path), key, int(t.numel())))
            continue
        acc += h
        parts.append(t)
        total += t.numel()
    if not parts:
        raise ValueError("no tensor gives a LUT the DFloat11 kernel can decode")
    try:
        _, _, luts_all = codec_from_hist(utils, all_hist)
        rows_all = int(luts_all.shape[0] - 1)
    except Exception:  # noqa: BLE001
        rows_all = None
    return torch.cat(parts).contiguous(), len(parts), cands[0][0], skipped, rows_all


# ---- encoding (parallel, with the package's encode_weights) ----------------------------------

_G = {}  # inherited by the forked workers: utils module, codec, weights


def _encode_piece(bounds):
    import torch
    torch.set_num_threads(1)
    lo, hi = bounds
    with devnull_stdout():
        enc, other, outpos, gaps, _ = _G["utils"].encode_weights(
            [_G["weights"][lo:hi]], _G["codec"], BYTES_PER_THREAD, THREADS_PER_BLOCK)
    return (enc.numpy().copy(), other.numpy().copy(), outpos.numpy().astype("uint32"),
            gaps.numpy().copy())


def code_lengths(codec, weights):
    """Huffman code length of every weight's exponent under the codec (bits)."""
    import numpy as np
    lut = np.zeros(256, dtype=np.int64)
    for sym, (bits, _) in codec._table.items():  # the table the package's encode() reads
        if isinstance(sym, int):
            lut[sym] = bits
    exps = ((weights.view(np.int16).astype(np.int32) >> 7) & 0xFF)
    return lut[exps]


def aligned_cuts(lengths, targets, span_bits):
    """For each target element index, the first index >= it whose bit offset is a multiple of
    span_bits (so a piece can start there with fresh encoder state)."""
    import numpy as np
    before = np.concatenate(([0], np.cumsum(lengths)))  # bits before element i
    ok = np.nonzero(before % span_bits == 0)[0]          # aligned element indices (0 included)
    out = []
    for t in targets:
        j = np.searchsorted(ok, t)
        if j < len(ok):
            out.append(int(ok[j]))
    return out


def check_piece(p, aligned):
    enc, _, outpos, gaps = p
    span = BYTES_PER_THREAD * THREADS_PER_BLOCK
    if aligned:
        blocks = enc.size // span
        if enc.size % span or outpos.size != blocks + 1 or gaps.size * 8 != blocks * THREADS_PER_BLOCK * 5:
            raise RuntimeError("encoded piece is not block-aligned; concatenation would be unsafe")


def concat(pieces, sequence, n_elements):
    """Join encoded pieces in the given order (all but the last block-aligned)."""
    import numpy as np
    encs, others, outs, gapss, off = [], [], [], [], 0
    for i, idx in enumerate(sequence):
        enc, other, outpos, gaps = pieces[idx]
        encs.append(enc)
        others.append(other)
        gapss.append(gaps)
        last = i == len(sequence) - 1
        outs.append((outpos if last else outpos[:-1]).astype(np.uint64) + off)
        off += other.size
    assert off == n_elements
    outpos = np.concatenate(outs)
    if outpos.max() >= 2**32:
        raise ValueError("too many elements for DFloat11's uint32 output positions")
    return (np.concatenate(encs), np.concatenate(others), outpos.astype(np.uint32), np.concatenate(gapss))


def selfcheck(utils, codec, weights_np, span_bits):
    """Concatenated pieces == one encode_weights call on the concatenated weights."""
    import numpy as np
    import torch
    sample = weights_np[:400_000]
    lens = code_lengths(codec, sample)
    cuts = aligned_cuts(lens, [60_000, 160_000, 300_000], span_bits)
    if len(cuts) < 3 or not (0 < cuts[0] < cuts[1] < cuts[2] < sample.size):
        return None
    a, b, c = cuts
    ranges = [(0, a), (a, b), (b, c), (c, sample.size)]  # 3 aligned pieces + unaligned tail
    w = torch.from_numpy(sample.copy()).view(torch.bfloat16)
    pieces = []
    with devnull_stdout():
        for lo, hi in ranges:
            e, o, p, g, _ = utils.encode_weights([w[lo:hi]], codec, BYTES_PER_THREAD, THREADS_PER_BLOCK)
            pieces.append((e.numpy(), o.numpy(), p.numpy().astype(np.uint32), g.numpy()))
    for p in pieces[:3]:
        check_piece(p, True)
    seq = [0, 1, 2, 1, 0, 2, 3]
    joined = concat(pieces, seq, sum(pieces[i][1].size for i in seq))
    full = torch.cat([w[ranges[i][0]:ranges[i][1]] for i in seq])
    with devnull_stdout():
        e, o, p, g, _ = utils.encode_weights([full], codec, BYTES_PER_THREAD, THREADS_PER_BLOCK)
    ref = (e.numpy(), o.numpy(), p.numpy().astype(np.uint32), g.numpy())
    return all(np.array_equal(x, y) for x, y in zip(joined, ref))


def stream_layout(encoded, outpos, gaps):
    """Launch configuration exactly as dfloat11's decode hook / compress_model computes it, and
    the side arrays' sizes checked against what the kernel indexes for that grid."""
    import numpy as np
    n_bytes = int(encoded.size)
    grid = int(math.ceil(n_bytes / (THREADS_PER_BLOCK * BYTES_PER_THREAD)))
    shared_mem = THREADS_PER_BLOCK * 4 + 4 + int(np.diff(outpos.astype(np.int64)).max()) * 2
    if n_bytes + 16 >= 2**31:
        raise ValueError("encoded exponents exceed the kernel's int32 byte indexing")
    if outpos.size != grid + 1:
        raise ValueError(f"output_positions has {outpos.size} entries for {grid} blocks (kernel reads grid+1)")
    if gaps.size < (grid * THREADS_PER_BLOCK * 5 + 7) // 8:
        raise ValueError(f"gaps has {gaps.size} bytes for {grid * THREADS_PER_BLOCK} threads")
    return n_bytes, grid, shared_mem


# ---- GPU kernel --------------------------------------------------------------------------------

def load_kernel(pkgdir):
    """The package's own `_decode` (cp.RawModule(path=decode.ptx).get_function('decode'),
    created when dfloat11.dfloat11 imports). If that module cannot import here (it also needs
    accelerate and pkg_resources), load the same PTX the same way. If the driver refuses the
    PTX's `.target sm_52`, retarget that one line to the device's architecture."""
    import cupy as cp
    notes = []
    try:
        stage("import dfloat11.dfloat11")
        with quiet():
            import dfloat11.dfloat11 as dfm
        stage("imported dfloat11.dfloat11")
        if dfm.bytes_per_thread != BYTES_PER_THREAD or tuple(dfm.threads_per_block) != (THREADS_PER_BLOCK,):
            raise RuntimeError(f"package launch constants changed: {dfm.bytes_per_thread}, {dfm.threads_per_block}")
        return dfm._decode, "package _decode", notes
    except Exception as e:  # noqa: BLE001
        notes.append(f"package import failed ({type(e).__name__}: {str(e)[:120]}); loaded decode.ptx directly")
    ptx = os.path.join(pkgdir, "decode.ptx")
    try:
        stage("load decode.ptx")
        return cp.RawModule(path=ptx).get_function("decode"), "decode.ptx", notes
    except Exception as e:  # noqa: BLE001
        notes.append(f"decode.ptx load failed ({type(e).__name__}: {str(e)[:120]})")
    major, minor = cp.cuda.Device().compute_capability[:-1], cp.cuda.Device().compute_capability[-1]
    arch = f"sm_{major}{minor}"
    text = open(ptx).read()
    if ".target sm_52" not in text:
        raise RuntimeError("; ".join(notes))
    tmp = os.path.join(tempfile.mkdtemp(prefix="df11ptx"), "decode.ptx")
    with open(tmp, "w") as f:
        f.write(text.replace(".target sm_52", f".target {arch}", 1))
    notes.append(f"PTX .target retargeted sm_52 -> {arch}")
    stage(f"load decode.ptx retargeted to {arch}")
    return cp.RawModule(path=tmp).get_function("decode"), f"decode.ptx ({arch})", notes


class GpuTimeout(Exception):
    pass


def wait_event(ev, limit_s, what):
    """Poll a CUDA event (never a blocking synchronize), so a kernel that does not finish
    becomes a clear error instead of a hang."""
    t = time.time()
    while not ev.done:
        if time.time() - t > limit_s:
            raise GpuTimeout(f"{what}: kernel not finished after {limit_s:.0f} s (still running; "
                             f"DFloat11's decode loops forever on undecodable LUT entries)")
        time.sleep(0.0002)
    return time.time() - t


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--bs-dir", required=True, help="folder of safetensors files with BF16 tensors")
    ap.add_argument("--gb", type=float, default=2.0, help="BF16 output size, GB (1e9 bytes)")
    ap.add_argument("--runs", type=int, default=10, help="timed kernel runs (median reported)")
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--max-unique-mb", type=float, default=256, help="cap on distinct BF16 data encoded")
    ap.add_argument("--encode-budget-s", type=float, default=30, help="target wall time of the parallel encode")
    ap.add_argument("--workers", type=int, default=0, help="encoder processes (default: CPU count, max 32)")
    ap.add_argument("--small-mb", type=float, default=16, help="output size of the first (check) run, MB")
    ap.add_argument("--small-limit-s", type=float, default=10, help="the small run must finish within this")
    ap.add_argument("--deadline-s", type=float, default=100, help="print the JSON and exit after this")
    args = ap.parse_args()
    args.runs = max(args.runs, 5)
    start_watchdogs(args.deadline_s)
    stage("start", deadline_s=args.deadline_s)

    # -- package ------------------------------------------------------------------------------
    try:
        from importlib.metadata import version
        for pkg in ("dfloat11", "cupy-cuda13x", "cupy-cuda12x", "torch"):
            with contextlib.suppress(Exception):
                RESULT[f"{pkg.split('-')[0]}_version"] = version(pkg)
        RESULT.setdefault("dfloat11_version", None)
        pkgdir = package_dir()
        import numpy as np
        import torch
        utils = load_utils(pkgdir)
    except Exception as e:  # noqa: BLE001
        emit_and_exit(f"dfloat11 import: {type(e).__name__}: {e}")

    n_out = int(math.ceil(args.gb * 1e9 / 2))
    span_bits = 8 * BYTES_PER_THREAD * THREADS_PER_BLOCK
    workers = args.workers or min(os.cpu_count() or 1, 32)
    notes = NOTES

    # -- weights and codec ----------------------------------------------------------------------
    try:
        stage("read weights")
        cap = min(n_out, int(args.max_unique_mb * 1e6 / 2))
        weights, n_tensors, largest, skipped, rows_all = read_weights(args.bs_dir, cap, utils)
        wnp = weights.view(torch.int16).numpy()
        RESULT.update(tensors_used=n_tensors, largest_tensor_elems=int(largest),
                      lut_rows_all_tensors=rows_all)
        if skipped:
            RESULT["tensors_skipped_lut"] = len(skipped)
            RESULT["weights_skipped_lut"] = int(sum(s[2] for s in skipped))
            notes.append(
                f"{len(skipped)} tensors ({sum(s[2] for s in skipped)} weights, e.g. "
                f"{', '.join(f'{a}:{b}' for a, b, _ in skipped[:3])}) left out: with them the shared "
                f"codec needs {rows_all} decode LUT rows, more than the {MAX_DECODE_LUT_ROWS} the "
                f"kernel can address (it would loop forever)")
        with devnull_stdout():
            _, counter = utils.get_codec(weights)
            codec, _, table = utils.get_32bit_codec(counter)
            luts = utils.get_luts(table)
        probs = lut_problems(luts.numpy(), table)
        RESULT["lut_rows"] = int(luts.shape[0] - 1)
        RESULT["max_code_bits"] = int(max(b for k, (b, _) in table.items() if isinstance(k, int)))
        if probs:
            emit_and_exit(f"LUT not decodable by the kernel: {'; '.join(probs[:3])}")
        stage("codec built", weights_read=int(weights.numel()))
        # single-core encode rate on a small sample, to size the parallel encode
        t = time.time()
        with devnull_stdout():
            utils.encode_weights([weights[:200_000]], codec, BYTES_PER_THREAD, THREADS_PER_BLOCK)
        rate = min(200_000, weights.numel()) / (time.time() - t)
        budget = int(rate * workers * args.encode_budget_s * 0.8)
        n_uniq = min(weights.numel(), budget)
        if n_uniq < weights.numel():
            notes.append(f"encoder at {rate / 1e6:.1f}M weights/s/core: {n_uniq} of {weights.numel()} distinct weights encoded")
        RESULT["encode_rate_Mw_per_s_core"] = round(rate / 1e6, 2)
    except Exception as e:  # noqa: BLE001
        emit_and_exit(f"weights/codec: {type(e).__name__}: {e}")

    # -- self-check of the piecewise encoding ---------------------------------------------------
    try:
        stage("concat selfcheck")
        RESULT["concat_selfcheck"] = selfcheck(utils, codec, wnp, span_bits)
        if RESULT["concat_selfcheck"] is False:
            emit_and_exit("encoded pieces do not concatenate to the one-call encoding")
    except Exception as e:  # noqa: BLE001
        emit_and_exit(f"selfcheck: {type(e).__name__}: {e}")

    # -- parallel encode ------------------------------------------------------------------------
    try:
        stage("parallel encode", workers=int(workers))
        lens = code_lengths(codec, wnp[:n_uniq])
        n_pieces = max(1, min(workers * 2, n_uniq // 100_000))
        targets = [n_uniq * k // n_pieces for k in range(1, n_pieces + 1)]
        cuts = [c for c in aligned_cuts(lens, targets, span_bits) if 0 < c <= n_uniq]
        cuts = sorted(set(cuts))
        del lens
        bounds, lo = [], 0
        for c in cuts:
            bounds.append((lo, c))
            lo = c
        if not bounds:
            raise RuntimeError("no block-aligned cut point in the distinct weights (too few weights)")
        body = bounds[-1][1]  # aligned pieces cover [0, body)
        tail = (body, n_uniq) if n_uniq > body else None
        _G.update(utils=utils, codec=codec, weights=weights)
        t = time.time()
        jobs = bounds + ([tail] if tail else [])
        ctx = mp.get_context("fork")
        with ctx.Pool(min(workers, len(jobs))) as pool:
            pieces = pool.map(_encode_piece, jobs, chunksize=1)
        RESULT["encode_s"] = round(time.time() - t, 2)
        for p in pieces[: len(bounds)]:
            check_piece(p, True)
        luts_np = luts.numpy().astype(np.uint8)
        n_luts = int(luts_np.shape[0])

        # small stream: the first aligned pieces covering ~small_mb, then the tail (a stream end)
        small_target = max(1, int(args.small_mb * 1e6 / 2))
        k, acc_n = 0, 0
        while k < len(bounds) and (acc_n < small_target or k == 0):
            acc_n += bounds[k][1] - bounds[k][0]
            k += 1
        small_seq = list(range(k)) + ([len(bounds)] if tail else [])
        small_ranges = [bounds[i] for i in range(k)] + ([tail] if tail else [])
        small_n = sum(hi - lo for lo, hi in small_ranges)
        s_enc, s_sm, s_pos, s_gaps = concat(pieces, small_seq, small_n)
        s_bytes, s_grid, s_shm = stream_layout(s_enc, s_pos, s_gaps)
        stage("encoded", encode_s=RESULT["encode_s"], pieces=len(jobs), small_elements=int(small_n),
              small_grid=s_grid, small_shared_mem=s_shm)
    except Exception as e:  # noqa: BLE001
        emit_and_exit(f"encode: {type(e).__name__}: {e}")

    # -- GPU: kernel -----------------------------------------------------------------------------
    try:
        stage("cuda init")
        if not torch.cuda.is_available():
            raise RuntimeError("CUDA not available")
        import cupy as cp
        dev = torch.device("cuda", 0)
        torch.cuda.set_device(dev)
        RESULT["device"] = torch.cuda.get_device_name(dev)
        with cp.cuda.Device(0):
            kernel, ksrc, knotes = load_kernel(pkgdir)
            notes += knotes
            RESULT["kernel"] = ksrc
            with contextlib.suppress(Exception):
                attrs = kernel.attributes
                RESULT["kernel_regs"] = attrs.get("num_regs")
                RESULT["kernel_ptx_version"] = attrs.get("ptx_version")
                RESULT["kernel_binary_version"] = attrs.get("binary_version")
        stage("kernel loaded")
    except Exception as e:  # noqa: BLE001
        emit_and_exit(f"kernel load: {type(e).__name__}: {e}")

    def up(a, pad=0, fill=0):
        b = np.full(a.nbytes + pad, fill, dtype=np.uint8)
        b[: a.nbytes] = a.view(np.uint8).reshape(-1)
        return torch.from_numpy(b).to(dev)

    def up_pos(pos, n_elements):
        # past the last entry: n_elements (an empty block), never 0 (a negative count)
        return up(np.concatenate([pos, np.full(4, n_elements, dtype=np.uint32)]))

    shm_set = [0]

    def make_launch(d_enc, d_sm, d_pos, d_gaps, out, n_bytes, n_elements, grid, shared_mem):
        if shared_mem > 48 * 1024 and shared_mem > shm_set[0]:  # the package never sets this
            kernel.max_dynamic_shared_size_bytes = shared_mem
            shm_set[0] = shared_mem
            notes.append(f"raised max dynamic shared memory to {shared_mem}")
        # decode(luts, encoded_exponent, sign_mantissa, output_positions, gaps, out: 6 x u64,
        #        n_luts, n_bytes, n_elements: 3 x u32), the order of the package's hook
        kargs = [np.uint64(d_luts.data_ptr()), np.uint64(d_enc.data_ptr()), np.uint64(d_sm.data_ptr()),
                 np.uint64(d_pos.data_ptr()), np.uint64(d_gaps.data_ptr()), np.uint64(out.data_ptr()),
                 np.uint32(n_luts), np.uint32(n_bytes), np.uint32(n_elements)]

        def launch():
            kernel(grid=(grid,), block=(THREADS_PER_BLOCK,), shared_mem=shared_mem, args=kargs)
        return launch

    def timed(launch, limit_s, what):
        e0, e1 = cp.cuda.Event(), cp.cuda.Event()
        e0.record()
        launch()
        e1.record()
        wall = wait_event(e1, limit_s, what)
        return cp.cuda.get_elapsed_time(e0, e1) / 1e3, wall

    def check(out, expected_ranges, d_ref):
        """Bit-exact, on the GPU: output = the weight ranges in order; plus counts."""
        ov = out.view(torch.int16)
        exact, off, first_bad = True, 0, None
        for lo, hi in expected_ranges:
            n = hi - lo
            if not torch.equal(ov[off:off + n], d_ref[lo:hi]):
                exact = False
                if first_bad is None:
                    ne = torch.nonzero(ov[off:off + n] != d_ref[lo:hi])
                    first_bad = off + int(ne[0, 0]) if ne.numel() else off
            off += n
        return exact, first_bad

    # -- GPU: small run --------------------------------------------------------------------------
    try:
        with cp.cuda.Device(0):
            stage("upload small")
            d_luts = up(luts_np)
            d_ref = torch.from_numpy(wnp[:n_uniq].copy()).to(dev)
            d_enc = up(s_enc, pad=16)
            d_sm = up(s_sm)
            d_pos = up_pos(s_pos, small_n)
            d_gaps = up(s_gaps, pad=16)  # the kernel reads gaps[t*5/8 + 1] of the last thread
            out = torch.empty(small_n, dtype=torch.bfloat16, device=dev)
            out.view(torch.int16).fill_(-1)  # 0xFFFF: a NaN no weight here has, to catch unwritten slots
            ev = cp.cuda.Event()
            ev.record()
            wait_event(ev, 30, "upload")
            launch = make_launch(d_enc, d_sm, d_pos, d_gaps, out, s_bytes, small_n, s_grid, s_shm)
            stage("small run: first launch")
            t_first, w_first = timed(launch, args.small_limit_s, "small run, first launch")
            stage("small run: first launch done", small_first_ms=round(t_first * 1e3, 3),
                  small_first_wall_s=round(w_first, 3))
            exact, first_bad = check(out, small_ranges, d_ref)
            unwritten = int((out.view(torch.int16) == -1).sum().item())
            RESULT.update(small_exact=exact, small_unwritten=unwritten)
            if first_bad is not None:
                RESULT["small_first_mismatch"] = first_bad
            stage("small run: checked")
            if not exact:
                emit_and_exit(f"small run not bit-exact (first mismatch at element {first_bad}, "
                              f"{unwritten} unwritten of {small_n})")
            ts = [timed(launch, args.small_limit_s, "small run, timed")[0] for _ in range(3)]
            RESULT.update(small_output_bytes=int(small_n * 2), small_median_ms=round(statistics.median(ts) * 1e3, 4),
                          small_decode_TBps=round(small_n * 2 / statistics.median(ts) / 1e12, 4))
            stage("small run: timed")
            del d_enc, d_sm, d_pos, d_gaps, out, s_enc, s_sm, s_pos, s_gaps
    except GpuTimeout as e:
        emit_and_exit(str(e))
    except Exception as e:  # noqa: BLE001
        emit_and_exit(f"small run: {type(e).__name__}: {e}")

    # -- full stream -----------------------------------------------------------------------------
    try:
        stage("build full stream")
        # order: the aligned pieces repeated, then the unaligned tail (a natural stream end)
        tail_n = (tail[1] - tail[0]) if tail else 0
        reps = max(1, math.ceil((n_out - tail_n) / body))
        seq = list(range(len(bounds))) * reps + ([len(bounds)] if tail else [])
        n_elements = reps * body + tail_n
        encoded, sign_mantissa, outpos, gaps = concat(pieces, seq, n_elements)
        del pieces
        comp_bytes = encoded.nbytes + sign_mantissa.nbytes + outpos.nbytes + gaps.nbytes + luts_np.nbytes
        n_bytes, grid, shared_mem = stream_layout(encoded, outpos, gaps)
        RESULT.update(
            distinct_weights=int(n_uniq), replicas=int(reps), workers=int(min(workers, len(jobs))),
            n_elements=int(n_elements), output_bytes=int(n_elements * 2),
            compressed_bytes=int(comp_bytes), ratio=round(comp_bytes / (n_elements * 2), 5),
            exponent_bytes=int(encoded.nbytes), side_bytes=int(outpos.nbytes + gaps.nbytes + luts_np.nbytes),
            grid=grid, shared_mem=shared_mem, n_luts=n_luts,
        )
        stage("full stream built")
    except Exception as e:  # noqa: BLE001
        emit_and_exit(f"full stream: {type(e).__name__}: {e}")

    # -- GPU: full run ---------------------------------------------------------------------------
    try:
        with cp.cuda.Device(0):
            stage("upload full")
            d_enc = up(encoded, pad=16)
            d_sm = up(sign_mantissa)
            d_pos = up_pos(outpos, n_elements)
            d_gaps = up(gaps, pad=16)
            del encoded, sign_mantissa, gaps
            out = torch.empty(n_elements, dtype=torch.bfloat16, device=dev)
            out.view(torch.int16).fill_(-1)
            ev = cp.cuda.Event()
            ev.record()
            wait_event(ev, 30, "upload")
            launch = make_launch(d_enc, d_sm, d_pos, d_gaps, out, n_bytes, n_elements, grid, shared_mem)
            left = lambda: max(1.0, T0 + args.deadline_s - time.time() - 3)  # noqa: E731
            stage("full run: first launch")
            t_first, w_first = timed(launch, min(30, left()), "full run, first launch")
            stage("full run: first launch done", first_ms=round(t_first * 1e3, 3))
            ranges = [(0, body)] * reps + ([tail] if tail else [])
            exact, first_bad = check(out, ranges, d_ref)
            RESULT["exact"] = exact
            if first_bad is not None:
                RESULT["first_mismatch"] = first_bad
            stage("full run: checked")
            for i in range(max(0, args.warmup - 1)):
                timed(launch, min(10, left()), "full run, warmup")
            stage("full run: warmed up")
            times = []
            for i in range(args.runs):
                t, _ = timed(launch, min(10, left()), f"full run, timed run {i + 1}")
                times.append(t)
                med = statistics.median(times)
                RESULT.update(median_ms=round(med * 1e3, 4), min_ms=round(min(times) * 1e3, 4),
                              runs=len(times), decode_TBps=round(n_elements * 2 / med / 1e12, 4))
                stage(f"full run: timed run {i + 1} of {args.runs}", last_ms=round(t * 1e3, 4))
            RESULT.pop("last_ms", None)
            # the last timed run must still be exact (same kernel, same inputs)
            if exact:
                RESULT["exact"] = check(out, ranges[:1], d_ref)[0]
            stage("done")
    except GpuTimeout as e:
        emit_and_exit(str(e))
    except Exception as e:  # noqa: BLE001
        emit_and_exit(f"decode: {type(e).__name__}: {e}")

    notes.append(
        f"{n_uniq} distinct weights from the {RESULT['tensors_used']} largest BF16 tensors, encoded by "
        f"dfloat11's encode_weights in {len(jobs)} block-aligned pieces, repeated {reps}x into one "
        f"stream decoded by one kernel launch; ratio counts exponent stream + sign/mantissa + "
        f"gaps + output_positions + LUTs")
    emit_and_exit()


if __name__ == "__main__":
    try:
        main()
    except SystemExit:
        raise
    except BaseException as e:  # noqa: BLE001
        emit_and_exit(f"{type(e).__name__}: {e}")
