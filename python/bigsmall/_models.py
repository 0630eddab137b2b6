"""Models from compressed directories: from_pretrained, save_pretrained and StreamingLoader.

Tensors are decoded group by group (a transformer block at a time) straight into the memory of
the model's own parameters; nothing decompressed is written to disk.
"""
from __future__ import annotations

import contextlib
import copy
import errno
import fcntl
import functools
import itertools
import json
import os
import posixpath
import re
import shutil
import sys
import threading
import warnings

import torch

from . import _batches, _core, _flag, _fsdecode, _missing, _os_error, _progress, _threads, _warn_removed, InvalidArgumentError
from . import torch as bt


_PACKAGE_DIR = os.path.dirname(os.path.abspath(__file__))


def _user_stacklevel():
    """warnings.warn's stacklevel that names the caller's line: the first frame outside this
    package, however many of its own frames (decorators, helpers) lie between."""
    frame, level = sys._getframe(1), 1  # the frame that warns is level 1
    while frame is not None and os.path.dirname(os.path.abspath(frame.f_code.co_filename)) == _PACKAGE_DIR:
        frame, level = frame.f_back, level + 1
    return level


def _outside_inference_mode(load):
    """A model loaded inside torch.inference_mode() gets ordinary tensors: inference tensors
    could not be trained, nor updated in place by load_state_dict, once the block ends.
    (transformers 5's from_pretrained gives its new heads and buffers as inference tensors
    there.)"""
    @functools.wraps(load)
    def wrapper(*args, **kwargs):
        with torch.inference_mode(False):
            return load(*args, **kwargs)
    return wrapper

_LAYER = re.compile(r"^(.*?\.\d+)\.")


# Keyword arguments of transformers' from_pretrained that choose what to download: they go to
# huggingface_hub's snapshot_download as well as to AutoConfig.
_HUB_KWARGS = ("revision", "token", "cache_dir", "local_files_only", "force_download", "proxies")
# Weights in formats other than .bs, which a Hub snapshot of a compressed model does not need.
_OTHER_WEIGHTS = ["*.safetensors", "*.bin", "*.pt", "*.pth", "*.ckpt", "*.h5", "*.msgpack", "*.onnx", "*.gguf",
                  "*.tflite", "*.ot", "*.pb", "*.mlmodel"]


def _resolve(path_or_repo_id, hub_kwargs=None):
    p = _fsdecode(path_or_repo_id)
    if os.path.isdir(p):
        return p
    if os.path.exists(p):
        raise InvalidArgumentError(f"{p}: expected a compressed model directory")
    # A Hub repo id is "name" or "owner/name"; anything else can only be a missing local path,
    # which huggingface_hub would report as a malformed repo id. A name ending in .bs is what
    # bigsmall names its outputs: a local path mistyped, not a repo to download.
    if (os.path.isabs(p) or p.startswith((".", "~")) or p.count("/") > 1 or (os.sep != "/" and os.sep in p)
            or p.endswith(".bs")):
        raise _missing(f"{p}: no such directory")
    try:
        from huggingface_hub import snapshot_download
    except ImportError as e:
        raise _missing(f"{p}: no such directory, and huggingface_hub is not installed") from e
    try:
        return snapshot_download(p, ignore_patterns=_OTHER_WEIGHTS, **(hub_kwargs or {}))
    except Exception as e:  # a name that is neither a directory here nor a Hub repo id
        if type(e).__name__ == "HFValidationError":
            raise _missing(f"{p}: no such directory (nor a Hub repo id)") from e
        raise


def _subfolder(root, subfolder):
    """The model directory inside a repository, as transformers' subfolder= names it."""
    if not subfolder:
        return root
    sub = _fsdecode(subfolder)
    if os.path.isabs(sub) or ".." in sub.replace(os.sep, "/").split("/"):
        raise InvalidArgumentError(f"subfolder {sub!r} must be a relative path inside {root}")
    d = os.path.join(root, sub)
    if not os.path.isdir(d):
        raise _missing(f"{d}: no such directory (subfolder {sub!r} of {root})")
    return d


def _variant_name(name, variant):
    """transformers' name of a variant's file: model.fp16.safetensors,
    model.safetensors.index.fp16.json."""
    if not variant:
        return name
    head, ext = name.rsplit(".", 1)
    return f"{head}.{variant}.{ext}"


def _shards(d, variant=None):
    """The .bs files holding the model's weights, chosen as transformers chooses among the
    .safetensors files: model.safetensors, else the shards model.safetensors.index.json names,
    else every .safetensors at the top (with a variant, model.VARIANT.safetensors, else the shards
    model.safetensors.index.VARIANT.json names, else none). Files in subdirectories (an older
    checkpoint kept in original/, a checkpoint-500/) are not the model's weights."""
    if variant is not None and (not isinstance(variant, str) or not variant or "/" in variant or variant.startswith(".")):
        raise InvalidArgumentError(f"variant must be a name such as 'fp16', not {variant!r}")
    if os.path.exists(os.path.join(d, "bigsmall.index.json")):
        files = _core.model_dir_files(d)  # the core checks that no name leaves the directory
    else:
        files = sorted(os.path.join(d, n) for n in os.listdir(d) if n.endswith(".bs"))
    if not files:
        raise _missing(f"{d}: no .bs files (not a bigsmall model directory)")
    source = {os.path.relpath(f, d).replace(os.sep, "/")[:-3] + ".safetensors": f for f in files}
    single = _variant_name("model.safetensors", variant)
    if single in source:  # transformers, too, looks for it before a shard index
        return [source[single]]
    index = os.path.join(d, _variant_name("model.safetensors.index.json", variant))
    if os.path.exists(index):
        try:
            with open(index, encoding="utf-8") as fh:
                names = sorted(set(json.load(fh)["weight_map"].values()))
        except (ValueError, KeyError, TypeError, AttributeError) as e:
            raise InvalidArgumentError(f"{index}: not a safetensors shard index ({e})") from None
        lacking = [n for n in names if n not in source]
        if lacking:
            raise _missing(f"{index} names {len(lacking)} shards this directory lacks, e.g. {lacking[0]!r}")
        return [source[n] for n in names]
    if variant:
        raise _missing(f"{d}: no {single[:-len('.safetensors')]}.bs nor {os.path.basename(index)} (variant {variant!r})")
    top = [f for n, f in source.items() if "/" not in n]
    if not top:
        raise _missing(f"{d}: no .bs files at the top of the directory (not a bigsmall model directory)")
    return top


def _warn_if_mixed(d):
    """A directory holding the safetensors weights transformers would load beside .bs files
    (without a bigsmall index, which makes it a compressed directory): say which this load takes,
    in case the two are different models. For the caller of from_pretrained or StreamingLoader."""
    if os.path.exists(os.path.join(d, "bigsmall.index.json")):
        return
    names = set(os.listdir(d))
    if not any(n.endswith(".bs") for n in names):
        return
    weights = "model.safetensors" in names
    if not weights and "model.safetensors.index.json" in names:
        # The shard index alone is no weights: shards compressed one by one keep it, and bigsmall
        # needs it to find their .bs files. Weights are there when a shard it names is.
        try:
            with open(os.path.join(d, "model.safetensors.index.json"), encoding="utf-8") as fh:
                shards = set(json.load(fh)["weight_map"].values())
            weights = any(os.path.isfile(os.path.join(d, n)) for n in shards if isinstance(n, str))
        except (OSError, ValueError, KeyError, TypeError, AttributeError):
            weights = False  # _shards names a broken index
    if weights:
        warnings.warn(f"{d} holds the safetensors weights transformers would load as well as .bs files; "
                      "bigsmall loads the .bs files", stacklevel=_user_stacklevel())


def _group_key(name):
    """Tensors of one transformer block share a key ('encoder.layer.3'); others group by module."""
    m = _LAYER.match(name)
    return m.group(1) if m else name.rsplit(".", 1)[0]


def _shape_or_none(info):
    """The tensor's shape as torch holds it (F4's last dimension in bytes), or None where torch
    has no form for it (then no model tensor matches it)."""
    try:
        return bt._torch_shape(info)
    except InvalidArgumentError:
        return None


def _check_shape(target, info, f):
    """Refuses a checkpoint tensor whose shape, as torch holds it, differs from its place in the model."""
    want = bt._torch_shape(info, f.path)
    if list(target.shape) != want:
        shape = info["shape"] if want == list(info["shape"]) else f"{info['shape']} ({want} as torch holds {info['dtype']})"
        raise InvalidArgumentError(f"{f.path}: {info['name']}: shape {shape} in the checkpoint, {list(target.shape)} in the model")


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

    def __init__(self, path_or_repo_id, threads=None, verify=True, subfolder=None, variant=None, **hub_kwargs):
        unknown = set(hub_kwargs) - set(_HUB_KWARGS)
        if unknown:
            raise TypeError(f"StreamingLoader got unexpected keyword arguments {sorted(unknown)}")
        threads, verify = _threads(threads), _flag(verify, "verify")  # refused before any work
        root = _resolve(path_or_repo_id, hub_kwargs)
        self._open(_subfolder(root, subfolder), threads, verify, variant)
        _check_copied(self.path, verify)
        _warn_if_mixed(self.path)
        # What transformers records as the model's name_or_path: the argument as given (a repo
        # id stays a repo id), which tokenizers, pipelines and PEFT read back.
        self.name_or_path = _name_or_path(path_or_repo_id)

    @classmethod
    def _of(cls, path, threads, verify, name_or_path, variant=None):
        """from_pretrained's loader, which has given its caller any warning already."""
        loader = cls.__new__(cls)
        loader._open(path, threads, verify, variant)
        loader.name_or_path = name_or_path
        return loader

    def _open(self, path, threads, verify, variant=None):
        self.threads = _threads(threads)
        self.verify = _flag(verify, "verify")
        self.path = path
        self._files = [_core.File.open(s) for s in _shards(self.path, variant)]

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
        """Yields (name, tensor) for every tensor, decoding one group at a time, in storage order
        (shard by shard, each in the order of its data), not sorted by name as safe_open's keys()."""
        for f, group in self._groups():
            tensors = bt._decode(f, [i for i, _ in group], [t for _, t in group], device, self.threads, self.verify)
            for (_, t), x in zip(group, tensors):
                yield t["name"], x

    @_outside_inference_mode
    def load_model(self, model_class=None, device="cpu", dtype=None, progress=True, **kwargs):
        """model_class: a transformers model class (default: config.architectures, else AutoModel)
        or a model already built (on the meta device too), which is loaded in place. kwargs go
        as in transformers: config=..., else config attributes to the config and the rest to the
        model's constructor. Checkpoint tensors the model lacks, and model tensors the checkpoint
        lacks (initialised as transformers does), are reported as warnings; with
        output_loading_info=True they also come back as transformers gives them:
        (model, {"missing_keys", "unexpected_keys", "mismatched_keys", "error_msgs"})."""
        info_wanted = _flag(kwargs.pop("output_loading_info", False), "output_loading_info")
        if "torch_dtype" in kwargs:  # transformers' older name of dtype
            torch_dtype = kwargs.pop("torch_dtype")
            dtype = torch_dtype if dtype is None else dtype
        if "device_map" in kwargs:
            raise InvalidArgumentError("device_map= is from_pretrained's; load_model takes device=")
        dev = bt._device(device)  # before any work: a device this machine lacks fails now
        from_meta = isinstance(model_class, torch.nn.Module) and any(
            t.is_meta for t in [*model_class.parameters(), *model_class.buffers()])
        model = self._build(model_class, _dtype_arg(dtype), kwargs)
        targets = model.state_dict(keep_vars=True)
        place, shown = self._placements(model, targets)
        self._refuse_if_nothing_fits(model, targets, place)
        tied = getattr(model, "all_tied_weights_keys", None)
        if isinstance(tied, dict):  # a pair the checkpoint holds twice: decoded into one tensor, one copy would be lost
            _untie_both_loaded(model, tied, set(place.values()) - {None})
            targets = model.state_dict(keep_vars=True)
        total = sum(t["nbytes"] for f in self._files for t in f.tensors())
        cb, bar = _progress(progress, "loading")
        if cb:
            cb(0, total)
        done = 0
        loaded, unexpected = set(), []
        # A name in two shards is read from the last, whose copy transformers' merged state dict
        # keeps; the earlier copy is not decoded (nor checked against the model, nor reported).
        last = {t["name"]: f for f in self._files for t in f.tensors()}
        # On a GPU with a CUDA build, chunks decode on the device straight into the tensors the
        # model keeps; host memory holds only the compressed bytes of one group at a time.
        gpu = dev.type == "cuda" and _core.cuda_available()
        try:
            for f, whole in self._groups():
                group = [(i, t) for i, t in whole if last[t["name"]] is f]
                if gpu:
                    sel = [(i, t, place[t["name"]]) for i, t in group]
                    unexpected += [shown[t["name"]] for _, t, n in sel if n is None and shown[t["name"]] is not None]
                    sel = [(i, t, n) for i, t, n in sel if n is not None]
                    xs = bt._decode(f, [i for i, _, _ in sel], [t for _, t, _ in sel], dev, self.threads, self.verify)
                    with torch.no_grad():
                        for (_, t, n), x in zip(sel, xs):
                            p = targets[n]
                            _check_shape(p, t, f)
                            p.data = x if x.dtype == p.dtype else x.to(p.dtype)
                            loaded.add(n)
                    done += sum(t["nbytes"] for _, t in whole)
                    if cb:
                        cb(done, total)
                    continue
                direct_idx, direct_out, other = [], [], []
                for i, t in group:
                    name = place[t["name"]]
                    if name is None:
                        if shown[t["name"]] is not None:  # None: another name for a tensor loaded already
                            unexpected.append(shown[t["name"]])  # checkpoint tensor the model does not use
                        continue
                    p = targets[name]
                    _check_shape(p, t, f)
                    if p.device.type == "cpu" and p.dtype == bt._torch_dtype(t, f.path) and p.is_contiguous():
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
                            name = place[t["name"]]
                            if name is not None:
                                targets[name].data = targets[name].data.to(dev)
                done += sum(t["nbytes"] for _, t in whole)
                if cb:
                    cb(done, total)
        finally:
            if bar is not None:
                bar.close()
        # A model the caller built keeps its values where the checkpoint has none; one built here
        # (also by from_pretrained) has no values yet.
        built_here = model.__dict__.pop("_bigsmall_uninitialised", False)
        prebuilt = isinstance(model_class, torch.nn.Module) and not from_meta and not built_here
        missing, unexpected = self._finish(model, targets, loaded, unexpected, from_meta, prebuilt)
        if dev.type != "cpu":
            model.to(dev)  # the remaining small buffers
        if info_wanted:
            # transformers' shape: sets of names, mismatched pairs (bigsmall refuses a mismatched
            # shape instead of reinitialising it) and messages (none: problems raise).
            return model.eval(), {"missing_keys": set(missing), "unexpected_keys": set(unexpected),
                                  "mismatched_keys": set(), "error_msgs": []}
        return model.eval()

    def _build(self, model_class, dtype, kwargs):
        """The model to load into, in its final dtype, its tensors allocated but not initialised:
        their pages are only touched when the decoder writes them, so host memory grows with the
        tensors actually loaded."""
        if isinstance(model_class, torch.nn.Module):
            if kwargs:
                raise InvalidArgumentError(f"arguments {sorted(kwargs)} cannot apply to a model already built")
            model = model_class
            if any(t.is_meta for t in model.state_dict().values()):
                model = model.to_empty(device="cpu")  # built on the meta device: give it memory
            if dtype is not None and dtype.is_floating_point:
                # Rotary frequencies (inv_freq, original_inv_freq, Gemma 3's
                # sliding_attention_inv_freq ...), which transformers computes in float32 whatever the dtype
                # a class is built in, keep their dtype: cast, they change the outputs. Other
                # buffers are cast with the weights, as a class built in that dtype makes them
                # (a position table left float32 would not run against bfloat16 weights).
                rotary = [(m, n, b) for m in model.modules() for n, b in m._buffers.items()
                          if b is not None and n.endswith("inv_freq") and n in m._non_persistent_buffers_set]
                model = model.to(dtype)
                for m, n, b in rotary:
                    m._buffers[n] = b
                _keep_in_fp32(model, dtype)  # as for a class: T5's wo stays float32 in float16
                if getattr(model, "config", None) is not None:
                    model.config.dtype = dtype
            return model
        if model_class is not None and not isinstance(model_class, type):
            raise InvalidArgumentError(f"model_class must be a model class or a model, not {model_class!r}")
        _check_model_class(model_class)
        for k in _UNSUPPORTED_KWARGS:
            if k in kwargs:
                raise InvalidArgumentError(f"{k}= is not supported by bigsmall's model loading")
        for k in ("low_cpu_mem_usage", "use_safetensors"):  # what bigsmall always does
            kwargs.pop(k, None)
        if kwargs.get("trust_remote_code"):
            raise InvalidArgumentError("trust_remote_code=True is not supported by StreamingLoader.load_model "
                                       "(a model whose code comes with the checkpoint): build the model and pass it in")
        kwargs.pop("trust_remote_code", None)  # False or None: nothing to trust
        from transformers import AutoModel

        config, model_kwargs = _config_for(self.path, model_class, kwargs)
        config.name_or_path = self.name_or_path  # as transformers' from_pretrained sets it
        cls = model_class or self._architecture(config) or AutoModel
        if dtype is None:
            # As transformers' dtype="auto" (its default since v5): the dtype config.json names,
            # else that of the checkpoint's first float tensor in name order. (Files list 4-byte
            # dtypes before 2-byte ones: in data order one float32 norm would make a bfloat16
            # model float32.)
            dtype = _config_dtype(config) or self._checkpoint_float_dtype()
        # Built directly in the target dtype: a later model.to(dtype) would write every page.
        old_default = torch.get_default_dtype()
        try:
            if dtype is not None and dtype.is_floating_point:
                torch.set_default_dtype(dtype)
            with _no_init():
                if hasattr(cls, "from_config") and cls.__name__.startswith("Auto"):
                    model = cls.from_config(config, **model_kwargs)
                else:
                    model = cls(config, **model_kwargs)
        finally:
            torch.set_default_dtype(old_default)
        # Its memory holds whatever it held: a tensor the checkpoint lacks must be initialised,
        # also when from_pretrained hands this model to load_model as one already built.
        model._bigsmall_uninitialised = True
        # Tensors a class makes float32 on purpose (DeepSeek-V3's router gate, rotary inv_freq) stay
        # float32, as transformers leaves them: no model.to(dtype) here.
        _keep_in_fp32(model, dtype)
        if dtype is not None and getattr(model, "config", None) is not None:
            model.config.dtype = dtype  # as transformers records the dtype it loaded in
        return model

    def _finish(self, model, targets, loaded, unexpected, from_meta, prebuilt=False):
        """Ties weights, initialises what the checkpoint lacks as transformers does, warns about
        both kinds of mismatch, and takes the generation config saved beside the weights. A
        model handed in already built with memory (prebuilt) keeps the values it has where the
        checkpoint has none, as load_state_dict(strict=False) leaves them."""
        for n in loaded:
            targets[n]._is_hf_initialized = True  # transformers' initialisation skips these
        _tie(model, [n for n in targets if n not in loaded])
        after = model.state_dict(keep_vars=True)
        # Tied to a loaded tensor is loaded: decided by the tensors themselves, not by the class's
        # _tied_weights_keys, which a config (tie_word_embeddings=False) can overrule.
        loaded_ptrs = {after[n].data_ptr() for n in loaded if n in after and after[n].numel()}
        missing = [n for n, t in after.items() if n not in loaded and not (t.numel() and t.data_ptr() in loaded_ptrs)]
        name = type(model).__name__
        if not hasattr(model, "initialize_weights") and not hasattr(model, "_init_weights"):
            # A plain torch module has no initialisation to apply: built on the meta device, a
            # tensor left unloaded would hold whatever the memory held (built on the CPU, it keeps
            # the values its constructor gave it, as with load_state_dict(strict=False)).
            unset = missing + [n for n, _ in model.named_buffers() if n not in after] if from_meta else []
            if unset:
                raise InvalidArgumentError(
                    f"{self.path}: {type(model).__name__} is not a transformers model, and the checkpoint lacks "
                    f"{len(unset)} of its tensors, which nothing can initialise: {unset[:10]}"
                    f"{' ...' if len(unset) > 10 else ''}")
        elif (missing and not prebuilt) or from_meta:  # to_empty() left even the computed buffers (inv_freq) as garbage
            _initialize(model, after, missing)
        elif missing:
            _tie(model, missing)
        missing, unexpected = _reported(model, missing, unexpected)
        if missing:
            how = ("newly initialised (train before use)" if not prebuilt and (hasattr(model, "initialize_weights") or
                   hasattr(model, "_init_weights")) else "left as the model was built")
            warnings.warn(f"{name} tensors not in the checkpoint at {self.path}, {how}: "
                          f"{missing[:10]}{' ...' if len(missing) > 10 else ''}", stacklevel=_user_stacklevel())
        if unexpected:
            some, are = ("1 tensor", "is") if len(unexpected) == 1 else (f"{len(unexpected)} tensors", "are")
            warnings.warn(f"{some} of the checkpoint at {self.path} {are} not used by {name}: "
                          f"{unexpected[:10]}{' ...' if len(unexpected) > 10 else ''}", stacklevel=_user_stacklevel())
        gen_path = os.path.join(self.path, "generation_config.json")
        if os.path.exists(gen_path) and getattr(model, "can_generate", lambda: False)():
            from transformers import GenerationConfig

            model.generation_config = GenerationConfig.from_pretrained(self.path)
        return missing, unexpected

    def _placements(self, model, targets):
        """Checkpoint name -> the model tensor it loads into (None: unused), and checkpoint name ->
        the name an unused tensor is reported under, both found as transformers finds them: its
        renames for the model's class and the legacy ones (LayerNorm.gamma -> LayerNorm.weight),
        then the base-model prefix added or dropped. Where several checkpoint tensors would land
        in one model tensor (x.gamma and x.weight; bert.x and x), the first in transformers' order
        of names takes it and the others are left out with a warning (transformers leaves them
        out silently; they are not its unexpected keys): two decoded into one tensor at once
        would tear it. Tensors that transformers merges or splits on loading (Mixtral's per-expert
        weights into one tensor per layer) have no single place to be decoded into: refused
        before anything is decoded, rather than the model loaded with those weights at their
        initial values and a warning."""
        prefix = getattr(model, "base_model_prefix", "")
        rename = _key_renamer(model, targets, prefix)
        place, shown, taken, converted, dropped = {}, {}, set(), [], []
        # Each name once: a name in two shards is one tensor (loaded from the later shard, as in
        # transformers' merged state dict), not two names competing for one target.
        for name in _in_transformers_order(dict.fromkeys(t["name"] for f in self._files for t in f.tensors())):
            direct = self._target_name(name, targets, prefix)
            renamed, converter = rename(name) if rename else (name, None)
            if renamed not in targets and direct is not None:
                renamed, converter = direct, None  # as transformers: a name that fits is not renamed away
            if renamed in targets and converter is not None:
                converted.append((name, renamed))
            target = renamed if renamed in targets else direct
            shown[name] = renamed
            if target is not None and target in taken:
                dropped.append((name, target))
                target = shown[name] = None
            taken.add(target)
            place[name] = target
        if converted:
            (name, renamed), more = converted[0], len(converted) - 1
            raise InvalidArgumentError(
                f"{self.path}: {type(model).__name__} takes {len(converted)} checkpoint tensors through transformers' "
                f"weight conversions (tensors merged or split on loading: {name!r} into {renamed!r}"
                f"{f' and {more} more' if more else ''}), which StreamingLoader.load_model does not apply; "
                f"bigsmall.from_pretrained does")
        mapping = getattr(rename, "mapping", None)
        if mapping is not None:
            # What transformers' from_pretrained records: the renames used, which its
            # save_pretrained (and bigsmall's) reverts, so that a legacy-named checkpoint re-saves
            # under the names it came with.
            model._weight_conversions = [m for m in mapping if m.was_used()]
        if dropped:
            warnings.warn(f"{len(dropped)} tensors of the checkpoint at {self.path} name a tensor of {type(model).__name__} "
                          f"that an earlier one loads (the first in transformers' order is loaded, as transformers "
                          f"does): {[f'{n} -> {t}' for n, t in dropped[:5]]}{' ...' if len(dropped) > 5 else ''}",
                          stacklevel=_user_stacklevel())
        return place, shown

    def _refuse_if_nothing_fits(self, model, targets, place):
        """A checkpoint none of whose tensors has a place in the model would give a model of
        initial values with nothing but warnings. Names transformers renames on loading
        (CLIPVisionModel from a CLIP checkpoint: vision_model.* to *) are the usual cause, and
        from_pretrained applies those renames."""
        names = list(place)
        if not names or not targets or any(n is not None for n in place.values()):
            return
        raise InvalidArgumentError(
            f"{self.path}: none of the checkpoint's {len(names)} tensors has a place in {type(model).__name__} "
            f"(e.g. {names[0]!r}); if transformers renames them on loading, bigsmall.from_pretrained does too")

    def _names_match(self, model):
        """Whether every checkpoint tensor has its place in the model under its own name and every
        model tensor is in the checkpoint or tied to one that is (tied here, towards the one
        present): then loading is a plain copy of names, with nothing for transformers' key
        conversions or initialisation to do. Decides before anything is decoded."""
        targets = model.state_dict(keep_vars=True)
        prefix = getattr(model, "base_model_prefix", "")
        ignored = _ignored_unexpected(model)
        placed = set()
        for f in self._files:
            for t in f.tensors():
                n = self._target_name(t["name"], targets, prefix)
                if n is None and ignored is not None and ignored.search(t["name"]):
                    continue  # an old persistent buffer (position_ids) that transformers drops too
                if n is None or list(targets[n].shape) != _shape_or_none(t):
                    return False
                placed.add(n)
        tied = getattr(model, "all_tied_weights_keys", None)
        if isinstance(tied, dict):
            # transformers 5: decided from the declared pairs, without tying now. Its tie_weights
            # compares the two tensors of a pair that the checkpoint holds both of, and unties
            # them for good when they differ: before decoding, they would.
            groups = {}
            for target, source in tied.items():
                groups.setdefault(source, {source}).add(target)
            covered = set(placed)
            for members in groups.values():
                if members & placed:
                    covered |= members
            ptrs = {targets[n].data_ptr() for n in placed if targets[n].numel()}
            if not all(n in covered or (t.numel() and t.data_ptr() in ptrs) for n, t in targets.items()):
                return False
            _untie_both_loaded(model, tied, placed)
            return True
        _tie(model, [n for n in targets if n not in placed])  # transformers 4 ties whatever the values
        after = model.state_dict(keep_vars=True)
        ptrs = {after[n].data_ptr() for n in placed if n in after and after[n].numel()}
        return all(n in placed or (t.numel() and t.data_ptr() in ptrs) for n, t in after.items())

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
        """The dtype transformers' dtype="auto" takes from a checkpoint whose config names none:
        a shard index's metadata "dtype", else the first floating-point tensor of the first file
        in name order (safetensors lists names sorted), float8 and float4 skipped (torch cannot
        build a model in them)."""
        index = os.path.join(self.path, "model.safetensors.index.json")
        # As _shards chose: the shards a shard index names, not model.safetensors.
        sharded = len(self._files) > 1 or os.path.basename(self._files[0].path) != "model.bs"
        if sharded and os.path.exists(index):
            try:
                with open(index, encoding="utf-8") as fh:
                    d = (json.load(fh).get("metadata") or {}).get("dtype")
                dt = getattr(torch, d, None) if isinstance(d, str) else None
                if isinstance(dt, torch.dtype):
                    return dt
            except (ValueError, AttributeError):
                pass  # _shards read the same index: nothing to add here
        for _, dt in sorted((t["name"], bt._DTYPES.get(t["dtype"])) for t in self._files[0].tensors()):
            if dt is not None and dt.is_floating_point and "float8_" not in str(dt) and "float4_" not in str(dt):
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



# Loading options of transformers' from_pretrained that bigsmall does not implement: refused by
# name, not passed to the model's constructor as if they were model arguments.
_UNSUPPORTED_KWARGS = ("weights_only", "ignore_mismatched_sizes", "quantization_config", "offload_folder",
                       "offload_state_dict", "max_memory", "tp_plan", "key_mapping", "gguf_file", "variant",
                       "from_tf", "from_flax", "state_dict", "subfolder")


def _in_transformers_order(names):
    """Checkpoint names in the order transformers' loading takes them (numbers in names compared
    as numbers), which decides which of two names for one tensor wins."""
    names = list(names)
    try:
        from transformers.core_model_loading import dot_natural_key
    except ImportError:
        return sorted(names)
    return sorted(names, key=dot_natural_key)


def _key_renamer(model, targets, prefix):
    """transformers' renaming of checkpoint names for this model: a function name -> (new name,
    converter pattern or None), or None where there is none: a model that is not a transformers
    model (a plain torch module, even one holding transformers models) is loaded by its own
    names. transformers 5: the model's conversion mapping (legacy renames included);
    transformers 4: its legacy renames."""
    try:
        from transformers import PreTrainedModel
    except ImportError:
        return None
    if not isinstance(model, PreTrainedModel):
        return None
    try:
        from transformers.conversion_mapping import get_model_conversion_mapping
        from transformers.core_model_loading import WeightConverter, WeightRenaming, rename_source_key
    except ImportError:
        fix = getattr(model, "_fix_state_dict_key_on_load", None)
        if not callable(fix):
            return None

        def legacy(name):
            fixed = fix(name)  # (name, changed) in most versions, the name alone in some overrides
            return (fixed[0] if isinstance(fixed, tuple) else fixed), None
        return legacy
    mapping = get_model_conversion_mapping(model)
    renamings = [m for m in mapping if isinstance(m, WeightRenaming)]
    converters = [m for m in mapping if isinstance(m, WeightConverter)]

    def renamer(name):
        return rename_source_key(name, renamings, converters, prefix or None, targets)
    renamer.mapping = mapping  # each entry marks itself used when it renames a name, as in transformers
    return renamer


def _ignored_unexpected(model):
    """transformers' rule for checkpoint tensors that need no report: the class's patterns, and
    position_ids / rotary inv_freq that older checkpoints kept as persistent buffers. A regex or
    None."""
    buffers = [n for n, _ in model.named_buffers()]
    patterns = set(getattr(model, "_keys_to_ignore_on_load_unexpected", None) or [])
    if any(n.endswith("rotary_emb.inv_freq") for n in buffers):
        patterns.add(r"rotary_emb\.inv_freq")
    if any(n.endswith("position_ids") for n in buffers):
        patterns.add(r"(^|\.)position_ids$")
    return re.compile("|".join(f"({p})" for p in sorted(patterns))) if patterns else None


def _reported(model, missing, unexpected):
    """The mismatches worth a warning, by transformers' rules."""
    ignore_missing = set(getattr(model, "_keys_to_ignore_on_load_missing", None) or [])
    missing_regex = re.compile("|".join(f"({p})" for p in ignore_missing)) if ignore_missing else None
    unexpected_regex = _ignored_unexpected(model)
    return ([n for n in missing if not (missing_regex and missing_regex.search(n))],
            [n for n in unexpected if not (unexpected_regex and unexpected_regex.search(n))])


def _keep_in_fp32(model, dtype):
    """As transformers: the modules a class keeps in float32 (T5's wo, which overflows in float16)
    stay float32 when the model is float16 (_keep_in_fp32_modules) or float16 or bfloat16
    (_keep_in_fp32_modules_strict); matched as transformers matches them, by search in the name."""
    keep = set()
    if dtype == torch.float16:
        keep |= set(getattr(model, "_keep_in_fp32_modules", None) or [])
    if dtype in (torch.float16, torch.bfloat16):
        keep |= set(getattr(model, "_keep_in_fp32_modules_strict", None) or [])
    if not keep:
        return
    pattern = re.compile("|".join(k.replace("*", ".*") for k in sorted(keep)))
    for name, t in model.state_dict(keep_vars=True).items():
        if t.is_floating_point() and pattern.search(name):
            t.data = t.data.to(torch.float32)


def _tie(model, missing):
    """Ties as transformers 5 does after loading: towards whichever of a tied pair was loaded
    (a checkpoint may hold lm_head.weight and not the embedding), and not at all when both were
    loaded with different values. transformers 4 ties towards the input embedding."""
    if not hasattr(model, "tie_weights"):
        return
    try:
        model.tie_weights(missing_keys=set(missing), recompute_mapping=False)
    except TypeError:
        model.tie_weights()


def _untie_both_loaded(model, tied, placed):
    """A tied pair whose two tensors the checkpoint both holds gets memory for each, as
    transformers' loading gives it: decoded into one shared tensor, the second would overwrite
    the first. Tied again after loading (_tie) when their values are equal, as transformers does."""
    for target, source in tied.items():
        if target not in placed or source not in placed:
            continue
        owner, _, leaf = target.rpartition(".")
        module = model.get_submodule(owner)
        p = getattr(module, leaf)
        try:
            shared = p.data_ptr() == model.get_parameter(source).data_ptr()
        except AttributeError:  # not a parameter: nothing tied to untie
            shared = False
        if isinstance(p, torch.nn.Parameter) and shared and p.numel():
            setattr(module, leaf, torch.nn.Parameter(torch.empty_like(p), requires_grad=p.requires_grad))


def _initialize(model, tensors, missing):
    """Initialises what was not loaded with the model's own initialisation, as transformers does
    for a new head (and for computed buffers); the loaded tensors carry _is_hf_initialized, which
    transformers 5's initialisation functions respect."""
    if _transformers_major() >= 5:
        missing = set(missing)
        for n, t in tensors.items():
            if n not in missing:
                t._is_hf_initialized = True
        model.initialize_weights()
    else:  # transformers 4 writes .data directly: only the modules that own a missing tensor
        modules = dict(model.named_modules())
        with torch.no_grad():
            for owner in sorted({n.rsplit(".", 1)[0] if "." in n else "" for n in missing}):
                model._init_weights(modules[owner])
    # (No second tie: the loaded model was tied before, and initialisation writes in place;
    # tying again repeated transformers' warnings about the pairs it cannot tie.)


def _dtype_arg(d):
    if d is None or (isinstance(d, str) and d == "auto"):
        return None
    dt = getattr(torch, d, None) if isinstance(d, str) else d
    if isinstance(dt, torch.dtype) and dt.is_floating_point:
        return dt
    if isinstance(d, str) and d.startswith("torch.") and isinstance(getattr(torch, d[6:], None), torch.dtype):
        raise InvalidArgumentError(f"dtype {d!r} is a string: give the dtype itself ({d}) or its name ({d[6:]!r})")
    raise InvalidArgumentError(f"unsupported dtype {d!r}: give a floating-point torch.dtype (torch.bfloat16) or its name ('bfloat16')")


def _name_or_path(path_or_repo_id):
    return _fsdecode(path_or_repo_id) if isinstance(path_or_repo_id, (str, bytes, os.PathLike)) else str(path_or_repo_id)


def _check_model_class(model_class):
    """A class is built as model_class(config): one whose constructor cannot take the config (a
    plain torch.nn.Linear) failed in it with a TypeError that did not say why. Classes of one's
    own that take a config are built as transformers' are."""
    if model_class is None:
        return
    from transformers import PreTrainedModel

    if issubclass(model_class, PreTrainedModel) or hasattr(model_class, "_model_mapping"):  # or an Auto class
        return
    import inspect

    try:
        inspect.signature(model_class).bind(None)  # the config, positionally
        return
    except TypeError:
        pass
    except ValueError:  # no signature to read (a builtin): let its constructor answer
        return
    raise InvalidArgumentError(
        f"model_class {model_class.__module__}.{model_class.__qualname__} cannot be built from a config (its "
        "constructor takes no single config argument): build the model yourself and pass it to "
        "StreamingLoader(path).load_model(model)")


def _config_for(path, model_class, kwargs):
    """The config transformers' from_pretrained builds, and the keywords left for the model: with
    config= a config, that one and every other keyword for the model; else config attributes
    among the keywords go to the config read from `path` (or from config= a path), by the class's
    own config class when it has one (CLIPVisionModel: CLIPVisionConfig from a CLIP checkpoint)."""
    config = kwargs.pop("config", None)
    if config is not None and not isinstance(config, (str, bytes, os.PathLike)):
        return copy.deepcopy(config), kwargs  # as transformers: the caller's object is not changed
    source = path if config is None else _fsdecode(config)
    if config is None and not os.path.isfile(os.path.join(path, "config.json")):
        raise _missing(f"{path}: no config.json (the model's configuration, which compression copies "
                       "from the original directory; pass config= to give one)")
    from transformers import AutoConfig

    auto = model_class is None or model_class.__name__.startswith("Auto")
    config_cls = AutoConfig if auto else getattr(model_class, "config_class", None) or AutoConfig
    return config_cls.from_pretrained(source, return_unused_kwargs=True,
                                      trust_remote_code=kwargs.pop("trust_remote_code", None), **kwargs)


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


def _transformers_major():
    import transformers

    return int(transformers.__version__.split(".")[0])


@_outside_inference_mode
def from_pretrained(path_or_repo_id, model_class=None, device_map=None, torch_dtype=None, threads=None,
                    progress=True, **kwargs):
    """A transformers model built from a compressed directory (or Hub repo id).

    When no keyword argument is left for the model and the checkpoint's names are the model's
    own, the tensors (the shards transformers would read) are decoded block by block straight
    into the parameters (StreamingLoader). Otherwise bigsmall decodes them into memory and hands
    them to transformers' own from_pretrained as its state_dict: key conversions, tied weights,
    new heads, float32-kept modules, dtype and every keyword argument then behave exactly as
    transformers' loading of the original. Peak memory is the model's size where transformers
    uses the tensors as they are, up to twice that where it converts them (fused MoE experts, a
    dtype change).

    device_map: None/"cpu", a device ("cuda", "cuda:1", 0, torch.device), {"": device} or "auto"
    (the GPU when there is one); on a GPU the tensors are decoded there. torch_dtype / dtype: None
    or "auto" (the config's), a torch.dtype or its name. verify=False skips checksums.
    """
    import transformers  # noqa: F401  (without it nothing below can work: fail before any)

    dtype = _dtype_arg(kwargs.pop("dtype", torch_dtype))
    verify = _flag(kwargs.pop("verify", True), "verify")
    if device_map == "auto":
        device_map = "cuda" if torch.cuda.is_available() else "cpu"
    if isinstance(device_map, dict):
        # {"": device} (the whole model on one device, as PEFT and accelerate scripts write it)
        # is that device; maps that split a model across devices are not supported.
        if set(device_map) != {""}:
            raise InvalidArgumentError("device_map dictionaries that split the model are not supported; pass one device")
        device_map = device_map[""]
    if isinstance(device_map, int) and not isinstance(device_map, bool):
        device_map = f"cuda:{device_map}"  # as transformers reads it: 0 is the first GPU, not "no device"
    elif device_map is False or device_map == "":
        device_map = None  # as before: no map is the CPU
    dev = bt._device(device_map)  # before any work: a device this machine lacks fails now (None: the CPU)
    variant = kwargs.pop("variant", None)
    for k in ("state_dict", "gguf_file", "from_tf", "from_flax"):
        if k in kwargs:
            raise InvalidArgumentError(f"{k}= does not apply to a bigsmall checkpoint")
    hub = {k: kwargs.pop(k) for k in _HUB_KWARGS if k in kwargs}
    root, subfolder = _resolve(path_or_repo_id, hub), kwargs.pop("subfolder", None)
    path = _subfolder(root, subfolder)
    if model_class is not None and not isinstance(model_class, type):
        raise InvalidArgumentError(f"model_class must be a model class, not {model_class!r}")
    _check_model_class(model_class)
    _warn_if_mixed(path)
    _check_copied(path, verify)
    config, kwargs = _config_for(path, model_class, kwargs)
    name = _name_or_path(path_or_repo_id)
    config.name_or_path = name  # as transformers' from_pretrained sets it
    cls = model_class or StreamingLoader._architecture(config)
    if cls is None or cls.__name__.startswith("Auto"):
        from transformers import AutoModel

        mapping = getattr(cls or AutoModel, "_model_mapping")
        try:
            cls = mapping[type(config)]
        except KeyError:
            raise InvalidArgumentError(f"{path}: no {(cls or AutoModel).__name__} class for {type(config).__name__}; "
                                       "pass model_class") from None
    if not kwargs:
        # The common case, a checkpoint whose names are the model's own: decoded block by block
        # straight into the parameters (no second copy, and host memory of one block on a GPU);
        # twice as fast as building the model in transformers from a decoded state dict.
        loader = StreamingLoader._of(path, threads, verify, name, variant)
        model = loader._build(cls, dtype, {"config": config})
        if loader._names_match(model):
            model = loader.load_model(model, device=dev, progress=progress)
            return _with_generation_config(model, path)
        del model, loader
    files = _shards(path, variant)
    decode_on = dev if dev.type == "cuda" and _core.cuda_available() else torch.device("cpu")
    threads = _threads(threads)
    opened = [_core.File.open(f) for f in files]
    total = sum(t["nbytes"] for f in opened for t in f.tensors())
    cb, bar = _progress(progress, "decoding")
    state, done = {}, 0
    try:
        if cb:
            cb(0, total)
        for f in opened:
            infos = f.tensors()
            # In batches, so that the bar of a one-file model moves (and shows at all: it waits
            # half a second, then draws at the next report).
            for a, b in _batches([t["nbytes"] for t in infos]):
                part = infos[a:b]
                for t, x in zip(part, bt._decode(f, list(range(a, b)), part, decode_on, threads, verify)):
                    state[t["name"]] = x
                done += sum(t["nbytes"] for t in part)
                if cb:
                    cb(done, total)
    finally:
        if bar is not None:
            bar.close()
    if dev.type != "cpu":
        kwargs.setdefault("device_map", str(dev))
    # In name order, as transformers reads a safetensors checkpoint: its dtype="auto" takes the
    # first floating-point tensor's dtype.
    state = {k: state[k] for k in sorted(state)}
    model = cls.from_pretrained(None, config=config, state_dict=state, dtype=dtype or "auto", **kwargs)
    del state
    built = model[0] if isinstance(model, tuple) else model  # output_loading_info=True
    built.config.name_or_path = built.name_or_path = name  # given None, transformers recorded "None"
    _with_generation_config(built, path)
    return model


def _with_generation_config(model, path):
    if os.path.exists(os.path.join(path, "generation_config.json")) and getattr(model, "can_generate", lambda: False)():
        from transformers import GenerationConfig

        model.generation_config = GenerationConfig.from_pretrained(path)
    return model


def save_pretrained(model_or_state_dict, out_dir, threads=None, overwrite=True):
    """Writes a model (config included) or a state dict straight to a compressed directory.

    A transformers model is saved as its own save_pretrained saves it: tied weights once (tensors
    that share memory without being declared tied are refused, as transformers refuses them) and
    weights under their checkpoint names (transformers 5's in-memory conversions, such as fused
    MoE experts, reverted). A state dict or a plain torch module keeps every name, a tensor that
    shares memory with another stored twice. Nothing is written when the call fails: the configs
    are put in place only after the weights are, and with overwrite=False an existing output is
    refused before anything is written."""
    out_dir = _fsdecode(out_dir)
    overwrite = _flag(overwrite, "overwrite")
    if isinstance(model_or_state_dict, dict):
        tensors, model = dict(model_or_state_dict), None
    else:
        # torch.compile's wrapper: its state dict prefixes every name with "_orig_mod." and its
        # class is OptimizedModule; save the model inside, as transformers does.
        model = getattr(model_or_state_dict, "_orig_mod", model_or_state_dict)
        if not isinstance(model, torch.nn.Module):
            raise InvalidArgumentError(f"save_pretrained takes a model or a state dict, not {type(model).__name__}")
        tensors = _checkpoint_state(model)
        if getattr(model, "config", None) is None:
            model = None  # a plain module: weights only
    outputs = ["model.bs", "bigsmall.index.json"]
    if model is not None:
        outputs.append("config.json")
        if getattr(model, "generation_config", None) is not None and getattr(model, "can_generate", lambda: False)():
            outputs.append("generation_config.json")
    if not overwrite:
        for name in outputs:
            if os.path.lexists(os.path.join(out_dir, name)):
                e = _core.FileExistsError(f"{os.path.join(out_dir, name)}: already exists (pass overwrite=True)")
                e.errno, e.strerror = errno.EEXIST, os.strerror(errno.EEXIST)  # as the core's own refusal
                raise e
    # Directories this call creates, innermost first, removed again if it fails: every prefix of
    # the path as written (makedirs creates "nope" of "nope/../x" too).
    parts = out_dir.split(os.sep)
    made = [p for p in (os.sep.join(parts[:i]) for i in range(len(parts), 0, -1)) if p and not os.path.isdir(p)]
    try:
        os.makedirs(out_dir, exist_ok=True)
    except OSError as e:
        raise _os_error(e, out_dir) from None
    staging = staging_lock = None
    # Stagings of saves killed beyond cleanup (SIGKILL, the OOM killer) go, as the core's own.
    _core.remove_stale_temporaries(os.path.join(out_dir, "save"))
    removed = _core.take_removed_temporaries()  # said once the save is done (a failure says its own)
    try:
        # Everything is written aside first (weights, configs, index), then moved in, index last:
        # a failure while writing leaves the directory as it was.
        staging, staging_lock = _staging_dir(out_dir)
        if model is not None:
            # As transformers' save_pretrained does, the config names the class that saved it (so
            # that from_pretrained without a class builds that one: GPT2LMHeadModel, not
            # GPT2Model) and its dtype; on a copy, so the caller's model is not changed.
            config = copy.deepcopy(model.config)
            if getattr(model, "dtype", None) is not None:
                config.dtype = str(model.dtype).split(".")[1]
            config.architectures = [type(model).__name__]
            config.save_pretrained(staging)
            if "generation_config.json" in outputs:
                model.generation_config.save_pretrained(staging)
        staged_bs = os.path.join(staging, "model.bs")
        try:
            bt.save_file(tensors, staged_bs, metadata={"format": "pt"}, threads=threads)
        except _core.Error as e:
            # Named by where the weights go, not by the staging file the user never gave (gone
            # once this call returns).
            if e.args and isinstance(e.args[0], str):
                e.args = (e.args[0].replace(staged_bs, os.path.join(out_dir, "model.bs")),) + e.args[1:]
            raise
        written = _core.File.open(staged_bs)
        index = {"format": "bigsmall", "format_version": _core.DIR_INDEX_LAYOUT_VERSION,
                 "files": [{"source": "model.safetensors", "bs": "model.bs", "size": written.original_size,
                            "bs_checksum": f"{written.fingerprint:016x}"}]}  # what readers check (FORMAT.md)
        del written
        with open(os.path.join(staging, "bigsmall.index.json"), "w") as f:
            json.dump(index, f, indent=2)
        order = ["model.bs"] + sorted(set(os.listdir(staging)) - {"model.bs", "bigsmall.index.json"})
        # Saves into one directory from several threads or processes take turns here: interleaved,
        # their moves left one's model.bs beside another's index, or an index alone.
        with _dir_lock(out_dir):
            # A model saved here before, in shards, leaves weights that are no longer this model's:
            # as transformers' save_pretrained, remove them (only those the old indexes name), or
            # from_pretrained would follow the old shard index to the old weights.
            try:
                # Unchecked: a damaged or missing old shard is still one of the old model's.
                stale = [f for f in _core.model_dir_files(out_dir, check=False) if os.path.basename(f) != "model.bs"]
                if stale:  # a sharded bigsmall model: its shard index goes with its shards
                    stale.append(os.path.join(out_dir, "model.safetensors.index.json"))
            except _core.Error:
                stale = []  # not a bigsmall directory: its files are not ours to remove
            _move_in(staging, out_dir, order + ["bigsmall.index.json"], overwrite)
            for f in stale:
                if os.path.exists(f) and os.path.abspath(f) != os.path.abspath(os.path.join(out_dir, "model.bs")):
                    os.remove(f)
    except BaseException:
        if staging is not None:
            shutil.rmtree(staging, ignore_errors=True)
            staging = None
        for d in made:
            try:
                os.rmdir(d)
            except OSError:
                pass  # not empty, or a spelling of a directory already gone
        raise
    finally:
        if staging is not None:
            shutil.rmtree(staging, ignore_errors=True)
        if staging_lock is not None:  # after the removal: no sweeper takes a tree half removed
            _held_locks.discard(staging_lock)
            os.close(staging_lock)
    _warn_other_weights(out_dir)  # once all is in place: a warning turned error must not undo a save
    _warn_removed(removed, 2)
    return out_dir


_staging_counter = itertools.count()


def _staging_dir(out_dir):
    """A private directory in out_dir to stage a save in, named and locked as the core's temporary
    outputs are (".save.tmp-bigsmall-L<pid>-<n>", an flock held until the save ends): a save killed
    beyond cleanup leaves it, and the next write in out_dir removes it. Returns (path, locked fd)."""
    for _ in range(1000):
        path = os.path.join(out_dir, f".save.tmp-bigsmall-L{os.getpid()}-{next(_staging_counter)}")
        try:
            os.mkdir(path, 0o700)
        except FileExistsError:
            continue  # a killed run's (in a container every run may get the same PID)
        except OSError as e:
            raise _os_error(e, out_dir) from None
        try:
            fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        except OSError as e:
            os.rmdir(path)
            raise _os_error(e, path) from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:  # a sweeper holds the new name: the next one
            os.close(fd)
            os.rmdir(path)
            continue
        except OSError:
            pass  # no locks on this file system: no sweeper can take it either
        _held_locks.add(fd)  # closed in forked children: the lock stays this process's
        return path, fd
    raise _core.IOError(f"{out_dir}: cannot create a staging directory in it")


# The weight files transformers' from_pretrained loads from a directory (no variant).
_TRANSFORMERS_WEIGHTS = re.compile(r"(model|pytorch_model)(-\d+-of-\d+)?\.(safetensors|bin)(\.index\.json)?")


def _warn_other_weights(out_dir):
    """Weights of another format left in out_dir are not removed (they may be another model's),
    but transformers' own from_pretrained of the directory would load them, not model.bs."""
    others = sorted(n for n in os.listdir(out_dir) if _TRANSFORMERS_WEIGHTS.fullmatch(n))
    if others:
        warnings.warn(f"{out_dir} also holds {', '.join(others[:3])}{' ...' if len(others) > 3 else ''}: transformers' "
                      "from_pretrained of this directory would load those, not the model.bs just written "
                      "(bigsmall.from_pretrained reads model.bs)", stacklevel=_user_stacklevel())


# The files of a model directory the loaders read besides the weights.
_LOADER_FILES = ("config.json", "generation_config.json", "model.safetensors.index.json")


def _check_copied(model_dir, verify):
    """The configs a compressed directory copied along are read from it as they are (by
    transformers, by this package): checked against the index, as the weights are. Only those:
    a model card edited since does not stop a load. Every index on the way up lists them, each
    by its path from there: the model directory's own (compressed by itself), a repository's
    (a subfolder, or the model directory given inside it), one in between."""
    if not verify:
        return
    d, rel = os.path.abspath(model_dir), ""
    while True:
        if os.path.isfile(os.path.join(d, "bigsmall.index.json")) and (not rel or _index_claims(d, rel)):
            # A listed file that is missing is left to whatever needs it to name ("no config.json").
            _core.verify_copied_files(d, [posixpath.join(rel, n) if rel else n for n in _LOADER_FILES], missing_ok=True)
        parent = os.path.dirname(d)
        if parent == d:
            return
        rel = posixpath.join(os.path.basename(d), rel) if rel else os.path.basename(d)
        d = parent


def _index_claims(d, rel):
    """Whether the bigsmall.index.json of d, a directory above the model, is an index that lists
    files copied along under rel (the model's path from d). Any other file of that name (a stray
    or broken one in /tmp or a home directory, another model's index) is not the model's: it must
    not stop the model's load, as it does not stop a verify of the model directory."""
    try:
        with open(os.path.join(d, "bigsmall.index.json"), "rb") as f:
            text = f.read(_MAX_ANCESTOR_INDEX + 1)
        if len(text) > _MAX_ANCESTOR_INDEX:
            return False
        index = json.loads(text)
    except (OSError, ValueError, RecursionError):
        return False
    copied = index.get("copied") if isinstance(index, dict) and index.get("format") == "bigsmall" else None
    prefix = rel + "/"
    return isinstance(copied, list) and any(
        isinstance(c, dict) and isinstance(c.get("path"), str) and c["path"].startswith(prefix) for c in copied)


_MAX_ANCESTOR_INDEX = 256 << 20  # bytes: a repository's index of thousands of files is a few MB


_held_locks = set()  # descriptors of directory locks this process holds


def _close_inherited_locks():
    # A child forked while a save held a lock shares the lock (it belongs to the open file, not
    # the process): it would keep every later save into that directory waiting while it lives.
    for fd in list(_held_locks):
        try:
            os.close(fd)
        except OSError:
            pass
    _held_locks.clear()


os.register_at_fork(after_in_child=_close_inherited_locks)


@contextlib.contextmanager
def _dir_lock(out_dir):
    """An exclusive flock on the directory itself (no lock file is left in it): writers in other
    threads and processes wait; each open of the directory is its own lock holder."""
    try:
        fd = os.open(out_dir, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    except OSError as e:
        raise _os_error(e, out_dir) from None
    _held_locks.add(fd)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)  # waits with the GIL released; Ctrl-C is heard
        yield
    finally:
        _held_locks.discard(fd)
        os.close(fd)  # releases the lock


def _move_in(staging, out_dir, names, overwrite):
    """Moves the staged files into out_dir, all or none: every target is checked first, each file
    there is moved aside, and a failure (or Ctrl-C) partway puts everything back. Without
    overwrite a file that appeared meanwhile is refused, not replaced."""
    for name in names:
        target = os.path.join(out_dir, name)
        if os.path.isdir(target) and not os.path.islink(target):
            raise _core.InvalidArgumentError(f"{target}: is a directory, cannot replace it with a file")
    done = []  # (target, where its old file waits, or None)
    try:
        for k, name in enumerate(names):
            src, target = os.path.join(staging, name), os.path.join(out_dir, name)
            if not overwrite:
                try:
                    os.link(src, target)  # refused if another writer got there first
                except FileExistsError:
                    e = _core.FileExistsError(f"{target}: already exists (pass overwrite=True)")
                    e.errno, e.strerror = errno.EEXIST, os.strerror(errno.EEXIST)
                    raise e from None
                except OSError:  # no hard links here (vfat): check, then move
                    if os.path.lexists(target):
                        raise
                    os.replace(src, target)
                else:
                    os.unlink(src)
                done.append((target, None))
                continue
            aside = None
            if os.path.lexists(target):
                aside = os.path.join(out_dir, f".{name}.old-bigsmall-{os.getpid()}-{threading.get_ident()}-{k}")
                os.replace(target, aside)
            try:
                os.replace(src, target)
            except BaseException:
                if aside is not None:
                    os.replace(aside, target)
                raise
            done.append((target, aside))
    except BaseException:
        for target, aside in reversed(done):
            try:
                os.unlink(target)
                if aside is not None:
                    os.replace(aside, target)
            except OSError:
                pass
        raise
    for _, aside in done:
        if aside is not None:
            try:
                os.unlink(aside)
            except OSError:
                pass


def _checkpoint_state(model):
    """The tensors a checkpoint of `model` holds, as transformers' save_pretrained chooses them."""
    state = model.state_dict()
    try:
        from transformers import PreTrainedModel
        from transformers.core_model_loading import revert_weight_conversion
        from transformers.modeling_utils import remove_tied_weights_from_state_dict
    except ImportError:  # transformers 4, or none: declared ties only
        PreTrainedModel = None
    if PreTrainedModel is None or not isinstance(model, PreTrainedModel):
        return _drop_declared_ties(model, state)
    for k in getattr(model, "_keys_to_ignore_on_save", None) or []:
        state.pop(k, None)
    try:
        state = remove_tied_weights_from_state_dict(state, model)
    except RuntimeError as e:  # tensors sharing memory that the model does not declare tied
        raise InvalidArgumentError(f"{type(model).__name__}: {bt._first_line(e)}") from None
    return revert_weight_conversion(model, state)


def _drop_declared_ties(model, state):
    """Without transformers 5: a tensor is left out only when it shares memory with one kept
    before it and its name matches the model's declared tied keys (transformers 4's
    _tied_weights_keys patterns); anything else sharing memory is stored twice, so no weight is
    lost."""
    patterns = []
    for prefix, sub in model.named_modules():
        tied = getattr(sub, "_tied_weights_keys", None) or []
        patterns += [(f"{re.escape(prefix)}\\." if prefix else "") + p for p in tied]
    kept, seen = {}, set()
    for name, t in state.items():
        key = ((t.untyped_storage().data_ptr(), t.storage_offset(), tuple(t.shape), tuple(t.stride()), t.dtype)
               if t.numel() else None)
        if key is not None and key in seen and any(re.search(p, name) for p in patterns):
            continue
        seen.add(key)
        kept[name] = t
    return kept
