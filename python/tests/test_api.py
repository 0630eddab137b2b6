import errno
import filecmp
import json
import os
import pickle
import shutil
import struct
import subprocess
import sys
import time

import numpy as np
import pytest
import safetensors.torch as st
import torch

import bigsmall
import bigsmall.numpy as bn
import bigsmall.torch as bt
from conftest import TOKENS

DTYPES = ["f32", "bf16", "f16"]


def reference_model(orig, dtype):
    from transformers import AutoModel

    try:
        return AutoModel.from_pretrained(orig, dtype=dtype).eval()
    except TypeError:  # transformers < 4.56 names it torch_dtype
        return AutoModel.from_pretrained(orig, torch_dtype=dtype).eval()


def torch_dtype(tag):
    return {"f32": torch.float32, "bf16": torch.bfloat16, "f16": torch.float16}[tag]


@pytest.mark.parametrize("tag", DTYPES)
def test_directory_restores_byte_identical(models, tmp_path, tag):
    orig, comp = models[tag]
    assert os.path.exists(os.path.join(comp, "model.bs")) and not os.path.exists(os.path.join(comp, "model.safetensors"))
    out = bigsmall.decompress(comp, str(tmp_path / "restored"))
    cmp = filecmp.dircmp(orig, out)
    assert not cmp.left_only and not cmp.right_only and not cmp.diff_files
    for name in os.listdir(orig):
        if os.path.isfile(os.path.join(orig, name)):
            assert filecmp.cmp(os.path.join(orig, name), os.path.join(out, name), shallow=False), name
    bigsmall.verify(comp)


@pytest.mark.parametrize("tag", DTYPES)
def test_load_file_is_bit_identical(models, tag):
    orig, comp = models[tag]
    a = st.load_file(os.path.join(orig, "model.safetensors"))
    b = bt.load_file(os.path.join(comp, "model.bs"))
    assert list(a) == list(b) or sorted(a) == sorted(b)
    for k in a:
        assert a[k].dtype == b[k].dtype and a[k].shape == b[k].shape, k
        assert torch.equal(a[k].view(-1).view(torch.uint8), b[k].view(-1).view(torch.uint8)), k


@pytest.mark.parametrize("tag", DTYPES)
def test_from_pretrained_matches_transformers_exactly(models, tag):
    from transformers import BertModel

    orig, comp = models[tag]
    ref = reference_model(orig, torch_dtype(tag))
    model = bigsmall.from_pretrained(comp, BertModel, progress=False)
    assert next(model.parameters()).dtype == torch_dtype(tag)
    ref_sd, sd = ref.state_dict(), model.state_dict()
    assert sorted(ref_sd) == sorted(sd)
    for k in ref_sd:
        assert torch.equal(ref_sd[k], sd[k]), k
    with torch.no_grad():
        assert torch.equal(ref(input_ids=TOKENS).last_hidden_state, model(input_ids=TOKENS).last_hidden_state)


@pytest.mark.parametrize("tag", DTYPES)
def test_streaming_loader_matches_transformers_exactly(models, tag):
    from transformers import BertModel

    orig, comp = models[tag]
    ref = reference_model(orig, torch_dtype(tag))
    loader = bigsmall.StreamingLoader(comp)
    model = loader.load_model(BertModel, device="cpu", progress=False)
    with torch.no_grad():
        assert torch.equal(ref(input_ids=TOKENS).last_hidden_state, model(input_ids=TOKENS).last_hidden_state)
    a = st.load_file(os.path.join(orig, "model.safetensors"))
    names = []
    for name, t in loader.iter_tensors():
        names.append(name)
        assert torch.equal(a[name].view(-1).view(torch.uint8), t.view(-1).view(torch.uint8)), name
    assert sorted(names) == sorted(a)


def test_a_config_changed_after_compression_is_refused_by_the_loaders(models, tmp_path):
    """The index lists the files copied along with their checksums; the loaders read config.json
    from the compressed directory itself, and checked only the weights."""
    import shutil

    from transformers import BertModel

    _, comp = models["bf16"]
    bad = tmp_path / "bad.bs"
    shutil.copytree(comp, bad)
    (bad / "config.json").write_text((bad / "config.json").read_text() + " ")
    with pytest.raises(bigsmall.CorruptError, match="config.json: changed after compression"):
        bigsmall.from_pretrained(bad, model_class=BertModel, progress=False)
    with pytest.raises(bigsmall.CorruptError, match="config.json: changed after compression"):
        bigsmall.StreamingLoader(bad)
    with pytest.raises(bigsmall.CorruptError):
        bigsmall.verify(bad)
    bigsmall.from_pretrained(bad, model_class=BertModel, progress=False, verify=False)  # opted out
    bigsmall.StreamingLoader(bad, verify=False).load_model(BertModel, progress=False)
    (bad / "config.json").unlink()
    with pytest.raises(bigsmall.FileNotFoundError, match="config.json: missing"):
        bigsmall.verify(bad)


def test_the_loaders_check_the_configs_they_read_also_in_a_subfolder(models, tmp_path):
    """A model in a repository's subfolder is checked against the repository's index; files the
    loaders do not read (a model card edited since) do not stop a load."""
    import shutil

    from transformers import BertModel

    orig, _ = models["bf16"]
    shutil.copytree(orig, tmp_path / "repo" / "sub")
    (tmp_path / "repo" / "README.md").write_text("card")
    bigsmall.compress(tmp_path / "repo")
    comp = tmp_path / "repo.bs"
    (comp / "README.md").write_text("card, edited on the Hub")
    bigsmall.StreamingLoader(comp, subfolder="sub").load_model(BertModel, progress=False)
    (comp / "sub" / "config.json").write_text((comp / "sub" / "config.json").read_text() + " ")
    for load in (lambda: bigsmall.StreamingLoader(comp, subfolder="sub"),
                 lambda: bigsmall.StreamingLoader(comp, subfolder="./sub/"),
                 lambda: bigsmall.StreamingLoader(comp / "sub"),  # the model directory given inside the repository
                 lambda: bigsmall.from_pretrained(comp, model_class=BertModel, subfolder="sub", progress=False)):
        with pytest.raises(bigsmall.CorruptError, match="sub/config.json: changed after compression"):
            load()
    # An index nearer the model that lists no copied files (save_pretrained writes none) does not
    # hide the repository's.
    (comp / "sub" / "config.json").write_text((comp / "sub" / "config.json").read_text()[:-1])
    model = bigsmall.StreamingLoader(comp, subfolder="sub").load_model(BertModel, progress=False)
    bigsmall.save_pretrained(model, tmp_path / "repo4" / "sub")
    bigsmall.compress(tmp_path / "repo4")
    (tmp_path / "repo4.bs" / "sub" / "config.json").write_text("{}")
    with pytest.raises(bigsmall.CorruptError, match="sub/config.json: changed after compression"):
        bigsmall.StreamingLoader(tmp_path / "repo4.bs", subfolder="sub")
    # A subfolder compressed by itself has its own index, which is checked.
    bigsmall.compress(orig, tmp_path / "repo2" / "sub")
    sub2 = tmp_path / "repo2" / "sub"
    (sub2 / "config.json").write_text((sub2 / "config.json").read_text() + " ")
    for load in (lambda: bigsmall.StreamingLoader(tmp_path / "repo2", subfolder="sub"),
                 lambda: bigsmall.StreamingLoader(sub2)):
        with pytest.raises(bigsmall.CorruptError, match="config.json: changed after compression"):
            load()
    # A file of the index's name above the model that is no index, or another model's, is not
    # the model's: it does not stop a load (it did: a stray one in /tmp stopped every load
    # below it), as it does not stop a verify of the model directory.
    (sub2 / "config.json").write_text((sub2 / "config.json").read_text()[:-1])
    nest = tmp_path / "above" / "mid"
    shutil.copytree(sub2, nest / "model.bs")
    for stray in ("garbage", "{}", '{"format": "bigsmall", "format_version": 2, "files": [], "copied": []}',
                  (sub2 / "bigsmall.index.json").read_text()):  # another model's index: lists model.bs, not mid/model.bs
        (tmp_path / "above" / "bigsmall.index.json").write_text(stray)
        bigsmall.StreamingLoader(nest / "model.bs").load_model(BertModel, progress=False)
        bigsmall.from_pretrained(nest / "model.bs", model_class=BertModel, progress=False)
        assert bigsmall.verify(nest / "model.bs") is None
    # The model's own index is checked whatever it holds.
    (nest / "model.bs" / "bigsmall.index.json").write_text("{}")
    with pytest.raises(bigsmall.CorruptError):
        bigsmall.StreamingLoader(nest / "model.bs")
    # A subfolder whose name is not UTF-8 is checked like any other.
    odd = os.fsdecode(b"s\xe9")
    shutil.copytree(orig, tmp_path / "repo3" / odd)
    bigsmall.compress(tmp_path / "repo3")
    bigsmall.StreamingLoader(tmp_path / "repo3.bs", subfolder=odd).load_model(BertModel, progress=False)
    (tmp_path / "repo3.bs" / odd / "config.json").write_text("{}")
    with pytest.raises(bigsmall.CorruptError, match="changed after compression"):
        bigsmall.StreamingLoader(tmp_path / "repo3.bs", subfolder=odd)


def test_save_pretrained_round_trip(models, tmp_path):
    from transformers import BertModel

    orig, _ = models["bf16"]
    ref = reference_model(orig, torch.bfloat16)
    out = bigsmall.save_pretrained(ref, tmp_path / "saved")
    assert os.path.exists(os.path.join(out, "config.json")) and os.path.exists(os.path.join(out, "model.bs"))
    model = bigsmall.from_pretrained(out, BertModel, progress=False)
    with torch.no_grad():
        assert torch.equal(ref(input_ids=TOKENS).last_hidden_state, model(input_ids=TOKENS).last_hidden_state)
    restored = bigsmall.decompress(out, str(tmp_path / "restored"))
    sd = st.load_file(os.path.join(restored, "model.safetensors"))  # safetensors reads what we restore
    with open(os.path.join(out, "bigsmall.index.json")) as f:  # what readers check, as the CLI writes it
        entry = json.load(f)["files"][0]
    assert entry["size"] == os.path.getsize(os.path.join(restored, "model.safetensors"))
    assert entry["bs_checksum"] == f"{bigsmall._core.File.open(os.path.join(out, 'model.bs')).fingerprint:016x}"
    for k, v in ref.state_dict().items():
        if k in sd:
            assert torch.equal(v, sd[k]), k
    # The restore is what transformers' own save_pretrained writes, byte for byte.
    ref.save_pretrained(tmp_path / "hf")
    for name in ("model.safetensors", "config.json"):
        assert (tmp_path / "hf" / name).read_bytes() == open(os.path.join(restored, name), "rb").read(), name


def test_save_pretrained_of_a_model_with_tied_weights(tmp_path):
    # A model built from a config (no `architectures` yet) with tied input and output
    # embeddings: the saved config names its class, as transformers' own save_pretrained writes
    # it, so from_pretrained without a class builds the same model, tied again, outputs exact.
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(0)
    ref = GPT2LMHeadModel(GPT2Config(n_layer=2, n_embd=64, n_head=2, vocab_size=500, n_positions=64,
                                     bos_token_id=0, eos_token_id=0)).eval()
    out = bigsmall.save_pretrained(ref, tmp_path / "saved")
    assert ref.config.architectures is None  # the caller's model is left as it was
    ref.save_pretrained(tmp_path / "hf")
    assert (tmp_path / "hf" / "config.json").read_bytes() == open(os.path.join(out, "config.json"), "rb").read()
    # A torch.compile'd model (never called here, so nothing compiles) saves as the model inside.
    compiled = bigsmall.save_pretrained(torch.compile(ref), tmp_path / "compiled")
    assert open(os.path.join(compiled, "config.json"), "rb").read() == open(os.path.join(out, "config.json"), "rb").read()
    for load in (lambda: bigsmall.from_pretrained(out, progress=False),
                 lambda: bigsmall.StreamingLoader(out).load_model(progress=False),
                 lambda: bigsmall.from_pretrained(compiled, progress=False)):
        model = load()
        assert type(model) is GPT2LMHeadModel
        assert model.lm_head.weight.data_ptr() == model.transformer.wte.weight.data_ptr()
        ids = torch.tensor([[1, 2, 3, 4, 5]])
        with torch.no_grad():
            assert torch.equal(ref(ids).logits, model(ids).logits)


def test_safe_open_reads_single_tensors(models):
    orig, comp = models["f16"]
    a = st.load_file(os.path.join(orig, "model.safetensors"))
    with bigsmall.safe_open(os.path.join(comp, "model.bs"), framework="pt") as f:
        assert sorted(f.keys()) == sorted(a)
        assert f.metadata() == {"format": "pt"}
        name = "encoder.layer.3.attention.self.query.weight"
        assert torch.equal(f.get_tensor(name), a[name])
        sl = f.get_slice(name)
        assert sl.get_shape() == list(a[name].shape) and sl.get_dtype() == "F16"
        assert torch.equal(sl[2:5, :7], a[name][2:5, :7])
        with pytest.raises(KeyError):
            f.get_tensor("no.such.tensor")
    with bigsmall.safe_open(os.path.join(comp, "model.bs"), framework="np") as f:
        x = f.get_tensor("pooler.dense.bias")
        assert isinstance(x, np.ndarray) and np.array_equal(x, a["pooler.dense.bias"].numpy())
    # offset_keys and get_tensors, as safetensors 0.8 has them: data order, every tensor.
    from safetensors import safe_open as st_open

    with st_open(os.path.join(orig, "model.safetensors"), framework="pt") as ref, \
            bigsmall.safe_open(os.path.join(comp, "model.bs"), framework="pt") as f:
        assert f.offset_keys() == ref.offset_keys() != sorted(ref.offset_keys())
        got, want = f.get_tensors(), ref.get_tensors()
        assert list(got) == list(want)
        assert all(got[k].dtype == want[k].dtype and torch.equal(got[k], want[k]) for k in want)
    with bigsmall.safe_open(os.path.join(comp, "model.bs"), framework="np") as f:
        assert all(np.array_equal(v, a[k].numpy()) for k, v in f.get_tensors().items())


def test_torch_and_numpy_save_load(tmp_path):
    g = torch.Generator().manual_seed(0)
    tensors = {
        "w": torch.randn(300, 70, generator=g).to(torch.bfloat16),
        "h": torch.randn(1000, generator=g).half(),
        "ids": torch.arange(5000, dtype=torch.int64) % 7,
        "mask": torch.rand(33, generator=g) > 0.5,
        "scalar": torch.tensor(3.5),
        "empty": torch.zeros(0, 4),
        "fp8": torch.randn(64, generator=g).to(torch.float8_e4m3fn),
    }
    bt.save_file(tensors, tmp_path / "t.bs", metadata={"k": "v"})
    back = bt.load_file(tmp_path / "t.bs")
    for k, v in tensors.items():
        assert back[k].dtype == v.dtype and back[k].shape == v.shape
        assert torch.equal(back[k].view(-1).view(torch.uint8), v.reshape(-1).view(torch.uint8)), k
    arrays = {"a": np.random.default_rng(1).normal(size=(40, 50)).astype(np.float32), "b": np.arange(9, dtype=np.int16)}
    bn.save_file(arrays, tmp_path / "n.bs")
    nb = bn.load_file(tmp_path / "n.bs")
    assert all(np.array_equal(nb[k], arrays[k]) and nb[k].dtype == arrays[k].dtype for k in arrays)


def test_decoding_by_address_checks_sizes_and_buffers(tmp_path):
    w = torch.randn(64, 33, generator=torch.Generator().manual_seed(2)).to(torch.bfloat16)
    bt.save_file({"w": w}, tmp_path / "a.bs")
    f = bigsmall._core.File.open(str(tmp_path / "a.bs"))
    out = torch.empty_like(w)
    with pytest.raises(bigsmall.InvalidArgumentError, match="has 4222 bytes, tensor has 4224"):
        f._read_into_addresses([0], [out.data_ptr()], [out.numel() * 2 - 2])
    with pytest.raises(bigsmall.InvalidArgumentError, match="null buffer"):
        f._read_into_addresses([0], [0], [out.numel() * 2])
    with pytest.raises(bigsmall.InvalidArgumentError, match="one address and size per tensor"):
        f._read_into_addresses([0], [out.data_ptr()], [])
    with pytest.raises(bigsmall.InvalidArgumentError, match="index out of range"):  # not a missing name
        f._read_into_addresses([1], [out.data_ptr()], [out.numel() * 2])
    with pytest.raises(bigsmall.InvalidArgumentError, match="'w' and 'w' overlap"):
        f._read_into_addresses([0, 0], [out.data_ptr(), out.data_ptr() + 2], [out.numel() * 2] * 2)
    f._read_into_addresses([0], [out.data_ptr()], [out.numel() * 2])
    assert torch.equal(out.view(torch.uint8), w.view(torch.uint8))
    # Device buffers are checked the same way, before anything reaches a device (none here).
    with pytest.raises(bigsmall.InvalidArgumentError, match="has 4222 bytes, tensor has 4224"):
        f.read_into_device([0], [0x10000], [out.numel() * 2 - 2], 0)
    with pytest.raises(bigsmall.InvalidArgumentError, match="one buffer and size per tensor"):
        f.read_into_device([0], [0x10000], [], 0)
    # A tensor to decode into must be contiguous, on the CPU.
    with pytest.raises(bigsmall.InvalidArgumentError, match="contiguous CPU"):
        bt._decode(f, [0], [None], "cpu", into=[torch.empty(33, 64, dtype=torch.bfloat16).t()])


def _with_kept_header(bs_path, edit):
    """The .bs at bs_path with its kept safetensors header rewritten by `edit` (bytes -> bytes)
    and every checksum made right again: what an earlier writer or a hostile one could leave."""
    import xxhash
    import zstandard

    b = bytearray(open(bs_path, "rb").read())
    at = int.from_bytes(b[16:24], "little")
    index = zstandard.ZstdDecompressor().decompress(bytes(b[at:]))
    n = int.from_bytes(index[8:16], "little")
    header = edit(index[16:16 + n])
    header += b" " * (-len(header) % 8)
    index = index[:8] + len(header).to_bytes(8, "little") + header + index[16 + n:]
    frame = zstandard.ZstdCompressor().compress(index)
    original = int.from_bytes(b[48:56], "little") + len(header) - n
    b = b[:at] + frame
    b[24:56] = b"".join(x.to_bytes(8, "little") for x in (len(frame), len(index), xxhash.xxh3_64_intdigest(frame), original))
    b[56:64] = xxhash.xxh3_64_intdigest(bytes(b[:56])).to_bytes(8, "little")
    with open(bs_path, "wb") as f:
        f.write(bytes(b))


def test_metadata_reads_every_header_the_core_accepts(tmp_path):
    """metadata() is the core's reading of the kept header: files of earlier writers with bytes
    that are not UTF-8 or a number Python's json refuses ([04]) load, and so does their metadata
    (it raised UnicodeDecodeError / JSONDecodeError, which are not bigsmall errors)."""
    t = {"t": torch.arange(4, dtype=torch.uint8)}
    for name, edit, want in (
            ("ff", lambda h: h.replace(b'"k":"v"', b'"k":"\xff\\u00e9"'), {"k": "\udcff\u00e9", "z": "2"}),
            ("zero", lambda h: h.replace(b'"shape":[4]', b'"shape":[04]'), {"k": "v", "z": "2"})):
        p = tmp_path / f"{name}.bs"
        bt.save_file(t, p, metadata={"k": "v", "z": "2"})
        _with_kept_header(p, edit)
        bigsmall.verify(p)
        with bigsmall.safe_open(p, framework="pt") as f:
            assert f.metadata() == want, name
            assert torch.equal(f.get_tensor("t"), t["t"])
    bt.save_file(t, tmp_path / "none.bs")
    assert bigsmall.safe_open(tmp_path / "none.bs").metadata() is None
    # A null __metadata__ (format 1.2): no metadata, as safetensors reads it (it was refused).
    import safetensors

    h = json.dumps({"__metadata__": None, "t": {"dtype": "U8", "shape": [4], "data_offsets": [0, 4]}}).encode()
    h += b" " * (-len(h) % 8)
    (tmp_path / "null.safetensors").write_bytes(struct.pack("<Q", len(h)) + h + bytes(range(4)))
    with safetensors.safe_open(tmp_path / "null.safetensors", framework="pt") as f:
        assert f.metadata() is None
    bigsmall.compress(tmp_path / "null.safetensors")
    with bigsmall.safe_open(tmp_path / "null.bs", framework="pt") as f:
        assert f.metadata() is None
        assert torch.equal(f.get_tensor("t"), t["t"])
    bigsmall.decompress(tmp_path / "null.bs", tmp_path / "back.safetensors")
    assert (tmp_path / "back.safetensors").read_bytes() == (tmp_path / "null.safetensors").read_bytes()


def test_a_header_that_contradicts_the_index_is_refused_by_every_loader(tmp_path):
    """The kept header says I32 where the index says U32 (checksums made right again): every
    loader refuses the file as verify does; they used to hand out the index's tensor."""
    p = tmp_path / "u.bs"
    bigsmall.numpy.save_file({"u": np.arange(500, dtype=np.uint32) * 9000000}, p)
    _with_kept_header(p, lambda h: h.replace(b'"dtype":"U32"', b'"dtype":"I32"'))
    for load in (lambda: bt.load_file(p), lambda: bigsmall.numpy.load_file(p), lambda: bigsmall.safe_open(p).get_tensor("u"),
                 lambda: bigsmall.verify(p), lambda: bigsmall.info(p)):
        with pytest.raises(bigsmall.CorruptError, match=r"u\.bs: index disagrees with the kept safetensors header"):
            load()


def test_out_of_memory_is_an_error_of_its_own(tmp_path):
    """A .bs index may declare up to 1 GiB. A process that cannot allocate what a file asks for
    gets bigsmall.OutOfMemoryError (also a MemoryError) naming the file, not a crash: here a
    child process whose address space is capped far below the 512 MiB its index declares."""
    import xxhash
    import zstandard

    bt.save_file({"w": torch.randn(4, 4)}, tmp_path / "w.bs")
    b = bytearray((tmp_path / "w.bs").read_bytes())
    raw = 512 << 20
    # Not a thousandfold smaller than it declares, which is refused before any allocation: one
    # byte in 64 not zero.
    piece = bytearray(1 << 20)
    piece[::64] = bytes(range(256)) * ((1 << 20) // 64 // 256)
    z = zstandard.ZstdCompressor(level=1).compressobj(size=raw)
    frame = b"".join(z.compress(bytes(piece)) for _ in range(raw >> 20)) + z.flush()
    assert len(frame) > raw // 1024
    del b[int.from_bytes(b[16:24], "little"):]
    b += frame
    b[24:32] = len(frame).to_bytes(8, "little")
    b[32:40] = raw.to_bytes(8, "little")
    b[40:48] = xxhash.xxh3_64_intdigest(frame).to_bytes(8, "little")
    b[56:64] = xxhash.xxh3_64_intdigest(bytes(b[:56])).to_bytes(8, "little")
    big = tmp_path / "big.bs"
    big.write_bytes(bytes(b))
    child = """
import resource, sys
import bigsmall
vm = next(int(l.split()[1]) for l in open("/proc/self/status") if l.startswith("VmSize:")) << 10
resource.setrlimit(resource.RLIMIT_AS, (vm + (128 << 20), vm + (128 << 20)))
try:
    bigsmall.verify(sys.argv[1])
except bigsmall.OutOfMemoryError as e:
    assert isinstance(e, MemoryError) and isinstance(e, bigsmall.Error), type(e).__mro__
    assert str(e) == sys.argv[1] + ": out of memory", str(e)
    print("refused")
"""
    r = subprocess.run([sys.executable, "-c", child, str(big)], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0 and r.stdout.strip() == "refused", (r.returncode, r.stdout, r.stderr[-2000:])


def test_errors_are_bigsmall_exceptions(models, tmp_path):
    _, comp = models["f32"]
    data = bytearray(open(os.path.join(comp, "model.bs"), "rb").read())
    data[len(data) // 2] ^= 0x40
    bad = tmp_path / "bad.bs"
    bad.write_bytes(bytes(data))
    with pytest.raises(bigsmall.CorruptError) as e:
        bt.load_file(bad)
    assert "bad.bs" in str(e.value) and isinstance(e.value, bigsmall.Error)
    notbs = tmp_path / "x.bs"
    notbs.write_bytes(b"definitely not a bigsmall file, just some bytes")
    with pytest.raises(bigsmall.FormatError):
        bigsmall.safe_open(notbs)
    with pytest.raises(bigsmall.BigsmallIOError) as e:
        bt.load_file(tmp_path / "missing.bs")
    assert isinstance(e.value, OSError)
    with pytest.raises(bigsmall.Error):
        bigsmall.compress(str(notbs), str(tmp_path / "y.bs"))
    assert not os.path.exists(tmp_path / "y.bs")
    # The likeliest mistakes, each named for what it is.
    orig, _ = models["f32"]
    with pytest.raises(bigsmall.FormatError, match="but a safetensors file"):
        bt.load_file(os.path.join(orig, "model.safetensors"))
    for missing in (str(tmp_path / "no-such-model"), "./no-such-model", "a/b/c", "nosuch/", "-x/y"):
        # An OSError, as transformers raises for it (not a KeyError, bigsmall's missing tensor).
        with pytest.raises(bigsmall.FileNotFoundError, match="no such directory") as e:
            bigsmall.from_pretrained(missing, progress=False)
        assert isinstance(e.value, FileNotFoundError) and e.value.errno == errno.ENOENT
        assert not isinstance(e.value, KeyError)
    with pytest.raises(bigsmall.InvalidArgumentError, match="meta device"):
        bt.save_file({"m": torch.empty(3, device="meta")}, tmp_path / "meta.bs")
    assert not os.path.exists(tmp_path / "meta.bs")


def test_compressing_dot_names_the_output_after_the_directory(models, tmp_path, monkeypatch):
    orig, _ = models["f32"]
    d = tmp_path / "mymodel"
    shutil.copytree(orig, d)
    monkeypatch.chdir(d)
    out = bigsmall.compress(".")
    assert os.path.realpath(out) == str(tmp_path / "mymodel.bs") and not os.path.exists(d / "..bs")
    bigsmall.verify(out)


def test_import_does_not_load_torch():
    code = "import sys, bigsmall; assert 'torch' not in sys.modules and 'transformers' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True)
    code = "import sys; from bigsmall import *; assert 'torch' not in sys.modules, 'star import loaded torch'"
    subprocess.run([sys.executable, "-c", code], check=True)


def test_cli_is_installed(models, tmp_path):
    _, comp = models["f32"]
    exe = os.path.join(os.path.dirname(sys.executable), "bigsmall")
    r = subprocess.run([exe, "verify", comp], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr


def test_review_regressions(models, tmp_path):
    from transformers import BertModel

    # 0-d numpy arrays keep their shape; non-arrays are refused.
    bn.save_file({"s": np.array(2.5, dtype=np.float32), "v": np.arange(3, dtype=np.int8)}, tmp_path / "z.bs")
    back = bn.load_file(tmp_path / "z.bs")
    assert back["s"].shape == () and back["s"] == np.float32(2.5)
    with pytest.raises(bigsmall.InvalidArgumentError):
        bn.save_file({"l": [1, 2, 3]}, tmp_path / "l.bs")
    # Views of one storage with other dtypes or strides are distinct tensors.
    w = torch.arange(12, dtype=torch.float32).reshape(3, 4)
    out = bigsmall.save_pretrained({"a": w, "b": w.t(), "c": w.view(torch.int32)}, tmp_path / "views")
    got = bt.load_file(os.path.join(out, "model.bs"))
    assert sorted(got) == ["a", "b", "c"] and torch.equal(got["b"], w.t().contiguous())
    # transformers-style dtype arguments.
    _, comp = models["f32"]
    for kw, want in (({"torch_dtype": "auto"}, torch.float32), ({"dtype": torch.float16}, torch.float16),
                     ({"torch_dtype": "bfloat16"}, torch.bfloat16)):
        m = bigsmall.from_pretrained(comp, BertModel, progress=False, **kw)
        assert next(m.parameters()).dtype == want, kw
    # {"": device} is that device; a map that splits the model is refused.
    m = bigsmall.from_pretrained(comp, BertModel, device_map={"": "cpu"}, progress=False)
    assert next(m.parameters()).device.type == "cpu"
    with pytest.raises(bigsmall.InvalidArgumentError, match="split the model"):
        bigsmall.from_pretrained(comp, BertModel, device_map={"embeddings": "cpu", "encoder": 0}, progress=False)
    # No map ("" or False, as None) is the CPU.
    for none in ("", False):
        assert next(bigsmall.from_pretrained(comp, BertModel, device_map=none, progress=False).parameters()).device.type == "cpu"
    # An int is a GPU, as transformers reads it: 0 (falsy) loaded on the CPU without a word.
    if not torch.cuda.is_available():
        for gpu in (0, 1):
            with pytest.raises(bigsmall.InvalidArgumentError, match=f"cuda:{gpu}"):
                bigsmall.from_pretrained(comp, BertModel, device_map=gpu, progress=False)
    # Loaded inside inference_mode, the model is an ordinary one, as transformers gives it: its
    # parameters can be trained and updated in place once the block ends.
    with torch.inference_mode():
        streamed = bigsmall.from_pretrained(comp, BertModel, progress=False)
        handed = bigsmall.from_pretrained(comp, BertModel, progress=False, add_pooling_layer=False)
        loaded = bigsmall.StreamingLoader(comp).load_model(BertModel, progress=False)
    for m in (streamed, handed, loaded):
        assert not any(p.is_inference() for p in m.parameters())
        m.load_state_dict(m.state_dict())
    with bigsmall.safe_open(os.path.join(comp, "model.bs"), "np", device=torch.device("cpu")) as f:
        assert f.keys()
    # A progress callback crossing the GIL-free core on a directory (copies of the callback are
    # made and destroyed without the GIL).
    seen = []
    bigsmall._core.compress(models["f16"][0], str(tmp_path / "p.bs"), 0, False, True, lambda d, t: seen.append((d, t)))
    assert seen and seen[-1][0] == seen[-1][1]


def test_model_class_defaults_to_the_saved_architecture(models):
    from transformers import BertModel

    _, comp = models["f32"]
    model = bigsmall.from_pretrained(comp, progress=False)  # config.architectures == ["BertModel"]
    assert type(model) is BertModel
    # A class that does not take a transformers config is refused by name, before any decode (it
    # failed in its own constructor, with a TypeError that did not say why).
    for load in (lambda: bigsmall.from_pretrained(comp, model_class=torch.nn.Linear, progress=False),
                 lambda: bigsmall.StreamingLoader(comp).load_model(torch.nn.Linear, progress=False)):
        with pytest.raises(bigsmall.InvalidArgumentError, match="torch.nn.modules.linear.Linear.*load_model"):
            load()

    # A class of one's own that takes the config is built and loaded, as transformers' are.
    class Own(torch.nn.Module):
        def __init__(self, config):
            super().__init__()
            for name, child in BertModel(config).named_children():  # the checkpoint's names
                self.add_module(name, child)

    own = bigsmall.StreamingLoader(comp).load_model(Own, progress=False)
    ref = bigsmall.from_pretrained(comp, progress=False).state_dict()
    assert own.state_dict().keys() == ref.keys() and all(torch.equal(v, ref[k]) for k, v in own.state_dict().items())


def test_info_of_files_and_directories(models, tmp_path):
    _, comp = models["bf16"]
    one = bigsmall.info(os.path.join(comp, "model.bs"))
    d = bigsmall.info(comp)
    assert [f["path"] for f in d["files"]] == [os.path.join(comp, "model.bs")]
    assert d["file_bytes"] == one["file_bytes"] > 0 and d["original_bytes"] == one["original_bytes"]
    assert [t["name"] for t in d["tensors"]] == [t["name"] for t in one["tensors"]]
    assert all(t["file"] == one["path"] for t in d["tensors"])
    # data_offsets as the original file's safetensors header gives them
    with open(os.path.join(models["bf16"][0], "model.safetensors"), "rb") as fh:
        header = json.loads(fh.read(struct.unpack("<Q", fh.read(8))[0]))
    assert {t["name"]: t["data_offsets"] for t in one["tensors"]} == \
        {k: v["data_offsets"] for k, v in header.items() if k != "__metadata__"}
    # An index naming a file outside its directory is refused, by info and by the loaders.
    evil = tmp_path / "evil"
    evil.mkdir()
    (evil / "bigsmall.index.json").write_text(
        '{"format": "bigsmall", "format_version": 1, "files": [{"source": "m.safetensors", "bs": "../m.bs"}]}')
    with pytest.raises(bigsmall.CorruptError, match="unsafe path"):
        bigsmall.info(evil)
    with pytest.raises(bigsmall.CorruptError, match="unsafe path"):
        bigsmall.StreamingLoader(evil)
    with pytest.raises(bigsmall.Error):
        bigsmall.info(tmp_path)  # a directory without an index
    (evil / "bigsmall.index.json").write_text('{"format": "bigsmall", "files": [{"source": "m.safetensors", "bs": "."}]}')
    with pytest.raises(bigsmall.CorruptError, match="unsafe path"):
        bigsmall.info(evil)  # the directory itself: refused, not recursed into
    # A compressed directory is not compressed again (its index would be lost).
    with pytest.raises(bigsmall.FormatError, match="already a compressed model directory"):
        bigsmall.compress(comp, tmp_path / "twice.bs")
    assert not os.path.exists(tmp_path / "twice.bs")


def test_sharded_model_directory(models, tmp_path):
    """A checkpoint in shards with model.safetensors.index.json, as transformers writes large ones."""
    import filecmp

    from transformers import BertModel

    orig, _ = models["bf16"]
    ref = reference_model(orig, torch.bfloat16)
    sharded = tmp_path / "sharded"
    ref.save_pretrained(sharded, max_shard_size="10MB")
    shards = sorted(n for n in os.listdir(sharded) if n.endswith(".safetensors"))
    assert len(shards) >= 2 and os.path.exists(sharded / "model.safetensors.index.json")
    comp = bigsmall.compress(sharded, tmp_path / "sharded.bs")
    assert sorted(os.path.basename(p) for p in bigsmall._core.model_dir_files(comp)) == \
        [n.replace(".safetensors", ".bs") for n in shards]
    back = bigsmall.decompress(comp, tmp_path / "back")
    assert sorted(os.listdir(back)) == sorted(os.listdir(sharded))
    for n in os.listdir(sharded):
        assert filecmp.cmp(sharded / n, os.path.join(back, n), shallow=False), n
    with torch.no_grad():
        want = ref(input_ids=TOKENS).last_hidden_state
        for model in (bigsmall.from_pretrained(comp, BertModel, progress=False),
                      bigsmall.StreamingLoader(comp).load_model(BertModel, progress=False)):
            assert torch.equal(want, model(input_ids=TOKENS).last_hidden_state)
    d = bigsmall.info(comp)
    assert len(d["files"]) == len(shards)
    assert d["file_bytes"] == sum(os.path.getsize(f["path"]) for f in d["files"])
    assert d["original_bytes"] == sum(os.path.getsize(sharded / n) for n in shards)
    assert len(d["tensors"]) == len(ref.state_dict()) and {t["file"] for t in d["tensors"]} == {f["path"] for f in d["files"]}


def test_save_file_restores_to_what_safetensors_writes(tmp_path):
    g = torch.Generator().manual_seed(3)
    t = {
        "z.weight": torch.randn(40, 8, generator=g).to(torch.bfloat16),
        "a.weight": torch.randn(40, 8, generator=g).to(torch.bfloat16),
        "B.bias": torch.randn(8, generator=g),
        "step": torch.tensor(7, dtype=torch.int64),
        "mask": torch.rand(13, generator=g) > 0.5,
        "f8": torch.randn(33, generator=g).to(torch.float8_e4m3fn),
        "half": torch.randn(5, 3, generator=g).to(torch.float16),
        "ids": torch.arange(12, dtype=torch.int32),
        "u8": torch.arange(9, dtype=torch.uint8),
        "empty": torch.empty(0, 3),
        "d": torch.randn(4, dtype=torch.float64, generator=g),
        "\u00e9t\u00e9": torch.randn(3, generator=g).to(torch.float16),
    }
    bt.save_file(t, tmp_path / "t.bs", metadata={"format": "pt"})
    bigsmall.decompress(tmp_path / "t.bs", tmp_path / "t.safetensors")
    st.save_file(t, str(tmp_path / "ref.safetensors"), metadata={"format": "pt"})
    assert (tmp_path / "t.safetensors").read_bytes() == (tmp_path / "ref.safetensors").read_bytes()
    assert list(bt.load_file(tmp_path / "t.bs")) == list(st.load_file(str(tmp_path / "ref.safetensors")))


def test_save_and_load_in_memory_as_safetensors_does(tmp_path):
    g = torch.Generator().manual_seed(4)
    t = {
        "w": torch.randn(300, 257, generator=g).to(torch.bfloat16),
        "h": torch.randn(70, 3, generator=g).half(),
        "ids": torch.arange(100, dtype=torch.int64),
        "empty": torch.empty(0, 3),
        "f8": torch.randn(33, generator=g).to(torch.float8_e4m3fn),
    }
    data = bt.save(t, metadata={"format": "pt"})
    assert isinstance(data, bytes)
    bt.save_file(t, tmp_path / "t.bs", metadata={"format": "pt"})
    assert data == (tmp_path / "t.bs").read_bytes()  # the same .bs, byte for byte
    # ... which restores to the bytes safetensors.torch.save gives.
    bigsmall.decompress(tmp_path / "t.bs", tmp_path / "t.safetensors")
    assert (tmp_path / "t.safetensors").read_bytes() == st.save(t, metadata={"format": "pt"})
    in_file_order = list(st.load_file(str(tmp_path / "t.safetensors")))
    strided = np.zeros(2 * len(data), dtype=np.uint8)
    strided[::2] = np.frombuffer(data, dtype=np.uint8)
    for given in (data, bytearray(data), memoryview(data), np.frombuffer(data, dtype=np.uint8), strided[::2]):
        back = bt.load(given)
        assert list(back) == in_file_order
        for k, v in t.items():
            assert back[k].dtype == v.dtype and back[k].shape == v.shape
            assert torch.equal(back[k].reshape(-1).view(torch.uint8), v.reshape(-1).view(torch.uint8)), k
    arrays = {"a": np.random.default_rng(2).normal(size=(40, 50)).astype(np.float32), "b": np.arange(9, dtype=np.int16)}
    ndata = bn.save(arrays, metadata={"k": "v"})
    bn.save_file(arrays, tmp_path / "n.bs", metadata={"k": "v"})
    assert ndata == (tmp_path / "n.bs").read_bytes()
    nb = bn.load(ndata)
    assert all(np.array_equal(nb[k], arrays[k]) and nb[k].dtype == arrays[k].dtype for k in arrays)

    # Errors: the core's, naming the bytes "<memory>".
    damaged = bytearray(data)
    damaged[len(damaged) // 2] ^= 0x10  # inside the coded "w"
    with pytest.raises(bigsmall.CorruptError, match="^<memory>: "):
        bt.load(bytes(damaged))
    with pytest.raises(bigsmall.FormatError, match="^<memory>: not a bigsmall .bs file but a safetensors file"):
        bt.load(st.save(t))
    with pytest.raises(bigsmall.Error, match="^<memory>: truncated"):
        bn.load(ndata[:-1])
    with pytest.raises(bigsmall.InvalidArgumentError, match="data must be bytes"):
        bt.load(str(tmp_path / "t.bs"))
    with pytest.raises(bigsmall.InvalidArgumentError, match="^<memory>: tensor name 1 is not a str"):
        bt.save({1: t["w"]})
    with pytest.raises(bigsmall.InvalidArgumentError, match="^<memory>: metadata"):
        bn.save(arrays, metadata={"k": 1})


def test_temporaries_of_killed_runs_are_removed_with_a_warning(tmp_path):
    # A run killed beyond cleanup (SIGKILL, the OOM killer) leaves its hidden temporary output or
    # save_pretrained's staging directory; the next write there removes those no live run holds
    # locked (this user's, over a minute old) and says so.
    import fcntl

    old = time.time() - 3600

    def stale(path, is_dir):
        if is_dir:
            os.mkdir(path)
            (path / "model.bs").write_bytes(b"half")
        else:
            path.write_bytes(b"half")
        os.utime(path, (old, old))

    t = {"w": torch.randn(64, 8).to(torch.bfloat16)}
    a = tmp_path / "a"
    a.mkdir()
    stale(a / "t.bs.tmp-bigsmall-L99999-0", False)
    stale(a / ".other.bs.tmp-bigsmall-L99999-1", True)  # another output's: not this call's to take
    stale(a / "t.bs.tmp-bigsmall-L99999-2", False)
    live = os.open(a / "t.bs.tmp-bigsmall-L99999-2", os.O_RDONLY)
    fcntl.flock(live, fcntl.LOCK_EX | fcntl.LOCK_NB)  # as a live run holds its own
    stale(a / "t.bs.tmp-bigsmall-99999-3", False)  # an earlier bigsmall's, unlocked: kept
    try:
        with pytest.warns(UserWarning, match=r"removed .*t\.bs\.tmp-bigsmall-L99999-0, left by a run that was killed"):
            bt.save_file(t, a / "t.bs")
    finally:
        os.close(live)
    assert sorted(p.name for p in a.iterdir()) == [".other.bs.tmp-bigsmall-L99999-1", "t.bs",
                                                   "t.bs.tmp-bigsmall-99999-3", "t.bs.tmp-bigsmall-L99999-2"]

    b = tmp_path / "b"
    b.mkdir()
    stale(b / ".save.tmp-bigsmall-L99999-0", True)
    with pytest.warns(UserWarning, match=r"removed .*\.save\.tmp-bigsmall-L99999-0"):
        bigsmall.save_pretrained(t, b)
    assert sorted(p.name for p in b.iterdir()) == ["bigsmall.index.json", "model.bs"]

    c = tmp_path / "c"
    c.mkdir()
    stale(c / ".src.bs.tmp-bigsmall-L99999-0", True)
    st.save_file(t, str(tmp_path / "src.safetensors"))
    with pytest.warns(UserWarning, match="left by a run that was killed"):
        bigsmall.compress(tmp_path / "src.safetensors", c / "src.bs")
    assert sorted(p.name for p in c.iterdir()) == ["src.bs"]

    # A failed call raises its own error: a warning (an error under -W error) must not replace it.
    d = tmp_path / "d"
    d.mkdir()
    stale(d / "bad.safetensors.tmp-bigsmall-L99999-0", False)
    damaged = bytearray((c / "src.bs").read_bytes())
    damaged[len(damaged) // 2] ^= 0x10
    (d / "bad.bs").write_bytes(bytes(damaged))
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with pytest.raises(bigsmall.CorruptError):
            bigsmall.decompress(d / "bad.bs")


@pytest.fixture(scope="module")
def big_bf16(tmp_path_factory):
    """A 256 MB BF16 checkpoint and its .bs: long enough at one thread (about a second either
    way) for a signal to land mid-call."""
    d = tmp_path_factory.mktemp("big")
    g = torch.Generator().manual_seed(5)
    st.save_file({f"w{i}": (torch.randn(4096, 4096, generator=g) * 0.02).to(torch.bfloat16) for i in range(8)},
                 str(d / "big.safetensors"))
    bigsmall.compress(d / "big.safetensors", d / "big.bs")
    return d / "big.safetensors", d / "big.bs"


@pytest.mark.parametrize("op", ["compress", "decompress"])
def test_ctrl_c_stops_the_core_and_leaves_nothing(big_bf16, tmp_path, op):
    """SIGINT during a call without a progress bar: KeyboardInterrupt within ~0.1 s, no output."""
    import signal
    import time

    src = str(big_bf16[0] if op == "compress" else big_bf16[1])
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    dst = str(out_dir / ("m.bs" if op == "compress" else "m.safetensors"))
    # No Python code runs in the child while the core works (a callback would hear the signal
    # itself). Its temporary output appears when the core starts.
    code = f"""
import time, bigsmall._core as c
t = time.perf_counter()
try:
    c.{op}({src!r}, {dst!r}, 1, False, {"True, " if op == "decompress" else ""}False, None)
    print("finished")
except KeyboardInterrupt:
    print("interrupted", time.perf_counter() - t)
"""
    p = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    deadline = time.time() + 60
    while not os.listdir(out_dir) and p.poll() is None and time.time() < deadline:
        time.sleep(0.001)
    p.send_signal(signal.SIGINT)
    out = p.communicate(timeout=60)[0].split()
    assert out[0] == "interrupted", out
    assert os.listdir(out_dir) == []


def test_ctrl_c_reaches_a_child_forked_from_another_thread(big_bf16, tmp_path):
    """A child forked from a thread other than the main one (a multiprocessing worker started
    by a launcher thread) has that thread as its main thread. The extension read the main
    thread's ident once per process lifetime, so after a call in the parent the child got no
    Ctrl-C hook: its compress ran to the end and left its output."""
    import signal
    import time

    out_dir = tmp_path / "out"
    out_dir.mkdir()
    dst = str(out_dir / "m.bs")
    code = f"""
import os, threading, numpy as np, bigsmall._core as c, bigsmall.numpy as bn
bn.save_file({{"a": np.zeros(4, np.float32)}}, {str(tmp_path / "prime.bs")!r})  # a call on the main thread
def launch():
    pid = os.fork()
    if pid == 0:
        try:
            c.compress({str(big_bf16[0])!r}, {dst!r}, 1, False, False, None)
            print("finished", flush=True)
        except KeyboardInterrupt:
            print("interrupted", flush=True)
        os._exit(0)
    print(pid, flush=True)
    os.waitpid(pid, 0)
t = threading.Thread(target=launch)
t.start()
t.join()
"""
    p = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    child = int(p.stdout.readline())
    deadline = time.time() + 60
    while not os.listdir(out_dir) and p.poll() is None and time.time() < deadline:
        time.sleep(0.001)
    os.kill(child, signal.SIGINT)
    out = p.communicate(timeout=60)[0].split()
    assert out == ["interrupted"], out
    assert os.listdir(out_dir) == []


def test_ctrl_c_stops_load_file(big_bf16):
    """load_file decodes a file in calls of bounded size, so SIGINT is heard between them (not
    only once the whole file is decoded): 8 tensors of 32 MB at one thread, in 32 MB calls.
    The child times a whole warm load first; the interrupted one must stop within half that
    (one call is an eighth of it; the signal comes 20 ms in)."""
    import signal

    code = f"""
import time, bigsmall, bigsmall.torch as bt
bigsmall._LOAD_BATCH_BYTES = 32 << 20
for _ in range(2):
    t = time.perf_counter()
    bt.load_file({str(big_bf16[1])!r}, threads=1)
print("start", time.perf_counter() - t, flush=True)
t = time.perf_counter()
try:
    bt.load_file({str(big_bf16[1])!r}, threads=1)
    print("finished", time.perf_counter() - t)
except KeyboardInterrupt:
    print("interrupted", time.perf_counter() - t)
"""
    p = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    first = p.stdout.readline().split()
    assert first[0] == "start", first
    time.sleep(0.02)
    p.send_signal(signal.SIGINT)
    out = p.communicate(timeout=60)[0].split()
    assert out[0] == "interrupted", out
    assert float(out[1]) < float(first[1]) / 2, (first, out)


def test_loads_in_bounded_calls_are_bit_exact(models, monkeypatch):
    # Every tensor in a call of its own (limit 1 byte), and the batching itself.
    assert list(bigsmall._batches([5, 5, 5, 20, 1], 10)) == [(0, 2), (2, 3), (3, 4), (4, 5)]
    assert list(bigsmall._batches([], 10)) == []
    monkeypatch.setattr(bigsmall, "_LOAD_BATCH_BYTES", 1)
    orig, comp = models["f32"]
    a = st.load_file(os.path.join(orig, "model.safetensors"))
    b = bt.load_file(os.path.join(comp, "model.bs"))
    c = bn.load_file(os.path.join(comp, "model.bs"))
    assert sorted(a) == sorted(b) == sorted(c)
    for k in a:
        assert torch.equal(a[k], b[k]) and np.array_equal(a[k].numpy(), c[k]), k


def test_directory_index_is_json_whatever_the_file_names(tmp_path):
    """bigsmall.index.json records names that are not UTF-8 as surrogate escapes, so json.load
    reads it and os.fsencode gives the names' bytes back; the directory restores unchanged."""
    import json

    src = os.fsencode(str(tmp_path / "src"))
    os.makedirs(src)
    st.save_file({"w": torch.arange(6.0)}, os.fsdecode(src + b"/m\xff\xe9.safetensors"))
    with open(src + b"/vocab\xe9.txt", "wb") as f:
        f.write(b"tokens")
    comp = bigsmall.compress(src, progress=False)
    with open(os.path.join(comp, "bigsmall.index.json"), "rb") as f:
        raw = f.read()
    raw.decode("utf-8")  # valid UTF-8 text
    (entry,) = json.loads(raw)["files"]
    assert os.fsencode(entry["source"]) == b"m\xff\xe9.safetensors" and os.fsencode(entry["bs"]) == b"m\xff\xe9.bs"
    back = os.fsencode(bigsmall.decompress(comp, os.fsdecode(src) + ".restored", progress=False))
    assert sorted(os.listdir(back)) == sorted(os.listdir(src))
    for name in os.listdir(src):
        with open(src + b"/" + name, "rb") as a, open(back + b"/" + name, "rb") as b:
            assert a.read() == b.read()


def test_paths_that_are_not_utf8(models, tmp_path):
    """File names may hold any bytes; Python spells those as surrogate escapes (os.fsdecode)."""
    import shutil

    from transformers import BertModel

    orig, _ = models["bf16"]
    odd = os.fsdecode(os.fsencode(str(tmp_path)) + b"/m\xff\xe9")
    shutil.copytree(orig, odd)
    comp = bigsmall.compress(odd)
    assert comp == odd + ".bs" and os.path.isdir(comp)
    shard = os.path.join(comp, "model.bs")
    assert bigsmall.info(comp)["files"][0]["path"] == shard and bigsmall.info(shard)["path"] == shard
    a = st.load_file(os.path.join(orig, "model.safetensors"))
    b = bt.load_file(shard)
    assert all(torch.equal(a[k].view(-1).view(torch.uint8), b[k].view(-1).view(torch.uint8)) for k in a)
    with bigsmall.safe_open(os.fsencode(shard)) as f:  # bytes paths work too
        assert sorted(f.keys()) == sorted(a)
    bigsmall.from_pretrained(comp, BertModel, progress=False)
    back = bigsmall.decompress(comp, odd + ".restored")
    assert open(os.path.join(back, "model.safetensors"), "rb").read() == open(os.path.join(orig, "model.safetensors"), "rb").read()
    bt.save_file({"w": torch.ones(3)}, odd + ".one.bs")
    assert torch.equal(bt.load_file(odd + ".one.bs")["w"], torch.ones(3))
    # bytes paths work through the public functions too.
    raw = os.fsencode(odd)
    shutil.copytree(orig, odd + "2")
    assert bigsmall.compress(raw + b"2", progress=True) == odd + "2.bs"
    assert bigsmall.decompress(raw + b".bs", raw + b".restored2") == odd + ".restored2"
    assert bigsmall.info(raw + b".bs")["path"] == comp
    bigsmall.from_pretrained(raw + b".bs", BertModel, progress=False)
    # Errors naming such a file are bigsmall errors, the odd bytes shown escaped.
    with pytest.raises(bigsmall.BigsmallIOError, match=r"\\xff"):
        bt.load_file(odd + ".missing.bs")


def test_names_and_metadata_must_be_text(tmp_path):
    t = torch.ones(2)
    for bad in ({"w\udcff": t}, {3: t}):
        with pytest.raises(bigsmall.InvalidArgumentError, match="tensor name"):
            bt.save_file(bad, tmp_path / "a.bs")
    with pytest.raises(bigsmall.InvalidArgumentError, match="a.bs: metadata value"):  # naming the file
        bt.save_file({"w": t}, tmp_path / "a.bs", metadata={"k": "v\udcff"})
    with pytest.raises(bigsmall.InvalidArgumentError, match="a.bs: metadata value of 'k' 1 is not a str"):
        bn.save_file({"w": np.ones(2)}, tmp_path / "a.bs", metadata={"k": 1})
    with pytest.raises(bigsmall.InvalidArgumentError, match="tensor name"):
        bn.save_file({"w\udcff": np.ones(2)}, tmp_path / "a.bs")
    assert not os.path.exists(tmp_path / "a.bs")
    # Keys and values must be str, as safetensors requires (they used to be written as str() made them).
    for bad in ({"step": 5}, {"cfg": {"lr": 0.1}}, {7: "x"}):
        with pytest.raises(bigsmall.InvalidArgumentError, match="metadata"):
            bt.save_file({"w": t}, tmp_path / "b.bs", metadata=bad)
    with pytest.raises(bigsmall.InvalidArgumentError, match="metadata must be a dict"):
        bt.save_file({"w": t}, tmp_path / "b.bs", metadata=[("k", "v")])
    assert not os.path.exists(tmp_path / "b.bs")


def test_save_file_matches_safetensors_on_every_dtype_metadata_and_escapes(tmp_path):
    g = torch.Generator().manual_seed(5)
    t = {
        "c": torch.randn(10, dtype=torch.complex64, generator=g),
        "fnuz4": torch.randn(7, generator=g).to(torch.float8_e4m3fnuz),
        "fnuz5": torch.randn(9, generator=g).to(torch.float8_e5m2fnuz),
        "e8m0": torch.rand(4, generator=g).to(torch.float8_e8m0fnu),
        "i16": torch.arange(3, dtype=torch.int16),
        "u16": torch.tensor([0, 40000, 65535], dtype=torch.int32).to(torch.uint16),
        "f8": torch.randn(5, generator=g).to(torch.float8_e4m3fn),
        "line\nbreak\ttab\x01\x7f\u2028\"q\\/": torch.ones(2),
    }
    for meta in (None, {}, {"k": "\u00e9\n\t\b\f\r\x02"}):
        bt.save_file(t, tmp_path / "t.bs", metadata=meta)
        bigsmall.decompress(tmp_path / "t.bs", tmp_path / "t.safetensors", overwrite=True)
        st.save_file(t, str(tmp_path / "ref.safetensors"), metadata=meta)
        assert (tmp_path / "t.safetensors").read_bytes() == (tmp_path / "ref.safetensors").read_bytes(), meta
        with bigsmall.safe_open(tmp_path / "t.bs") as f:
            assert f.metadata() == meta
        # Compressing safetensors' own file gives the same tensors and metadata back.
        bigsmall.compress(tmp_path / "ref.safetensors", tmp_path / "ref.bs", overwrite=True)
        back = bt.load_file(tmp_path / "ref.bs")
        for k, v in t.items():
            assert back[k].dtype == v.dtype and torch.equal(back[k].view(torch.uint8), v.view(torch.uint8)), k
        with bigsmall.safe_open(tmp_path / "ref.bs") as f:
            assert f.metadata() == meta


def test_a_file_of_a_compressed_directory_is_not_restored_into_it(tmp_path):
    """decompress of one .bs of a compressed directory, without dst, wrote its restore into the
    directory, which then no longer verified; it needs dst, as the CLI's -o."""
    (tmp_path / "m").mkdir()
    st.save_file({"w": torch.arange(64, dtype=torch.float32)}, str(tmp_path / "m" / "model.safetensors"))
    (tmp_path / "m" / "config.json").write_text("{}")
    bigsmall.compress(tmp_path / "m")
    with pytest.raises(bigsmall.InvalidArgumentError, match="a file of the compressed directory"):
        bigsmall.decompress(tmp_path / "m.bs" / "model.bs")
    assert not (tmp_path / "m.bs" / "model.safetensors").exists()
    bigsmall.verify(tmp_path / "m.bs")
    out = bigsmall.decompress(tmp_path / "m.bs" / "model.bs", tmp_path / "model.safetensors")
    assert open(out, "rb").read() == (tmp_path / "m" / "model.safetensors").read_bytes()


def test_signatures_carry_over_from_safetensors():
    """Calls written for safetensors work unchanged, keywords included: every positional
    parameter of safetensors' function is ours, under the same name and in the same place
    (numpy's save_file named its first `tensors` where safetensors has `tensor_dict`)."""
    import inspect

    import safetensors.numpy as sn

    for ours, theirs in ((bn, sn), (bt, st)):
        for name in ("save_file", "save", "load_file", "load"):
            want = [p.name for p in inspect.signature(getattr(theirs, name)).parameters.values() if p.kind != p.KEYWORD_ONLY]
            got = [p.name for p in inspect.signature(getattr(ours, name)).parameters.values()]
            assert got[:len(want)] == want, (ours.__name__, name)
            # keyword-only ones (load_file's `backend`) under their names, with the same defaults
            theirs_kw = {p.name: p.default for p in inspect.signature(getattr(theirs, name)).parameters.values()
                         if p.kind == p.KEYWORD_ONLY}
            ours_kw = {p.name: p.default for p in inspect.signature(getattr(ours, name)).parameters.values()}
            assert all(ours_kw.get(k, inspect.Parameter.empty) == v for k, v in theirs_kw.items()), (ours.__name__, name)


def test_backend_is_taken_as_safetensors_takes_it(tmp_path):
    bt.save_file({"a": torch.arange(4.0)}, tmp_path / "a.bs")
    for backend in ("mmap", "pread"):
        assert torch.equal(bt.load_file(tmp_path / "a.bs", backend=backend)["a"], torch.arange(4.0))
        assert np.array_equal(bn.load_file(tmp_path / "a.bs", backend=backend)["a"], np.arange(4.0, dtype=np.float32))
        with bigsmall.safe_open(tmp_path / "a.bs", "pt", backend=backend) as f:
            assert torch.equal(f.get_tensor("a"), torch.arange(4.0))
    for bad in ("foo", 3, None):
        with pytest.raises(bigsmall.InvalidArgumentError, match="backend"):
            bt.load_file(tmp_path / "a.bs", backend=bad)
        with pytest.raises(ValueError, match="backend"):
            bigsmall.safe_open(tmp_path / "a.bs", "np", backend=bad)


def test_numpy_dtypes(tmp_path):
    a = {"c": (np.arange(6) + 1j).astype(np.complex64), "be": np.arange(5, dtype=">f4"), "bei": np.arange(4, dtype=">i8")}
    bn.save_file(a, tmp_path / "n.bs")
    back = bn.load_file(tmp_path / "n.bs")
    assert back["c"].dtype == np.complex64 and np.array_equal(back["c"], a["c"])
    # Big-endian arrays are stored little-endian, as safetensors' numpy writer stores them.
    assert back["be"].dtype == np.dtype("<f4") and np.array_equal(back["be"], a["be"])
    assert back["bei"].dtype == np.dtype("<i8") and np.array_equal(back["bei"], a["bei"])
    bt.save_file({"b": torch.ones(3, dtype=torch.bfloat16)}, tmp_path / "b.bs")
    try:
        import ml_dtypes  # noqa: F401
    except ImportError:
        with pytest.raises(bigsmall.InvalidArgumentError, match="BF16.*ml_dtypes"):
            bn.load_file(tmp_path / "b.bs")
    else:  # with ml_dtypes, BF16 comes back as its bfloat16, bit for bit
        b = bn.load_file(tmp_path / "b.bs")["b"]
        assert b.dtype == np.dtype(ml_dtypes.bfloat16) and b.view(np.uint16).tolist() == [0x3F80] * 3


def test_errors_follow_python_conventions(tmp_path):
    with pytest.raises(FileNotFoundError) as e:
        bt.load_file(tmp_path / "nope.bs")
    assert isinstance(e.value, bigsmall.Error) and e.value.errno == 2 and "nope.bs" in str(e.value)
    assert e.value.strerror == os.strerror(errno.ENOENT) and not str(e.value).startswith("[Errno")
    # Through pickle (multiprocessing workers): errno was lost, a one-argument OSError has none.
    back = pickle.loads(pickle.dumps(e.value))
    assert type(back) is type(e.value) and back.errno == errno.ENOENT and str(back) == str(e.value)
    with pytest.raises(FileNotFoundError):
        bigsmall.compress(tmp_path / "nope.safetensors")
    bt.save_file({"a": torch.ones(2)}, tmp_path / "m.bs")
    with pytest.raises(bigsmall.BigsmallIOError, match=r"already exists \(pass overwrite=True\)") as e:
        bt.save_file({"a": torch.ones(2)}, tmp_path / "m.bs", overwrite=False)
    assert isinstance(e.value, FileExistsError) and e.value.errno == errno.EEXIST  # as Python's open(..., "x")
    with pytest.raises(KeyError) as e:
        bigsmall.safe_open(tmp_path / "m.bs").get_tensor("zz")
    assert str(e.value) == f"{tmp_path / 'm.bs'}: no tensor named 'zz'"  # not quoted as a KeyError's key
    bad_args = [
        (lambda: bt.save_file([torch.ones(1)], tmp_path / "x.bs"), "must be a dict"),
        (lambda: bn.save_file([np.ones(1)], tmp_path / "x.bs"), "must be a dict"),
        (lambda: bt.save_file({"s": torch.ones(3).to_sparse()}, tmp_path / "x.bs"), "sparse"),
        (lambda: bt.load_file(tmp_path / "m.bs", threads=-1), "threads"),
        (lambda: bt.load_file(tmp_path / "m.bs", threads="2"), "threads"),
        (lambda: bigsmall.safe_open(tmp_path / "m.bs", "pt", device="bogus"), "invalid"),
        (lambda: bigsmall.safe_open(tmp_path / "m.bs", "pt", device="meta"), "meta"),
        (lambda: bigsmall.safe_open(tmp_path / "m.bs", "np", device="cuda"), "CPU only"),
    ]
    if not torch.cuda.is_available():
        bad_args.append((lambda: bt.load_file(tmp_path / "m.bs", device="cuda"), "no CUDA device"))
    if not torch.backends.mps.is_available():  # torch's own message is pages long
        bad_args.append((lambda: bt.load_file(tmp_path / "m.bs", device="mps"), "not available"))
    for call, match in bad_args:
        with pytest.raises(bigsmall.InvalidArgumentError, match=match) as e:
            call()
        assert "\n" not in str(e.value), str(e.value)[:300]
    assert not os.path.exists(tmp_path / "x.bs")
    assert torch.equal(bt.load_file(tmp_path / "m.bs", threads=2**40)["a"], torch.ones(2))  # capped, not refused


def test_lazy_conjugate_and_negative_views_are_saved_as_their_values(tmp_path):
    z = torch.randn(5, dtype=torch.complex64, generator=torch.Generator().manual_seed(1))
    tensors = {"conj": z.conj(), "neg": z.conj().imag}  # views with torch's conj / neg bit set
    assert tensors["conj"].is_conj() and tensors["neg"].is_neg()
    bt.save_file(tensors, tmp_path / "v.bs")
    back = bt.load_file(tmp_path / "v.bs")
    for k, v in tensors.items():
        assert torch.equal(back[k], v.resolve_conj().resolve_neg()), k


def test_a_close_from_another_thread_between_lookup_and_read(tmp_path):
    """get_tensor and get_slice read the file once: a close that lands after the name lookup
    leaves them the file they looked it up in, as slices keep theirs."""
    bt.save_file({"v": torch.arange(6.0)}, tmp_path / "c.bs")
    f = bigsmall.safe_open(tmp_path / "c.bs")
    lookup = f._info
    f._info = lambda name: (lookup(name), f.__exit__(None, None, None))[0]  # the close lands here
    assert torch.equal(f.get_tensor("v"), torch.arange(6.0))
    f2 = bigsmall.safe_open(tmp_path / "c.bs")
    lookup2 = f2._info
    f2._info = lambda name: (lookup2(name), f2.__exit__(None, None, None))[0]
    assert torch.equal(f2.get_slice("v")[2:4], torch.tensor([2.0, 3.0]))


def test_a_file_truncated_while_open_raises_instead_of_crashing(tmp_path):
    """Another program cutting an open .bs in place: the next read raises (the pages past the
    new end would fault, SIGBUS, killing the interpreter)."""
    bt.save_file({"w": torch.arange(50000, dtype=torch.float32)}, tmp_path / "t.bs")
    f = bigsmall.safe_open(tmp_path / "t.bs")
    s = f.get_slice("w")
    os.truncate(tmp_path / "t.bs", 1000)
    for call in (lambda: f.get_tensor("w"), lambda: s[10:20], lambda: f.get_tensors()):
        with pytest.raises(bigsmall.Error, match="truncated by another program while open"):
            call()


def test_safe_open_after_close(tmp_path):
    bt.save_file({"v": torch.arange(6.0).reshape(3, 2)}, tmp_path / "g.bs")
    with bigsmall.safe_open(tmp_path / "g.bs", "pt") as f:
        s = f.get_slice("v")
    assert torch.equal(s[1:], torch.tensor([[2.0, 3.0], [4.0, 5.0]]))  # slices outlive the block, as safetensors'
    for call in (f.keys, f.offset_keys, f.metadata, f.get_tensors, lambda: f.get_tensor("v"), lambda: f.get_slice("v")):
        with pytest.raises(bigsmall.InvalidArgumentError, match="file is closed"):
            call()


def test_model_dtype_follows_the_config(tmp_path):
    """A bfloat16 model whose checkpoint keeps one float32 tensor (listed first: safetensors lays
    4-byte dtypes out first) loads as bfloat16, as transformers loads it."""
    from transformers import AutoModelForCausalLM, LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    cfg = LlamaConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, num_key_value_heads=1,
                      intermediate_size=64, vocab_size=100)
    m = LlamaForCausalLM(cfg).to(torch.bfloat16)
    m.model.norm.weight.data = m.model.norm.weight.data.float()
    m.save_pretrained(tmp_path / "hf")
    c = bigsmall.compress(tmp_path / "hf")
    ref = AutoModelForCausalLM.from_pretrained(tmp_path / "hf")
    got = bigsmall.from_pretrained(c, progress=False)
    assert {p.dtype for p in got.parameters()} == {p.dtype for p in ref.parameters()} == {torch.bfloat16}
    ids = torch.tensor([[1, 5, 9, 3]])
    with torch.no_grad():
        assert torch.equal(got(ids).logits, ref(ids).logits)
    streamed = bigsmall.StreamingLoader(c).load_model(dtype="float16", progress=False)
    assert {p.dtype for p in streamed.parameters()} == {torch.float16}
    with pytest.raises(bigsmall.InvalidArgumentError, match="'nonsense'"):
        bigsmall.from_pretrained(c, dtype="nonsense")
    with pytest.raises(bigsmall.InvalidArgumentError, match="floating-point"):
        bigsmall.from_pretrained(c, dtype=torch.int8)


def test_get_slice_reads_only_the_rows_it_needs(tmp_path):
    """Leading-row slices decode only the chunks holding those rows; every index form gives what
    indexing the whole tensor gives (values, dtype, shape, or the same error)."""
    g = torch.Generator().manual_seed(11)
    t = {"w": torch.randn(3000, 256, generator=g).to(torch.bfloat16), "v": torch.randn(7, 5, 3, generator=g),
         "i": torch.arange(60000, dtype=torch.int32).reshape(600, 100), "s": torch.tensor(2.5)}
    bt.save_file(t, tmp_path / "s.bs")
    forms = [0, -1, 5, 599, slice(None), slice(2, 9), slice(2, 9, 3), slice(-5, None), slice(100, 50), (1, 2),
             (slice(1, 3), slice(0, 2)), (0, ...), (slice(None, None, 2), 0), (slice(3, 4), None), (-2,), Ellipsis,
             (Ellipsis, 0), (None, 0), 7, -8, slice(None, None, -1), (slice(1, 2), slice(None), 1), True,
             slice(1, None, 1000), (slice(2, 3), [0, 1]), (0, 0, 0, 0), slice(0, 10**12), -10**12]
    for fw in ("pt", "np"):
        with bigsmall.safe_open(tmp_path / "s.bs", fw) as f:
            for name in t:
                if fw == "np" and name == "w":
                    continue  # numpy has no bfloat16 without ml_dtypes
                s, full = f.get_slice(name), f.get_tensor(name)
                for ix in forms:
                    try:
                        want, want_err = full[ix], None
                    except Exception as e:  # noqa: BLE001 - the error itself is compared
                        want, want_err = None, (type(e), str(e))
                    try:
                        got, got_err = s[ix], None
                    except Exception as e:  # noqa: BLE001
                        got, got_err = None, (type(e), str(e))
                    assert got_err == want_err, (fw, name, ix)
                    if want_err is None:
                        assert got.shape == want.shape and got.dtype == want.dtype, (fw, name, ix)
                        same = torch.equal(got, want) if fw == "pt" else np.array_equal(got, want)
                        assert same, (fw, name, ix)
    # A damaged chunk is found when a slice needs it and not when it does not.
    bt.save_file({"w": t["w"]}, tmp_path / "w.bs")
    data = bytearray((tmp_path / "w.bs").read_bytes())
    stored = bigsmall.info(tmp_path / "w.bs")["tensors"][0]["stored_bytes"]
    data[64 + stored - 10] ^= 0x55  # the one payload starts at byte 64: this is in its last chunk
    (tmp_path / "bad.bs").write_bytes(bytes(data))
    with bigsmall.safe_open(tmp_path / "bad.bs", verify=False) as f:
        assert torch.equal(f.get_slice("w")[:8], t["w"][:8])  # chunk 0 alone is sound
    with bigsmall.safe_open(tmp_path / "bad.bs") as f:
        with pytest.raises(bigsmall.CorruptError, match="checksum"):
            f.get_slice("w")[-8:]
    # The tables (model) at the payload's start have no checksum of their own: a checked slice
    # decodes the whole tensor once, so damage there is found, never returned as wrong values.
    for bit in range(8):
        data = bytearray((tmp_path / "w.bs").read_bytes())
        data[64 + 5] ^= 1 << bit
        (tmp_path / "badmodel.bs").write_bytes(bytes(data))
        with bigsmall.safe_open(tmp_path / "badmodel.bs") as f:
            with pytest.raises(bigsmall.CorruptError):
                f.get_slice("w")[:8]


def test_one_version_everywhere():
    """The package metadata (pyproject), bigsmall.__version__, the C++ library in the extension
    and the CLI (both from include/bigsmall/version.hpp) say the same."""
    import importlib.metadata

    cli = os.path.join(os.path.dirname(sys.executable), "bigsmall")  # installed with the package
    out = subprocess.run([cli, "--version"], capture_output=True, text=True).stdout
    assert bigsmall.__version__ == importlib.metadata.version("bigsmall")
    assert out.split()[1] == bigsmall.__version__, out
    assert bigsmall._core.library_version == bigsmall.__version__


def write_safetensors(path, entries):
    """A safetensors file made by hand (name -> (dtype, shape, bytes)): headers that
    safetensors' own writer cannot produce."""
    header, data = {}, b""
    for name, (dtype, shape, raw) in entries.items():
        header[name] = {"dtype": dtype, "shape": shape, "data_offsets": [len(data), len(data) + len(raw)]}
        data += raw
    h = json.dumps(header).encode()
    h += b" " * (-len(h) % 8)
    with open(path, "wb") as f:
        f.write(len(h).to_bytes(8, "little") + h + data)


F4 = getattr(torch, "float4_e2m1fn_x2", None)
needs_f4 = pytest.mark.skipif(F4 is None, reason="torch.float4_e2m1fn_x2 needs torch 2.8+")


def f4_tensor(g, *shape):
    return torch.randint(0, 256, shape, dtype=torch.uint8, generator=g).view(F4)


@needs_f4
def test_f4_saves_and_loads_as_safetensors_does(tmp_path):
    """torch.float4_e2m1fn_x2 is F4, two values a byte: the header's last dimension counts
    values, twice the tensor's (which counts bytes), as safetensors writes and reads it."""
    from safetensors import safe_open as st_open

    g = torch.Generator().manual_seed(4)
    t = {"w": f4_tensor(g, 64, 33), "one": f4_tensor(g, 1), "cube": f4_tensor(g, 2, 3, 5), "rows0": f4_tensor(g, 0, 4),
         "cols0": f4_tensor(g, 3, 0), "f": torch.randn(5, generator=g)}
    bt.save_file(t, tmp_path / "t.bs", metadata={"format": "pt"})
    bigsmall.decompress(tmp_path / "t.bs", tmp_path / "t.safetensors")
    st.save_file(t, str(tmp_path / "ref.safetensors"), metadata={"format": "pt"})
    assert (tmp_path / "t.safetensors").read_bytes() == (tmp_path / "ref.safetensors").read_bytes()
    assert bigsmall.info(tmp_path / "t.bs")["tensors"][[x["name"] for x in bigsmall.info(tmp_path / "t.bs")["tensors"]].index("w")]["shape"] == [64, 66]
    # safetensors' own file, compressed, loads as safetensors loads it.
    bigsmall.compress(tmp_path / "ref.safetensors", tmp_path / "ref.bs")
    want = st.load_file(str(tmp_path / "ref.safetensors"))
    for got in (bt.load_file(tmp_path / "ref.bs"), bt.load_file(tmp_path / "t.bs"),
                bigsmall.safe_open(tmp_path / "ref.bs").get_tensors()):
        assert sorted(got) == sorted(want)
        for k in want:
            assert got[k].dtype == want[k].dtype and got[k].shape == want[k].shape, k
            assert torch.equal(got[k].view(torch.uint8), want[k].view(torch.uint8)), k
    with st_open(str(tmp_path / "ref.safetensors"), "pt") as ref, bigsmall.safe_open(tmp_path / "ref.bs", "pt") as f:
        for k in t:
            a, b = ref.get_tensor(k), f.get_tensor(k)
            assert a.dtype == b.dtype and a.shape == b.shape and torch.equal(a.view(torch.uint8), b.view(torch.uint8)), k
            assert f.get_slice(k).get_shape() == ref.get_slice(k).get_shape(), k  # values: [64, 66] for w
            assert f.get_slice(k).get_dtype() == ref.get_slice(k).get_dtype(), k
    # A 0-d float4_e2m1fn_x2 tensor has no F4 shape: safetensors refuses it, and so does bigsmall.
    scalar = {"s": torch.tensor(7, dtype=torch.uint8).view(F4)}
    with pytest.raises(Exception):
        st.save_file(scalar, str(tmp_path / "s.safetensors"))
    with pytest.raises(bigsmall.InvalidArgumentError, match=r"s\.bs: tensor 's' is a 0-d float4_e2m1fn_x2") as e:
        bt.save_file(scalar, tmp_path / "s.bs")
    assert "\n" not in str(e.value) and not os.path.exists(tmp_path / "s.bs")


class _F4Module(torch.nn.Module):
    def __init__(self, cols=3):
        super().__init__()
        self.register_buffer("q", torch.zeros(4, cols, dtype=torch.uint8).view(F4))
        self.lin = torch.nn.Linear(3, 2)


@needs_f4
def test_streaming_loader_places_f4_tensors(tmp_path):
    """A float4_e2m1fn_x2 buffer of shape [4, 3] is F4 [4, 6] in the checkpoint: the loader compares
    shapes as torch holds them (it refused every F4 tensor), and still refuses a real mismatch."""
    g = torch.Generator().manual_seed(5)
    m = _F4Module()
    m.q.view(torch.uint8).copy_(torch.randint(0, 256, (4, 3), dtype=torch.uint8, generator=g))
    bigsmall.save_pretrained(m, tmp_path / "out")
    got = bigsmall.StreamingLoader(tmp_path / "out").load_model(_F4Module(), progress=False)
    assert got.q.dtype == F4 and torch.equal(got.q.view(torch.uint8), m.q.view(torch.uint8))
    assert torch.equal(got.lin.weight, m.lin.weight)
    with pytest.raises(bigsmall.InvalidArgumentError, match=r"model\.bs: q: shape \[4, 6\] \(\[4, 3\] as torch holds F4\) "
                       r"in the checkpoint, \[4, 5\] in the model"):
        bigsmall.StreamingLoader(tmp_path / "out").load_model(_F4Module(cols=5), progress=False)


def test_progress_bar_stays_off_the_terminal_for_short_work(tmp_path, capfd):
    """progress=True shows a bar only once the work has taken half a second (tqdm's delay): a
    short load or compression writes nothing."""
    pytest.importorskip("tqdm")
    bt.save_file({"w": torch.randn(64, 64)}, tmp_path / "w.bs")
    capfd.readouterr()
    bigsmall.decompress(tmp_path / "w.bs", tmp_path / "w.safetensors", progress=True)
    bigsmall.compress(tmp_path / "w.safetensors", tmp_path / "w2.bs", progress=True)
    lin = torch.nn.Linear(8, 8)
    bigsmall.save_pretrained(lin, tmp_path / "m")
    got = bigsmall.StreamingLoader(tmp_path / "m").load_model(torch.nn.Linear(8, 8), progress=True)
    assert torch.equal(got.weight, lin.weight)
    out, err = capfd.readouterr()
    assert out == "" and err == ""
    cb, bar = bigsmall._progress(True, "slow")
    cb(0, 100)
    time.sleep(0.6)
    cb(100, 100)
    bar.close()
    assert "slow: 100%" in capfd.readouterr().err


@needs_f4
def test_tensors_torch_cannot_hold_are_refused_naming_file_and_tensor(tmp_path):
    """F4 whose values do not pair up along the last dimension (safetensors refuses every one of
    these too) and dtypes torch lacks: a one-line InvalidArgumentError naming the file and the
    tensor, from load_file, get_tensor and slices alike; get_shape()/get_dtype() still answer."""
    from safetensors import safe_open as st_open

    cases = {"F4 [2, 1]": ("F4", [2, 1], b"\x07"), "F4 [0, 3]": ("F4", [0, 3], b""), "F4 [5, 5]": ("F4", [5, 5], bytes(13)),
             "F4 []": ("F4", [], b"\x07"), "F6_E2M3": ("F6_E2M3", [4], bytes(3)), "F6_E3M2": ("F6_E3M2", [4], bytes(3))}
    for k, (dtype, shape, raw) in enumerate(cases.values()):
        src, comp = tmp_path / f"c{k}.safetensors", tmp_path / f"c{k}.bs"
        write_safetensors(src, {"ok": ("F32", [2], bytes(8)), "bad": (dtype, shape, raw)})
        bigsmall.compress(src, comp)  # a valid file: bigsmall keeps it byte for byte
        with pytest.raises(Exception):  # noqa: B017 - safetensors' own error, whatever its class
            with st_open(str(src), "pt") as ref:
                ref.get_tensor("bad")
        f = bigsmall.safe_open(comp)
        assert f.get_slice("bad").get_shape() == shape and f.get_slice("bad").get_dtype() == dtype
        assert torch.equal(f.get_tensor("ok"), torch.zeros(2))
        for call in (lambda: bt.load_file(comp), lambda: f.get_tensor("bad"), lambda: f.get_tensors(),
                     lambda: f.get_slice("bad")[:], lambda: f.get_slice("bad")[0]):
            with pytest.raises(bigsmall.InvalidArgumentError, match=rf"c{k}\.bs: tensor 'bad' ") as e:
                call()
            assert "\n" not in str(e.value) and (dtype in str(e.value)), str(e.value)


def f4_values(x):
    """The F4 values of a float4_e2m1fn_x2 tensor as 4-bit codes in a uint8 array of the header's
    shape (each byte's low half first), with each value's position in the file (its id)."""
    b = x.view(torch.uint8).numpy()
    codes = np.stack([b & 15, b >> 4], -1).reshape(b.shape[:-1] + (2 * b.shape[-1],))
    return codes, np.arange(codes.size).reshape(codes.shape)


@needs_f4
def test_f4_slices_index_values_as_get_shape_counts_them(tmp_path):
    """get_slice() of an F4 tensor is indexed in values, as get_shape() counts them (and as
    safetensors' slicer takes them); the result is the float4_e2m1fn_x2 tensor of the bytes
    selected. A selection that splits a byte is refused, as safetensors refuses it."""
    from safetensors import safe_open as st_open

    g = torch.Generator().manual_seed(12)
    t = {"w": f4_tensor(g, 3000, 256), "v": f4_tensor(g, 8), "c": f4_tensor(g, 2, 3, 4)}
    st.save_file(t, str(tmp_path / "f4.safetensors"))
    bigsmall.compress(tmp_path / "f4.safetensors", tmp_path / "f4.bs")
    forms = [slice(None), 0, -1, 5, slice(1, 3), slice(2, 9, 3), slice(-5, None), slice(100, 50), Ellipsis, (),
             (slice(None), slice(0, 4)), (slice(None), slice(0, 3)), (slice(None), slice(1, 5)), (0, slice(2, 6)),
             (slice(None), 3), (0, 0), (Ellipsis, slice(-4, None)), (Ellipsis, 1), (1, Ellipsis), (slice(None), slice(0, 8, 2)),
             (slice(None), slice(4, 4)), (slice(None), slice(3, 3)), (slice(1, 2), slice(None), slice(2, 100)),
             (0, 0, slice(2, 4)), (np.int64(1), slice(0, 2)), 10**6, (0, 0, 0, 0)]
    with st_open(str(tmp_path / "f4.safetensors"), "pt") as ref, bigsmall.safe_open(tmp_path / "f4.bs", "pt") as f:
        for name in t:
            s, full = f.get_slice(name), ref.get_tensor(name)
            assert s.get_shape() == ref.get_slice(name).get_shape() and s.get_dtype() == "F4"
            codes, ids = f4_values(full)
            for ix in forms:
                try:
                    sel = ids[ix]
                except IndexError:
                    with pytest.raises(IndexError):
                        s[ix]
                    continue
                pairs = sel.reshape(sel.shape[:-1] + (sel.shape[-1] // 2, 2)) if sel.ndim and sel.shape[-1] % 2 == 0 else None
                if pairs is None or not (np.all(pairs[..., 0] % 2 == 0) and np.all(pairs[..., 1] == pairs[..., 0] + 1)):
                    with pytest.raises(bigsmall.InvalidArgumentError, match="splits bytes") as e:
                        s[ix]
                    assert "\n" not in str(e.value) and f"tensor {name!r}" in str(e.value), (name, ix)
                    continue
                got = s[ix]
                want = codes[ix].reshape(pairs.shape)
                want = torch.from_numpy(np.ascontiguousarray(want[..., 0] | (want[..., 1] << 4)))
                assert got.dtype == F4 and got.shape == want.shape, (name, ix)
                assert torch.equal(got.contiguous().view(torch.uint8), want), (name, ix)
        with pytest.raises(bigsmall.InvalidArgumentError, match="ints, slices"):
            f.get_slice("w")[None]
    # The header's shape (get_shape()) is what tensor-parallel loaders split: half the values
    # of each row are half the bytes.
    with bigsmall.safe_open(tmp_path / "f4.bs") as f:
        s = f.get_slice("w")
        assert s.get_shape() == [3000, 512]
        half = s.get_shape()[1] // 2  # 256 values, 128 bytes
        assert torch.equal(s[:, half:].view(torch.uint8), t["w"][:, 128:].view(torch.uint8))
        assert torch.equal(s[1000:1010].view(torch.uint8), t["w"][1000:1010].view(torch.uint8))


def test_numpy_slices_of_one_element_are_0d_arrays(tmp_path):
    """Where NumPy indexing gives a scalar (np.float64, np.bool_), safetensors' numpy slices
    give a 0-d array; so do bigsmall's."""
    import safetensors.numpy as sn
    from safetensors import safe_open as st_open

    a = {"v": np.arange(6, dtype=np.float64), "b": np.array([True, False, True]), "m": np.arange(12, dtype=np.int32).reshape(3, 4),
         "s": np.array(2.5, dtype=np.float32)}
    sn.save_file(a, str(tmp_path / "n.safetensors"))
    bigsmall.compress(tmp_path / "n.safetensors", tmp_path / "n.bs")
    forms = {"v": [(), 3, -1, (1,), (1, ...), (..., 2), np.int64(4), slice(1, 3), ...], "b": [0, -1, (2,), (..., 1)],
             "m": [(0, 1), (2, 3), (-1, -1), (np.int64(0), 1), (1, ...), 1], "s": [(), ...]}
    with st_open(str(tmp_path / "n.safetensors"), "np") as ref, bigsmall.safe_open(tmp_path / "n.bs", "np") as f:
        for name, ixs in forms.items():
            for ix in ixs:
                want, got = ref.get_slice(name)[ix], f.get_slice(name)[ix]
                assert type(got) is type(want) is np.ndarray, (name, ix, type(got))
                assert got.shape == want.shape and got.dtype == want.dtype and np.array_equal(got, want), (name, ix)
        assert type(f.get_tensor("s")) is np.ndarray and f.get_tensor("s").shape == ()


def test_arguments_as_safetensors_takes_them_and_clear_refusals(tmp_path):
    p = tmp_path / "a.bs"
    bt.save_file({"w": torch.arange(6, dtype=torch.float32)}, p)
    # device=None is the CPU, as safetensors takes it
    assert bt.load_file(p, device=None)["w"].device.type == "cpu"
    with bigsmall.safe_open(p, framework="pt", device=None) as f:
        assert f.get_tensor("w").device.type == "cpu"
    # Yes/no arguments: bools, numpy bools, 0 and 1; None (which would read as False and turn the
    # checks off) and other values are refused before any work, as bigsmall errors.
    for ok in (True, False, np.bool_(True), 0, 1):
        assert torch.equal(bt.load_file(p, verify=ok)["w"], torch.arange(6, dtype=torch.float32))
    for bad in (None, "yes", 2, 0.0):
        with pytest.raises(bigsmall.InvalidArgumentError, match="verify must be True or False"):
            bt.load_file(p, verify=bad)
        with pytest.raises(bigsmall.InvalidArgumentError, match="verify must be True or False"):
            bigsmall.safe_open(p, verify=bad)
        with pytest.raises(bigsmall.InvalidArgumentError, match="verify must be True or False"):
            bn.load_file(p, verify=bad)
        with pytest.raises(bigsmall.InvalidArgumentError, match="overwrite must be True or False"):
            bt.save_file({"w": torch.ones(1)}, tmp_path / "b.bs", overwrite=bad)
        with pytest.raises(bigsmall.InvalidArgumentError, match="verify must be True or False"):
            bigsmall.StreamingLoader(tmp_path / "nowhere.bs", verify=bad)
    assert not os.path.exists(tmp_path / "b.bs")


def test_messages_name_the_file_and_stay_on_one_line(tmp_path):
    with pytest.raises(bigsmall.InvalidArgumentError, match=r"x\.bs: 'a' is not a torch.Tensor"):
        bt.save_file({"a": 1}, tmp_path / "x.bs")
    with pytest.raises(bigsmall.InvalidArgumentError, match=r"x\.bs: tensor name 1 is not a str"):
        bn.save_file({1: np.ones(2)}, tmp_path / "x.bs")
    with pytest.raises(bigsmall.FileNotFoundError) as e:
        bt.load_file(tmp_path / "no\nfile\x1b.bs")
    assert "\n" not in str(e.value) and "\x1b" not in str(e.value) and "no\\x0afile\\x1b.bs" in str(e.value)
    # bidirectional controls too, as the CLI escapes them: U+202E would show "a<RLO>gpj.exe" as "aexe.jpg"
    with pytest.raises(bigsmall.FileNotFoundError) as e:
        bt.load_file(tmp_path / "a\u202egpj.bs")
    assert "\u202e" not in str(e.value) and "a\\u202egpj.bs" in str(e.value)
    # a directory where a file is expected is an IsADirectoryError, as open() raises
    with pytest.raises(bigsmall.IsADirectoryError) as e:
        bt.load_file(tmp_path)
    assert isinstance(e.value, IsADirectoryError) and e.value.errno == errno.EISDIR
    # save_pretrained into a path that is a file: a bigsmall error naming it
    (tmp_path / "afile").write_text("x")
    with pytest.raises(bigsmall.Error, match="afile: exists and is not a directory"):
        bigsmall.save_pretrained({"w": torch.ones(2)}, tmp_path / "afile")


def test_swapped_imports_and_stale_weights_are_warned_about(tmp_path):
    with pytest.warns(UserWarning, match="bigsmall writes the .bs format, not safetensors"):
        bt.save_file({"w": torch.ones(2)}, tmp_path / "model.safetensors")
    d = tmp_path / "m"
    d.mkdir()
    st.save_file({"w": torch.zeros(2)}, d / "model.safetensors")
    with pytest.warns(UserWarning, match="transformers' from_pretrained of this directory would load those"):
        bigsmall.save_pretrained({"w": torch.ones(2)}, d)
    assert (d / "model.safetensors").exists()  # another format's weights are not removed


def test_save_model_and_load_model_as_safetensors(tmp_path):
    """Tied weights are stored once, under the name safetensors keeps, with the same metadata;
    bigsmall's file and safetensors' file compressed load into a fresh model alike."""
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(0)
    cfg = GPT2Config(n_layer=1, n_head=2, n_embd=16, vocab_size=50, n_positions=8)
    model = GPT2LMHeadModel(cfg).eval()
    bt.save_model(model, tmp_path / "m.bs", metadata={"format": "pt"})
    st.save_model(model, tmp_path / "m.safetensors", metadata={"format": "pt"})
    with bigsmall.safe_open(tmp_path / "m.bs") as a, st.safe_open(tmp_path / "m.safetensors", framework="pt") as b:
        assert sorted(a.keys()) == sorted(b.keys())
        assert a.metadata() == b.metadata()
        for k in a.keys():
            assert torch.equal(a.get_tensor(k), b.get_tensor(k))
    # bigsmall's file, and safetensors' file compressed, load alike
    for path in (tmp_path / "m.bs", bigsmall.compress(tmp_path / "m.safetensors", tmp_path / "c.bs")):
        fresh = GPT2LMHeadModel(cfg).eval()
        missing, unexpected = bt.load_model(fresh, path)
        assert not missing and not unexpected
        for (k, v), (k2, v2) in zip(model.state_dict().items(), fresh.state_dict().items()):
            assert k == k2 and torch.equal(v, v2)
        assert fresh.lm_head.weight.data_ptr() == fresh.transformer.wte.weight.data_ptr()  # still tied
    # what the file lacks is missing, and strict says so
    bt.save_file({"transformer.wte.weight": model.transformer.wte.weight}, tmp_path / "part.bs")
    with pytest.raises(RuntimeError, match="Missing key"):
        bt.load_model(GPT2LMHeadModel(cfg), tmp_path / "part.bs")
    missing, _ = bt.load_model(GPT2LMHeadModel(cfg), tmp_path / "part.bs", strict=False)
    assert "transformer.h.0.attn.c_attn.weight" in missing


def test_load_model_edge_cases(tmp_path):
    from transformers import GPT2Config, GPT2LMHeadModel

    cfg = GPT2Config(n_layer=1, n_head=2, n_embd=16, vocab_size=50, n_positions=8)
    model = GPT2LMHeadModel(cfg).eval()
    # save_file keeps both names of a tied weight (safetensors' save_file refuses them): such a
    # file loads with nothing missing or unexpected
    bt.save_file(model.state_dict(), tmp_path / "both.bs")
    assert bt.load_model(GPT2LMHeadModel(cfg), tmp_path / "both.bs") == (set(), [])
    # metadata must be a dict, as save_file requires; the caller's dict is not changed
    with pytest.raises(bigsmall.InvalidArgumentError, match=r"m\.bs: metadata must be a dict"):
        bt.save_model(model, tmp_path / "m.bs", metadata=[("a", "b")])
    meta = {"format": "pt"}
    bt.save_model(model, tmp_path / "m.bs", metadata=meta)
    assert meta == {"format": "pt"}
    with pytest.raises(bigsmall.InvalidArgumentError, match="strict must be True or False"):
        bt.load_model(GPT2LMHeadModel(cfg), tmp_path / "m.bs", strict=None)


def test_more_messages_and_classes(tmp_path):
    # C1 controls (CSI), line separators and bytes that are not UTF-8 are escaped too
    with pytest.raises(bigsmall.FileNotFoundError) as e:
        bt.load_file(os.fsdecode(bytes(tmp_path / "c1") + b"\xc2\x9b31m\xe2\x80\xa8\xff.bs"))
    text = str(e.value)
    assert len(text.splitlines()) == 1 and "\x9b" not in text and "\udcff" not in text and "\\xff" in text
    # a file where a directory is expected is a NotADirectoryError, as os.makedirs raises
    (tmp_path / "afile").write_text("x")
    with pytest.raises(bigsmall.NotADirectoryError):
        bigsmall.save_pretrained({"w": torch.ones(2)}, tmp_path / "afile" / "sub")
    # only the weight files transformers would load earn the warning
    d = tmp_path / "trainer"
    d.mkdir()
    (d / "model_args.pt").write_bytes(b"x")
    (d / "model.fp16.safetensors").write_bytes(b"x")
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        bigsmall.save_pretrained({"w": torch.ones(2)}, d)


def test_a_tensor_larger_than_memory_is_an_out_of_memory_error(tmp_path):
    """The tensors load_file allocates (torch's or numpy's) count too: torch's allocator raised
    its own RuntimeError."""
    bt.save_file({"w": torch.zeros(64 << 20, dtype=torch.uint8)}, tmp_path / "z.bs")  # 64 MiB of zeros: tiny on disk
    child = """
import resource, sys
import torch, numpy
import bigsmall, bigsmall.torch as bt, bigsmall.numpy as bn
vm = next(int(l.split()[1]) for l in open("/proc/self/status") if l.startswith("VmSize:")) << 10
resource.setrlimit(resource.RLIMIT_AS, (vm + (32 << 20), vm + (32 << 20)))
for load in (bt.load_file, bn.load_file):
    try:
        load(sys.argv[1])
    except bigsmall.OutOfMemoryError as e:
        assert isinstance(e, MemoryError) and "z.bs: tensor 'w': cannot allocate 67108864 bytes" in str(e), str(e)
        print("refused")
"""
    r = subprocess.run([sys.executable, "-c", child, str(tmp_path / "z.bs")], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0 and r.stdout.split() == ["refused", "refused"], (r.returncode, r.stdout, r.stderr[-2000:])


def test_a_shape_the_framework_cannot_represent_is_a_bigsmall_error(tmp_path):
    """[0, 2**62, 2**62] holds no bytes and is valid safetensors; torch and numpy cannot make it."""
    import struct

    header = json.dumps({"z": {"dtype": "F32", "shape": [0, 2**62, 2**62], "data_offsets": [0, 0]}}).encode()
    (tmp_path / "z.safetensors").write_bytes(struct.pack("<Q", len(header)) + header)
    bigsmall.compress(tmp_path / "z.safetensors", tmp_path / "z.bs")
    with pytest.raises(bigsmall.InvalidArgumentError, match=r"z\.bs: tensor 'z': torch cannot make a tensor of shape"):
        bt.load_file(tmp_path / "z.bs")
    with pytest.raises(bigsmall.InvalidArgumentError, match=r"z\.bs: tensor 'z': numpy cannot make an array of shape"):
        bn.load_file(tmp_path / "z.bs")
    # A dimension of 2**63 or more: torch fails to unpack the size (a TypeError) before it can
    # refuse the shape; the same bigsmall error.
    header = json.dumps({"u": {"dtype": "U8", "shape": [0, 2**64 - 1], "data_offsets": [0, 0]}}).encode()
    (tmp_path / "u.safetensors").write_bytes(struct.pack("<Q", len(header)) + header)
    bigsmall.compress(tmp_path / "u.safetensors", tmp_path / "u.bs")
    for load in (lambda: bt.load_file(tmp_path / "u.bs"), lambda: bigsmall.safe_open(tmp_path / "u.bs", "pt").get_tensor("u"),
                 lambda: bigsmall.safe_open(tmp_path / "u.bs", "pt").get_slice("u")[0:0]):
        with pytest.raises(bigsmall.InvalidArgumentError, match=r"u\.bs: tensor 'u': torch cannot make a tensor of shape") as e:
            load()
        assert "\n" not in str(e.value)


def test_slices_do_not_keep_the_whole_decoded_tensor(tmp_path):
    """A column shard (or any slice smaller than what was decoded) owns its memory: a
    tensor-parallel loader keeping four column shards of a large tensor must not hold four whole
    copies of it. Values are those of indexing the whole tensor."""
    g = torch.Generator().manual_seed(5)
    w = torch.randn(64, 4096, generator=g)
    bt.save_file({"w": w}, tmp_path / "w.bs")
    for fw in ("pt", "np"):
        with bigsmall.safe_open(tmp_path / "w.bs", fw) as f:
            s = f.get_slice("w")
            for ix in ((slice(None), slice(0, 64)), (slice(None, None, 2),), (slice(None), 3), (Ellipsis, slice(8, 16)),
                       (slice(2, 4), slice(0, 64))):
                x = s[ix]
                want = w[ix]
                if fw == "pt":
                    assert torch.equal(x, want), ix
                    assert x.untyped_storage().nbytes() == x.nbytes, ix  # nothing else kept alive
                else:
                    assert np.array_equal(x, want.numpy()), ix
                    assert x.base is None or x.base.nbytes == x.nbytes, ix
            whole = s[:]
            assert (whole.untyped_storage().nbytes() if fw == "pt" else whole.nbytes) == w.nbytes


def test_file_contents_passed_as_a_path_get_a_clear_error(tmp_path):
    bt.save_file({"a": torch.arange(4.0)}, tmp_path / "a.bs")
    data = (tmp_path / "a.bs").read_bytes()
    for call in (bt.load_file, bn.load_file, bigsmall.safe_open, bigsmall.verify, bigsmall.info):
        with pytest.raises(bigsmall.InvalidArgumentError, match=r"NUL byte.*contents.*bigsmall\.torch\.load"):
            call(data)
    with pytest.raises(bigsmall.InvalidArgumentError, match=r"NUL byte \(got 5 bytes"):
        bt.load_file(b"a\0bcd")
    assert torch.equal(bt.load(data)["a"], torch.arange(4.0))  # what was meant


def test_load_model_takes_backend_as_load_file_does(tmp_path):
    m = torch.nn.Linear(3, 2)
    bt.save_model(m, tmp_path / "m.bs")
    n = torch.nn.Linear(3, 2)
    missing, unexpected = bt.load_model(n, tmp_path / "m.bs", backend="pread")
    assert not missing and not unexpected
    assert torch.equal(n.weight, m.weight) and torch.equal(n.bias, m.bias)
    with pytest.raises(bigsmall.InvalidArgumentError, match="backend"):
        bt.load_model(n, tmp_path / "m.bs", backend="foo")


def test_a_directory_without_safetensors_is_copied_with_a_warning(tmp_path):
    (tmp_path / "ckpt").mkdir()
    (tmp_path / "ckpt" / "config.json").write_text("{}")
    (tmp_path / "ckpt" / "pytorch_model.bin").write_bytes(b"\0" * 100)
    with pytest.warns(UserWarning, match=r"ckpt: no \*\.safetensors file in it: every file was copied as it is") as w:
        bigsmall.compress(tmp_path / "ckpt", tmp_path / "ckpt.bs")
    assert w[0].filename == __file__  # pointed at the caller's line
    bigsmall.decompress(tmp_path / "ckpt.bs", tmp_path / "back")
    assert (tmp_path / "back" / "pytorch_model.bin").read_bytes() == b"\0" * 100
    (tmp_path / "m").mkdir()
    bt.save_file({"a": torch.ones(3)}, tmp_path / "m" / "x.bs")
    bigsmall.decompress(tmp_path / "m" / "x.bs", tmp_path / "m" / "model.safetensors")
    (tmp_path / "m" / "x.bs").unlink()
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        bigsmall.compress(tmp_path / "m", tmp_path / "m.bs")  # a model: no warning
