#!/usr/bin/env python3
"""Writes golden-v1.safetensors, a small file that exercises every codec: float (BF16 over two
chunks, F16, F32 holding BF16 upcasts, F8), bytes (small integers), zstd (a repeated pattern),
store (random bytes) and an empty tensor. golden-v1.bs is that file compressed by format 1.0;
tests check that it keeps restoring byte for byte. Never regenerate the .bs of an existing version."""
import json, struct
import numpy as np

rng = np.random.default_rng(20261127)
w = rng.normal(0, 0.02, 70000).astype(np.float32)
tensors = {
    "bf16.weight": ((w.view(np.uint32) + 0x7FFF + ((w.view(np.uint32) >> 16) & 1)) >> 16).astype(np.uint16).reshape(280, 250),
    "f16.weight": rng.normal(0, 0.05, 5000).astype(np.float16).reshape(50, 100),
    "f32.upcast": (w[:3000].view(np.uint32) & 0xFFFF0000).view(np.float32),
    "f8.scale": rng.integers(0, 256, 2048, dtype=np.uint8),
    "i32.ids": rng.integers(0, 5, 3000).astype(np.int32),
    "f32.pattern": np.tile(rng.normal(0, 1, 64).astype(np.float32), 200),
    "u8.noise": rng.integers(0, 256, 777, dtype=np.uint8),
    "f32.empty": np.zeros((0, 3), np.float32),
}
dtypes = {"bf16.weight": "BF16", "f16.weight": "F16", "f32.upcast": "F32", "f8.scale": "F8_E4M3",
          "i32.ids": "I32", "f32.pattern": "F32", "u8.noise": "U8", "f32.empty": "F32"}
header, data, off = {"__metadata__": {"format": "pt", "purpose": "golden"}}, b"", 0
for name, arr in tensors.items():
    raw = arr.tobytes()
    header[name] = {"dtype": dtypes[name], "shape": list(arr.shape), "data_offsets": [off, off + len(raw)]}
    data += raw
    off += len(raw)
h = json.dumps(header, separators=(",", ":")).encode()
h += b" " * ((8 - len(h) % 8) % 8)
with open("golden-v1.safetensors", "wb") as f:
    f.write(struct.pack("<Q", len(h)) + h + data)
