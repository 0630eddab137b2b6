#!/usr/bin/env python3
"""What a one-lookup decoder would cost in size: the ratio target's side of the speed question.

bigsmall's float decoder makes two table lookups per weight (sign+exponent, then the mantissa
table that symbol selects), and on the benchmark CPU the lookups bound it (BENCHMARKS.md). One
lookup per weight needs one rANS symbol per weight: (sign, exponent, mantissa) together, its
probability the product p(se) * p(mantissa | exponent) of the model the file already stores,
quantized to a table of 2^P slots. This script measures, on each 16-bit file of the corpus, how
many bits that quantization adds to the joint floor at P = 14..18 (tables free, as in the floor):
the size a one-lookup bitstream would give up before any table or header byte.

Usage: python3 bench/joint_table_loss.py FILE.safetensors...
"""
import json, struct, sys
import numpy as np

PRECISIONS = (14, 15, 16, 17, 18)


def entropy_bits(c):
    c = c[c > 0].astype(np.float64)
    return float(-(c * np.log2(c / c.sum())).sum())


def quantize(p, precision):
    """Frequencies summing to 2^precision, each present symbol at least 1, nearest rounding;
    None when more symbols are present than the table has slots."""
    total = 1 << precision
    if int((p > 0).sum()) > total:
        return None
    q = np.where(p > 0, np.maximum(1, np.floor(p * total + 0.5)), 0).astype(np.int64)
    order = np.argsort(-p)[: int((p > 0).sum())]
    while (d := total - int(q.sum())) != 0:
        if d > 0:
            q[order[:d]] += 1
        else:
            movable = order[q[order] > 1][:-d]
            q[movable] -= 1
    return q


def tensors(path):
    data = open(path, "rb").read()
    n = struct.unpack("<Q", data[:8])[0]
    for name, v in json.loads(data[8 : 8 + n]).items():
        if name == "__metadata__" or v["dtype"] not in ("BF16", "F16"):
            continue
        a, z = v["data_offsets"]
        if z - a >= 2048:  # the floors' rule: tensors of 1,024+ weights
            yield v["dtype"], np.frombuffer(data[8 + n + a : 8 + n + z], np.uint16).astype(np.int64)


def main(paths):
    print("| file | weights | joint floor (bits/weight) | " + " | ".join(f"P={p}" for p in PRECISIONS) + " |")
    print("|---|---|---|" + "---|" * len(PRECISIONS))
    for path in paths:
        floor, weights, coded = 0.0, 0, dict.fromkeys(PRECISIONS, 0.0)
        for dtype, w in tensors(path):
            mb = 7 if dtype == "BF16" else 10
            se, m = w >> mb, w & ((1 << mb) - 1)
            e = se & ((1 << (15 - mb)) - 1)
            se_counts = np.bincount(se, minlength=1 << (16 - mb)).astype(np.float64)
            floor += entropy_bits(se_counts)
            p = np.zeros(1 << 16)
            for ev in np.unique(e):
                mc = np.bincount(m[e == ev], minlength=1 << mb).astype(np.float64)
                floor += entropy_bits(mc)
                for s in (ev, ev | (1 << (15 - mb))):
                    p[s << mb : (s + 1) << mb] = se_counts[s] / w.size * mc / mc.sum()
            counts = np.bincount(w, minlength=1 << 16).astype(np.float64)
            present = counts > 0
            for prec in PRECISIONS:
                q = quantize(p, prec)
                coded[prec] = None if q is None or coded[prec] is None else \
                    coded[prec] + float(-(counts[present] * np.log2(q[present] / (1 << prec))).sum())
            weights += w.size
        cells = " | ".join("too few slots" if coded[p] is None else f"+{100 * (coded[p] / floor - 1):.3f}%" for p in PRECISIONS)
        print(f"| {path.rsplit('/', 1)[-1]} | {weights} | {floor / weights:.4f} | {cells} |", flush=True)


if __name__ == "__main__":
    main(sys.argv[1:])
