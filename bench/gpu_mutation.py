"""Damaged .bs files through the GPU decoder, against the CPU decoder on the same bytes.

Usage: python bench/gpu_mutation.py --bs-dir DIR [--seconds 120] [--device cuda] [--json OUT]

For each mutant of the .bs files in DIR (fixed seed), bigsmall.torch.load_file runs on the CPU and
on --device, with verify=False (damaged chunks and models reach the decoders) and with verify=True.
Mutants: a flipped bit in a tensor's model blob or chunks; chunk boundaries moved, a chunk's mode,
chunk_log2, lanes_log2, model_size or codec changed in the index, chunk checksums and index
checksums recomputed so that only the decoders stand in the way; truncations. A finding is:
a worker that crashes or hangs; an exception that is not a bigsmall.Error; the CPU and the device
disagreeing (one decodes, the other refuses; or both decode and differ); verify=True handing out
bytes other than the original's; a device that no longer decodes the intact file afterwards.
Each load runs in a worker process, restarted after a crash. With --device cpu it checks itself.
"""
import argparse
import ctypes
import glob
import hashlib
import json
import os
import random
import select
import struct
import subprocess
import sys
import tempfile
import time


def worker(device):
    import torch

    import bigsmall
    import bigsmall.torch as bt

    def digest(tensors):
        h = hashlib.blake2b(digest_size=16)
        for k in sorted(tensors):
            t = tensors[k].detach().to("cpu").contiguous()
            h.update(k.encode() + b"\0" + t.view(-1).view(torch.uint8).numpy().tobytes())
        return h.hexdigest()

    def attempt(path, dev, verify):
        try:
            out = digest(bt.load_file(path, device=dev, verify=verify))
            if dev != "cpu":
                torch.cuda.synchronize()
            return ["ok", out]
        except bigsmall.Error as e:
            return ["error", type(e).__name__, str(e)[:200]]
        except BaseException as e:  # noqa: BLE001 - anything else is a finding
            return ["foreign", type(e).__name__, str(e)[:300]]

    for line in sys.stdin:
        req = json.loads(line)
        res = {dev_v: attempt(req["path"], dev_v.split(":")[0], dev_v.endswith("verify"))
               for dev_v in ("cpu:fast", f"{device}:fast", "cpu:verify", f"{device}:verify")}
        if req.get("health"):
            res["health"] = attempt(req["health"], device, True)
        sys.stdout.write(json.dumps(res) + "\n")
        sys.stdout.flush()


class Worker:
    def __init__(self, device):
        self.device = device
        self.p = None

    def ask(self, req, timeout):
        if self.p is None:
            self.p = subprocess.Popen([sys.executable, __file__, "--worker", "--device", self.device],
                                      stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        self.p.stdin.write(json.dumps(req) + "\n")
        self.p.stdin.flush()
        ready, _, _ = select.select([self.p.stdout], [], [], timeout)
        line = self.p.stdout.readline() if ready else ""
        if line:
            return json.loads(line)
        self.p.kill()
        rc = self.p.wait()
        self.p = None
        return {"worker": "hang" if not ready else f"died (exit {rc})"}


# --- the index, as doc/FORMAT.md lays it out -------------------------------------------------

# libzstd and libxxhash through ctypes: the device machine has the libraries (carried) but no
# zstandard wheel, and the device tool's 64 MiB leave no room for one.
_zstd = ctypes.CDLL("libzstd.so.1")
_zstd.ZSTD_getFrameContentSize.restype = ctypes.c_ulonglong
_zstd.ZSTD_getFrameContentSize.argtypes = [ctypes.c_char_p, ctypes.c_size_t]
for _f in ("ZSTD_decompress", "ZSTD_compress", "ZSTD_compressBound"):
    getattr(_zstd, _f).restype = ctypes.c_size_t
_zstd.ZSTD_isError.argtypes = [ctypes.c_size_t]
_xxh = ctypes.CDLL("libxxhash.so.0")
_xxh.XXH3_64bits.restype = ctypes.c_ulonglong
_xxh.XXH3_64bits.argtypes = [ctypes.c_char_p, ctypes.c_size_t]


def xxh3(b):
    b = bytes(b)
    return _xxh.XXH3_64bits(b, len(b))


def zstd_decompress(z):
    z = bytes(z)
    n = _zstd.ZSTD_getFrameContentSize(z, len(z))
    if n >= 1 << 40:
        raise ValueError("index frame without a content size")
    out = ctypes.create_string_buffer(max(n, 1))
    got = _zstd.ZSTD_decompress(out, ctypes.c_size_t(n), z, ctypes.c_size_t(len(z)))
    if _zstd.ZSTD_isError(got) or got != n:
        raise ValueError("index does not decompress")
    return out.raw[:n]


def zstd_compress(raw):
    raw = bytes(raw)
    cap = _zstd.ZSTD_compressBound(ctypes.c_size_t(len(raw)))
    out = ctypes.create_string_buffer(cap)
    got = _zstd.ZSTD_compress(out, ctypes.c_size_t(cap), raw, ctypes.c_size_t(len(raw)), 3)
    if _zstd.ZSTD_isError(got):
        raise ValueError("zstd compression failed")
    return out.raw[:got]


def read_index(data):
    off = struct.unpack_from("<Q", data, 16)[0]
    return off, bytearray(zstd_decompress(data[off:]))


def entries(idx):
    """(entry offset, field offset, chunk list offset, chunk count) of every tensor entry."""
    count = struct.unpack_from("<I", idx, 0)[0]
    o = 16 + struct.unpack_from("<Q", idx, 8)[0]
    out = []
    for _ in range(count):
        nl = struct.unpack_from("<H", idx, o)[0]
        ndim = idx[o + 2 + nl + 4]
        field = o + 2 + nl + 8 + 8 * ndim  # data_begin
        chunks = struct.unpack_from("<I", idx, field + 52)[0]
        out.append((o, field, field + 56, chunks, o + 2 + nl))  # last: the dtype byte
        o = field + 56 + 9 * chunks
    return out


def write_index(data, off, idx):
    z = zstd_compress(idx)
    out = bytearray(data[:off]) + z
    struct.pack_into("<QQQ", out, 24, len(z), len(idx), xxh3(z))
    struct.pack_into("<Q", out, 56, xxh3(out[:56]))
    return out


def rechecksum_chunks(data, idx, e):
    _, field, clist, n, _ = e
    pos = struct.unpack_from("<Q", idx, field + 16)[0] + struct.unpack_from("<I", idx, field + 48)[0]
    for c in range(n):
        size = struct.unpack_from("<I", idx, clist + 9 * c)[0]
        struct.pack_into("<I", idx, clist + 9 * c + 4, xxh3(data[pos:pos + size]) & 0xFFFFFFFF)
        pos += size


def mutate(data, rng):
    """(description, mutant bytes) for one random mutation of data; None for a draw that changed
    nothing."""
    off, idx = read_index(data)
    es = [e for e in entries(idx) if struct.unpack_from("<Q", idx, e[1] + 24)[0] > 0]
    e = rng.choice(es)
    _, field, clist, n, dtype_at = e
    codec_at, chunk_log2_at, lanes_log2_at = dtype_at + 1, dtype_at + 2, dtype_at + 3
    name = bytes(idx[e[0] + 2:dtype_at]).decode("utf-8", "replace")
    p_off, p_size = struct.unpack_from("<QQ", idx, field + 16)
    kind = rng.choice(["flip", "flip", "flip", "bounds", "mode", "chunk_log2", "lanes_log2", "model_size", "codec", "truncate"])
    out = bytearray(data)
    before = bytes(idx)
    if kind == "flip":
        bit = rng.randrange(8 * p_size)
        out[p_off + bit // 8] ^= 1 << (bit % 8)
        model = struct.unpack_from("<I", idx, field + 48)[0]
        where = "model" if bit // 8 < model else "chunk"
        # Chunk checksums recomputed too, half the time: then verify=True decodes the damaged chunk.
        if rng.random() < 0.5:
            rechecksum_chunks(out, idx, e)
            return f"{name}: bit {bit} of payload ({where}), chunk checksums fixed", write_index(out, off, idx)
        return f"{name}: bit {bit} of payload ({where})", out
    if kind == "truncate":
        cut = rng.randrange(len(data))
        return f"truncated to {cut} bytes", out[:cut]
    if kind == "bounds" and n >= 2:
        c = rng.randrange(n - 1)
        a, b = (struct.unpack_from("<I", idx, clist + 9 * k)[0] for k in (c, c + 1))
        d = rng.choice([-1, 1, -2, 2, -64, 64, rng.randint(-a, b)])
        if 0 <= a + d and 0 <= b - d:
            struct.pack_into("<I", idx, clist + 9 * c, a + d)
            struct.pack_into("<I", idx, clist + 9 * c + 9, b - d)
        desc = f"{name}: chunk {c} boundary moved by {d}"
    elif kind == "mode" and n:
        c = rng.randrange(n)
        idx[clist + 9 * c + 8] ^= 1
        desc = f"{name}: chunk {c} mode flipped"
    elif kind == "chunk_log2":
        v = max(0, min(255, rng.choice([idx[chunk_log2_at] - 1, idx[chunk_log2_at] + 1, rng.randrange(6, 25)])))
        idx[chunk_log2_at] = v
        desc = f"{name}: chunk_log2 {v}"
    elif kind == "lanes_log2":
        v = rng.randrange(0, 6)
        idx[lanes_log2_at] = v
        desc = f"{name}: lanes_log2 {v}"
    elif kind == "model_size":
        model = struct.unpack_from("<I", idx, field + 48)[0]
        d = rng.choice([-2, -1, 1, 2])
        if model + d >= 0 and n:
            struct.pack_into("<I", idx, field + 48, model + d)
            size0 = struct.unpack_from("<I", idx, clist)[0]
            if size0 - d >= 0:
                struct.pack_into("<I", idx, clist, size0 - d)
        desc = f"{name}: model_size moved by {d}"
    else:
        v = rng.randrange(0, 4)
        idx[codec_at] = v
        desc = f"{name}: codec {v}"
    if idx == before:
        return desc, None  # the draw changed nothing (a value equal to the old one)
    rechecksum_chunks(out, idx, e)
    return desc, write_index(out, off, idx)


def judge(res, original, dev):
    """What is wrong with one mutant's results (empty: nothing)."""
    if "worker" in res:
        return [f"worker {res['worker']}"]
    bad = []
    for k, v in res.items():
        if v[0] == "foreign":
            bad.append(f"{k}: {v[1]}: {v[2]}")
    for mode in ("fast", "verify"):
        a, b = res[f"cpu:{mode}"], res[f"{dev}:{mode}"]
        if a[0] != b[0] or (a[0] == "ok" and a[1] != b[1]):
            bad.append(f"{mode}: cpu {a[:2]} vs {dev} {b[:2]}")
        for side in (a, b):
            if mode == "verify" and side[0] == "ok" and side[1] != original:
                bad.append(f"verify=True handed out bytes other than the original's ({side[1]})")
    if "health" in res and res["health"] != ["ok", original]:
        bad.append(f"intact file afterwards: {res['health'][:2]}")
    return bad


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--bs-dir")
    ap.add_argument("--seconds", type=float, default=120)
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--json")
    ap.add_argument("--worker", action="store_true")
    args = ap.parse_args()
    if args.worker:
        return worker(args.device)
    files = sorted(glob.glob(os.path.join(args.bs_dir, "*.bs")))
    if args.device.startswith("cuda"):
        # Without the CUDA decoder, load_file(device="cuda") decodes on the CPU and moves the
        # result: the comparison would be of the CPU with itself.
        from bigsmall import _core
        if not _core.cuda_available():
            sys.exit("gpu_mutation: this bigsmall build has no usable CUDA decoder (_core.cuda_available() is False)")
    w = Worker(args.device)
    originals = {}
    findings = []
    for f in files:
        res = w.ask({"path": f}, 120)
        originals[f] = res.get("cpu:verify", ["?"])[1] if res.get("cpu:verify", [""])[0] == "ok" else None
        # An intact file that the CPU does not verify, or that the device decodes otherwise, is the
        # worst finding of all: counted, so that the run (and gpu_check.sh) fails.
        bad = judge(res, originals[f], args.device)
        if originals[f] is None:
            bad = [f"the CPU does not verify the intact file: {res.get('cpu:verify')}"] + bad
        if bad:
            findings.append({"file": os.path.basename(f), "mutation": "none (the intact file)", "problems": bad,
                             "seed": args.seed, "case": 0, "kept": f})
            print(f"FINDING intact {os.path.basename(f)}: {bad}", flush=True)
    rng = random.Random(args.seed)
    tmp = tempfile.mkdtemp(prefix="gpu-mut-")
    kinds, cases = {}, 0
    t0 = time.monotonic()
    while time.monotonic() - t0 < args.seconds:
        f = rng.choice(files)
        data = open(f, "rb").read()
        desc, mutant = mutate(data, rng)
        if mutant is None:
            continue
        path = os.path.join(tmp, "m.bs")
        with open(path, "wb") as fh:
            fh.write(mutant)
        health = f if cases % 10 == 0 else None
        res = w.ask({"path": path, "health": health} if health else {"path": path}, 60)
        cases += 1
        outcome = "/".join(v[0] for k, v in res.items() if k != "health") if "worker" not in res else "worker"
        kinds[outcome] = kinds.get(outcome, 0) + 1
        bad = judge(res, originals[f], args.device)
        if not bad and any(v[0] == "error" for k, v in res.items() if k != "health") and health is None:
            # after the device refused, it must still decode the intact file
            res2 = w.ask({"path": f}, 60)
            bad = [f"afterwards: {b}" for b in judge(res2, originals[f], args.device)]
        if bad:
            keep = os.path.join(tmp, f"finding{len(findings)}.bs")
            os.replace(path, keep)
            findings.append({"file": os.path.basename(f), "mutation": desc, "problems": bad, "seed": args.seed,
                             "case": cases, "kept": keep})
            print(f"FINDING {os.path.basename(f)}: {desc}: {bad}", flush=True)
    summary = {"device": args.device, "cases": cases, "seconds": round(time.monotonic() - t0, 1),
               "outcomes (cpu fast/dev fast/cpu verify/dev verify)": kinds, "findings": len(findings)}
    print(json.dumps(summary, indent=1))
    if args.json:
        with open(args.json, "w") as fh:
            json.dump({"summary": summary, "findings": findings}, fh, indent=1)
    return 1 if findings else 0


if __name__ == "__main__":
    sys.exit(main())
