#!/usr/bin/env python3
"""Seed corpus for fuzz_inputs from a .safetensors file: the file itself (mode 0), its header and
data without the length prefix (mode 1), and a directory index (mode 2).
Usage: make_input_seeds.py FILE.safetensors OUT_DIR"""
import os, struct, sys

src, out = sys.argv[1], sys.argv[2]
os.makedirs(out, exist_ok=True)
data = open(src, "rb").read()
open(os.path.join(out, "whole"), "wb").write(b"\x00" + data)
n, = struct.unpack_from("<Q", data, 0)
open(os.path.join(out, "header"), "wb").write(b"\x01" + struct.pack("<H", n) + data[8:])
# fuzz_inputs places a real model.bs in the directory: an entry without size and bs_checksum
# lists it, one with them must match it.
index = b'{"format": "bigsmall", "format_version": 1, "files": [{"source": "model.safetensors", "bs": "model.bs"}]}'
open(os.path.join(out, "index"), "wb").write(b"\x02" + index)
checked = (b'{"format": "bigsmall", "format_version": 1, "files": [{"source": "model.safetensors", "bs": "model.bs", '
           b'"size": 1, "bs_checksum": "0123456789abcdef"}]}')
open(os.path.join(out, "index-checked"), "wb").write(b"\x02" + checked)
