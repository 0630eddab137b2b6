"""bigsmall: lossless compression of neural-network weights.

Files and model directories: compress, decompress, verify, info. Tensors: safe_open, and the
safetensors-style modules bigsmall.torch and bigsmall.numpy. Models: from_pretrained,
save_pretrained, StreamingLoader (these import torch and transformers when first used).
"""
from __future__ import annotations

import errno
import operator
import os

from . import _core
from ._core import (  # noqa: F401  (re-exported error hierarchy)
    CorruptError,
    Error,
    FormatError,
    InvalidArgumentError,
    NotFoundError,
    OutOfMemoryError,
    VersionError,
)
from ._core import IOError as BigsmallIOError  # noqa: F401
# The IOError subclasses that are also the builtin OSError subclasses of the same name. Not in
# __all__: `from bigsmall import *` would shadow the builtins.
from ._core import (  # noqa: F401,A004
    FileExistsError,
    FileNotFoundError,
    IsADirectoryError,
    NotADirectoryError,
    PermissionError,
)

# from_pretrained, save_pretrained and StreamingLoader are left out: `from bigsmall import *`
# would import torch and transformers (seconds) to bind them.
__all__ = [
    "compress", "decompress", "verify", "info", "safe_open", "Error", "FormatError", "CorruptError",
    "VersionError", "NotFoundError", "InvalidArgumentError", "BigsmallIOError", "OutOfMemoryError",
]


# C0 and C1 controls (C1's CSI acts on terminals too), the Unicode line and paragraph
# separators, the bidirectional controls (U+202E shows "gpj.exe" as "exe.jpg": a name could
# pose as another), and the surrogates that stand for bytes of a name that are not UTF-8.
# Spelled as the CLI spells them: \x0a for C0 controls and DEL, \u009b for C1 ones.
_CONTROLS = {c: f"\\x{c:02x}" for c in [*range(0x20), 0x7F]}
_CONTROLS.update({c: f"\\u{c:04x}" for c in [*range(0x80, 0xA0), 0x2028, 0x2029, 0x061C, 0x200E, 0x200F,
                                                 *range(0x202A, 0x202F), *range(0x2066, 0x206A)]})
_CONTROLS.update({c: f"\\x{c - 0xDC00:02x}" for c in range(0xDC80, 0xDD00)})  # os.fsdecode's escapes of bytes


def _one_line(text):
    """Messages name files, and a name may hold a newline, an escape sequence or bytes that are
    not UTF-8: shown escaped, as the CLI shows them, so that every message is one printable line
    (args keep the raw text)."""
    return str(text).translate(_CONTROLS)


def _error_str(self):
    return _one_line(self.args[0]) if len(self.args) == 1 else Exception.__str__(self)


Error.__str__ = _error_str


def _message_str(self):
    # KeyError's str() is the repr of its key, which would quote the one-line message.
    return _one_line(self.args[0]) if len(self.args) == 1 else super(NotFoundError, self).__str__()


NotFoundError.__str__ = _message_str


def _io_error_str(self):
    # With strerror set, OSError's str() would be "[Errno N] strerror": keep the core's message.
    return _one_line(self.args[0]) if len(self.args) == 1 else OSError.__str__(self)


def _rebuild_io_error(cls, message, errno, strerror):
    e = cls(message)
    e.errno, e.strerror = errno, strerror
    return e


def _io_error_reduce(self):
    # OSError pickles its args only, and a one-argument OSError has no errno: a worker process's
    # FileNotFoundError would arrive without it.
    if len(self.args) != 1:
        return OSError.__reduce__(self)
    return _rebuild_io_error, (type(self), self.args[0], self.errno, self.strerror)


BigsmallIOError.__str__ = _io_error_str
BigsmallIOError.__reduce__ = _io_error_reduce
__version__ = _core.library_version  # include/bigsmall/version.hpp, as the package metadata
FORMAT_VERSION = _core.FORMAT_VERSION


def _fsdecode(path):
    """os.fsdecode, with a clear error for what no path can be: bytes holding a NUL, which is
    what a file's contents passed by mistake (load_file(data) for load(data)) look like."""
    p = os.fsdecode(path)  # (bytearray and memoryview are no paths: a TypeError, as os functions give)
    if "\0" in p:
        hint = ""
        if isinstance(path, bytes) and path[:8] == b"\x89BSML\r\n\x1a":
            hint = " (these bytes are a .bs file's contents: bigsmall.torch.load and bigsmall.numpy.load read those)"
        elif isinstance(path, bytes):
            hint = f" (got {len(path)} bytes: file contents, not a path?)"
        raise InvalidArgumentError(f"a path cannot contain a NUL byte{hint}")
    return p


def _threads(threads):
    """None or 0: every core; more threads than chunks are never started, so large counts are capped."""
    if threads is None:
        return 0
    try:
        if isinstance(threads, bool):
            raise TypeError
        threads = operator.index(threads)  # int, numpy integers; not floats or strings
    except TypeError:
        raise InvalidArgumentError(f"threads must be an int or None, not {threads!r}") from None
    if threads < 0:
        raise InvalidArgumentError(f"threads must be >= 0 (0 or None: every core), not {threads}")
    return min(threads, 1 << 16)


def _flag(value, name):
    """A yes/no argument: a bool, a numpy bool or the ints 0 and 1. Anything else (None above
    all, which would read as False and turn checks off) is refused before any work."""
    if isinstance(value, bool):
        return value
    if getattr(getattr(value, "dtype", None), "kind", None) == "b" and getattr(value, "shape", None) == ():
        return bool(value)
    try:
        v = operator.index(value)
    except TypeError:
        v = None
    if v in (0, 1):
        return bool(v)
    raise InvalidArgumentError(f"{name} must be True or False, not {value!r}")


def _backend(backend):
    """safetensors' `backend` ("mmap" or "pread": how it serves tensor bytes). Both are taken so
    that calls carry over; bigsmall decodes from its own mapping or reads whichever they say."""
    if not isinstance(backend, str) or backend not in ("mmap", "pread"):
        raise InvalidArgumentError(f'backend {backend!r} is invalid (expected one of: "mmap", "pread")')
    return backend


def _missing(message):
    """A FileNotFoundError (and a bigsmall IOError) for a model directory or weights file that is
    not there, as transformers raises an OSError for them."""
    e = FileNotFoundError(message)
    e.errno, e.strerror = errno.ENOENT, os.strerror(errno.ENOENT)
    return e


def _os_error(e, path):
    """An OSError from Python's own file calls as the bigsmall error of its kind (one line,
    naming the path), keeping errno."""
    cls = {errno.ENOENT: FileNotFoundError, errno.EEXIST: FileExistsError, errno.EISDIR: IsADirectoryError,
           errno.ENOTDIR: NotADirectoryError, errno.EACCES: PermissionError,
           errno.EPERM: PermissionError}.get(e.errno, BigsmallIOError)
    why = e.strerror or str(e)
    if e.errno == errno.EEXIST:
        why = "exists and is not a directory"
    err = cls(f"{path}: {why}")
    err.errno, err.strerror = e.errno, e.strerror
    return err


# Decoded bytes per call into the core when loading: the core runs without the GIL, so Ctrl-C
# is heard between calls (every ~0.1-0.3 s here); tensors of one call decode side by side.
_LOAD_BATCH_BYTES = 256 << 20


def _batches(sizes, limit=None):
    """Index ranges [a, b) over `sizes`, each of at most `limit` bytes (a larger item alone)."""
    limit = _LOAD_BATCH_BYTES if limit is None else limit
    start, total = 0, 0
    for k, n in enumerate(sizes):
        if k > start and total + n > limit:
            yield start, k
            start, total = k, 0
        total += n
    if start < len(sizes):
        yield start, len(sizes)


def _text(s, what):
    """A tensor name or metadata string as the header stores it: str, encodable as UTF-8 (JSON
    and safetensors require it; a str may hold surrogate escapes that are not)."""
    if not isinstance(s, str):
        raise InvalidArgumentError(f"{what} {s!r} is not a str")
    try:
        s.encode("utf-8")
    except UnicodeEncodeError:
        raise InvalidArgumentError(f"{what} {s!r} is not valid UTF-8 text") from None
    return s


def _save_target(filename, stacklevel=3):
    """The path a save_file writes. A name ending in .safetensors gets a warning: the bytes are
    .bs (safetensors readers refuse them as "header too large"), an easy slip when an import of
    safetensors.torch is swapped for bigsmall.torch. stacklevel: that of the user's call."""
    path = _fsdecode(filename)
    if path.endswith(".safetensors"):
        import warnings

        warnings.warn(_one_line(f"{path}: bigsmall writes the .bs format, not safetensors (name it .bs; "
                                "bigsmall.decompress restores a .safetensors file)"), stacklevel=stacklevel)
    return path


_MEMORY = "<memory>"  # how errors name a .bs given or returned as bytes


def _bs_bytes(data):
    """The bytes of a .bs given in memory: bytes as they are (read in place), other buffers
    (bytearray, memoryview, a numpy array, strided or not) copied once in C order, so that later
    changes to them cannot change what is decoded."""
    if isinstance(data, bytes):
        return data
    try:
        return memoryview(data).tobytes()
    except TypeError:
        raise InvalidArgumentError(f"data must be bytes (a .bs file's contents), not {type(data).__name__}") from None


def _with_file(path, fn, *args):
    """fn(*args), its InvalidArgumentErrors prefixed with the file being written."""
    try:
        return fn(*args)
    except InvalidArgumentError as e:
        raise InvalidArgumentError(f"{path}: {e.args[0]}") from None


def _header_metadata(metadata, filename=None):
    """Sorted (key, value) pairs, or None (no "__metadata__" entry). Keys and values must be str,
    as safetensors requires; {} is written as an empty "__metadata__", as safetensors does. Errors
    name the file being written."""
    if metadata is None:
        return None
    where = f"{_fsdecode(filename)}: " if filename is not None else ""
    if not isinstance(metadata, dict):
        raise InvalidArgumentError(f"{where}metadata must be a dict of str to str, not {type(metadata).__name__}")
    try:
        return sorted((_text(k, "metadata key"), _text(v, f"metadata value of {k!r}")) for k, v in metadata.items())
    except InvalidArgumentError as e:
        raise InvalidArgumentError(f"{where}{e}") from None


class _Progress:
    """A progress callback (done, total) drawing a tqdm bar, made at the first report, when the
    total is known (a notebook's widget keeps the length it was made with); callers report
    (0, total) as they start. The bar appears only once the work has taken half a second: work
    that ends sooner leaves no trace on the terminal or in a notebook."""

    def __init__(self, tqdm, desc):
        self._tqdm, self._desc, self._bar = tqdm, desc, None

    def __call__(self, done, total):
        if self._bar is None:
            self._bar = self._tqdm(total=total, unit="B", unit_scale=True, desc=self._desc, delay=0.5)
        self._bar.total = total
        self._bar.update(done - self._bar.n)  # unlike refresh(), update() keeps the delay and tqdm's rate limit

    def close(self):
        if self._bar is not None:
            self._bar.close()


def _progress(enabled, desc):
    """(callback, closer) when asked and tqdm is installed (one _Progress); (None, None) otherwise."""
    if not enabled:
        return None, None
    try:
        from tqdm.auto import tqdm
    except ImportError:
        return None, None
    p = _Progress(tqdm, desc)
    return p, p


def _default_output(src, compressing, is_dir):
    p = src.rstrip("/") or src
    if os.path.basename(p) in (".", ".."):  # name the output after the directory, beside it
        p = os.path.normpath(os.path.abspath(p))  # lexically: "link/." is named like "link"
    if compressing:
        if not is_dir and p.endswith(".safetensors"):
            return p[: -len(".safetensors")] + ".bs"
        return p + ".bs"
    if p.endswith(".bs"):
        if not is_dir and (d := _listing_dir(src)):
            raise InvalidArgumentError(f"{src}: a file of the compressed directory {d}: restored beside it, it would "
                                       "become part of that directory; pass dst")
        return p[:-3] + ("" if is_dir else ".safetensors")
    raise InvalidArgumentError(f"{src}: name does not end in .bs; pass dst")


def _listing_dir(bs):
    """The compressed model directory whose index lists the file bs (the nearest index above it),
    or None: a restore beside it would land inside that directory and become a file of it (a later
    verify of the directory refuses it), as the CLI says. By the directory the name stands in,
    its last part not followed (a snapshot's model.bs is a link into blobs/)."""
    parent = os.path.realpath(os.path.dirname(bs) or ".")
    name = os.path.basename(bs)
    d = parent
    while True:
        if os.path.exists(os.path.join(d, "bigsmall.index.json")):
            try:
                listed = _core.model_dir_files(d, False)
            except Error:
                return None  # not an index this can read: the restore goes ahead as before
            for f in listed:
                if os.path.basename(f) == name and os.path.realpath(os.path.dirname(f)) == parent:
                    return d
            return None
        up = os.path.dirname(d)
        if up == d:
            return None
        d = up


def _warn_removed(removed, stacklevel):
    """Warns of temporary outputs of killed runs (SIGKILL, the OOM killer) that the core removed
    where a call wrote (the CLI says the same on stderr). stacklevel: of the user's call, counted
    from the caller of this function."""
    if removed:
        import warnings

        for p in removed:
            warnings.warn(_one_line(f"bigsmall: removed {p}, left by a run that was killed"), stacklevel=stacklevel + 1)


def _note_removed(stacklevel):
    """_warn_removed of what the core removed since the last look; called once a call succeeded
    (a failed call raises its own error: the list is dropped then, see _drop_removed)."""
    _warn_removed(_core.take_removed_temporaries(), stacklevel + 1)


def _drop_removed():
    _core.take_removed_temporaries()


def _write_file(path, names, shapes, bufs, metadata, threads, overwrite, stacklevel):
    """_core.write_tensors of checked tensors (save_file's for torch and numpy), its arguments
    checked; killed runs' temporaries it removed are warned of once it succeeded. stacklevel: of
    the user's call, counted from the caller of this function."""
    try:
        _core.write_tensors(path, names, shapes, bufs, _header_metadata(metadata, path), _threads(threads), _flag(overwrite, "overwrite"))
    except BaseException:
        _drop_removed()
        raise
    _note_removed(stacklevel + 1)


def compress(src, dst=None, threads=None, overwrite=False, progress=False):
    """Compress a .safetensors file or a model directory; returns the output path."""
    src = _fsdecode(src)
    is_dir = os.path.isdir(src)
    dst = _fsdecode(dst) if dst is not None else _default_output(src, True, is_dir)
    cb, bar = _progress(progress, os.path.basename(src))
    try:
        _core.compress(src, dst, _threads(threads), _flag(overwrite, "overwrite"), is_dir, cb)
    except BaseException:
        _drop_removed()
        raise
    finally:
        if bar is not None:
            bar.close()
    _note_removed(2)
    if is_dir:
        _warn_if_nothing_compressed(src, dst)
    return dst


def _warn_if_nothing_compressed(src, dst):
    """Nothing is lost, but nothing was compressed either (a .bin checkpoint by mistake?): said, as
    the CLI says it. The output's index lists the .bs files it holds."""
    import json
    import warnings

    try:
        with open(os.path.join(dst, "bigsmall.index.json"), encoding="utf-8") as f:
            files = json.load(f).get("files")
    except (OSError, ValueError):
        return
    if files == []:
        warnings.warn(_one_line(f"{src}: no *.safetensors file in it: every file was copied as it is"), stacklevel=3)


def decompress(src, dst=None, threads=None, overwrite=False, verify=True, progress=False):
    """Restore the original .safetensors file (or model directory) byte for byte."""
    src = _fsdecode(src)
    is_dir = os.path.isdir(src)
    dst = _fsdecode(dst) if dst is not None else _default_output(src, False, is_dir)
    cb, bar = _progress(progress, os.path.basename(src))
    try:
        _core.decompress(src, dst, _threads(threads), _flag(overwrite, "overwrite"), _flag(verify, "verify"), is_dir, cb)
    except BaseException:
        _drop_removed()
        raise
    finally:
        if bar is not None:
            bar.close()
    _note_removed(2)
    return dst


def verify(path, threads=None):
    """Decode everything and check every checksum; raises on the first problem."""
    _core.verify(_fsdecode(path), _threads(threads))


def info(path):
    """Per-tensor information of a .bs file: dtype, shape, codec, sizes and the joint-model floor.

    For a compressed model directory: the same for each of its .bs files under "files", their
    sums, and every tensor under "tensors" with the file it is in (its "file" entry).
    """
    path = _fsdecode(path)
    if os.path.isdir(path):
        files = [_file_info(p) for p in _core.model_dir_files(path)]
        return {
            "path": path,
            "file_bytes": sum(f["file_bytes"] for f in files),
            "original_bytes": sum(f["original_bytes"] for f in files),
            "files": files,
            "tensors": [dict(t, file=f["path"]) for f in files for t in f["tensors"]],
        }
    return _file_info(path)


def _file_info(path):
    f = _core.File.open(path)  # refuses anything but a .bs file, directories included
    return {
        "path": f.path,
        "file_bytes": f.file_size,
        "original_bytes": f.original_size,
        "tensors": f.tensors(),
    }


class safe_open:
    """Open a .bs file like safetensors.safe_open: keys(), offset_keys(), metadata(), get_tensor(),
    get_tensors(), get_slice().

    Only the tensors asked for are read and decoded.
    """

    def __init__(self, path, framework="pt", device="cpu", threads=None, verify=True, *, backend="mmap"):
        _backend(backend)
        if framework not in ("pt", "torch", "pytorch", "np", "numpy"):
            raise InvalidArgumentError(f"unsupported framework {framework!r} (use 'pt' or 'np')")
        self._framework = "pt" if framework in ("pt", "torch", "pytorch") else "np"
        if self._framework == "pt":
            from . import torch as bt

            self._device = bt._device(device)  # a bad or absent device fails here, before any decode
        elif device is not None and str(device) != "cpu":  # "cpu" or torch.device("cpu")
            raise InvalidArgumentError(f"framework 'np' decodes to the CPU only, not {device!r}")
        else:
            self._device = "cpu"
        self._threads = _threads(threads)
        self._verify = _flag(verify, "verify")
        self._path = _fsdecode(path)
        self._file = _core.File.open(self._path)
        self._infos = self._file.tensors()
        self._index = {t["name"]: i for i, t in enumerate(self._infos)}

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self._file = None  # slices taken before keep the file open
        return False

    def _open_file(self):
        if self._file is None:
            raise InvalidArgumentError(f"{self._path}: file is closed")
        return self._file

    def keys(self):
        self._open_file()
        return sorted(self._index)  # as safetensors does

    def offset_keys(self):
        """Names in the order of their data in the file, as safetensors' offset_keys."""
        self._open_file()
        return [t["name"] for t in self._infos]  # the index lists tensors in data order

    def metadata(self):
        return self._open_file().metadata

    def get_tensors(self):
        """Every tensor, keyed by name in offset_keys() order, decoded in one parallel call."""
        f = self._open_file()
        which = list(range(len(self._infos)))
        if self._framework == "pt":
            from . import torch as bt

            xs = bt._decode(f, which, self._infos, self._device, self._threads, self._verify)
        else:
            from . import numpy as bn

            xs = bn._decode(f, which, self._infos, self._threads, self._verify)
        return {t["name"]: x for t, x in zip(self._infos, xs)}

    def _info(self, name):
        """(file, i, info): the file read once, so that a close from another thread in between
        leaves this call its file (as a slice keeps it) instead of None."""
        f = self._open_file()
        i = self._index.get(name)
        if i is None:
            raise NotFoundError(f"{f.path}: no tensor named {name!r}")
        return f, i, self._infos[i]

    def _decode(self, f, i, t):
        if self._framework == "pt":
            from . import torch as bt

            return bt._decode(f, [i], [t], self._device, self._threads, self._verify)[0]
        from . import numpy as bn

        return bn._decode(f, [i], [t], self._threads, self._verify)[0]

    def _decode_rows(self, f, i, t, r0, r1, fshape):
        """Rows [r0, r1) of tensor i (along the first dimension of its framework shape `fshape`):
        only the chunks holding them are decoded, with their checksums checked. With verify on,
        the first range read of a tensor with tables also decodes the whole tensor once (in
        bounded memory) to check its checksum, which alone covers the tables: seconds for a
        multi-GB tensor, once per open file; verify=False skips it."""
        shape = [r1 - r0] + list(fshape[1:])
        row_bytes = t["nbytes"] // fshape[0]
        if self._framework == "pt":
            from . import torch as bt

            x = bt._empty(t, shape=shape, path=f.path)
            if x.numel():
                f.read_range_into(i, r0 * row_bytes, bt._byte_view(x), self._threads, self._verify)
            return x if self._device.type == "cpu" else x.to(self._device)
        import numpy as np

        from . import numpy as bn

        x = bn._empty(f, t, shape=shape)
        if x.size:
            f.read_range_into(i, r0 * row_bytes, x.reshape(-1).view(np.uint8), self._threads, self._verify)
        return x

    def get_tensor(self, name):
        f, i, t = self._info(name)
        return self._decode(f, i, t)

    def get_slice(self, name):
        f, i, t = self._info(name)
        return _Slice(self, f, i, t)


class _Slice:
    """A tensor of an open file, read when indexed. It keeps the file open, as safetensors'
    slices keep working after their file's `with` block ends."""

    def __init__(self, owner, file, i, t):
        self._owner, self._file, self._i, self._t = owner, file, i, t

    def get_shape(self):
        return list(self._t["shape"])

    def get_dtype(self):
        return self._t["dtype"]

    def __getitem__(self, index):
        shape = self._t["shape"]
        if self._owner._framework == "pt":
            from . import torch as bt

            bt._torch_dtype(self._t, self._file.path)  # a dtype torch lacks is refused before any index error
            shape = bt._torch_shape(self._t, self._file.path)
            if self._t["dtype"] == "F4":  # indexed in values, as get_shape() counts them; torch's tensor in bytes
                index = bt._f4_byte_index(index, self._t, self._file.path)
        rows = _leading_rows(index, shape)
        if rows is None:  # whole tensor, or an index form left to the framework (and its errors)
            decoded = self._owner._decode(self._file, self._i, self._t)
        else:
            r0, r1, rest = rows
            decoded = self._owner._decode_rows(self._file, self._i, self._t, r0, r1, shape)
            index = rest
        x = decoded[index]
        if self._owner._framework == "np":
            import numpy as np

            if isinstance(x, np.generic):
                # NumPy gives a scalar (np.float64, np.bool_) for an index that picks one
                # element; safetensors' numpy slices are 0-d arrays then.
                x = np.asarray(x)
            elif x.nbytes < decoded.nbytes and np.may_share_memory(x, decoded):
                x = x.copy()  # see below
        elif x.nbytes < decoded.nbytes and x.untyped_storage().data_ptr() == decoded.untyped_storage().data_ptr():
            # A view would keep all that was decoded alive: four column shards of a 256 MiB
            # tensor, kept by a tensor-parallel loader, would hold 1 GiB.
            x = x.clone(memory_format=_torch_contiguous())
        return x


def _torch_contiguous():
    import torch

    return torch.contiguous_format


def _leading_rows(index, shape):
    """(r0, r1, rest) when `index` selects rows [r0, r1) of the first dimension, fewer than all,
    by an int or a slice of positive step (alone or first in a tuple), with `rest` the same index
    relative to those rows; None otherwise. The rows are what tensor-parallel loaders read."""
    if not shape or shape[0] == 0:
        return None
    first, tail = (index[0], index[1:]) if isinstance(index, tuple) and index else (index, None)
    n = shape[0]
    if isinstance(first, int) and not isinstance(first, bool):
        if not -n <= first < n:
            return None
        r0 = first % n
        r1, adjusted = r0 + 1, 0
    elif isinstance(first, slice):
        if first.step is not None and (not isinstance(first.step, int) or first.step <= 0):
            return None
        try:
            sel = range(n)[first]
        except TypeError:
            return None
        if len(sel) == 0:
            return None
        r0, r1 = sel.start, sel[-1] + 1
        adjusted = slice(0, r1 - r0, sel.step)
    else:
        return None
    if r0 == 0 and r1 == n:
        return None  # the whole tensor: decoded whole, its own checksum checked
    return r0, r1, adjusted if tail is None else (adjusted,) + tail


def __getattr__(name):
    # Model-level helpers import torch and transformers only when used.
    if name in ("from_pretrained", "save_pretrained", "StreamingLoader"):
        from . import _models

        return getattr(_models, name)
    if name in ("torch", "numpy"):
        import importlib

        return importlib.import_module(f".{name}", __name__)
    raise AttributeError(f"module 'bigsmall' has no attribute {name!r}")

