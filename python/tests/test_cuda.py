"""GPU decode paths: skipped (and reported as skipped) without a CUDA device and a CUDA build."""
import os

import pytest
import torch

import bigsmall
import bigsmall.torch as bt
from conftest import TOKENS

# BIGSMALL_REQUIRE_GPU (bench/gpu_check.sh on the device machine) turns the skip into a failure:
# a check that skips every GPU test would pass without running the GPU decoder.
_gpu = torch.cuda.is_available() and bigsmall._core.cuda_available()
if os.environ.get("BIGSMALL_REQUIRE_GPU", "0") not in ("", "0") and not _gpu:
    raise RuntimeError("BIGSMALL_REQUIRE_GPU: no CUDA device or no CUDA build "
                       f"(torch.cuda.is_available()={torch.cuda.is_available()}, "
                       f"bigsmall._core.cuda_available()={bigsmall._core.cuda_available()})")
needs_gpu = pytest.mark.skipif(not _gpu, reason="no CUDA device or no CUDA build")


@needs_gpu
@pytest.mark.parametrize("tag", ["f32", "bf16", "f16"])
def test_load_file_on_gpu_is_bit_identical(models, tag):
    _, comp = models[tag]
    cpu = bt.load_file(os.path.join(comp, "model.bs"))
    gpu = bt.load_file(os.path.join(comp, "model.bs"), device="cuda")
    for k in cpu:
        assert gpu[k].is_cuda
        assert torch.equal(cpu[k].view(-1).view(torch.uint8), gpu[k].cpu().view(-1).view(torch.uint8)), k


@needs_gpu
def test_streaming_loader_on_gpu_matches_cpu(models):
    from transformers import BertModel

    _, comp = models["bf16"]
    ref = bigsmall.StreamingLoader(comp).load_model(BertModel, device="cpu", progress=False)
    model = bigsmall.StreamingLoader(comp).load_model(BertModel, device="cuda", progress=False)
    assert list(ref.state_dict()) == list(model.state_dict())  # zip below would hide a missing name
    for (k, a), (_, b) in zip(ref.state_dict().items(), model.state_dict().items()):
        assert torch.equal(a, b.cpu()), k
    with torch.no_grad():
        out = model(input_ids=TOKENS.cuda()).last_hidden_state
    assert out.is_cuda


@needs_gpu
def test_corrupt_file_raises_on_gpu(models, tmp_path):
    _, comp = models["f16"]
    data = bytearray(open(os.path.join(comp, "model.bs"), "rb").read())
    data[len(data) // 2] ^= 0x40
    (tmp_path / "bad.bs").write_bytes(bytes(data))
    with pytest.raises(bigsmall.CorruptError):
        bt.load_file(tmp_path / "bad.bs", device="cuda")


@needs_gpu
def test_damaged_tables_are_refused_on_gpu(tmp_path):
    """A tensor's tables (its model, at the start of its payload) have no checksum of their own:
    the GPU decoder checks chunk checksums only, and damage to the tables is caught by the host's
    checksum of what the device decoded. Each bit of a table byte, never wrong values handed out."""
    g = torch.Generator().manual_seed(3)
    w = torch.randn(3000, 256, generator=g).to(torch.bfloat16)
    bt.save_file({"w": w}, tmp_path / "w.bs")
    from test_spec import bsdec

    (entry,) = bsdec.BsFile(str(tmp_path / "w.bs")).entries
    assert entry.codec == 1 and entry.model_size > 5, (entry.codec, entry.model_size)  # float-coded, with tables
    for bit in range(8):
        data = bytearray((tmp_path / "w.bs").read_bytes())
        data[entry.payload_offset + 5] ^= 1 << bit  # inside the tables
        (tmp_path / "bad.bs").write_bytes(bytes(data))
        with pytest.raises(bigsmall.CorruptError):
            bt.load_file(tmp_path / "bad.bs", device="cuda")
    assert torch.equal(bt.load_file(tmp_path / "w.bs", device="cuda")["w"].cpu(), w)


@needs_gpu
def test_damaged_empty_tensor_is_refused_on_gpu(tmp_path):
    """Empty tensors launch nothing on the GPU; their entries were not checked there at all, so a
    file that the CPU loaders and verify refuse loaded on the GPU without a word."""
    import numpy as np
    from test_spec import _entry_payload_field, _rewrite, _safetensors, bsdec

    src = tmp_path / "w.safetensors"
    w = np.random.default_rng(5).normal(0, 0.02, 3000).astype(np.float32)
    _safetensors(src, [("a", "F32", [3000], w.tobytes()), ("e", "F32", [0, 5], b"")])
    bigsmall.compress(str(src), str(tmp_path / "w.bs"))
    names = [e.name for e in bsdec.BsFile(str(tmp_path / "w.bs")).entries]

    def damage(idx):
        idx[_entry_payload_field(idx, names.index(b"e")) + 24] ^= 1  # the entry's checksum
        return idx

    (tmp_path / "bad.bs").write_bytes(_rewrite((tmp_path / "w.bs").read_bytes(), index=damage))
    with pytest.raises(bigsmall.CorruptError):
        bt.load_file(tmp_path / "bad.bs")
    with pytest.raises(bigsmall.CorruptError):
        bt.load_file(tmp_path / "bad.bs", device="cuda")
    out = bt.load_file(tmp_path / "bad.bs", device="cuda", verify=False)
    assert out["e"].shape == (0, 5) and out["e"].is_cuda
    assert torch.equal(out["a"].cpu(), torch.from_numpy(w))
