#!/usr/bin/env python3
"""Writes golden-v1.2-layout.safetensors: the layouts earlier writers passed through and readers
promise to keep reading, which the other golden files lack: bytes between tensors and after the
last one (restored from fillers), a float tensor whose second chunk is incompressible (a stored
chunk inside a coded tensor), an empty tensor and a scalar, a non-ASCII name, and metadata.
golden-v1.2-layout.bs is that file compressed by a format 1.2 writer (`bigsmall compress`); tests
check that it keeps restoring byte for byte. Never regenerate the .bs of an existing version."""
import json, struct
import numpy as np

rng = np.random.default_rng(20261129 + 1)
w = rng.normal(0, 0.05, 65536).astype(np.float32)
smooth = (w.view(np.uint32) >> 16).astype(np.uint16)
noise = rng.integers(0, 1 << 16, 65536, dtype=np.uint16)  # every bit pattern: no model helps
tensors = [
    ("mixed.weight", "BF16", [2, 65536], np.concatenate([smooth, noise]).tobytes(), b"\x01\x02\x03\x04\x05\x06\x07"),
    ("h\u00e9llo.w\u00e9ight", "F32", [3], np.array([1.5, -0.0, 2.0], np.float32).tobytes(), b""),
    ("empty", "F16", [0, 4], b"", b""),
    ("scalar", "I64", [], struct.pack("<q", -7), b"\xff\xfe"),
]
header, data = {"__metadata__": {"format": "pt", "note": "gaps, a stored chunk, odd shapes"}}, b""
for name, dtype, shape, raw, gap_after in tensors:
    header[name] = {"dtype": dtype, "shape": shape, "data_offsets": [len(data), len(data) + len(raw)]}
    data += raw + gap_after
text = json.dumps(header, separators=(",", ":"), ensure_ascii=False).encode()
text += b" " * (-len(text) % 8)
with open("golden-v1.2-layout.safetensors", "wb") as f:
    f.write(struct.pack("<Q", len(text)) + text + data)
