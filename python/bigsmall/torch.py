"""safetensors.torch-style API over .bs files: load_file and save_file."""
from __future__ import annotations

import os

import torch

from . import _core
from . import InvalidArgumentError, _batches, _header_metadata, _metadata, _text, _threads

_DTYPES = {
    "BOOL": torch.bool, "U8": torch.uint8, "I8": torch.int8, "I16": torch.int16, "I32": torch.int32,
    "I64": torch.int64, "F16": torch.float16, "BF16": torch.bfloat16, "F32": torch.float32,
    "F64": torch.float64, "C64": torch.complex64,
}
for _name, _attr in (("F8_E4M3", "float8_e4m3fn"), ("F8_E5M2", "float8_e5m2"), ("U16", "uint16"),
                     ("U32", "uint32"), ("U64", "uint64"), ("F8_E8M0", "float8_e8m0fnu"),
                     ("F8_E4M3FNUZ", "float8_e4m3fnuz"), ("F8_E5M2FNUZ", "float8_e5m2fnuz")):
    if hasattr(torch, _attr):
        _DTYPES[_name] = getattr(torch, _attr)
_NAMES = {v: k for k, v in _DTYPES.items()}


def _device(device):
    """A torch.device to decode onto, checked before any work: unknown names, the meta device
    and a CUDA device that this torch or machine lacks are refused."""
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError) as e:
        raise InvalidArgumentError(f"device {device!r} is invalid: {_first_line(e)}") from None
    if dev.type == "meta":
        raise InvalidArgumentError("device 'meta' holds no data: decode to 'cpu' or 'cuda'")
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise InvalidArgumentError(f"device {device!r}: this torch has no CUDA device available")
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise InvalidArgumentError(f"device {device!r}: there are {torch.cuda.device_count()} CUDA devices")
    elif dev.type != "cpu":
        # Other backends (mps, xpu, ...) get CPU-decoded tensors moved there, if torch has them.
        try:
            torch.empty(0, device=dev)
        except (RuntimeError, AssertionError) as e:
            raise InvalidArgumentError(f"device {device!r} is not available: {_first_line(e)}") from None
    return dev


def _first_line(e):
    """torch's first line of an error says what is wrong; the rest can be pages of its
    dispatcher's state, and bigsmall's errors are one line."""
    text = str(e).strip()
    return text.splitlines()[0] if text else type(e).__name__


def _byte_view(t):
    """A writable uint8 numpy view of a contiguous CPU tensor's memory (no copy)."""
    return t.reshape(-1).view(torch.uint8).numpy()


def _empty(info, device="cpu", shape=None):
    dt = _DTYPES.get(info["dtype"])
    if dt is None:
        raise _core.FormatError(f"dtype {info['dtype']} has no torch equivalent")
    return torch.empty(info["shape"] if shape is None else shape, dtype=dt, device=device)


def _decode(f, which, infos, device="cpu", threads=0, verify=True, into=None):
    """Decodes tensors `which` of File f straight into new tensors (or `into`), in calls of up
    to 256 MB (Ctrl-C is heard between them) in which chunks of all tensors run in parallel. On a CUDA device with a CUDA build, the chunks
    decode on the GPU into the tensors' device memory; otherwise on the CPU, then move."""
    dev = _device(device)
    if dev.type == "cuda" and into is None and _core.cuda_available():
        with torch.cuda.device(dev):  # staging, launch and stream on the tensors' own device
            outs = [_empty(t, device=dev) for t in infos]
            idx = [i for i, t in zip(which, outs) if t.numel() > 0]
            ptrs = [t.data_ptr() for t in outs if t.numel() > 0]
            if idx:
                f.read_into_device(idx, ptrs, torch.cuda.current_stream(dev).cuda_stream, verify)
        return outs
    outs = list(into) if into is not None else [_empty(t) for t in infos]
    if into is not None and not all(t.device.type == "cpu" and t.is_contiguous() for t in outs):
        raise InvalidArgumentError("decoding needs contiguous CPU tensors")
    # By address: every tensor here is a contiguous CPU tensor this package allocated (or the
    # model parameter StreamingLoader checked), alive for the call; the core checks each size.
    live = [(i, t) for i, t in zip(which, outs) if t.numel() > 0]
    sizes = [t.numel() * t.element_size() for _, t in live]
    for a, b in _batches(sizes):
        f._read_into_addresses([i for i, _ in live[a:b]], [t.data_ptr() for _, t in live[a:b]], sizes[a:b], threads, verify)
    if dev.type != "cpu":
        outs = [t.to(dev, non_blocking=False) for t in outs]
    return outs


def load_file(filename, device="cpu", threads=None, verify=True):
    """Load every tensor of a .bs file: a dict name -> tensor, like safetensors.torch.load_file."""
    f = _core.File.open(os.fsdecode(filename))
    infos = f.tensors()
    tensors = _decode(f, list(range(len(infos))), infos, device, _threads(threads), verify)
    return {t["name"]: x for t, x in zip(infos, tensors)}


def _views(tensors):
    if not isinstance(tensors, dict):
        raise InvalidArgumentError(f"tensors must be a dict of name -> torch.Tensor, not {type(tensors).__name__}")
    names, shapes, bufs, keep = [], [], [], []
    for name, t in tensors.items():
        if not isinstance(t, torch.Tensor):
            raise InvalidArgumentError(f"{name!r} is not a torch.Tensor")
        if t.layout != torch.strided:
            raise InvalidArgumentError(f"{name!r} is a {t.layout} tensor: save its dense form (.to_dense())")
        if t.dtype not in _NAMES:
            raise InvalidArgumentError(f"{name!r}: dtype {t.dtype} is not supported")
        if t.is_meta:
            raise InvalidArgumentError(f"{name!r} is on the meta device: it has no data to save")
        # Conjugate and negative views are lazy bits on a tensor: the bytes must hold the values.
        c = t.detach().to("cpu").resolve_conj().resolve_neg().contiguous()
        keep.append(c)
        names.append((_text(name, "tensor name"), _NAMES[c.dtype]))
        shapes.append(list(c.shape))
        bufs.append(_byte_view(c))
    return names, shapes, bufs, keep


def save_file(tensors, filename, metadata=None, threads=None, overwrite=True):
    """Write tensors straight to a .bs file (no safetensors file in between)."""
    names, shapes, bufs, _keep = _views(tensors)
    _core.write_tensors(os.fsdecode(filename), names, shapes, bufs, _header_metadata(metadata), _threads(threads), overwrite)


def dtype_name(dtype):
    return _NAMES[dtype]


__all__ = ["load_file", "save_file"]
