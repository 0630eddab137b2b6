#!/usr/bin/env python3
"""Writes golden-v1.2.safetensors: what format 1.2 added, a "__metadata__" of null (safetensors
reads it as no metadata; writers that serialize an absent map write it so), given first as such
writers do, beside BF16 weights over two chunks and an F32 tensor.
golden-v1.2.bs is that file compressed by a format 1.2 writer (`bigsmall compress`); tests check
that it keeps restoring byte for byte. Never regenerate the .bs of an existing version."""
import json, struct
import numpy as np

rng = np.random.default_rng(20261129)
w = rng.normal(0, 0.05, 70000).astype(np.float32)
bf16 = (w.view(np.uint32) >> 16).astype(np.uint16)
tensors = [
    ("layer.weight", "BF16", [70000], bf16.tobytes()),
    ("layer.bias", "F32", [5], np.array([0.5, -0.0, 1e-40, -2.0, 3.0], np.float32).tobytes()),
]
ends = np.cumsum([len(raw) for *_, raw in tensors]).tolist()
header = {"__metadata__": None}
header.update({name: {"dtype": dtype, "shape": shape, "data_offsets": [end - len(raw), end]}
               for (name, dtype, shape, raw), end in zip(tensors, ends)})
text = json.dumps(header, separators=(",", ":")).encode()
text += b" " * (-len(text) % 8)
with open("golden-v1.2.safetensors", "wb") as f:
    f.write(struct.pack("<Q", len(text)) + text + b"".join(raw for *_, raw in tensors))
