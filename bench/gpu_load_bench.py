"""Loading to the GPU: bigsmall from .bs against safetensors from the original files, same run.

Usage: python bench/gpu_load_bench.py --pairs DIR [--model-bs DIR --model-orig DIR] [--reps 5]

--pairs DIR holds NAME.bs beside NAME.safetensors (the original it restores to). The model pair is
a compressed model directory and its original. Page cache warm for both (every load runs once
before timing); each figure is the median of --reps loads, each ended by torch.cuda.synchronize.
Also measures StreamingLoader.load_model(device="cuda"): time and peak host RSS above the
process's RSS before the call, sampled every millisecond.
"""
import argparse
import glob
import json
import os
import statistics
import threading
import time

import psutil
import safetensors.torch
import torch

import bigsmall
import bigsmall.torch as bt

if not torch.cuda.is_available():  # a dry run on the CPU: synchronize is a no-op there
    torch.cuda.synchronize = lambda *a, **k: None
    torch.Tensor.is_cuda = property(lambda self: self.device.type == "cuda")


def timed(fn, reps):
    fn()  # warm: page cache, CUDA context, allocator
    torch.cuda.synchronize()
    ts = []
    for _ in range(reps):
        t0 = time.perf_counter()
        out = fn()
        torch.cuda.synchronize()
        ts.append(time.perf_counter() - t0)
        del out
    return statistics.median(ts)


def same(a, b):
    return a.keys() == b.keys() and all(torch.equal(a[k].view(-1).view(torch.uint8), b[k].view(-1).view(torch.uint8)) for k in a)


def peak_rss_during(fn):
    proc = psutil.Process()
    base = proc.memory_info().rss
    peak = [base]
    stop = threading.Event()

    def sample():
        while not stop.is_set():
            peak[0] = max(peak[0], proc.memory_info().rss)
            time.sleep(0.001)

    th = threading.Thread(target=sample)
    th.start()
    t0 = time.perf_counter()
    try:
        out = fn()
        torch.cuda.synchronize()
    finally:
        stop.set()
        th.join()
    return out, time.perf_counter() - t0, peak[0] - base


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--pairs", required=True)
    ap.add_argument("--model-bs")
    ap.add_argument("--model-orig")
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--json")
    ap.add_argument("--device", default="cuda", help="cpu: a dry run of this script on a machine without a GPU")
    a = ap.parse_args()
    dev = a.device
    rows, records = [], []
    pairs = []
    for bs in sorted(glob.glob(os.path.join(a.pairs, "*.bs"))):
        orig = bs[:-3] + ".safetensors"
        if os.path.exists(orig):
            pairs.append((os.path.basename(bs)[:-3], bs, orig))
    if a.model_bs and a.model_orig:
        for bs in sorted(glob.glob(os.path.join(a.model_bs, "*.bs"))):
            orig = os.path.join(a.model_orig, os.path.basename(bs)[:-3] + ".safetensors")
            pairs.append(("model:" + os.path.basename(bs)[:-3], bs, orig))
    for name, bs, orig in pairs:
        ref = safetensors.torch.load_file(orig, device=dev)
        got = bt.load_file(bs, device=dev)
        exact = same(ref, got)
        del ref, got
        t_st = timed(lambda: safetensors.torch.load_file(orig, device=dev), a.reps)
        t_bs = timed(lambda: bt.load_file(bs, device=dev), a.reps)
        t_bs_nv = timed(lambda: bt.load_file(bs, device=dev, verify=False), a.reps)
        size = os.path.getsize(orig)
        rec = dict(file=name, bytes=size, safetensors_ms=t_st * 1e3, bigsmall_ms=t_bs * 1e3, bigsmall_noverify_ms=t_bs_nv * 1e3,
                   speedup=t_st / t_bs, speedup_noverify=t_st / t_bs_nv, exact=exact)
        records.append(rec)
        rows.append(f"| {name} | {size / 1e6:.1f} | {t_st * 1e3:.2f} | {t_bs * 1e3:.2f} | {t_st / t_bs:.2f} | {t_bs_nv * 1e3:.2f} | "
                    f"{t_st / t_bs_nv:.2f} | {'yes' if exact else 'NO'} |")
        print(rows[-1], flush=True)
    tot_st = sum(r["safetensors_ms"] for r in records)
    tot_bs = sum(r["bigsmall_ms"] for r in records)
    tot_nv = sum(r["bigsmall_noverify_ms"] for r in records)
    stream = None
    if a.model_bs:
        from transformers import AutoConfig, AutoModel

        cls = type(AutoModel.from_config(AutoConfig.from_pretrained(a.model_bs)))
        model, secs, rss = peak_rss_during(
            lambda: bigsmall.StreamingLoader(a.model_bs).load_model(cls, device=dev, progress=False))
        on_gpu = all(p.is_cuda for p in model.parameters())
        del model
        t_tf = None
        if a.model_orig:
            kw = {} if dev == "cpu" else {"device_map": dev}  # device_map needs accelerate
            t_tf = timed(lambda: cls.from_pretrained(a.model_orig, **kw), max(1, a.reps // 2))
        t_fp = timed(lambda: bigsmall.from_pretrained(a.model_bs, device_map=dev, progress=False), max(1, a.reps // 2))
        stream = dict(seconds=secs, peak_rss_above_baseline_mb=rss / 1e6, all_on_gpu=on_gpu,
                      from_pretrained_ms=t_fp * 1e3, transformers_ms=None if t_tf is None else t_tf * 1e3)
    print()
    print(f"device: {torch.cuda.get_device_name() if dev != 'cpu' else 'cpu'}, torch {torch.__version__}")
    print()
    print("| file | original MB | safetensors load_file(cuda) ms | bigsmall load_file(cuda) ms | speed vs safetensors | "
          "bigsmall, verify=False ms | speed vs safetensors | bit-exact |")
    print("|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(r)
    print(f"| all | | {tot_st:.2f} | {tot_bs:.2f} | {tot_st / tot_bs:.2f} | {tot_nv:.2f} | {tot_st / tot_nv:.2f} | |")
    if stream:
        print()
        print(f"StreamingLoader.load_model(device='cuda'): {stream['seconds'] * 1e3:.1f} ms (first load, cold CUDA caches), "
              f"peak host RSS above baseline {stream['peak_rss_above_baseline_mb']:.1f} MB, all parameters on the GPU: "
              f"{stream['all_on_gpu']}")
        tf = stream["transformers_ms"]
        print(f"bigsmall.from_pretrained(device_map='cuda'): {stream['from_pretrained_ms']:.1f} ms; transformers "
              f"from_pretrained(original, device_map='cuda'): {'n/a' if tf is None else f'{tf:.1f} ms'}")
    if a.json:
        with open(a.json, "w") as f:
            json.dump(dict(files=records, streaming=stream), f, indent=1)


if __name__ == "__main__":
    main()
