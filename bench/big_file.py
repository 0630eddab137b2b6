#!/usr/bin/env python3
"""Large-file benchmark: a multi-GB BF16 checkpoint, the size class of real LLM shards.

The corpus files are at most 28 MB, so paths that only large tensors take (tensors bigger than a
64 MiB batch, coded and written in groups; many mantissa contexts) and the memory a whole-model
run needs are measured here. The file is generated once (default 5 tensors of 1 GiB, BF16): its
weights are drawn at random from the largest BF16 tensor of a corpus file, so that their
statistics are those of trained weights, not of a Gaussian. zstd -3 (in memory, `zstd -b`) runs in the
same script as the baseline (its CLI: `zstd -b` misreports sizes past 4 GB).

Measured: `bigsmall bench` (compress file to file and decode-and-verify, median of 5, at 1 thread
and at all threads); the wall time of `bigsmall compress` and `bigsmall decompress` (fsync
included, as a user runs them), with the peak anonymous memory of each (RssAnon, sampled every
50 ms; the mapped input and output are page cache, not counted); a byte-for-byte check of the
restored file.

Usage: bench/big_file.py [--file PATH] [--gib-per-tensor N] [--tensors N] [--bigsmall PATH]
"""
import argparse, json, os, struct, subprocess, sys, tempfile, time

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)


def generate(path, tensors, gib, source):
    raw = open(source, "rb").read()
    hl = struct.unpack("<Q", raw[:8])[0]
    hdr = json.loads(raw[8:8 + hl])
    # The largest BF16 tensor: weights pooled over many tensors of different scales would give
    # each generated tensor far more distinct exponents (and mantissa tables) than a real one.
    big = max((v for k, v in hdr.items() if k != "__metadata__" and v["dtype"] == "BF16"),
              key=lambda v: v["data_offsets"][1] - v["data_offsets"][0])
    pool = np.frombuffer(raw[8 + hl + big["data_offsets"][0]:8 + hl + big["data_offsets"][1]], np.uint16)
    rng = np.random.default_rng(1)
    rows = int(gib * (1 << 30) // 2 // 16384)
    shapes = [(f"layers.{i}.weight", [rows, 16384 + i]) for i in range(tensors)] + [("odd.bias", [7])]
    meta, off = {}, 0
    for name, shape in shapes:
        n = int(np.prod(shape))
        meta[name] = {"dtype": "BF16", "shape": shape, "data_offsets": [off, off + 2 * n]}
        off += 2 * n
    h = json.dumps(meta, separators=(",", ":")).encode()
    h += b" " * ((8 - len(h) % 8) % 8)
    tmp = path + ".part"
    with open(tmp, "wb") as f:
        f.write(struct.pack("<Q", len(h)))
        f.write(h)
        for _, shape in shapes:
            n = int(np.prod(shape))
            for s in range(0, n, 1 << 26):
                f.write(pool[rng.integers(0, len(pool), min(1 << 26, n - s))].tobytes())
    os.replace(tmp, path)


def run_sampled(cmd):
    """Runs cmd; returns (wall seconds, peak RssAnon in MB)."""
    t = time.perf_counter()
    p = subprocess.Popen(cmd)
    peak = 0
    while p.poll() is None:
        try:
            for line in open(f"/proc/{p.pid}/status"):
                if line.startswith("RssAnon:"):
                    peak = max(peak, int(line.split()[1]))
        except OSError:
            pass
        time.sleep(0.05)
    if p.returncode != 0:
        raise RuntimeError(f"{cmd} exited with {p.returncode}")
    return time.perf_counter() - t, peak / 1024


def files_equal(a, b):
    with open(a, "rb") as fa, open(b, "rb") as fb:
        while True:
            x, y = fa.read(1 << 24), fb.read(1 << 24)
            if x != y:
                return False
            if not x:
                return True


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--file", default=os.path.join(tempfile.gettempdir(), "bigsmall-big-v2.bf16.safetensors"))
    ap.add_argument("--tensors", type=int, default=5)
    ap.add_argument("--gib-per-tensor", type=float, default=1.0)
    ap.add_argument("--source", default=os.path.join(ROOT, "..", "shared", "corpus", "faceres-deep.bf16.safetensors"))
    ap.add_argument("--bigsmall", default=os.path.join(ROOT, "build", "bigsmall"))
    a = ap.parse_args()
    if not os.path.exists(a.file):
        print(f"generating {a.file} ...", file=sys.stderr)
        generate(a.file, a.tensors, a.gib_per_tensor, a.source)
    size = os.path.getsize(a.file)
    gb = size / 1e9
    bs, out = a.file + ".bs", a.file + ".restored"
    # zstd's own benchmark mode (-b) misreports sizes past 4 GB: the CLI instead, reading from
    # and writing to the page cache (/dev/null for the decoded bytes).
    zst = a.file + ".zst"
    t = time.perf_counter()
    subprocess.run(["zstd", "-q", "-f", "-3", "-T1", a.file, "-o", zst], check=True)
    zc = time.perf_counter() - t
    t = time.perf_counter()
    subprocess.run(["zstd", "-q", "-d", "-c", zst], stdout=subprocess.DEVNULL, check=True)
    zd = time.perf_counter() - t
    z3 = (os.path.getsize(zst) / size, size / 1e6 / zc, size / 1e6 / zd)
    os.remove(zst)
    rows = [json.loads(l) for l in subprocess.run([a.bigsmall, "bench", "--json", a.file], capture_output=True,
                                                   text=True, check=True).stdout.splitlines() if l.strip()]
    tc, mc = run_sampled([a.bigsmall, "compress", "-q", "-f", a.file, "-o", bs])
    td, md = run_sampled([a.bigsmall, "decompress", "-q", "-f", bs, "-o", out])
    same = files_equal(a.file, out)
    os.remove(out)
    os.remove(bs)  # the generated input is kept for the next run
    print(f"file: {a.file}, {gb:.2f} GB, {a.tensors} BF16 tensors of {a.gib_per_tensor:g} GiB; "
          f"restores byte-identical: {'yes' if same else 'NO'}")
    print()
    print("| tool | threads | ratio | compress MB/s | decompress MB/s |")
    print("|---|---|---|---|---|")
    for row in rows:
        # Decompression into memory is not timed for a file over a quarter of RAM (this script's
        # usual case): then the figure is verify's, decoding into small reused batches.
        dec, how = (row["decompress_GBps"], "") if row["decompress_GBps"] else (row["verify_GBps"], " (verify)")
        print(f"| bigsmall bench | {row['threads']} | {row['ratio']:.4f} | {row['compress_GBps'] * 1000:.0f} | "
              f"{dec * 1000:.0f}{how} |")
    if z3:
        print(f"| zstd -3 -T1 (CLI, file to file / to /dev/null) | 1 | {z3[0]:.4f} | {z3[1]:.0f} | {z3[2]:.0f} |")
    print()
    print("| command (all threads, fsync included) | wall s | MB/s | peak anonymous memory MB |")
    print("|---|---|---|---|")
    print(f"| bigsmall compress | {tc:.1f} | {size / 1e6 / tc:.0f} | {mc:.0f} |")
    print(f"| bigsmall decompress | {td:.1f} | {size / 1e6 / td:.0f} | {md:.0f} |")
    return 0 if same else 1


if __name__ == "__main__":
    sys.exit(main())
