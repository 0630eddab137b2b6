#!/usr/bin/env python3
"""The layers' one direction of dependency, checked on every #include "..." of the sources:
common -> entropy -> encode and decode (neither sees the other) -> container; the CUDA decoder
sees common and entropy only; the CLI, the Python binding and the public headers see the public
API (include/bigsmall) only. The build compiles all layers into one library, so nothing else
would stop an include against the direction. Exit 1 listing each violation.

Usage: check_layers.py REPO_ROOT
"""
import os
import re
import sys

ALLOWED = {
    "include/bigsmall": {"bigsmall"},
    "src/common": {"bigsmall", "common"},
    "src/entropy": {"bigsmall", "common", "entropy"},
    "src/encode": {"bigsmall", "common", "entropy", "encode"},
    "src/decode": {"bigsmall", "common", "entropy", "decode"},
    "src/container": {"bigsmall", "common", "entropy", "encode", "decode", "container"},
    "src/cuda": {"bigsmall", "common", "entropy", "cuda"},
    "cli": {"bigsmall"},
    "python/src": {"bigsmall"},
}
INCLUDE = re.compile(r'\s*#\s*include\s+"([^"]+)"')


def violations(root):
    found = []
    for layer, may_see in ALLOWED.items():
        for folder, _, names in os.walk(os.path.join(root, layer)):
            for name in sorted(names):
                if not re.search(r"\.(h|hpp|cpp|cu|cuh)$", name):
                    continue
                path = os.path.join(folder, name)
                with open(path, encoding="utf-8") as f:
                    for n, line in enumerate(f, 1):
                        m = INCLUDE.match(line)
                        if not m:
                            continue
                        target = m.group(1)
                        seen = target.split("/")[0] if "/" in target else None
                        if seen not in may_see:
                            found.append(f"{os.path.relpath(path, root)}:{n}: {layer} may not include \"{target}\"")
    return found


def main():
    if len(sys.argv) != 2:
        sys.exit(__doc__)
    root = sys.argv[1]
    if not os.path.isdir(os.path.join(root, "src", "common")):
        sys.exit(f"check_layers.py: {root} is not the repository root")
    found = violations(root)
    for v in found:
        print(v)
    print(f"check_layers: {len(found)} include(s) against the layers' direction")
    return 1 if found else 0


if __name__ == "__main__":
    sys.exit(main())
