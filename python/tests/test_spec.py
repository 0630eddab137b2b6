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


@pytest.mark.parametrize("name", ["golden-v1", "golden-v1.1", "golden-v1.2", "golden-v1.2-layout"])
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


def _rewrite(data, index=None, st_header=None, original_size_delta=0):
    """A .bs file with its index (and the header fields that follow it) rewritten, checksums
    fixed, so that only the rule under test is broken."""
    import xxhash
    import zstandard

    off, stored = struct.unpack_from("<QQ", data, 16)
    idx = bytearray(zstandard.ZstdDecompressor().decompress(bytes(data[off:])))
    if st_header is not None:
        n = struct.unpack_from("<Q", idx, 8)[0]
        idx[16:16 + n] = st_header
        struct.pack_into("<Q", idx, 8, len(st_header))
    if index is not None:
        idx = index(idx)
    z = zstandard.ZstdCompressor(write_content_size=True).compress(bytes(idx))
    out = bytearray(data[:off]) + z
    original = struct.unpack_from("<Q", data, 48)[0] + original_size_delta
    struct.pack_into("<QQQQQ", out, 16, off, len(z), len(idx), xxhash.xxh3_64_intdigest(z), original)
    struct.pack_into("<Q", out, 56, xxhash.xxh3_64_intdigest(bytes(out[:56])))
    return bytes(out)


def _entry_payload_field(idx, k):
    """Offset in the index of tensor entry k's payload_offset (FORMAT.md, tensor entry)."""
    n = struct.unpack_from("<Q", idx, 8)[0]
    o = 16 + n
    for i in range(k + 1):
        nl = struct.unpack_from("<H", idx, o)[0]
        ndim = idx[o + 2 + nl + 4]
        field = o + 2 + nl + 8 + 8 * ndim + 16
        chunks = struct.unpack_from("<I", idx, field + 32 + 4)[0]
        if i == k:
            return field
        o = field + 40 + 9 * chunks


def _overlap(idx):
    first = _entry_payload_field(idx, 0)
    struct.pack_into("<Q", idx, _entry_payload_field(idx, 1), struct.unpack_from("<Q", idx, first)[0])
    return idx


def _far_empty_filler(idx):
    struct.pack_into("<I", idx, 4, struct.unpack_from("<I", idx, 4)[0] + 1)
    return idx + struct.pack("<QQ", 1 << 40, 0)


# Files FORMAT.md calls invalid that an earlier bsdec.py accepted (the CLI refused each): both the
# library and the spec decoder must refuse them, for the reason under test.
@pytest.mark.parametrize("case", ["gap_byte", "overlap", "leading_space", "metadata_number", "deep", "far_filler"])
def test_files_the_spec_calls_invalid_are_refused_by_both_decoders(tmp_path, case):
    src = tmp_path / "w.safetensors"
    w = np.random.default_rng(3).normal(0, 0.02, 3000)
    _safetensors(src, [("a", "BF16", [3000], _bf16(w)), ("b", "BF16", [3000], _bf16(w[::-1]))],
                 metadata={"x": "ab"})
    bigsmall.compress(str(src), str(tmp_path / "w.bs"))
    data = (tmp_path / "w.bs").read_bytes()
    st = bytes(bsdec.BsFile(str(tmp_path / "w.bs")).st_header)
    if case == "gap_byte":
        bs = bsdec.BsFile(str(tmp_path / "w.bs"))
        covered = set()
        for e in bs.entries:
            covered.update(range(e.payload_offset, e.payload_offset + e.payload_size))
        index_off = struct.unpack_from("<Q", data, 16)[0]
        gap = next(b for b in range(64, index_off) if b not in covered)  # 64-byte alignment leaves one
        bad = bytearray(data)
        bad[gap] = 7
        bad, why = bytes(bad), "padding"
    elif case == "overlap":
        bad, why = _rewrite(data, index=_overlap), "overlap"
    elif case == "leading_space":
        assert st.endswith(b" ")
        bad, why = _rewrite(data, st_header=b" " + st[:-1]), "whitespace|start"
    elif case == "metadata_number":
        assert b'"x":"ab"' in st
        bad, why = _rewrite(data, st_header=st.replace(b'"x":"ab"', b'"x":1234')), "not a string"
    elif case == "deep":
        deep = b'"a":{"deep":' + b"[" * 70 + b"]" * 70 + b","
        assert st.count(b'"a":{') == 1
        grown = st.replace(b'"a":{', deep, 1)
        bad, why = _rewrite(data, st_header=grown, original_size_delta=len(grown) - len(st)), "nesting too deep"
    else:
        bad, why = _rewrite(data, index=_far_empty_filler), "filler outside"
    (tmp_path / "bad.bs").write_bytes(bad)
    with pytest.raises((bsdec.FormatError, bsdec.CorruptError), match=why):
        bsdec.BsFile(str(tmp_path / "bad.bs")).restore()
    with pytest.raises(bigsmall.Error, match=why):
        bigsmall.verify(str(tmp_path / "bad.bs"))


def test_an_empty_tensor_is_checked_on_load_too(tmp_path):
    """The loaders skipped empty tensors, so a damaged entry of one (its checksum here; a model it
    should not have likewise) loaded without a word, while verify refused the file."""
    import bigsmall.torch as bt

    src = tmp_path / "w.safetensors"
    w = np.random.default_rng(5).normal(0, 0.02, 3000)
    _safetensors(src, [("a", "F32", [3000], w.astype(np.float32).tobytes()), ("e", "F32", [0, 5], b"")])
    bigsmall.compress(str(src), str(tmp_path / "w.bs"))
    k = [e.name for e in bsdec.BsFile(str(tmp_path / "w.bs")).entries].index(b"e")

    def damage(idx):
        at = _entry_payload_field(idx, k) + 24  # payload_offset, payload_size, floor_bits, checksum
        idx[at] ^= 1
        return idx

    (tmp_path / "bad.bs").write_bytes(_rewrite((tmp_path / "w.bs").read_bytes(), index=damage))
    with pytest.raises(bigsmall.CorruptError):
        bigsmall.verify(str(tmp_path / "bad.bs"))
    import bigsmall.numpy as bn

    for load in (bt.load_file, bn.load_file):
        with pytest.raises(bigsmall.CorruptError):
            load(str(tmp_path / "bad.bs"))
        assert load(str(tmp_path / "bad.bs"), verify=False)["e"].shape == (0, 5)
    with bigsmall.safe_open(str(tmp_path / "bad.bs"), framework="pt") as f, pytest.raises(bigsmall.CorruptError):
        f.get_tensor("e")
