"""safetensors.numpy-style API over .bs files (load_file and save_file, load and save for bytes).
BF16 and the FP8 dtypes need the ml_dtypes package."""
from __future__ import annotations

import os

import numpy as np

from . import _core
from . import (_MEMORY, InvalidArgumentError, OutOfMemoryError, _backend, _batches, _bs_bytes, _flag, _fsdecode, _header_metadata, _save_target,
               _text, _threads, _with_file, _write_file)

_DTYPES = {
    "BOOL": np.bool_, "U8": np.uint8, "I8": np.int8, "I16": np.int16, "U16": np.uint16, "I32": np.int32,
    "U32": np.uint32, "I64": np.int64, "U64": np.uint64, "F16": np.float16, "F32": np.float32, "F64": np.float64,
    "C64": np.complex64,
}
try:
    import ml_dtypes

    for _name, _attr in (("BF16", "bfloat16"), ("F8_E4M3", "float8_e4m3fn"), ("F8_E5M2", "float8_e5m2"),
                         ("F8_E4M3FNUZ", "float8_e4m3fnuz"), ("F8_E5M2FNUZ", "float8_e5m2fnuz"),
                         ("F8_E8M0", "float8_e8m0fnu")):
        if hasattr(ml_dtypes, _attr):  # older ml_dtypes lack the newer formats
            _DTYPES[_name] = getattr(ml_dtypes, _attr)
except ImportError:
    pass
_NAMES = {np.dtype(v): k for k, v in _DTYPES.items()}


def _empty(f, t, shape=None):
    dt = _DTYPES.get(t["dtype"])
    if dt is None:
        hint = "; install ml_dtypes (pip install ml_dtypes) or use bigsmall.torch" if t["dtype"].startswith(("BF16", "F8")) else ""
        raise InvalidArgumentError(f"{f.path}: tensor {t['name']!r} has dtype {t['dtype']}, which numpy lacks{hint}")
    shape = t["shape"] if shape is None else shape
    try:
        return np.empty(shape, dtype=dt)
    except MemoryError as e:
        nbytes = int(np.prod(shape, dtype=np.uint64)) * np.dtype(dt).itemsize
        raise OutOfMemoryError(f"{f.path}: tensor {t['name']!r}: cannot allocate {nbytes} bytes ({e})") from None
    except ValueError as e:  # a shape numpy cannot represent ([0, 2**62, 2**62] is valid safetensors)
        raise InvalidArgumentError(f"{f.path}: tensor {t['name']!r}: numpy cannot make an array of shape {list(shape)} ({e})") from None


def _decode(f, which, infos, threads=0, verify=True):
    outs = [_empty(f, t) for t in infos]
    idx = list(which)  # empty tensors too: the core checks their model and checksum
    bufs = [a.reshape(-1).view(np.uint8) for a in outs]
    for a, b in _batches([buf.size for buf in bufs]):
        f.read_into(idx[a:b], bufs[a:b], threads, verify)
    return outs


def load_file(filename, threads=None, verify=True, *, backend="mmap"):
    """Load every tensor of a .bs file: a dict name -> numpy array, like safetensors.numpy.load_file
    (`backend`, "mmap" or "pread", is taken as safetensors takes it)."""
    _backend(backend)
    verify = _flag(verify, "verify")
    f = _core.File.open(_fsdecode(filename))
    infos = f.tensors()
    return {t["name"]: a for t, a in zip(infos, _decode(f, list(range(len(infos))), infos, _threads(threads), verify))}


def save_file(tensor_dict, filename, metadata=None, threads=None, overwrite=True):
    """Write a dict name -> numpy array straight to a .bs file (no safetensors file in between).
    The first argument is named as safetensors.numpy names it, so keyword calls carry over."""
    path = _save_target(filename)
    names, shapes, bufs = _with_file(path, _arrays, tensor_dict)
    _write_file(path, names, shapes, bufs, metadata, threads, overwrite, 2)


def load(data, threads=None, verify=True):
    """Load every tensor of a .bs held in memory (bytes, as save returns them): a dict name ->
    numpy array, like safetensors.numpy.load."""
    verify = _flag(verify, "verify")
    f = _core.File.from_bytes(_bs_bytes(data), _MEMORY)
    infos = f.tensors()
    return {t["name"]: a for t, a in zip(infos, _decode(f, list(range(len(infos))), infos, _threads(threads), verify))}


def save(tensor_dict, metadata=None, threads=None):
    """The .bs that save_file would write for a dict name -> numpy array, as bytes (like
    safetensors.numpy.save)."""
    names, shapes, bufs = _with_file(_MEMORY, _arrays, tensor_dict)
    return _core.write_tensors_bytes(names, shapes, bufs, _header_metadata(metadata, _MEMORY), _threads(threads))


def _arrays(tensors):
    if not isinstance(tensors, dict):
        raise InvalidArgumentError(f"tensors must be a dict of name -> numpy array, not {type(tensors).__name__}")
    names, shapes, bufs = [], [], []
    for name, a in tensors.items():
        if not isinstance(a, (np.ndarray, np.generic)):
            raise InvalidArgumentError(f"{name!r} is not a numpy array")
        a = np.asarray(a, order="C")  # keeps 0-d arrays 0-d (ascontiguousarray would not)
        if a.dtype.byteorder == ">":  # safetensors stores little-endian; so does its numpy writer
            a = a.astype(a.dtype.newbyteorder("<"), order="C")
        if a.dtype not in _NAMES:
            raise InvalidArgumentError(f"{name!r}: dtype {a.dtype} is not supported")
        names.append((_text(name, "tensor name"), _NAMES[a.dtype]))
        shapes.append(list(a.shape))
        bufs.append(a.reshape(-1).view(np.uint8))
    return names, shapes, bufs


__all__ = ["load_file", "save_file", "load", "save"]
