"""safetensors.torch-style API over .bs files: load_file and save_file, load and save (bytes),
load_model and save_model."""
from __future__ import annotations

import math
import operator
import os

import torch

from . import _core
from . import (_MEMORY, InvalidArgumentError, OutOfMemoryError, _backend, _batches, _bs_bytes, _flag, _fsdecode, _header_metadata, _save_target,
               _text, _threads, _with_file, _write_file)

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
# F4 (safetensors' name for torch.float4_e2m1fn_x2, torch 2.8+): two values a byte, the header's
# shape counting values, the tensor's last dimension counting bytes (header [5, 6] <-> [5, 3]).
# It is kept out of _DTYPES, whose shapes and dtypes the model loaders take as they are.
_F4 = getattr(torch, "float4_e2m1fn_x2", None)
if _F4 is not None:
    _NAMES[_F4] = "F4"


def _device(device):
    """A torch.device to decode onto, checked before any work: unknown names, the meta device
    and a CUDA device that this torch or machine lacks are refused."""
    if device is None:  # as safetensors takes it
        device = "cpu"
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


def _torch_dtype(info, path=None):
    """The torch dtype of a tensor of the file at `path`; refused (naming both) where this torch has none."""
    dt = _F4 if info["dtype"] == "F4" else _DTYPES.get(info["dtype"])
    if dt is None:
        where = f"{path}: tensor" if path is not None else "tensor"
        raise InvalidArgumentError(f"{where} {info['name']!r} has dtype {info['dtype']}, which torch "
                                   f"{torch.__version__} has no dtype for")
    return dt


def _torch_shape(info, path=None):
    """The shape of the tensor as torch holds it: the header's, except for F4, whose last
    dimension torch counts in bytes (two values each), as safetensors loads it; an F4 tensor
    whose values do not pair up in its last dimension (0-d, or odd) has no torch form."""
    shape = list(info["shape"])
    if info["dtype"] == "F4":
        if not shape or shape[-1] % 2:
            where = f"{path}: tensor" if path is not None else "tensor"
            raise InvalidArgumentError(f"{where} {info['name']!r} is F4 of shape {shape}: torch's float4_e2m1fn_x2 "
                                       "holds two values a byte along the last dimension, which must be even")
        shape[-1] //= 2
    return shape


def _empty(info, device="cpu", shape=None, path=None):
    """A new tensor for `info` (shape: the torch shape of part of it, or all of it by default)."""
    dt = _torch_dtype(info, path)
    shape = _torch_shape(info, path) if shape is None else shape
    try:
        return torch.empty(shape, dtype=dt, device=device)
    except (RuntimeError, MemoryError, TypeError, OverflowError) as e:
        # torch's CPU allocator raises RuntimeError, CUDA's OutOfMemoryError; a dimension of 2**63
        # or more (valid safetensors) a TypeError from unpacking the size.
        if isinstance(e, MemoryError) or "allocate" in str(e) or "out of memory" in str(e).lower():
            where = f"{path}: " if path is not None else ""
            nbytes = math.prod(shape) * torch.empty(0, dtype=dt).element_size()
            raise OutOfMemoryError(f"{where}tensor {info['name']!r}: cannot allocate {nbytes} bytes "
                                   f"on {device} ({_first_line(e)})") from None
        if isinstance(e, (RuntimeError, TypeError, OverflowError)):  # a shape torch cannot represent ([0, 2**62, 2**62] is valid safetensors)
            where = f"{path}: " if path is not None else ""
            raise InvalidArgumentError(f"{where}tensor {info['name']!r}: torch cannot make a tensor of shape "
                                       f"{list(shape)} ({_first_line(e)})") from None
        raise


def _f4_byte_index(index, info, path):
    """An index of an F4 slice, over the values (the header's shape, which get_shape() reports, as
    safetensors' slices are indexed), as the same index over the bytes of the float4_e2m1fn_x2
    tensor: the last dimension's selection must be whole bytes (an even start, an even count,
    step 1), as safetensors requires; ints, slices and one '...', as safetensors takes."""
    shape = info["shape"]  # 1-D or more, its last dimension even: _torch_shape checked it
    items = list(index) if isinstance(index, tuple) else [index]
    for k, ix in enumerate(items):
        if ix is Ellipsis or isinstance(ix, slice):
            continue
        try:
            if isinstance(ix, bool):
                raise TypeError
            items[k] = operator.index(ix)
        except TypeError:
            raise InvalidArgumentError(f"{path}: tensor {info['name']!r} is F4: its slices take ints, slices and "
                                       f"'...' (as safetensors'), not {ix!r}") from None
    if items.count(Ellipsis) > 1:
        raise IndexError("an index can only have a single ellipsis ('...')")  # torch's words
    if len(items) - items.count(Ellipsis) > len(shape):
        raise IndexError(f"too many indices for tensor of dimension {len(shape)}")
    if Ellipsis in items:
        e = items.index(Ellipsis)
        items[e:e + 1] = [slice(None)] * (len(shape) - len(items) + 1)
    items += [slice(None)] * (len(shape) - len(items))
    last, n = items[-1], shape[-1]
    if isinstance(last, slice):
        if last.step is not None and operator.index(last.step) <= 0:
            raise ValueError("step must be greater than zero")  # torch's words
        sel = range(n)[last]
        if len(sel) == 0:
            items[-1] = slice(0, 0)
        elif sel.step == 1 and sel.start % 2 == 0 and len(sel) % 2 == 0:
            items[-1] = slice(sel.start // 2, (sel.start + len(sel)) // 2)
        else:
            last = None
    elif -n <= last < n:
        last = None  # one value: half a byte
    else:
        raise IndexError(f"index {last} is out of bounds for dimension {len(shape) - 1} with size {n}")
    if last is None:
        raise InvalidArgumentError(f"{path}: tensor {info['name']!r} is F4 of shape {list(shape)}: index {index!r} "
                                   "splits bytes (two values each) in the last dimension: select an even-aligned, "
                                   "even-length run of it, as safetensors requires")
    return tuple(items)


def _decode(f, which, infos, device="cpu", threads=0, verify=True, into=None):
    """Decodes tensors `which` of File f straight into new tensors (or `into`), in calls of up
    to 256 MB (Ctrl-C is heard between them) in which chunks of all tensors run in parallel. On a CUDA device with a CUDA build, the chunks
    decode on the GPU into the tensors' device memory; otherwise on the CPU, then move."""
    dev = _device(device)
    if dev.type == "cuda" and into is None and _core.cuda_available():
        with torch.cuda.device(dev):  # staging, launch and stream on the tensors' own device
            outs = [_empty(t, device=dev, path=f.path) for t in infos]
            live = [(i, t) for i, t in zip(which, outs) if t.numel() > 0]
            if live:
                f.read_into_device([i for i, _ in live], [t.data_ptr() for _, t in live],
                                   [t.numel() * t.element_size() for _, t in live], torch.cuda.current_stream(dev).cuda_stream, verify)
            # Empty tensors have no chunks to launch, but their entries are checked (model,
            # checksum) as on the CPU: a damaged one must not load on the GPU alone.
            empty = [i for i, t in zip(which, outs) if t.numel() == 0]
            if empty:
                f._read_into_addresses(empty, [0] * len(empty), [0] * len(empty), threads, verify)
        return outs
    outs = list(into) if into is not None else [_empty(t, path=f.path) for t in infos]
    if into is not None and not all(t.device.type == "cpu" and t.is_contiguous() for t in outs):
        raise InvalidArgumentError("decoding needs contiguous CPU tensors")
    # By address: every tensor here is a contiguous CPU tensor this package allocated (or the
    # model parameter StreamingLoader checked), alive for the call; the core checks each size.
    # Empty tensors too: the core checks their model and checksum as it does for the others.
    live = list(zip(which, outs))
    sizes = [t.numel() * t.element_size() for _, t in live]
    for a, b in _batches(sizes):
        f._read_into_addresses([i for i, _ in live[a:b]], [t.data_ptr() for _, t in live[a:b]], sizes[a:b], threads, verify)
    if dev.type != "cpu":
        outs = [t.to(dev, non_blocking=False) for t in outs]
    return outs


def load_file(filename, device="cpu", threads=None, verify=True, *, backend="mmap"):
    """Load every tensor of a .bs file: a dict name -> tensor, like safetensors.torch.load_file
    (`backend`, "mmap" or "pread", is taken as safetensors takes it)."""
    _backend(backend)
    verify = _flag(verify, "verify")
    f = _core.File.open(_fsdecode(filename))
    infos = f.tensors()
    tensors = _decode(f, list(range(len(infos))), infos, device, _threads(threads), verify)
    return {t["name"]: x for t, x in zip(infos, tensors)}


def load(data, device="cpu", threads=None, verify=True):
    """Load every tensor of a .bs held in memory (bytes, as save returns them): a dict name ->
    tensor, like safetensors.torch.load."""
    verify = _flag(verify, "verify")
    f = _core.File.from_bytes(_bs_bytes(data), _MEMORY)
    infos = f.tensors()
    tensors = _decode(f, list(range(len(infos))), infos, device, _threads(threads), verify)
    return {t["name"]: x for t, x in zip(infos, tensors)}


def save(tensors, metadata=None, threads=None):
    """The .bs that save_file would write for tensors, as bytes (like safetensors.torch.save)."""
    names, shapes, bufs, _keep = _with_file(_MEMORY, _views, tensors)
    return _core.write_tensors_bytes(names, shapes, bufs, _header_metadata(metadata, _MEMORY), _threads(threads))


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
        shape = list(c.shape)
        if c.dtype == _F4:  # the header counts F4 values, two a byte along the last dimension
            if not shape:
                raise InvalidArgumentError(f"tensor {name!r} is a 0-d float4_e2m1fn_x2 tensor: its two values "
                                           "have no last dimension to be counted in, and safetensors refuses it too (save it as shape [1])")
            shape[-1] *= 2
        names.append((_text(name, "tensor name"), _NAMES[c.dtype]))
        shapes.append(shape)
        bufs.append(_byte_view(c))
    return names, shapes, bufs, keep


def save_file(tensors, filename, metadata=None, threads=None, overwrite=True):
    """Write tensors straight to a .bs file (no safetensors file in between)."""
    _write(tensors, _save_target(filename), metadata, threads, overwrite)


def _write(tensors, path, metadata, threads, overwrite):
    names, shapes, bufs, _keep = _with_file(path, _views, tensors)
    _write_file(path, names, shapes, bufs, metadata, threads, overwrite, 3)



def _shared_groups(state_dict):
    """Names whose tensors share memory (the same storage on the same device), sorted."""
    groups = {}
    for name, t in state_dict.items():
        if t.device.type == "meta":
            continue
        storage = t.untyped_storage()
        if storage.data_ptr() == 0 or storage.nbytes() == 0:
            continue
        groups.setdefault((t.device, storage.data_ptr(), storage.nbytes()), []).append(name)
    return [sorted(g) for g in groups.values() if len(g) > 1]


def _covers_its_storage(t):
    storage = t.untyped_storage()
    return t.data_ptr() == storage.data_ptr() and t.numel() * t.element_size() == storage.nbytes()


def _duplicate_names(state_dict, preferred=()):
    """For each group of names sharing memory, the name kept (one whose tensor covers the whole
    storage: the first such among `preferred`, else the first in order) -> the names dropped;
    the choice safetensors' save_model and load_model make, so that files load either way."""
    preferred = set(preferred)
    drops = {}
    for group in _shared_groups(state_dict):
        whole = [n for n in group if _covers_its_storage(state_dict[n])]
        if not whole:
            raise InvalidArgumentError(f"the model's tensors {group} share memory and none of them covers all of it, "
                                       "so no one name stands for the others")
        keep = min(set(whole) & preferred or whole)
        drops[keep] = [n for n in group if n != keep]
    return drops


def save_model(model, filename, metadata=None, force_contiguous=False, threads=None, overwrite=True):
    """Save a torch module's state dict as safetensors.torch.save_model does: tensors that share
    memory (tied weights) are stored once, each dropped name recorded in the metadata as
    name -> kept name (keys the caller gave are left as given). force_contiguous is accepted for
    compatibility: every tensor is stored contiguous."""
    path = _save_target(filename)
    if metadata is not None and not isinstance(metadata, dict):
        raise InvalidArgumentError(f"{path}: metadata must be a dict of str to str, not {type(metadata).__name__}")
    state = model.state_dict()
    metadata = dict(metadata) if metadata is not None else None  # the caller's dict is left as it is
    for keep, dropped in _with_file(path, _duplicate_names, state).items():
        for name in dropped:
            if metadata is None:
                metadata = {}
            metadata.setdefault(name, keep)
            del state[name]
    _write(state, path, metadata, threads, overwrite)


def load_model(model, filename, strict=True, device="cpu", threads=None, verify=True, *, backend="mmap"):
    """Load a file written by save_model (or save_file) into a module, as
    safetensors.torch.load_model does: names the file leaves out because they share memory with a
    kept one are not missing. Returns (missing, unexpected); with strict, either raises."""
    _backend(backend)
    strict = _flag(strict, "strict")
    path = _fsdecode(filename)
    names = [t["name"] for t in _core.File.open(path).tensors()]  # before anything is decoded
    drops = _with_file(path, _duplicate_names, model.state_dict(), names)
    state = load_file(path, device=device, threads=threads, verify=verify, backend=backend)
    missing, unexpected = model.load_state_dict(state, strict=False)
    missing = set(missing)
    for dropped in drops.values():
        for name in dropped:
            if name in missing:
                missing.remove(name)
            elif name not in state:  # safetensors' rule; a name the file holds too (save_file of a tied model) loaded fine
                unexpected.append(name)
    if strict and (missing or unexpected):
        parts = [f"Error(s) in loading state_dict for {type(model).__name__}:"]
        if missing:
            parts.append("Missing key(s) in state_dict: " + ", ".join(f'"{k}"' for k in sorted(missing)))
        if unexpected:
            parts.append("Unexpected key(s) in state_dict: " + ", ".join(f'"{k}"' for k in sorted(unexpected)))
        raise RuntimeError("\n    ".join(parts))
    return missing, unexpected


def dtype_name(dtype):
    return _NAMES[dtype]


__all__ = ["load_file", "save_file", "load", "save", "load_model", "save_model"]
