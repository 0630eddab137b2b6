#!/usr/bin/env python3
"""Corpus benchmark: bigsmall against zstd -3, zstd -19 and ZipNN, in one run, on every file.

For each file: size ratio (compressed / original; bigsmall's includes every header, table and
index byte), single-thread compress and decompress throughput in MB/s of original bytes, and
bigsmall's size over the joint information floor from the corpus MANIFEST (for a file the
MANIFEST does not list, or a folder without one, the floor `bigsmall info` gives, marked *; it
counts small tensors too, see the README). bigsmall also runs at
all threads. Speeds are medians of repeated runs. zstd is timed in memory by its own benchmark
mode (`zstd -bN`); ZipNN in memory through its Python API; bigsmall through `bigsmall bench`
(compress: in memory, as zstd and ZipNN are timed, and file to file; decompress: the whole file decoded
into one buffer in memory, every checksum checked, as zstd -b decodes into its output buffer).

ZipNN 0.5.4's compress reorders the bits of BF16 and F32 input in place, in the caller's buffer (even
a bytes object): each of its compress calls therefore gets a fresh copy of the file (made untimed),
and its round trip is checked against the file as read.

The machine's speed drifts by 20-40% over seconds to minutes, so the tools are measured in
rounds (bigsmall, zstd -3, ZipNN, then again): every tool sees the same stretches of time, and
each speed is the median over rounds of that round's median.

Usage: bench/bench.py [--corpus DIR] [--files NAME...] [--bigsmall PATH] [--markdown OUT.md] [--quick] [--rounds N]
"""
import argparse, json, os, re, shlex, statistics, subprocess, sys, tempfile, time, platform, filecmp
from report import emit


def cpu_name():
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def floors(corpus):
    out = {}
    path = os.path.join(corpus, "MANIFEST.md")
    if not os.path.exists(path):
        return out
    text = open(path).read()
    for line in text.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) == 12 and cells[0].endswith(".safetensors"):
            out[cells[0]] = int(cells[11])
    return out


def zstd_bench(path, level, iters):
    r = subprocess.run(["zstd", f"-b{level}", f"-e{level}", f"-i{iters}", "-T1", path], capture_output=True, text=True)
    text = r.stdout + r.stderr
    m = re.findall(r"->\s*(\d+)\s*\(x?([\d.]+)\)?,\s*([\d.]+)\s*MB/s\s*,\s*([\d.]+)\s*MB/s", text)
    if not m:
        raise RuntimeError("cannot parse zstd -b output: " + text[-300:])
    size, _, c, d = m[-1]
    return int(size) / os.path.getsize(path), float(c), float(d)


def zipnn_bench(path, reps):
    try:
        import zipnn  # noqa: F401
    except ImportError:
        if zipnn_bench.warned:
            return None
        zipnn_bench.warned = True
        print("bench.py: zipnn is not installed for this Python (pip install zipnn, or run with .venv/bin/python): "
              "its columns are left out", file=sys.stderr)
        return None
    import zipnn
    data = open(path, "rb").read()
    dt = zipnn_dtype(path)
    z = zipnn.ZipNN(input_format="byte", bytearray_dtype=dt, threads=1)
    tc, td, ok, size = [], [], True, 0
    for _ in range(reps):
        fresh = bytearray(data)  # compress scrambles its input in place (see above); not timed
        t = time.perf_counter(); c = z.compress(fresh); tc.append(time.perf_counter() - t)
        t = time.perf_counter(); o = z.decompress(c); td.append(time.perf_counter() - t)
        ok = ok and bytes(o) == data
        size = len(c)
    n = len(data) / 1e6
    return size / len(data), n / statistics.median(tc), n / statistics.median(td), ok


zipnn_bench.warned = False


def zipnn_dtype(path):
    """The dtype ZipNN is told: the one of the file's largest tensors (its header), not its name."""
    import struct
    with open(path, "rb") as f:
        n = struct.unpack("<Q", f.read(8))[0]
        header = json.loads(f.read(n))
    by_dtype = {}
    for k, v in header.items():
        if k != "__metadata__":
            by_dtype[v["dtype"]] = by_dtype.get(v["dtype"], 0) + v["data_offsets"][1] - v["data_offsets"][0]
    main = max(by_dtype, key=by_dtype.get) if by_dtype else "F32"
    return {"BF16": "bfloat16", "F16": "float16"}.get(main, "float32")


def provenance(bs):
    """Commit, tool versions and the command line, for the record under each table."""
    here = os.path.dirname(os.path.abspath(__file__))
    def out(cmd):
        try:
            return subprocess.run(cmd, capture_output=True, text=True, cwd=here).stdout.strip().splitlines()[0]
        except (OSError, IndexError):
            return "unknown"
    try:
        import zipnn
        zv = getattr(zipnn, "__version__", None)
        if zv is None:
            from importlib.metadata import version
            zv = version("zipnn")
    except Exception:
        zv = "not installed"
    return (f"bigsmall at {out(['git', 'describe', '--always', '--dirty'])} ({out([os.path.abspath(bs), '--version'])}); "
            f"{out(['zstd', '--version'])}; ZipNN {zv}; Python {platform.python_version()}; "
            f"command: `{' '.join(shlex.quote(x) for x in [os.path.relpath(sys.executable)] + sys.argv)}`")


def bigsmall_bench(bs, path):
    r = subprocess.run([bs, "bench", "--json", path], capture_output=True, text=True, check=True)
    rows = [json.loads(l) for l in r.stdout.splitlines() if l.strip()]
    return rows


def comp_memory(row):
    """bigsmall bench's in-memory compression speed; not timed (null) for an input over a quarter
    of the machine's memory, where only the file-to-file figure stands."""
    v = row.get("compress_memory_GBps")
    if v is None:
        sys.exit(f"bench.py: {row['file']}: bigsmall bench did not time compression in memory "
                 "(the input is over a quarter of this machine's memory)")
    return v


def decomp_memory(row):
    """bigsmall bench's decompression into memory (the whole file in one buffer); null for an
    input over a quarter of the machine's memory."""
    v = row.get("decompress_GBps")
    if v is None:
        print(f"bench.py: {row['file']}: bigsmall bench did not time decompression into memory "
              "(the input is over a quarter of this machine's memory): its column is nan", file=sys.stderr)
        return float("nan")
    return v


def roundtrip(bs, path):
    """Whether the file comes back byte-identical, the .bs size, and bigsmall info's floor."""
    with tempfile.TemporaryDirectory() as d:
        c, o = os.path.join(d, "x.bs"), os.path.join(d, "x.safetensors")
        subprocess.run([bs, "compress", "-q", path, "-o", c], check=True)
        subprocess.run([bs, "decompress", "-q", c, "-o", o], check=True)
        info = json.loads(subprocess.run([bs, "info", "--json", c], check=True, capture_output=True).stdout)
        return filecmp.cmp(path, o, shallow=False), os.path.getsize(c), info["floor_bytes"]


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    here = os.path.dirname(os.path.abspath(__file__))
    ap.add_argument("--corpus", default=os.environ.get("BIGSMALL_CORPUS_DIR") or os.path.join(here, "..", "..", "shared", "corpus"),
                    help="folder of .safetensors files with MANIFEST.md (default: $BIGSMALL_CORPUS_DIR, else ../shared/corpus)")
    ap.add_argument("--bigsmall", default=os.path.join(here, "..", "build", "bigsmall"))
    ap.add_argument("--markdown", help="write the tables to this file")
    ap.add_argument("--files", nargs="+", metavar="NAME", help="only these files of the corpus folder")
    ap.add_argument("--quick", action="store_true", help="fewer repetitions (one round unless --rounds is given)")
    ap.add_argument("--rounds", type=int, default=None, help="measurement rounds per file (default 3)")
    a = ap.parse_args()
    rounds = a.rounds if a.rounds is not None else (1 if a.quick else 3)
    files = sorted(f for f in os.listdir(a.corpus) if f.endswith(".safetensors")) if os.path.isdir(a.corpus) else []
    if a.files:
        missing = sorted(set(a.files) - set(files))
        if missing:
            sys.exit(f"bench.py: not in {a.corpus}: {', '.join(missing)}")
        files = [f for f in files if f in a.files]
    if not files:
        sys.exit(f"bench.py: no .safetensors files in {a.corpus}: pass --corpus DIR or set BIGSMALL_CORPUS_DIR")
    reps = 2 if a.quick else 5
    fl = floors(a.corpus)
    rows, totals = [], {"orig": 0, "bs": 0, "floor": 0, "z19": 0}
    for f in files:
        p = os.path.join(a.corpus, f)
        print(f"... {f}", file=sys.stderr)
        ok, bs_size, info_floor = roundtrip(a.bigsmall, p)
        bs_rounds, z3_rounds, z19_rounds, zn_rounds = [], [], [], []
        for _ in range(rounds):
            bs_rounds.append(bigsmall_bench(a.bigsmall, p))
            z3_rounds.append(zstd_bench(p, 3, reps))
            z19_rounds.append(zstd_bench(p, 19, 1 if a.quick else 2))
            zn_rounds.append(zipnn_bench(p, reps))
        med = statistics.median
        z3 = (z3_rounds[0][0], med(r[1] for r in z3_rounds), med(r[2] for r in z3_rounds))
        z19 = (z19_rounds[0][0], med(r[1] for r in z19_rounds), med(r[2] for r in z19_rounds))
        zn = None if zn_rounds[0] is None else (zn_rounds[0][0], med(r[1] for r in zn_rounds),
                                                med(r[2] for r in zn_rounds), all(r[3] for r in zn_rounds))
        one = [next(r for r in b if r["threads"] == 1) for b in bs_rounds]
        allt = [max(b, key=lambda r: r["threads"]) for b in bs_rounds]
        orig = os.path.getsize(p)
        floor = fl.get(f, info_floor)
        row = dict(file=f, orig=orig, roundtrip=ok, ratio=bs_size / orig, floor=floor, floor_from_info=f not in fl,
                   over_floor=bs_size / floor if floor else None,
                   c1=med(comp_memory(r) for r in one) * 1e3, d1=med(decomp_memory(r) for r in one) * 1e3,
                   v1=med(r["verify_GBps"] for r in one) * 1e3,
                   c1f=med(r["compress_GBps"] for r in one) * 1e3,
                   cN=med(comp_memory(r) for r in allt) * 1e3, dN=med(decomp_memory(r) for r in allt) * 1e3,
                   threads=allt[0]["threads"], z3=z3, z19=z19, zipnn=zn)
        rows.append(row)
        totals["orig"] += orig
        totals["bs"] += bs_size
        totals["z19"] += z19[0] * orig
        if f in fl and (".bf16." in f or ".f16." in f):
            totals.setdefault("bs16", 0); totals.setdefault("floor16", 0)
            totals["bs16"] += bs_size; totals["floor16"] += fl[f]

    out = []
    out.append(f"Machine: {cpu_name()}, {os.cpu_count()} cores; date {time.strftime('%Y-%m-%d %H:%M', time.gmtime())} UTC; "
               f"{provenance(a.bigsmall)}\n")
    out.append("### Size (ratio = compressed / original; lower is better)\n")
    out.append("| file | bigsmall | over joint floor | zstd -3 | zstd -19 | ZipNN | restores byte-identical |")
    out.append("|---|---|---|---|---|---|---|")
    for r in rows:
        zn = r["zipnn"]
        zn_s = "n/a" if zn is None else f"{zn[0]:.4f}" + ("" if zn[3] else " (round trip FAILS)")
        over = "n/a" if r["over_floor"] is None else f"{r['over_floor']:.4f}" + ("*" if r["floor_from_info"] else "")
        out.append(f"| {r['file']} | {r['ratio']:.4f} | {over} | {r['z3'][0]:.4f} | {r['z19'][0]:.4f} | {zn_s} | "
                   f"{'yes' if r['roundtrip'] else 'NO'} |")
    if any(r["floor_from_info"] for r in rows):
        out.append("\n\\* over the floor `bigsmall info` gives (the file is not in the folder's MANIFEST.md); it "
                   "counts tensors under 1,024 weights at their entropy, so it is lower than the MANIFEST's floor\n")
    if "bs16" in totals:
        out.append(f"\nBF16 + F16 files together: bigsmall / sum of joint floors = {totals['bs16'] / totals['floor16']:.4f}.")
    if totals["orig"]:
        out.append(f"\nAll files: bigsmall {totals['bs'] / totals['orig']:.4f}, zstd -19 {totals['z19'] / totals['orig']:.4f}.\n")
    out.append("### Speed (MB/s of original bytes, median; 1 thread unless noted)\n")
    out.append("| file | bigsmall comp | bigsmall comp, file to file | bigsmall decomp | bigsmall verify | bigsmall comp, all threads | "
               "bigsmall decomp, all threads | "
               "zstd -3 comp | zstd -3 decomp | zstd -19 decomp | ZipNN comp | ZipNN decomp | decomp vs ZipNN | decomp vs zstd-19 -d | "
               "comp vs ZipNN | comp, all threads / 1 | decomp, all threads / 1 |")
    out.append("|---|" + "---|" * 16)
    for r in rows:
        zn = r["zipnn"]
        zc, zd = (zn[1], zn[2]) if zn else (float("nan"), float("nan"))
        out.append(f"| {r['file']} | {r['c1']:.0f} | {r['c1f']:.0f} | {r['d1']:.0f} | {r['v1']:.0f} | {r['cN']:.0f} | {r['dN']:.0f} | {r['z3'][1]:.0f} | {r['z3'][2]:.0f} | "
                   f"{r['z19'][2]:.0f} | {zc:.0f} | {zd:.0f} | {r['d1'] / zd:.2f}x | {r['d1'] / r['z19'][2]:.2f}x | {r['c1'] / zc:.2f}x | "
                   f"{r['cN'] / r['c1']:.2f}x | {r['dN'] / r['d1']:.2f}x |")
    out.append("\nbigsmall's compression columns are in memory (a mapped file to a `.bs` image in memory), as "
               "zstd's and ZipNN's are; \"file to file\" is `bigsmall compress`'s own time, output written (not "
               "synced) and renamed. \"decomp\" decodes the whole file into one buffer in memory, checksums "
               "checked (as zstd -b and ZipNN time theirs); \"verify\" decodes into small reused batches and "
               "only checks. zstd -19 is measured in every round, beside the others.")
    emit(out, a.markdown)


if __name__ == "__main__":
    main()
