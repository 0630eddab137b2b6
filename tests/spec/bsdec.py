#!/usr/bin/env python3
"""Independent decoder for bigsmall .bs files, written from doc/FORMAT.md (v1.1; v1.2 added null metadata) alone.

Written by someone who read the specification and none of the C++ sources, to find out whether
the document is enough (FORMAT.md calls itself normative). It is slow (pure Python, ~5-10 us per
weight) and kept as a conformance oracle: python/tests/test_spec.py runs it on the golden files
and on files the current writer makes. Where FORMAT.md was silent it guessed; every guess is
stated in FORMAT.md since its revision of 2026-11-28 and is marked "FORMAT.md:" below.

usage: bsdec.py FILE.bs [-o OUT.safetensors] [--only NAME ...] [--max-units N] [--cmp ORIG.safetensors]
"""
import argparse
import struct
import sys

import xxhash
import zstandard

MAGIC = b"\x89BSML\r\n\x1a"
READER_MAJOR = 1
GIB = 1 << 30


class FormatError(Exception):
    pass


class CorruptError(Exception):
    pass


class VersionError(Exception):
    pass


def xxh64(b):
    return xxhash.xxh3_64_intdigest(bytes(b), seed=0)


def xxh32(b):
    return xxh64(b) & 0xFFFFFFFF


# id: (name, bits, E, M, unit_bytes)
DTYPES = {
    0: ("BOOL", 8, None, None, 1),
    1: ("U8", 8, None, None, 1),
    2: ("I8", 8, None, None, 1),
    3: ("F8_E5M2", 8, 5, 2, 1),
    4: ("F8_E4M3", 8, 4, 3, 1),
    5: ("F8_E8M0", 8, None, None, 1),
    6: ("I16", 16, None, None, 2),
    7: ("U16", 16, None, None, 2),
    8: ("F16", 16, 5, 10, 2),
    9: ("BF16", 16, 8, 7, 2),
    10: ("I32", 32, None, None, 4),
    11: ("U32", 32, None, None, 4),
    12: ("F32", 32, 8, 23, 4),
    13: ("F64", 64, 11, 52, 8),
    14: ("I64", 64, None, None, 8),
    15: ("U64", 64, None, None, 8),
    16: ("C64", 64, None, None, 8),
    17: ("F4", 4, None, None, 1),
    18: ("F6_E2M3", 6, None, None, 1),
    19: ("F6_E3M2", 6, None, None, 1),
    20: ("F8_E4M3FNUZ", 8, 4, 3, 1),
    21: ("F8_E5M2FNUZ", 8, 5, 2, 1),
}


# ---------------------------------------------------------------- bit reader
class BitReader:
    def __init__(self, data):
        self.data = data
        self.pos = 0  # bit position
        self.nbits = 8 * len(data)

    def bit(self):
        if self.pos >= self.nbits:
            raise CorruptError("bit stream overrun")
        b = (self.data[self.pos >> 3] >> (self.pos & 7)) & 1
        self.pos += 1
        return b

    def bits(self, n):
        # FORMAT.md: a multi-bit field is written least-significant bit first
        v = 0
        for i in range(n):
            v |= self.bit() << i
        return v

    def ue(self, k=0):
        L = 0
        while self.bit() == 0:
            L += 1
            if L > 32:  # FORMAT.md: more than 32 leading zero bits is corruption
                raise CorruptError("ue prefix too long")
        w = (1 << L) | self.bits(L)
        return ((w - 1) << k) | self.bits(k)


def zigzag_inv(z):
    return z >> 1 if (z & 1) == 0 else -((z + 1) >> 1)


class Table:
    """A static frequency table; lookup[slot] -> symbol."""

    def __init__(self, P, freq):  # freq: dict symbol -> frequency
        self.P = P
        self.mask = (1 << P) - 1
        self.freq = {}
        self.cum = {}
        lookup = [0] * (1 << P)
        c = 0
        for s in sorted(freq):
            f = freq[s]
            self.freq[s] = f
            self.cum[s] = c
            lookup[c:c + f] = [s] * f
            c += f
        assert c == 1 << P
        self.lookup = lookup


def read_table(br, A):
    P = br.bits(4)
    present = br.ue() + 1
    if present > A:
        raise CorruptError("more present symbols than alphabet")
    syms = [br.ue()]
    for _ in range(present - 1):
        syms.append(syms[-1] + br.ue() + 1)
    if syms[-1] >= A:
        raise CorruptError("symbol outside alphabet")
    total = 1 << P
    if present > total:
        raise CorruptError("more symbols than slots")
    freq = {}
    if present > 1:
        k = br.bits(4)
        prev = 0
        s_sum = 0
        for s in syms[:-1]:
            f = prev + zigzag_inv(br.ue(k))
            if f < 1:
                raise CorruptError("frequency < 1")
            freq[s] = f
            prev = f
            s_sum += f
        last = total - s_sum
        if last < 1:
            raise CorruptError("last frequency < 1")
        freq[syms[-1]] = last
    else:
        freq[syms[0]] = total
    return Table(P, freq)


def uniform_table(P, hi_bits):
    f = 1 << (P - hi_bits)
    return Table(P, {s: f for s in range(1 << hi_bits)})


# ---------------------------------------------------------------- models
class FloatModel:
    def __init__(self, blob, E, M, units):
        br = BitReader(blob)
        self.hi = br.bits(4)
        self.raw = br.bits(6)
        self.zero = br.bits(6)
        self.mp = br.bits(4)
        if self.hi > 12 or self.hi + self.raw + self.zero != M:
            raise CorruptError("bad float model bit split")
        if not (self.hi <= self.mp <= 12):
            raise CorruptError("bad mant_precision")
        self.E, self.M = E, M
        A = 1 << (1 + E)
        self.se = read_table(br, A)
        tc = br.ue()
        if tc > A:
            raise CorruptError("table_count too large")
        if (tc + 1) * (1 << self.mp) > (1 << 16) + 64 * units:
            raise CorruptError("tables too large for data")
        mts = []
        for _ in range(tc):
            t = read_table(br, 1 << self.hi)
            # FORMAT.md: each mantissa table still carries its own 4-bit P, which must equal mant_precision
            if t.P != self.mp:
                raise CorruptError("mantissa table precision %d != mant_precision %d" % (t.P, self.mp))
            mts.append(t)
        uni = uniform_table(self.mp, self.hi)
        used = [False] * tc
        self.ctx = {}
        for s in sorted(self.se.freq):
            c = br.ue()
            if c > tc:
                raise CorruptError("context out of range")
            if c == 0:
                self.ctx[s] = uni
            else:
                self.ctx[s] = mts[c - 1]
                used[c - 1] = True
        if not all(used):
            raise CorruptError("unused mantissa table")
        # FORMAT.md: blob is one bit stream, padded with zero bits to a byte; length == model_size exactly
        if (br.pos + 7) // 8 != len(blob):
            raise CorruptError("model blob length %d != used %d bytes" % (len(blob), (br.pos + 7) // 8))
        if br.pos % 8 and (blob[-1] >> (br.pos % 8)) != 0:
            raise CorruptError("non-zero padding in model blob")


class BytesModel:
    def __init__(self, blob, unit_bytes, units):
        br = BitReader(blob)
        # FORMAT.md: the unit_bytes tables are one continuous bit stream padded once to a byte
        self.tables = [read_table(br, 256) for _ in range(unit_bytes)]
        if sum(1 << t.P for t in self.tables) > (1 << 16) + 64 * units:
            raise CorruptError("tables too large for data")
        if (br.pos + 7) // 8 != len(blob):
            raise CorruptError("model blob length %d != used %d bytes" % (len(blob), (br.pos + 7) // 8))
        if br.pos % 8 and (blob[-1] >> (br.pos % 8)) != 0:
            raise CorruptError("non-zero padding in model blob")


# ---------------------------------------------------------------- rANS chunk
def rans_chunk(chunk, n, L, codec, model, unit_bytes):
    if len(chunk) < 4 * L:
        raise CorruptError("coded chunk shorter than its states")
    states = list(struct.unpack_from("<%dI" % L, chunk, 0))
    for x in states:
        if not (1 << 16) <= x < (1 << 32):
            raise CorruptError("initial state out of range")
    pos = 4 * L
    if codec == 1:
        rb = (n * model.raw + 7) // 8
        if pos + rb > len(chunk):
            raise CorruptError("raw plane past chunk end")
        plane = chunk[pos:pos + rb]
        pos += rb
        raw_int = int.from_bytes(plane, "little")
    rest = len(chunk) - pos
    if rest % 2:
        raise CorruptError("odd word area")
    nw = rest // 2
    words = struct.unpack_from("<%dH" % nw, chunk, pos)
    wi = 0
    out = bytearray(n * unit_bytes)

    def dec(lane, t):
        nonlocal wi
        x = states[lane]
        slot = x & t.mask
        s = t.lookup[slot]
        x = t.freq[s] * (x >> t.P) + slot - t.cum[s]
        if x < (1 << 16):
            if wi >= nw:
                raise CorruptError("words exhausted")
            x = (x << 16) | words[wi]
            wi += 1
        states[lane] = x
        return s

    if codec == 1:
        M, raw, zero = model.M, model.raw, model.zero
        rmask = (1 << raw) - 1
        se_t = model.se
        for r0 in range(0, n, L):
            act = min(L, n - r0)  # FORMAT.md: "active" = lanes whose unit index r0+lane < n
            ses = [dec(l, se_t) for l in range(act)]
            for l in range(act):
                se = ses[l]
                hi = dec(l, model.ctx[se])
                j = r0 + l
                rf = (raw_int >> (j * raw)) & rmask
                v = (se << M) | (hi << (raw + zero)) | (rf << zero)
                out[j * unit_bytes:(j + 1) * unit_bytes] = v.to_bytes(unit_bytes, "little")
    else:
        tabs = model.tables
        for r0 in range(0, n, L):
            act = min(L, n - r0)
            for b in range(unit_bytes):
                t = tabs[b]
                for l in range(act):
                    out[(r0 + l) * unit_bytes + b] = dec(l, t)
    if any(x != (1 << 16) for x in states):
        raise CorruptError("final states != 2^16")
    if wi != nw:
        raise CorruptError("unread words (%d of %d read)" % (wi, nw))
    return out


def zstd_one_frame(data, expected_size, what):
    try:
        params = zstandard.get_frame_parameters(data)
    except zstandard.ZstdError as e:
        raise CorruptError("%s: bad zstd frame header: %s" % (what, e))
    if data[:4] != b"\x28\xb5\x2f\xfd":
        raise CorruptError("%s: not a zstd frame (skippable?)" % what)
    if params.content_size != expected_size:
        raise CorruptError("%s: frame content size %r != %d" % (what, params.content_size, expected_size))
    d = zstandard.ZstdDecompressor().decompressobj()
    try:
        out = d.decompress(bytes(data))
    except zstandard.ZstdError as e:
        raise CorruptError("%s: zstd: %s" % (what, e))
    if not d.eof or d.unused_data:
        raise CorruptError("%s: not exactly one zstd frame" % what)
    if len(out) != expected_size:
        raise CorruptError("%s: decoded size mismatch" % what)
    return out


# ---------------------------------------------------------------- minimal JSON on bytes
def hex4(t):
    """A \\u escape's four hex digits, nothing else (Python's int() would take signs, spaces, _)."""
    if len(t) != 4 or any(c not in b"0123456789abcdefABCDEF" for c in t):
        raise FormatError("json: bad \\u escape")
    return int(t, 16)


def uint_literal(v, what):
    """FORMAT.md: shape and data_offsets numbers are non-negative integer literals below 2^64,
    without sign, fraction or exponent (leading zeros allowed, as earlier writers passed them)."""
    if v[0] != "n" or not v[1] or any(c not in b"0123456789" for c in v[1]):
        raise FormatError("%s: not a non-negative integer literal" % what)
    n = int(v[1])
    if n >= 1 << 64:
        raise FormatError("%s: integer of 64 bits or more" % what)
    return n


class J:
    """Strict JSON parser over bytes; objects are lists of (key_bytes, value) pairs,
    strings are bytes (escapes turned into UTF-8, lone surrogates as their 3-byte form)."""

    WS = b" \t\r\n"

    MAX_DEPTH = 64

    def __init__(self, b):
        self.b = b
        self.i = 0
        self.depth = 0
        # FORMAT.md: at most N/3 + 4096 values, object keys counted, N the text's length
        self.budget = len(b) // 3 + 4096

    def count(self):
        self.budget -= 1
        if self.budget < 0:
            raise FormatError("json: too many values for the header's size")

    def ws(self):
        while self.i < len(self.b) and self.b[self.i] in self.WS:
            self.i += 1

    def value(self):
        # FORMAT.md: no value lies inside more than 64 objects and arrays
        if self.depth > self.MAX_DEPTH:
            raise FormatError("json: nesting too deep")
        self.count()
        self.ws()
        if self.i >= len(self.b):
            raise FormatError("json: unexpected end")
        c = self.b[self.i]
        if c == 0x7B:
            return self.obj()
        if c == 0x5B:
            return self.arr()
        if c == 0x22:
            return ("s", self.string())
        for lit, v in ((b"true", True), (b"false", False), (b"null", None)):
            if self.b.startswith(lit, self.i):
                self.i += len(lit)
                return ("l", v)
        return ("n", self.number())

    def number(self):
        # JSON's grammar: -? digits (. digits)? ([eE] [+-]? digits)?, except that FORMAT.md has
        # readers accept leading zeros and a '.' or exponent without digits after it.
        j = self.i
        b = self.b

        def digits():
            k = self.i
            while self.i < len(b) and 0x30 <= b[self.i] <= 0x39:
                self.i += 1
            return self.i - k

        if self.i < len(b) and b[self.i] == 0x2D:
            self.i += 1
        if digits() == 0:
            raise FormatError("json: bad value")
        if self.i < len(b) and b[self.i] == 0x2E:
            self.i += 1
            digits()
        if self.i < len(b) and b[self.i] in b"eE":
            self.i += 1
            if self.i < len(b) and b[self.i] in b"+-":
                self.i += 1
            digits()
        return b[j:self.i]  # keep textual form

    def string(self):
        assert self.b[self.i] == 0x22
        self.i += 1
        out = bytearray()
        while True:
            if self.i >= len(self.b):
                raise FormatError("json: unterminated string")
            c = self.b[self.i]
            if c == 0x22:
                self.i += 1
                return bytes(out)
            if c == 0x5C:
                e = self.b[self.i + 1]
                self.i += 2
                simple = {0x22: b'"', 0x5C: b"\\", 0x2F: b"/", 0x62: b"\b", 0x66: b"\f",
                          0x6E: b"\n", 0x72: b"\r", 0x74: b"\t"}
                if e in simple:
                    out += simple[e]
                elif e == 0x75:
                    u = hex4(self.b[self.i:self.i + 4])
                    self.i += 4
                    if 0xD800 <= u < 0xDC00:
                        # FORMAT.md: a high surrogate must be followed by an escaped low one
                        u2 = hex4(self.b[self.i + 2:self.i + 6]) if self.b[self.i:self.i + 2] == b"\\u" else -1
                        if not 0xDC00 <= u2 < 0xE000:
                            raise FormatError("json: bad surrogate pair")
                        self.i += 6
                        u = 0x10000 + ((u - 0xD800) << 10) + (u2 - 0xDC00)
                    out += chr(u).encode("utf-8", "surrogatepass")
                else:
                    raise FormatError("json: bad escape")
            else:
                if c < 0x20:
                    raise FormatError("json: control char in string")
                out.append(c)
                self.i += 1

    def _seq(self, close, item, tag):
        self.depth += 1
        try:
            return self._items(close, item, tag)
        finally:
            self.depth -= 1

    def _items(self, close, item, tag):
        self.i += 1
        items = []
        self.ws()
        if self.b[self.i] == close:
            self.i += 1
            return (tag, items)
        while True:
            items.append(item())
            self.ws()
            c = self.b[self.i]
            self.i += 1
            if c == close:
                return (tag, items)
            if c != 0x2C:
                raise FormatError("json: expected , or %s" % chr(close))

    def _member(self):
        self.ws()
        if self.b[self.i] != 0x22:
            raise FormatError("json: expected key")
        self.count()
        k = self.string()
        self.ws()
        if self.b[self.i] != 0x3A:
            raise FormatError("json: expected :")
        self.i += 1
        return (k, self.value())

    def obj(self):
        return self._seq(0x7D, self._member, "o")

    def arr(self):
        return self._seq(0x5D, self.value, "a")


def jeq(a, b):
    if a[0] != b[0]:
        return False
    if a[0] == "n":
        # FORMAT.md: a non-negative integer that fits 64 bits equals only the same integer; any
        # other number equals another such number of the same double value.
        ia, ib = (t.isdigit() and int(t) < 2**64 for t in (a[1], b[1]))
        if ia or ib:
            return ia and ib and int(a[1]) == int(b[1])
        return float(a[1]) == float(b[1])
    if a[0] in ("s", "l"):
        return a[1] == b[1]
    if a[0] == "a":
        return len(a[1]) == len(b[1]) and all(jeq(x, y) for x, y in zip(a[1], b[1]))
    return len(a[1]) == len(b[1]) and all(k1 == k2 and jeq(x, y) for (k1, x), (k2, y) in zip(a[1], b[1]))


def uniq_obj(pairs, what):
    """Collapse duplicated keys (which must carry equal values)."""
    d = {}
    for k, v in pairs:
        if k in d and not jeq(d[k], v):
            raise FormatError("%s: key %r given twice with different values" % (what, k))
        d.setdefault(k, v)
    return d


def parse_st_header(hb):
    # FORMAT.md: one JSON object starting at the first byte (whitespace may only follow it)
    if hb[:1] != b"{":
        raise FormatError("st_header does not start with '{'")
    p = J(hb)
    root = p.value()
    p.ws()
    # FORMAT.md: safetensors pads with spaces after the JSON object (any JSON whitespace is taken)
    if p.i != len(hb):
        raise FormatError("st_header: trailing non-space bytes")
    if root[0] != "o":
        raise FormatError("st_header not an object")
    tensors = []
    for k, v in root[1]:
        if k == b"__metadata__":
            # FORMAT.md (1.2): null is no metadata
            if v == ("l", None):
                continue
            if v[0] != "o":
                raise FormatError("__metadata__ not an object")
            uniq_obj(v[1], "__metadata__")
            # FORMAT.md: __metadata__ is an object whose values are all strings
            if any(x[0] != "s" for _k, x in v[1]):
                raise FormatError("__metadata__ value not a string")
            continue
        if v[0] != "o":
            raise FormatError("tensor %r not an object" % k)
        f = uniq_obj(v[1], "tensor %r" % k)
        try:
            dt = f[b"dtype"][1].decode()
            if f[b"shape"][0] != "a" or f[b"data_offsets"][0] != "a":
                raise FormatError("shape or data_offsets not an array")
            shape = [uint_literal(x, "shape") for x in f[b"shape"][1]]
            offs = [uint_literal(x, "data_offsets") for x in f[b"data_offsets"][1]]
        except Exception as e:
            raise FormatError("tensor %r: bad fields (%s)" % (k, e))
        tensors.append((k, dt, shape, offs))
    # a "__metadata__" key given twice at top level: must be equal
    md = [v for k, v in root[1] if k == b"__metadata__"]
    for m in md[1:]:
        if not jeq(m, md[0]):
            raise FormatError("__metadata__ given twice with different values")
    return tensors


# ---------------------------------------------------------------- container
class Entry:
    pass


def u(fmt, b, o):
    return struct.unpack_from(fmt, b, o)


class BsFile:
    def __init__(self, path):
        with open(path, "rb") as f:
            self.f = f.read()
        f = self.f
        fsize = len(f)
        if fsize < 64:
            raise FormatError("file shorter than header")
        if f[:8] != MAGIC:
            raise FormatError("bad magic")
        major, minor = u("<HH", f, 8)
        if major > READER_MAJOR:
            raise VersionError("newer format version %d.%d" % (major, minor))
        # FORMAT.md: version major is 1
        if major != 1:
            raise FormatError("bad major version %d" % major)
        self.version = (major, minor)
        flags, = u("<I", f, 12)
        (index_off, index_stored, index_raw, index_ck, self.original_size, hck) = u("<6Q", f, 16)
        if xxh64(f[0:56]) != hck:
            raise CorruptError("header checksum")
        if flags != 0:
            raise FormatError("flags not zero")
        if index_off < 64 or index_off > fsize or index_stored != fsize - index_off:
            raise FormatError("bad index position")
        stored = f[index_off:]
        if xxh64(stored) != index_ck:
            raise CorruptError("index checksum")
        if index_raw > GIB:
            raise FormatError("index too big")
        idx = zstd_one_frame(stored, index_raw, "index")
        if index_raw >= 16:  # the entries (all but the first 16 bytes and st_header): <= 1024x when over 64 MiB
            entries = index_raw - 16 - min(struct.unpack_from("<Q", idx, 8)[0], index_raw - 16)
            if entries > 64 * 1024 * 1024 and entries // 1024 > index_stored:
                raise FormatError("index entries more than 1024 times the stored index")
        self.parse_index(idx, index_off, index_stored)
        self.check_payload_layout(index_off)

    def check_payload_layout(self, index_off):
        # FORMAT.md: payloads do not overlap (an empty one may sit at another's start or end, not
        # strictly inside it) and every byte from 64 to index_offset that no payload covers is zero.
        spans = sorted((e.payload_offset, e.payload_offset + e.payload_size) for e in self.entries)
        pos = 64
        for beg, end in spans + [(index_off, index_off)]:
            if beg < pos:
                raise CorruptError("tensor payloads overlap")
            if any(self.f[pos:beg]):
                raise CorruptError("non-zero padding between payloads")
            pos = end

    def parse_index(self, b, index_off, index_stored):
        o = 0

        def need(n):
            if o + n > len(b):
                raise FormatError("index truncated")

        need(16)
        tc, fc, N = u("<IIQ", b, 0)
        o = 16
        if tc > (1 << 20) + index_stored:
            raise FormatError("tensor count too big")
        if N > 100 << 20:  # FORMAT.md: st_header at most 100 MiB, safetensors' own limit
            raise FormatError("st_header over 100 MiB")
        need(N)
        self.st_header = b[o:o + N]
        o += N
        self.entries = []
        for _ in range(tc):
            e = Entry()
            need(2)
            nl, = u("<H", b, o)
            o += 2
            need(nl)
            e.name = b[o:o + nl]
            o += nl
            need(8)
            e.dtype, e.codec, e.chunk_log2, e.lanes_log2, e.ndim = b[o:o + 5]
            res = b[o + 5:o + 8]
            o += 8
            if res != b"\0\0\0":
                raise FormatError("reserved bytes not zero")
            if e.dtype not in DTYPES:
                raise FormatError("unknown dtype id %d" % e.dtype)
            if e.codec > 3:
                raise FormatError("unknown codec %d" % e.codec)
            if not 6 <= e.chunk_log2 <= 24 or e.lanes_log2 > 5:
                raise FormatError("bad chunk/lanes log2")
            need(8 * e.ndim + 48 + 8)
            e.shape = list(u("<%dQ" % e.ndim, b, o))
            o += 8 * e.ndim
            (e.data_begin, e.nbytes, e.payload_offset, e.payload_size, e.floor_bits, e.checksum) = u("<6Q", b, o)
            o += 48
            e.model_size, e.chunk_count = u("<II", b, o)
            o += 8
            name, bits, E, M, ub = DTYPES[e.dtype]
            prod = 1
            for s in e.shape:
                prod *= s
            if (prod * bits + 7) // 8 != e.nbytes:
                raise FormatError("shape does not match nbytes")
            if e.nbytes % ub:
                raise FormatError("nbytes not a multiple of unit")
            e.units = e.nbytes // ub
            C = 1 << e.chunk_log2
            if e.chunk_count != (e.units + C - 1) // C:
                raise FormatError("bad chunk count")
            if e.chunk_count > e.payload_size:
                raise FormatError("chunk count > stored bytes")
            if e.codec == 1 and E is None:
                raise FormatError("float codec on non-float dtype")
            # READING: "end before index_offset" means payload_offset + payload_size <= index_offset
            # (writers end the last payload exactly at index_offset; empty tensors may sit at index_offset)
            if e.payload_offset < 64 or e.payload_offset + e.payload_size > index_off:
                raise FormatError("payload out of place")
            need(9 * e.chunk_count)
            e.chunks = []
            for _c in range(e.chunk_count):
                sz, ck, mode = u("<IIB", b, o)
                o += 9
                e.chunks.append((sz, ck, mode))
            if e.model_size + sum(c[0] for c in e.chunks) != e.payload_size:
                raise FormatError("chunks do not fill payload")
            if e.codec in (0, 3) and e.model_size:
                raise FormatError("model_size must be 0 for store/zstd")
            if e.codec == 0 and any(c[2] != 0 for c in e.chunks):
                raise FormatError("store codec with coded chunk")
            if any(c[2] > 1 for c in e.chunks):
                raise FormatError("bad chunk mode")
            if e.codec in (1, 2):  # at most 4096 units per byte of a coded chunk
                for i, (sz, _ck, mode) in enumerate(e.chunks):
                    if mode == 1 and min(C, e.units - i * C) > 4096 * sz:
                        raise FormatError("coded chunk decodes to more than 4096 units per byte")
            self.entries.append(e)
        self.fillers = []
        for _ in range(fc):
            need(16)
            beg, sz = u("<QQ", b, o)
            o += 16
            need(sz)
            self.fillers.append((beg, b[o:o + sz]))
            o += sz
        if o != len(b):
            raise FormatError("trailing bytes in index")
        if self.original_size < 8 + N:
            raise FormatError("original_size too small")
        self.data_size = self.original_size - 8 - N
        # tiling
        spans = [(e.data_begin, e.nbytes) for e in self.entries if e.nbytes] + \
                [(beg, len(bb)) for beg, bb in self.fillers if len(bb)]
        # FORMAT.md: zero-size fillers are allowed (ignored); zero-size tensor data_begin must be in [0, data_size]
        spans.sort()
        pos = 0
        for beg, sz in spans:
            if beg != pos:
                raise FormatError("data region not tiled (at %d, got %d)" % (pos, beg))
            pos += sz
        if pos != self.data_size:
            raise FormatError("data region not tiled (end %d != %d)" % (pos, self.data_size))
        for e in self.entries:
            if e.data_begin > self.data_size:
                raise FormatError("empty tensor outside data region")
        # FORMAT.md: every filler, empty ones included, lies inside the data region
        for beg, bb in self.fillers:
            if beg > self.data_size or len(bb) > self.data_size - beg:
                raise FormatError("filler outside data region")
        self.check_header_matches()

    def check_header_matches(self):
        st = parse_st_header(self.st_header)
        if len(st) != len(self.entries):
            raise FormatError("st_header has %d tensors, index %d" % (len(st), len(self.entries)))
        by = {}
        for t in st:
            by.setdefault(t[0], []).append(t)
        for k in by:
            # data order; FORMAT.md: ties (empty tensors at one offset) keep header order
            by[k].sort(key=lambda t: (t[3][0], t[3][1]) if len(t[3]) == 2 else (0, 0))
        seen = {}
        for e in self.entries:
            k = seen.get(e.name, 0)
            seen[e.name] = k + 1
            lst = by.get(e.name)
            if lst is None or k >= len(lst):
                raise FormatError("entry %r not in st_header" % e.name)
            _, dt, shape, offs = lst[k]
            if dt != DTYPES[e.dtype][0] or shape != e.shape or offs != [e.data_begin, e.data_begin + e.nbytes]:
                raise FormatError("entry %r disagrees with st_header" % e.name)

    # ---- decode
    def decode_tensor(self, e, max_chunks=None, verify=True):
        name, bits, E, M, ub = DTYPES[e.dtype]
        p = self.f[e.payload_offset:e.payload_offset + e.payload_size]
        model = None
        # A tensor whose chunks are all stored may have no model (model_size 0).
        has_model = e.model_size > 0 or any(mode == 1 for _, _, mode in e.chunks)
        if e.codec == 1 and has_model:
            model = FloatModel(p[:e.model_size], E, M, e.units)
        elif e.codec == 2 and has_model:
            model = BytesModel(p[:e.model_size], ub, e.units)
        C = 1 << e.chunk_log2
        L = 1 << e.lanes_log2
        out = bytearray()
        o = e.model_size
        nch = len(e.chunks) if max_chunks is None else min(max_chunks, len(e.chunks))
        for i in range(nch):
            sz, ck, mode = e.chunks[i]
            cb = p[o:o + sz]
            o += sz
            if xxh32(cb) != ck:
                raise CorruptError("%r chunk %d checksum" % (e.name, i))
            n = min(C, e.units - i * C)
            if mode == 0:
                if sz != n * ub:
                    raise CorruptError("stored chunk size")
                out += cb
            elif e.codec == 3:
                out += zstd_one_frame(cb, n * ub, "%r chunk %d" % (e.name, i))
            else:
                out += rans_chunk(cb, n, L, e.codec, model, ub)
        if nch == len(e.chunks):
            assert len(out) == e.nbytes
            if verify and xxh64(out) != e.checksum:
                raise CorruptError("%r tensor checksum" % e.name)
        return out

    def restore(self, log=None):
        N = len(self.st_header)
        data = bytearray(self.data_size)
        for beg, bb in self.fillers:
            data[beg:beg + len(bb)] = bb
        for e in self.entries:
            if log:
                log(e)
            d = self.decode_tensor(e)
            data[e.data_begin:e.data_begin + e.nbytes] = d
        return struct.pack("<Q", N) + self.st_header + bytes(data)


CODECS = {0: "store", 1: "float", 2: "bytes", 3: "zstd"}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("bs")
    ap.add_argument("-o")
    ap.add_argument("--cmp", help="original safetensors to compare with")
    ap.add_argument("--max-chunks", type=int, help="decode only the first K chunks of each tensor (compare prefix)")
    ap.add_argument("-v", action="store_true")
    a = ap.parse_args()
    bf = BsFile(a.bs)
    stats = {}
    for e in bf.entries:
        key = (CODECS[e.codec], DTYPES[e.dtype][0])
        stats[key] = stats.get(key, 0) + 1
    print("%s: version %d.%d, %d tensors, %d fillers; codec/dtype counts %s" % (
        a.bs, *bf.version, len(bf.entries), len(bf.fillers), stats))
    log = (lambda e: print("  %-50s %-5s %-5s n=%d chunks=%d lanes=%d" % (
        e.name.decode("utf-8", "replace"), DTYPES[e.dtype][0], CODECS[e.codec], e.nbytes, e.chunk_count,
        1 << e.lanes_log2), flush=True)) if a.v else None
    if a.max_chunks is None:
        out = bf.restore(log)
        print("restored %d bytes (original_size %d)" % (len(out), bf.original_size))
        if a.o:
            open(a.o, "wb").write(out)
        if a.cmp:
            orig = open(a.cmp, "rb").read()
            print("BYTE-EXACT" if orig == out else "MISMATCH")
            return 0 if orig == out else 1
    else:
        orig = open(a.cmp, "rb").read()
        base = 8 + len(bf.st_header)
        ok = orig[:base] == struct.pack("<Q", len(bf.st_header)) + bf.st_header
        for e in bf.entries:
            if log:
                log(e)
            d = bf.decode_tensor(e, a.max_chunks)
            ok &= orig[base + e.data_begin:base + e.data_begin + len(d)] == bytes(d)
        for beg, bb in bf.fillers:
            ok &= orig[base + beg:base + beg + len(bb)] == bb
        print("PREFIX-EXACT" if ok else "MISMATCH")
        return 0 if ok else 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
