"""GPU decode paths: skipped (and reported as skipped) without a CUDA device and a CUDA build."""
import os

import pytest
import torch

import bigsmall
import bigsmall.torch as bt
from conftest import TOKENS

needs_gpu = pytest.mark.skipif(
    not (torch.cuda.is_available() and bigsmall._core.cuda_available()), reason="no CUDA device or no CUDA build")


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
