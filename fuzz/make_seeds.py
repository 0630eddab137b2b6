#!/usr/bin/env python3
"""Seed corpus for fuzz_bs_reader from a .bs file: the file itself (mode 0) and its raw index
plus payload (mode 1). Usage: make_seeds.py FILE.bs OUT_DIR"""
import os, struct, subprocess, sys

src, out = sys.argv[1], sys.argv[2]
os.makedirs(out, exist_ok=True)
data = open(src, "rb").read()
open(os.path.join(out, "whole"), "wb").write(b"\x00" + data)
index_offset, stored = struct.unpack_from("<QQ", data, 16)
original, = struct.unpack_from("<Q", data, 48)
index = subprocess.run(["zstd", "-dc"], input=data[index_offset:], capture_output=True, check=True).stdout
payload = data[64:index_offset]
open(os.path.join(out, "wrapped"), "wb").write(b"\x01" + struct.pack("<IQ", len(index), original) + index + payload)
