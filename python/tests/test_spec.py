"""doc/FORMAT.md is normative: an independent decoder written from it alone (tests/spec/bsdec.py,
pure Python) must restore the golden files and what the current writer makes, byte for byte."""
import json
import os
import struct
import sys

import numpy as np
import pytest

import bigsmall

ROOT = os.path.join(os.path.dirname(__file__), "..", "..")
sys.path.insert(0, os.path.join(ROOT, "tests", "spec"))
import bsdec  # noqa: E402


def _safetensors(path, tensors, metadata=None):
    """tensors: (name, dtype name, shape, raw bytes), written in order without gaps."""
    header, data = {}, b""
    if metadata is not None:
        header["__metadata__"] = metadata
    for name, dtype, shape, raw in tensors:
        header[name] = {"dtype": dtype, "shape": shape, "data_offsets": [len(data), len(data) + len(raw)]}
        data += raw
    h = json.dumps(header, separators=(",", ":")).encode()
    h += b" " * (-len(h) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(h)) + h + data)


def _bf16(x):
    return (np.asarray(x, np.float32).view(np.uint32) >> 16).astype(np.uint16).tobytes()


@pytest.mark.parametrize("name", ["golden-v1", "golden-v1.1"])
def test_golden_files_decode_from_the_spec_alone(name):
    golden = os.path.join(ROOT, "tests", "golden")
    restored = bsdec.BsFile(os.path.join(golden, name + ".bs")).restore()
    with open(os.path.join(golden, name + ".safetensors"), "rb") as f:
        assert bytes(restored) == f.read()


def test_what_the_writer_makes_decodes_from_the_spec_alone(tmp_path):
    rng = np.random.default_rng(7)
    w = rng.normal(0, 0.02, 140_000).astype(np.float32)  # trained-like scale; BF16 spans chunks
    special = np.array([0.0, -0.0, np.inf, -np.inf, np.nan, 1e-45, -1e-40], np.float32)
    special = np.concatenate([special, np.frombuffer(b"\x01\x00\xc0\x7f\xff\xff\xff\xff", np.float32)])
    tensors = [
        ("bf16.w", "BF16", [140_000], _bf16(w)),
        ("bf16.odd", "BF16", [33], _bf16(w[:33])),  # a partial round of lanes
        ("f16.w", "F16", [3, 5001], w[:15003].astype(np.float16).tobytes()),
        ("f32.w", "F32", [20_000], w[:20_000].tobytes()),
        ("f32.upcast", "F32", [4096], (np.frombuffer(_bf16(w[:4096]), np.uint16).astype(np.uint32) << 16).tobytes()),
        ("f32.special", "F32", [9], special.tobytes()),
        ("f64.w", "F64", [3000], w[:3000].astype(np.float64).tobytes()),
        ("f8.w", "F8_E4M3", [5000], rng.integers(0, 256, 5000, dtype=np.uint8).tobytes()),
        ("i64.ids", "I64", [2000], rng.integers(0, 1000, 2000).astype(np.int64).tobytes()),
        ("u16.x", "U16", [5000], rng.integers(0, 300, 5000).astype(np.uint16).tobytes()),
        ("bool.mask", "BOOL", [3000], (rng.random(3000) < 0.1).astype(np.uint8).tobytes()),
        ("zeros", "F32", [8192], bytes(4 * 8192)),  # few distinct values: zstd or a one-symbol table
        ("f4.w", "F4", [7], rng.integers(0, 256, 4, dtype=np.uint8).tobytes()),
        ("c64.z", "C64", [100], rng.normal(0, 1, 200).astype(np.float32).tobytes()),
        ("scalar", "F32", [], np.float32(3.5).tobytes()),
        ("empty", "BF16", [0, 5], b""),
        ("name \u00e9\n", "BF16", [17], _bf16(w[:17])),
    ]
    src = tmp_path / "mix.safetensors"
    _safetensors(src, tensors, metadata={"format": "pt"})
    bigsmall.compress(str(src), str(tmp_path / "mix.bs"))
    bs = bsdec.BsFile(str(tmp_path / "mix.bs"))
    codecs = {bsdec.CODECS[e.codec] for e in bs.entries}
    assert {"float", "bytes", "store"} <= codecs, codecs  # each coder the writer picks here is decoded
    assert bytes(bs.restore()) == src.read_bytes()


def test_the_spec_decoder_catches_a_flipped_payload_byte(tmp_path):
    src = tmp_path / "w.safetensors"
    _safetensors(src, [("w", "BF16", [4096], _bf16(np.random.default_rng(1).normal(0, 0.02, 4096)))])
    bigsmall.compress(str(src), str(tmp_path / "w.bs"))
    data = bytearray((tmp_path / "w.bs").read_bytes())
    data[64 + 40] ^= 0x10  # inside the only tensor's payload
    (tmp_path / "bad.bs").write_bytes(bytes(data))
    with pytest.raises(bsdec.CorruptError):
        bsdec.BsFile(str(tmp_path / "bad.bs")).restore()
