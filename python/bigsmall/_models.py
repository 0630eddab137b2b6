"""Models from compressed directories: from_pretrained, save_pretrained and StreamingLoader.

Tensors are decoded group by group (a transformer block at a time) straight into the memory of
the model's own parameters; nothing decompressed is written to disk.
"""
from __future__ import annotations

import copy
import json
import os
import re

import torch

from . import _core, _progress, _threads, InvalidArgumentError, NotFoundError
from . import torch as bt

_LAYER = re.compile(r"^(.*?\.\d+)\.")


def _resolve(path_or_repo_id):
    p = os.fsdecode(path_or_repo_id)
    if os.path.isdir(p):
        return p
    if os.path.exists(p):
        raise InvalidArgumentError(f"{p}: expected a compressed model directory")
    # A Hub repo id is "name" or "owner/name"; anything else can only be a missing local path,
    # which huggingface_hub would report as a malformed repo id.
    if os.path.isabs(p) or p.startswith((".", "~")) or p.count("/") > 1 or (os.sep != "/" and os.sep in p):
        raise NotFoundError(f"{p}: no such directory")
    try:
        from huggingface_hub import snapshot_download
    except ImportError as e:
        raise NotFoundError(f"{p}: no such directory, and huggingface_hub is not installed") from e
    try:
        return snapshot_download(p)
    except Exception as e:  # a name that is neither a directory here nor a Hub repo id
        if type(e).__name__ == "HFValidationError":
            raise NotFoundError(f"{p}: no such directory (nor a Hub repo id)") from e
        raise


def _shards(d):
    if os.path.exists(os.path.join(d, "bigsmall.index.json")):
        return _core.model_dir_files(d)  # the core checks that no name leaves the directory
    shards = sorted(os.path.join(d, n) for n in os.listdir(d) if n.endswith(".bs"))
    if not shards:
        raise NotFoundError(f"{d}: no .bs files (not a bigsmall model directory)")
    return shards


def _group_key(name):
    """Tensors of one transformer block share a key ('encoder.layer.3'); others group by module."""
    m = _LAYER.match(name)
    return m.group(1) if m else name.rsplit(".", 1)[0]


def _no_init():
    try:
        from transformers.initialization import no_init_weights
    except ImportError:  # transformers < 5
        from transformers.modeling_utils import no_init_weights
    return no_init_weights()


class StreamingLoader:
    """Loads a compressed model one group of tensors at a time.

    >>> model = StreamingLoader("path/to/model.bs").load_model(BertModel)
    """

    def __init__(self, path_or_repo_id, threads=None, verify=True):
        self.path = _resolve(path_or_repo_id)
        self.threads = _threads(threads)
        self.verify = verify
        self._files = [_core.File.open(s) for s in _shards(self.path)]

    def _groups(self):
        """(file, [(index, info), ...]) per group, in index order."""
        for f in self._files:
            infos = f.tensors()
            group, key = [], None
            for i, t in enumerate(infos):
                k = _group_key(t["name"])
                if group and k != key:
                    yield f, group
                    group = []
                key = k
                group.append((i, t))
            if group:
                yield f, group

    def iter_tensors(self, device="cpu"):
        """Yields (name, tensor) for every tensor, decoding one group at a time."""
        for f, group in self._groups():
            tensors = bt._decode(f, [i for i, _ in group], [t for _, t in group], device, self.threads, self.verify)
            for (_, t), x in zip(group, tensors):
                yield t["name"], x

    def load_model(self, model_class=None, device="cpu", dtype=None, progress=True, **config_kwargs):
        from transformers import AutoConfig, AutoModel

        dev = bt._device(device)  # before any work: a device this machine lacks fails now
        config = AutoConfig.from_pretrained(self.path, **config_kwargs)
        cls = model_class or self._architecture(config) or AutoModel
        # Parameters are allocated but not initialised: their pages are only touched when the
        # decoder writes them, so host memory grows with the tensors actually loaded.
        dtype = _dtype_arg(dtype)
        if dtype is None:
            # As transformers' dtype="auto" (its default since v5): the dtype config.json names,
            # else the checkpoint's first float tensor's. Files list 4-byte dtypes before 2-byte
            # ones, so one float32 norm would otherwise make a bfloat16 model float32.
            dtype = _config_dtype(config) or self._checkpoint_float_dtype()
        # Built directly in the target dtype: a later model.to(dtype) would write every page.
        old_default = torch.get_default_dtype()
        try:
            if dtype is not None and dtype.is_floating_point:
                torch.set_default_dtype(dtype)
            with _no_init():
                model = cls.from_config(config) if hasattr(cls, "from_config") and cls.__name__.startswith("Auto") else cls(config)
        finally:
            torch.set_default_dtype(old_default)
        if dtype is not None and any(p.is_floating_point() and p.dtype != dtype for p in model.parameters()):
            model = model.to(dtype)
        targets = model.state_dict(keep_vars=True)
        prefix = getattr(model, "base_model_prefix", "")
        total = sum(t["nbytes"] for f in self._files for t in f.tensors())
        cb, bar = _progress(progress, "loading")
        done = 0
        loaded = set()
        # On a GPU with a CUDA build, chunks decode on the device straight into the tensors the
        # model keeps; host memory holds only the compressed bytes of one group at a time.
        gpu = dev.type == "cuda" and _core.cuda_available()
        try:
            for f, group in self._groups():
                if gpu:
                    sel = [(i, t, self._target_name(t["name"], targets, prefix)) for i, t in group]
                    sel = [(i, t, n) for i, t, n in sel if n is not None]
                    xs = bt._decode(f, [i for i, _, _ in sel], [t for _, t, _ in sel], dev, self.threads, self.verify)
                    with torch.no_grad():
                        for (_, t, n), x in zip(sel, xs):
                            p = targets[n]
                            if list(p.shape) != list(t["shape"]):
                                raise InvalidArgumentError(f"{t['name']}: shape {t['shape']} in the checkpoint, {list(p.shape)} in the model")
                            p.data = x if x.dtype == p.dtype else x.to(p.dtype)
                            loaded.add(n)
                    done += sum(t["nbytes"] for _, t in group)
                    if cb:
                        cb(done, total)
                    continue
                direct_idx, direct_out, other = [], [], []
                for i, t in group:
                    name = self._target_name(t["name"], targets, prefix)
                    if name is None:
                        continue  # checkpoint tensor the model does not use
                    p = targets[name]
                    if list(p.shape) != list(t["shape"]):
                        raise InvalidArgumentError(f"{t['name']}: shape {t['shape']} in the checkpoint, {list(p.shape)} in the model")
                    if p.device.type == "cpu" and p.dtype == bt._DTYPES.get(t["dtype"]) and p.is_contiguous():
                        direct_idx.append(i)
                        direct_out.append(p.data)  # decode straight into the parameter
                    else:
                        other.append((i, t, p))
                    loaded.add(name)
                if direct_idx:
                    bt._decode(f, direct_idx, [None] * len(direct_idx), "cpu", self.threads, self.verify, into=direct_out)
                if other:
                    xs = bt._decode(f, [i for i, _, _ in other], [t for _, t, _ in other], "cpu", self.threads, self.verify)
                    with torch.no_grad():
                        for (_, _, p), x in zip(other, xs):
                            p.data.copy_(x)
                if dev.type != "cpu":
                    with torch.no_grad():
                        for i, t in group:
                            name = self._target_name(t["name"], targets, prefix)
                            if name is not None:
                                targets[name].data = targets[name].data.to(dev)
                done += sum(t["nbytes"] for _, t in group)
                if cb:
                    cb(done, total)
        finally:
            if bar is not None:
                bar.close()
        if hasattr(model, "tie_weights"):
            model.tie_weights()
        missing = [n for n in targets if n not in loaded and not self._tied(model, n)]
        if missing:
            raise NotFoundError(f"{self.path}: checkpoint lacks {len(missing)} model tensors, e.g. {missing[:3]}")
        if dev.type != "cpu":
            model.to(dev)  # the remaining small buffers
        return model.eval()

    @staticmethod
    def _architecture(config):
        """The class named in config.architectures (what the checkpoint was saved from), if any."""
        import transformers

        for name in getattr(config, "architectures", None) or []:
            cls = getattr(transformers, name, None)
            if cls is not None:
                return cls
        return None

    def _checkpoint_float_dtype(self):
        for f in self._files:
            for t in f.tensors():
                dt = bt._DTYPES.get(t["dtype"])
                if dt is not None and dt.is_floating_point and t["nbytes"] > 0:
                    return dt
        return None

    @staticmethod
    def _target_name(name, targets, prefix):
        if name in targets:
            return name
        if prefix and f"{prefix}.{name}" in targets:
            return f"{prefix}.{name}"
        if prefix and name.startswith(prefix + ".") and name[len(prefix) + 1:] in targets:
            return name[len(prefix) + 1:]
        return None

    @staticmethod
    def _tied(model, name):
        keys = getattr(model, "_tied_weights_keys", None) or []
        if isinstance(keys, dict):
            keys = list(keys)
        return any(re.fullmatch(k.replace(".", r"\."), name) or k == name for k in keys)


def _dtype_arg(d):
    if d is None or (isinstance(d, str) and d == "auto"):
        return None
    dt = getattr(torch, d, None) if isinstance(d, str) else d
    if not isinstance(dt, torch.dtype):
        raise InvalidArgumentError(f"unsupported dtype {d!r}")
    return dt


def _config_dtype(config):
    """The floating-point dtype a transformers config names (dtype, or torch_dtype before v4.56),
    read from its dict: the torch_dtype attribute logs a deprecation warning in transformers 5."""
    try:
        d = config.to_dict()
    except Exception:  # a config without to_dict: no dtype to follow
        return None
    for key in ("dtype", "torch_dtype"):
        v = d.get(key)
        if isinstance(v, str):
            v = getattr(torch, v, None)
        if isinstance(v, torch.dtype) and v.is_floating_point:
            return v
    return None


def from_pretrained(path_or_repo_id, model_class=None, device_map=None, torch_dtype=None, threads=None,
                    progress=True, **kwargs):
    """A transformers model built from a compressed directory (or Hub repo id).

    device_map: None/"cpu", a device ("cuda", "cuda:1", torch.device), {"": device} or "auto"
    (the GPU when there is one). torch_dtype / dtype: None or "auto" (the checkpoint's), a torch.dtype or its name.
    """
    dtype = _dtype_arg(kwargs.pop("dtype", torch_dtype))
    if device_map == "auto":
        device_map = "cuda" if torch.cuda.is_available() else "cpu"
    if isinstance(device_map, dict):
        # {"": device} (the whole model on one device, as PEFT and accelerate scripts write it)
        # is that device; maps that split a model across devices are not supported.
        if set(device_map) != {""}:
            raise InvalidArgumentError("device_map dictionaries that split the model are not supported; pass one device")
        device_map = device_map[""]
        if isinstance(device_map, int):
            device_map = f"cuda:{device_map}"
    loader = StreamingLoader(path_or_repo_id, threads=threads)
    return loader.load_model(model_class, device=device_map or "cpu", dtype=dtype, progress=progress, **kwargs)


def save_pretrained(model_or_state_dict, out_dir, threads=None, overwrite=True):
    """Writes a model (config included) or a state dict straight to a compressed directory."""
    out_dir = os.fsdecode(out_dir)
    os.makedirs(out_dir, exist_ok=True)
    if isinstance(model_or_state_dict, dict):
        state, model = model_or_state_dict, None
    else:
        # torch.compile's wrapper: its state dict prefixes every name with "_orig_mod." and its
        # class is OptimizedModule; save the model inside, as transformers does.
        model = getattr(model_or_state_dict, "_orig_mod", model_or_state_dict)
        state = model.state_dict()
        # As transformers' save_pretrained does, the config names the class that saved it (so
        # that from_pretrained without a class builds that one: GPT2LMHeadModel, not GPT2Model)
        # and its dtype; on a copy, so the caller's model is not changed.
        config = copy.deepcopy(model.config)
        if getattr(model, "dtype", None) is not None:
            config.dtype = str(model.dtype).split(".")[1]
        config.architectures = [type(model).__name__]
        config.save_pretrained(out_dir)
        gen = getattr(model, "generation_config", None)
        if gen is not None and getattr(model, "can_generate", lambda: False)():
            gen.save_pretrained(out_dir)
    # Tied weights share storage: keep the first name, as transformers does.
    seen, tensors = set(), {}
    for name, t in state.items():
        key = ((t.untyped_storage().data_ptr(), t.storage_offset(), tuple(t.shape), tuple(t.stride()), t.dtype)
               if t.numel() else None)
        if key is not None and key in seen:
            continue
        seen.add(key)
        tensors[name] = t
    bt.save_file(tensors, os.path.join(out_dir, "model.bs"), metadata={"format": "pt"}, threads=threads,
                 overwrite=overwrite)
    index = {"format": "bigsmall", "format_version": _core.FORMAT_VERSION[0],
             "files": [{"source": "model.safetensors", "bs": "model.bs"}]}
    with open(os.path.join(out_dir, "bigsmall.index.json"), "w") as f:
        json.dump(index, f, indent=2)
    return out_dir
