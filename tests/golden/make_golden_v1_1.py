#!/usr/bin/env python3
"""Writes golden-v1.1.safetensors: the dtypes format 1.1 added (F8_E4M3FNUZ, F8_E5M2FNUZ, ids 20
and 21) beside C64, an empty "__metadata__" and a name with escaped control characters.
golden-v1.1.bs is that file compressed by a format 1.1 writer (`bigsmall compress`); tests check
that it keeps restoring byte for byte. Never regenerate the .bs of an existing version."""
import json, struct
import numpy as np

rng = np.random.default_rng(20261128)
w = rng.normal(0, 0.5, 40000).astype(np.float32)
# FP8 bytes of weight-like values: sign, a few exponents, any mantissa (what the float model sees).
fnuz4 = ((w.view(np.uint32) >> 24) & 0x80 | (rng.integers(4, 10, w.size) << 3) | rng.integers(0, 8, w.size)).astype(np.uint8)
fnuz5 = ((w.view(np.uint32) >> 24) & 0x80 | (rng.integers(10, 17, w.size) << 2) | rng.integers(0, 4, w.size)).astype(np.uint8)
tensors = [
    ("fnuz4.weight", "F8_E4M3FNUZ", [200, 200], fnuz4.tobytes()),
    ("fnuz5.weight", "F8_E5M2FNUZ", [40000], fnuz5.tobytes()),
    ("c64.rotary", "C64", [64, 2], rng.normal(0, 1, 256).astype(np.float32).tobytes()),
    ("tab\tname\n", "F32", [3], np.array([1.0, -0.0, np.inf], np.float32).tobytes()),
]
# Offsets are the running sums of the tensors' sizes, in the order listed.
ends = np.cumsum([len(raw) for *_, raw in tensors]).tolist()
header = {"__metadata__": {}}
header.update({name: {"dtype": dtype, "shape": shape, "data_offsets": [end - len(raw), end]}
               for (name, dtype, shape, raw), end in zip(tensors, ends)})
text = json.dumps(header, separators=(",", ":")).encode()
text += b" " * (-len(text) % 8)  # the data starts 8-byte aligned, as safetensors writes it
with open("golden-v1.1.safetensors", "wb") as f:
    f.write(struct.pack("<Q", len(text)) + text + b"".join(raw for *_, raw in tensors))
