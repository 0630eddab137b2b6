"""from_pretrained and StreamingLoader against transformers on tiny models: which files hold the
weights, how arguments are split between config and model, what the checkpoint lacks or has in
excess, generation configs, float32-kept modules, and models passed in already built."""
import os
import warnings

import pytest
import torch

import bigsmall


def _bert_config(**kw):
    from transformers import BertConfig

    args = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64, vocab_size=100,
                max_position_embeddings=64)
    return BertConfig(**{**args, **kw})


def _bert(tmp_path, name="hf", seed=0, **save_kw):
    from transformers import BertModel

    torch.manual_seed(seed)
    m = BertModel(_bert_config()).eval()
    m.save_pretrained(tmp_path / name, **save_kw)
    return m


def _same_tensors(a, b):
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys()
    for k in sa:
        assert sa[k].dtype == sb[k].dtype and torch.equal(sa[k], sb[k]), k


def _drop_config_dtype(d):
    """config.json without dtype / torch_dtype: transformers' dtype="auto" then asks the weights."""
    import json

    conf = json.loads((d / "config.json").read_text())
    conf.pop("dtype", None)
    conf.pop("torch_dtype", None)
    (d / "config.json").write_text(json.dumps(conf))


def _quiet_load(*args, **kw):
    return bigsmall.from_pretrained(*args, progress=False, **kw), []


def _streamed(path, *args, **kw):
    """StreamingLoader's model and the warnings it gave (it reports mismatches itself)."""
    with warnings.catch_warnings(record=True) as w:
        warnings.simplefilter("always")
        m = bigsmall.StreamingLoader(path).load_model(*args, progress=False, **kw)
    return m, [str(x.message) for x in w if x.category is UserWarning]


def test_only_the_weights_transformers_would_load(tmp_path):
    """A checkpoint kept in a subdirectory (original/, checkpoint-500/) is not the model's: it
    once overwrote the real weights silently. Sharded checkpoints load the shards the index names."""
    from transformers import BertModel

    ref = _bert(tmp_path)
    torch.manual_seed(1)
    zeroed = BertModel(_bert_config())
    for p in zeroed.parameters():
        p.data.zero_()
    zeroed.save_pretrained(tmp_path / "hf" / "original")
    zeroed.save_pretrained(tmp_path / "hf" / "zz")
    got, _ = _quiet_load(bigsmall.compress(tmp_path / "hf"), BertModel)
    _same_tensors(got, BertModel.from_pretrained(tmp_path / "hf").eval())
    assert torch.equal(got.embeddings.word_embeddings.weight, ref.embeddings.word_embeddings.weight)

    _bert(tmp_path, "sharded", max_shard_size="20KB")
    assert (tmp_path / "sharded" / "model.safetensors.index.json").exists()
    c = bigsmall.compress(tmp_path / "sharded")
    _same_tensors(_quiet_load(c, BertModel)[0], BertModel.from_pretrained(tmp_path / "sharded").eval())
    first = sorted((tmp_path / "sharded.bs").glob("model-*.bs"))[0]
    first.rename(first.with_suffix(".bak"))
    with pytest.raises(bigsmall.FileNotFoundError, match=first.name):  # a shard is missing
        bigsmall.from_pretrained(c, BertModel, progress=False)


def test_a_variant_is_loaded_as_transformers_loads_it(tmp_path):
    """variant= picks model.VARIANT.bs (or the shards of model.safetensors.index.VARIANT.json), as
    transformers picks model.VARIANT.safetensors; it was refused even where the directory held it."""
    from transformers import BertModel

    _bert(tmp_path, "v")
    torch.manual_seed(3)
    half = BertModel(_bert_config()).half().eval()
    half.save_pretrained(tmp_path / "v", variant="fp16")
    _bert(tmp_path, "vs", seed=4)
    torch.manual_seed(5)
    BertModel(_bert_config()).eval().save_pretrained(tmp_path / "vs", variant="ema", max_shard_size="20KB")
    assert (tmp_path / "vs" / "model.safetensors.index.ema.json").exists()
    c, cs = bigsmall.compress(tmp_path / "v"), bigsmall.compress(tmp_path / "vs")
    for path, variant, kw in ((c, "fp16", {"dtype": torch.float16}), (cs, "ema", {})):
        want = BertModel.from_pretrained(tmp_path / os.path.basename(path)[:-3], variant=variant, **kw).eval()
        _same_tensors(bigsmall.from_pretrained(path, BertModel, variant=variant, progress=False, **kw), want)
        _same_tensors(bigsmall.StreamingLoader(path, variant=variant).load_model(BertModel, progress=False, **kw), want)
    # Without it, the plain weights, as before.
    _same_tensors(bigsmall.from_pretrained(c, BertModel, progress=False), BertModel.from_pretrained(tmp_path / "v").eval())
    with pytest.raises(FileNotFoundError, match="variant 'bf16'"):
        bigsmall.from_pretrained(c, BertModel, variant="bf16", progress=False)
    with pytest.raises(bigsmall.InvalidArgumentError, match="variant"):
        bigsmall.StreamingLoader(c, variant="../x")


def test_arguments_go_where_transformers_sends_them(tmp_path):
    from transformers import BertModel

    _bert(tmp_path)
    c = bigsmall.compress(tmp_path / "hf")
    m, _ = _quiet_load(c, BertModel, add_pooling_layer=False)  # a constructor argument
    ref = BertModel.from_pretrained(tmp_path / "hf", add_pooling_layer=False)
    assert m.pooler is None and ref.pooler is None
    m, _ = _quiet_load(c, BertModel, attn_implementation="eager", hidden_dropout_prob=0.25)  # config attributes
    assert m.config.hidden_dropout_prob == 0.25 and m.config._attn_implementation == "eager"
    s, _ = _streamed(c, BertModel, attn_implementation="eager", hidden_dropout_prob=0.25)
    assert s.config.hidden_dropout_prob == 0.25 and s.config._attn_implementation == "eager"
    for load in (bigsmall.from_pretrained, lambda *a, **k: bigsmall.StreamingLoader(a[0]).load_model(*a[1:], **k)):
        with pytest.raises(TypeError, match="bogus"):
            load(c, BertModel, bogus=1, progress=False)
    with pytest.raises(bigsmall.InvalidArgumentError, match="ignore_mismatched_sizes"):
        bigsmall.StreamingLoader(c).load_model(BertModel, ignore_mismatched_sizes=True, progress=False)
    # config= is used as given; the checkpoint's two layers then include one the model lacks.
    cfg = _bert_config(num_hidden_layers=1)
    m, _ = _quiet_load(c, BertModel, config=cfg)
    _same_tensors(m, BertModel.from_pretrained(tmp_path / "hf", config=cfg))
    s, warned = _streamed(c, BertModel, config=cfg)
    _same_tensors(s, m)
    assert any("not used by BertModel" in w and "encoder.layer.1." in w for w in warned), warned
    with pytest.raises(bigsmall.InvalidArgumentError, match="model class"):
        bigsmall.StreamingLoader(c).load_model("BertModel", progress=False)
    with pytest.raises(bigsmall.InvalidArgumentError, match="model class"):
        bigsmall.from_pretrained(c, "BertModel", progress=False)


def test_a_new_head_is_initialised_and_reported(tmp_path):
    """Fine-tuning starts from a checkpoint without the task head: transformers initialises the
    head and says so; bigsmall once refused the load."""
    from transformers import BertForSequenceClassification

    _bert(tmp_path)
    c = bigsmall.compress(tmp_path / "hf")
    ref = BertForSequenceClassification.from_pretrained(tmp_path / "hf", num_labels=3)
    got, _ = _quiet_load(c, BertForSequenceClassification, num_labels=3)
    streamed, warned = _streamed(c, BertForSequenceClassification, num_labels=3)
    assert any("newly initialised" in w and "classifier.weight" in w for w in warned), warned
    for m in (got, streamed):
        for k, v in ref.state_dict().items():
            if not k.startswith("classifier"):
                assert torch.equal(m.state_dict()[k], v), k
        w = m.classifier.weight
        assert torch.isfinite(w).all() and 0.01 < w.std().item() < 0.04  # initializer_range 0.02, not raw memory
        assert torch.equal(m.classifier.bias, torch.zeros(3))


def test_untied_by_config_is_initialised_not_left_raw(tmp_path):
    """tie_word_embeddings=False on a checkpoint saved tied: lm_head is not in the file. It was
    left as uninitialised memory (max |w| 9e-41) because the class lists it as tied."""
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(0)
    m = GPT2LMHeadModel(GPT2Config(n_embd=32, n_layer=2, n_head=2, vocab_size=100, n_positions=32))
    m.save_pretrained(tmp_path / "hf")
    c = bigsmall.compress(tmp_path / "hf")
    got, _ = _quiet_load(c, tie_word_embeddings=False)
    streamed, warned = _streamed(c, tie_word_embeddings=False)
    assert any("lm_head.weight" in w for w in warned), warned
    for m in (got, streamed):
        assert m.lm_head.weight.data_ptr() != m.transformer.wte.weight.data_ptr()
        assert 0.01 < m.lm_head.weight.std().item() < 0.04
    for m, warned in (_quiet_load(c), _streamed(c)):
        assert m.lm_head.weight.data_ptr() == m.transformer.wte.weight.data_ptr() and not warned


def test_generation_config_is_taken_from_the_directory(tmp_path):
    from transformers import AutoModelForCausalLM, GenerationConfig, GPT2Config, GPT2LMHeadModel

    torch.manual_seed(0)
    m = GPT2LMHeadModel(GPT2Config(n_embd=32, n_layer=2, n_head=2, vocab_size=100, n_positions=32))
    m.generation_config = GenerationConfig(eos_token_id=[7, 8], max_new_tokens=7, pad_token_id=0)
    m.save_pretrained(tmp_path / "hf")
    got, _ = _quiet_load(bigsmall.compress(tmp_path / "hf"))
    ref = AutoModelForCausalLM.from_pretrained(tmp_path / "hf")
    assert got.generation_config.max_new_tokens == ref.generation_config.max_new_tokens == 7
    assert got.generation_config.eos_token_id == ref.generation_config.eos_token_id == [7, 8]
    ids = torch.tensor([[1, 2, 3]])
    assert torch.equal(got.generate(ids, do_sample=False), ref.generate(ids, do_sample=False))


def test_float32_kept_modules_stay_float32(tmp_path):
    """T5 keeps its feed-forward output (wo) in float32 under float16, where it overflows."""
    from transformers import T5Config, T5ForConditionalGeneration

    torch.manual_seed(0)
    m = T5ForConditionalGeneration(T5Config(d_model=32, d_ff=64, d_kv=8, num_layers=1, num_heads=2, vocab_size=100))
    m.save_pretrained(tmp_path / "hf")
    c = bigsmall.compress(tmp_path / "hf")
    ref = T5ForConditionalGeneration.from_pretrained(tmp_path / "hf", dtype=torch.float16)
    got, _ = _quiet_load(c, dtype=torch.float16)
    dtypes = {k: v.dtype for k, v in got.state_dict().items()}
    assert dtypes == {k: v.dtype for k, v in ref.state_dict().items()}
    assert {dtypes[k] for k in dtypes if ".wo." in k} == {torch.float32}
    _same_tensors(got, ref)


def test_a_model_built_on_the_meta_device_is_loaded_in_place(tmp_path):
    """Its computed buffers (position_ids; a Llama's rotary inv_freq) are recomputed too:
    to_empty() leaves them as raw memory, which once gave wrong logits silently."""
    from transformers import BertModel, LlamaConfig, LlamaForCausalLM

    ref = _bert(tmp_path)
    c = bigsmall.compress(tmp_path / "hf")
    with torch.device("meta"):
        empty = BertModel(_bert_config())
    got = bigsmall.StreamingLoader(c).load_model(empty, progress=False)
    _same_tensors(got, ref)
    ids = torch.tensor([[1, 5, 9, 3]])
    assert torch.equal(got(ids).last_hidden_state, ref(ids).last_hidden_state)
    torch.manual_seed(0)
    cfg = LlamaConfig(hidden_size=32, num_hidden_layers=1, num_attention_heads=2, num_key_value_heads=1,
                      intermediate_size=64, vocab_size=100)
    LlamaForCausalLM(cfg).save_pretrained(tmp_path / "llama")
    ref = LlamaForCausalLM.from_pretrained(tmp_path / "llama").eval()
    with torch.device("meta"):
        empty = LlamaForCausalLM(cfg)
    got = bigsmall.StreamingLoader(bigsmall.compress(tmp_path / "llama")).load_model(empty, progress=False)
    assert torch.equal(got(ids).logits, ref(ids).logits)
    with pytest.raises(bigsmall.InvalidArgumentError, match="already built"):
        bigsmall.StreamingLoader(c).load_model(BertModel(_bert_config()), num_labels=2, progress=False)


def test_a_mistyped_local_name_is_not_sent_to_the_hub(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    for name in ("typo.bs", "nodir/model.bs"):
        with pytest.raises(bigsmall.FileNotFoundError, match="no such directory"):
            bigsmall.from_pretrained(name, progress=False)


def test_save_pretrained_over_a_sharded_model_leaves_no_stale_weights(tmp_path):
    """A directory that held a sharded model: its shard index would send from_pretrained to the
    old shards. save_pretrained removes what the old indexes name, as transformers does."""
    from transformers import BertModel

    _bert(tmp_path, "sharded", max_shard_size="20KB")
    out = bigsmall.compress(tmp_path / "sharded")
    (tmp_path / "sharded.bs" / "notes.txt").write_text("mine")
    new = _bert(tmp_path, "other", seed=5)
    bigsmall.save_pretrained(new, out)
    assert sorted(p.name for p in (tmp_path / "sharded.bs").iterdir()) == [
        "bigsmall.index.json", "config.json", "model.bs", "notes.txt"]
    _same_tensors(_quiet_load(out, BertModel)[0], new)


def test_a_checkpoint_holding_only_the_tied_head_loads_the_embedding_from_it(tmp_path):
    """safetensors' save_model keeps one name of a tied pair, the first in sort order:
    lm_head.weight. The embedding is then tied from it, as transformers ties it; it was left as
    raw memory without a warning."""
    import safetensors.torch as st
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    cfg = LlamaConfig(hidden_size=32, num_hidden_layers=1, num_attention_heads=2, num_key_value_heads=1,
                      intermediate_size=64, vocab_size=100, tie_word_embeddings=True)
    m = LlamaForCausalLM(cfg).eval()
    (tmp_path / "hf").mkdir()
    cfg.save_pretrained(tmp_path / "hf")
    st.save_model(m, str(tmp_path / "hf" / "model.safetensors"))
    assert "lm_head.weight" in st.load_file(str(tmp_path / "hf" / "model.safetensors"))
    c = bigsmall.compress(tmp_path / "hf")
    ids = torch.tensor([[1, 5, 9, 3]])
    for got, _ in (_quiet_load(c, LlamaForCausalLM), _streamed(c, LlamaForCausalLM)):
        assert torch.equal(got.model.embed_tokens.weight, m.model.embed_tokens.weight)
        assert torch.equal(got(ids).logits, m(ids).logits)


def test_key_conversions_and_config_classes_are_transformers_own(tmp_path):
    """transformers' renames (legacy LayerNorm gamma/beta; CLIP's vision_model.* for
    CLIPVisionModel) and a class's own config class apply in from_pretrained, which hands the
    tensors to transformers, and in the streaming loader, which finds each tensor's place by
    transformers' own renaming (it left the renamed LayerNorms at their initial values, with a
    warning, and refused the CLIP checkpoint)."""
    import safetensors.torch as st
    from transformers import BertModel, CLIPConfig, CLIPModel, CLIPVisionModel

    ref = _bert(tmp_path)
    with torch.no_grad():  # away from their initial values, which a loader that skips them keeps
        for n, t in ref.named_parameters():
            if "LayerNorm" in n:
                t.normal_()
    sd = {k.replace("LayerNorm.weight", "LayerNorm.gamma").replace("LayerNorm.bias", "LayerNorm.beta"): v
          for k, v in ref.state_dict().items()}
    assert any("gamma" in k for k in sd)
    (tmp_path / "old").mkdir()
    ref.config.save_pretrained(tmp_path / "old")
    st.save_file({k: v.contiguous() for k, v in sd.items()}, str(tmp_path / "old" / "model.safetensors"))
    c = bigsmall.compress(tmp_path / "old")
    got, _ = _quiet_load(c, BertModel)
    _same_tensors(got, BertModel.from_pretrained(tmp_path / "old"))
    _same_tensors(got, ref)
    streamed, warned = _streamed(c, BertModel)
    _same_tensors(streamed, ref)
    assert warned == []
    # Saved again, a streamed model writes the names it was loaded under, as transformers' own
    # model does (it records the renames it used; the streamed one wrote modern names).
    want_names = None
    for i, m in enumerate((BertModel.from_pretrained(tmp_path / "old"), streamed)):
        m.save_pretrained(tmp_path / f"resaved{i}")
        names = sorted(st.load_file(str(tmp_path / f"resaved{i}" / "model.safetensors")))
        assert want_names is None or names == want_names
        want_names = names
    assert any(n.endswith("LayerNorm.gamma") for n in want_names)
    bigsmall.save_pretrained(streamed, tmp_path / "resaved.bs")
    assert sorted(t["name"] for t in bigsmall.info(tmp_path / "resaved.bs" / "model.bs")["tensors"]) == want_names
    torch.manual_seed(0)
    clip = CLIPModel(CLIPConfig(text_config=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                                                 num_attention_heads=2, vocab_size=100, max_position_embeddings=16),
                                vision_config=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                                                   num_attention_heads=2, image_size=32, patch_size=16),
                                projection_dim=16))
    clip.save_pretrained(tmp_path / "clip")
    want = CLIPVisionModel.from_pretrained(tmp_path / "clip")
    got, _ = _quiet_load(bigsmall.compress(tmp_path / "clip"), CLIPVisionModel)
    _same_tensors(got, want)
    streamed, warned = _streamed(tmp_path / "clip.bs", CLIPVisionModel)
    _same_tensors(streamed, want)
    assert len(warned) == 1 and "not used by CLIPVisionModel" in warned[0]  # the text tower, as transformers reports


def test_streaming_refuses_what_transformers_merges_on_loading(tmp_path):
    """Mixtral's checkpoint holds one tensor per expert, which transformers 5 merges into one per
    layer on loading: no single place to decode into. The streaming loader loaded the rest and
    left every expert at its initial value with a warning; it refuses before decoding anything,
    and from_pretrained, through transformers, loads it."""
    from transformers import MixtralConfig, MixtralForCausalLM

    if bigsmall._models._transformers_major() < 5:
        pytest.skip("transformers 4 keeps Mixtral's experts as stored")
    torch.manual_seed(0)
    m = MixtralForCausalLM(MixtralConfig(num_hidden_layers=1, hidden_size=32, intermediate_size=64,
                                         num_attention_heads=4, num_key_value_heads=2, vocab_size=100,
                                         num_local_experts=4, num_experts_per_tok=2))
    m.save_pretrained(tmp_path / "mx")
    c = bigsmall.compress(tmp_path / "mx")
    with pytest.raises(bigsmall.InvalidArgumentError, match="weight conversions .* bigsmall.from_pretrained does"):
        bigsmall.StreamingLoader(c).load_model(MixtralForCausalLM, progress=False)
    got, _ = _quiet_load(c, MixtralForCausalLM)
    _same_tensors(got, MixtralForCausalLM.from_pretrained(tmp_path / "mx"))


def test_streaming_refuses_a_checkpoint_of_another_model(tmp_path):
    """None of the checkpoint's tensors has a place in the model: refused, not handed back as
    initial values with warnings."""
    from transformers import GPT2Config, GPT2Model

    _bert(tmp_path)
    c = bigsmall.compress(tmp_path / "hf")
    with pytest.raises(bigsmall.InvalidArgumentError, match="none of the checkpoint's .* tensors has a place in GPT2Model"):
        bigsmall.StreamingLoader(c).load_model(GPT2Model(GPT2Config(n_embd=32, n_layer=1, n_head=2, vocab_size=100)),
                                               progress=False)


def test_tied_pair_both_in_the_checkpoint_with_different_values_stays_untied(tmp_path):
    """As transformers: a config that ties the embeddings, a checkpoint holding both with
    different values: both are kept, untied."""
    import safetensors.torch as st
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    cfg = LlamaConfig(hidden_size=32, num_hidden_layers=1, num_attention_heads=2, num_key_value_heads=1,
                      intermediate_size=64, vocab_size=100, tie_word_embeddings=True)
    sd = {k: v.clone().contiguous() for k, v in LlamaForCausalLM(cfg).state_dict().items()}
    sd["lm_head.weight"] = torch.randn(100, 32)
    (tmp_path / "hf").mkdir()
    cfg.save_pretrained(tmp_path / "hf")
    st.save_file(sd, str(tmp_path / "hf" / "model.safetensors"))
    ref = LlamaForCausalLM.from_pretrained(tmp_path / "hf")
    c = bigsmall.compress(tmp_path / "hf")
    for got, _ in (_quiet_load(c, LlamaForCausalLM), _streamed(c, LlamaForCausalLM)):
        assert got.lm_head.weight.data_ptr() != got.model.embed_tokens.weight.data_ptr()
        _same_tensors(got, ref)


def _llama_config(**kw):
    from transformers import LlamaConfig

    args = dict(hidden_size=32, num_hidden_layers=1, num_attention_heads=2, num_key_value_heads=1,
                intermediate_size=64, vocab_size=100)
    return LlamaConfig(**{**args, **kw})


def test_tied_pair_both_in_the_checkpoint_with_equal_values_is_tied(tmp_path):
    """A checkpoint converted from a .bin state dict holds both tensors of a tied pair. transformers
    ties them when equal; from_pretrained decided before decoding (comparing uninitialised
    memory) and left them untied, T5's three embeddings as three copies."""
    import safetensors.torch as st
    from transformers import LlamaForCausalLM, T5Config, T5ForConditionalGeneration

    torch.manual_seed(0)
    cfg = _llama_config(tie_word_embeddings=True)
    sd = {k: v.clone().contiguous() for k, v in LlamaForCausalLM(cfg).state_dict().items()}
    sd["lm_head.weight"] = sd["model.embed_tokens.weight"].clone()
    (tmp_path / "hf").mkdir()
    cfg.save_pretrained(tmp_path / "hf")
    st.save_file(sd, str(tmp_path / "hf" / "model.safetensors"))
    ref = LlamaForCausalLM.from_pretrained(tmp_path / "hf")
    assert ref.lm_head.weight is ref.model.embed_tokens.weight
    c = bigsmall.compress(tmp_path / "hf")
    for got, _ in (_quiet_load(c, LlamaForCausalLM), _streamed(c, LlamaForCausalLM)):
        assert got.lm_head.weight is got.model.embed_tokens.weight
        assert torch.equal(got.lm_head.weight, sd["lm_head.weight"])
    torch.manual_seed(0)
    t5 = T5Config(num_layers=1, num_decoder_layers=1, d_model=32, d_ff=64, num_heads=2, d_kv=16, vocab_size=100)
    T5ForConditionalGeneration(t5).save_pretrained(tmp_path / "t5")
    sd = st.load_file(str(tmp_path / "t5" / "model.safetensors"))
    for k in ("encoder.embed_tokens.weight", "decoder.embed_tokens.weight"):
        sd[k] = sd["shared.weight"].clone()
    st.save_file(sd, str(tmp_path / "t5" / "model.safetensors"), metadata={"format": "pt"})
    got, _ = _quiet_load(bigsmall.compress(tmp_path / "t5"))
    ref = T5ForConditionalGeneration.from_pretrained(tmp_path / "t5")
    ptrs = lambda m: {m.shared.weight.data_ptr(), m.encoder.embed_tokens.weight.data_ptr(),  # noqa: E731
                      m.decoder.embed_tokens.weight.data_ptr()}
    assert len(ptrs(ref)) == 1 and len(ptrs(got)) == 1
    _same_tensors(got, ref)


def test_save_pretrained_from_several_threads_into_one_directory(tmp_path):
    """Writers into one directory take turns: interleaved, their moves failed with a bare
    FileNotFoundError or left one writer's model.bs beside another's index (or an index alone)."""
    import threading

    g = torch.Generator().manual_seed(3)
    sds = [{f"w{j}": torch.randn(64, 64, generator=g).to(torch.bfloat16) for j in range(6)} for _ in range(4)]
    out = str(tmp_path / "m")
    for _ in range(6):
        errors = []

        def save(sd):
            try:
                bigsmall.save_pretrained(sd, out, overwrite=True)
            except Exception as e:  # noqa: BLE001 - every one is a failure here
                errors.append(e)

        ts = [threading.Thread(target=save, args=(sd,)) for sd in sds]
        for t in ts:
            t.start()
        for t in ts:
            t.join()
        assert errors == []
        bigsmall._core.model_dir_files(out)  # each .bs against the index: one writer's whole output
        got = bigsmall.torch.load_file(os.path.join(out, "model.bs"))
        assert any(all(torch.equal(got[k], sd[k]) for k in sd) for sd in sds)
        assert sorted(os.listdir(out)) == ["bigsmall.index.json", "model.bs"]


def test_a_shard_index_changed_after_compression_is_refused(tmp_path):
    """The loaders choose shards by the copied model.safetensors.index.json: one edited to drop a
    shard loaded with those weights missing (randomly initialised), without a word."""
    import json

    from transformers import LlamaForCausalLM

    torch.manual_seed(0)
    LlamaForCausalLM(_llama_config()).save_pretrained(tmp_path / "hf", max_shard_size="20KB")
    d = bigsmall.compress(tmp_path / "hf")
    p = os.path.join(d, "model.safetensors.index.json")
    index = json.load(open(p))
    last = sorted(set(index["weight_map"].values()))[-1]
    index["weight_map"] = {k: v for k, v in index["weight_map"].items() if v != last}
    json.dump(index, open(p, "w"))
    for load in (lambda: bigsmall.from_pretrained(d, progress=False),
                 lambda: bigsmall.StreamingLoader(d)):
        with pytest.raises(bigsmall.CorruptError, match="model.safetensors.index.json: changed after compression"):
            load()


def test_a_child_forked_during_a_save_does_not_hold_the_directory(tmp_path, monkeypatch):
    """The lock on a directory being saved into belongs to the open directory, which a child
    forked meanwhile (a DataLoader worker beside a checkpoint thread) inherits: every later save
    into that directory waited for the child to exit."""
    import threading
    import time

    import bigsmall._models as bm

    sd = {"w": torch.ones(8, 8)}
    out = str(tmp_path / "m")
    slow_move = bm._move_in

    moving = threading.Event()

    def move_in(*a, **k):
        moving.set()
        time.sleep(0.5)
        return slow_move(*a, **k)

    monkeypatch.setattr(bm, "_move_in", move_in)
    saver = threading.Thread(target=bigsmall.save_pretrained, args=(sd, out), kwargs={"overwrite": True})
    saver.start()
    # The saver holds the lock while it moves files in: fork then, not after a guessed delay.
    assert moving.wait(60), "save_pretrained never reached its move"
    pid = os.fork()
    if pid == 0:
        time.sleep(20)
        os._exit(0)
    try:
        saver.join()
        monkeypatch.setattr(bm, "_move_in", slow_move)
        t = time.perf_counter()
        bigsmall.save_pretrained(sd, out, overwrite=True)
        assert time.perf_counter() - t < 5
    finally:
        os.kill(pid, 9)
        os.waitpid(pid, 0)


def test_save_pretrained_writes_nothing_when_it_fails(tmp_path, monkeypatch):
    """overwrite=False wrote config.json before it refused model.bs: the directory then paired
    one model's config with another's weights, and from_pretrained built the wrong model."""
    from transformers import BertModel, GPT2Config, GPT2LMHeadModel

    first = _bert(tmp_path)
    out = tmp_path / "out.bs"
    bigsmall.save_pretrained(first, out)
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    other = GPT2LMHeadModel(GPT2Config(n_layer=1, n_embd=32, n_head=2, vocab_size=100))
    with pytest.raises(FileExistsError, match="config.json|model.bs"):
        bigsmall.save_pretrained(other, out, overwrite=False)
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before
    _same_tensors(_quiet_load(out, BertModel)[0], first)
    # A failure while writing the weights (a tensor without data) leaves an existing directory
    # as it was and removes one it created.
    bad = _bert(tmp_path, "b2", seed=3)
    bad.pooler.dense.weight = torch.nn.Parameter(torch.empty(32, 32, device="meta"))
    with pytest.raises(bigsmall.Error):
        bigsmall.save_pretrained(bad, out)
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before
    with pytest.raises(bigsmall.Error):
        bigsmall.save_pretrained(bad, tmp_path / "new" / "sub.bs")
    assert not (tmp_path / "new").exists()  # nor the parent it made
    # A failure after the weights are written (the index: a full disk) changes nothing either.
    import json as json_module

    def full_disk(*a, **k):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(json_module, "dump", full_disk)
    with pytest.raises(OSError):
        bigsmall.save_pretrained(other, out)
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before  # no staging left either


def test_save_pretrained_keeps_every_weight(tmp_path):
    """Tensors sharing memory were deduplicated whatever the model declared: an undeclared
    share (v_proj = k_proj) lost v_proj silently. A model refuses it, as transformers does; a
    state dict or a plain module keeps every name."""
    from transformers import LlamaForCausalLM

    torch.manual_seed(0)
    m = LlamaForCausalLM(_llama_config(tie_word_embeddings=True))
    bigsmall.save_pretrained(m, tmp_path / "tied.bs")
    names = [t["name"] for t in bigsmall.info(str(tmp_path / "tied.bs"))["tensors"]]
    assert "model.embed_tokens.weight" in names and "lm_head.weight" not in names  # declared: once
    a = m.model.layers[0].self_attn
    a.v_proj.weight = a.k_proj.weight
    with pytest.raises(bigsmall.InvalidArgumentError, match="shared tensors"):
        bigsmall.save_pretrained(m, tmp_path / "undeclared.bs")
    assert not (tmp_path / "undeclared.bs").exists()
    sd = m.state_dict()
    bigsmall.save_pretrained(sd, tmp_path / "dict.bs")
    back = bigsmall.torch.load_file(str(tmp_path / "dict.bs" / "model.bs"))
    assert back.keys() == sd.keys() and all(torch.equal(back[k], sd[k]) for k in sd)

    class Net(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.a = torch.nn.Linear(4, 4)
            self.b = self.a  # shared, undeclared

    bigsmall.save_pretrained(Net(), tmp_path / "net.bs")  # no config: weights only
    assert sorted(bigsmall.torch.load_file(str(tmp_path / "net.bs" / "model.bs"))) == ["a.bias", "a.weight",
                                                                                       "b.bias", "b.weight"]


def test_save_pretrained_writes_the_checkpoint_names_transformers_writes(tmp_path):
    """transformers 5 fuses Mixtral's experts in memory and unfuses them when it saves; the
    decompressed directory must hold what transformers' save_pretrained writes."""
    import safetensors.torch as st
    from transformers import MixtralConfig, MixtralForCausalLM

    torch.manual_seed(0)
    m = MixtralForCausalLM(MixtralConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                                         num_attention_heads=2, num_key_value_heads=1, num_local_experts=2,
                                         num_experts_per_tok=1, vocab_size=100))
    m.save_pretrained(tmp_path / "hf")
    bigsmall.save_pretrained(m, tmp_path / "bs")
    bigsmall.decompress(str(tmp_path / "bs"), str(tmp_path / "restored"))
    ref = st.load_file(str(tmp_path / "hf" / "model.safetensors"))
    got = st.load_file(str(tmp_path / "restored" / "model.safetensors"))
    assert sorted(got) == sorted(ref) and all(torch.equal(got[k], ref[k]) for k in ref)


def test_auto_dtype_is_the_first_float_tensor_in_name_order(tmp_path):
    """A bfloat16 model with float32 norms and no dtype in config.json: transformers picks the
    first float tensor in name order (bfloat16); bigsmall took data order, where 4-byte tensors
    come first, and loaded the model in float32."""
    import safetensors.torch as st
    from transformers import LlamaForCausalLM

    torch.manual_seed(0)
    cfg = _llama_config()
    sd = {k: (v.float() if "norm" in k else v.to(torch.bfloat16)).contiguous()
          for k, v in LlamaForCausalLM(cfg).state_dict().items()}
    (tmp_path / "hf").mkdir()
    cfg.save_pretrained(tmp_path / "hf")
    _drop_config_dtype(tmp_path / "hf")
    st.save_file(sd, str(tmp_path / "hf" / "model.safetensors"))
    assert LlamaForCausalLM.from_pretrained(tmp_path / "hf").dtype == torch.bfloat16
    c = bigsmall.compress(tmp_path / "hf")
    assert _quiet_load(c)[0].dtype == torch.bfloat16
    assert _quiet_load(c, attn_implementation="eager")[0].dtype == torch.bfloat16  # through transformers
    assert _streamed(c)[0].dtype == torch.bfloat16


def test_subfolder_is_the_model_directory(tmp_path):
    """from_pretrained(subfolder=) read the config from the subfolder and the weights from the
    top, a randomly initialised model without an error."""
    from transformers import GPT2Config, GPT2LMHeadModel, LlamaForCausalLM

    torch.manual_seed(0)
    LlamaForCausalLM(_llama_config()).save_pretrained(tmp_path / "nest")
    gpt = GPT2LMHeadModel(GPT2Config(n_layer=1, n_embd=32, n_head=2, vocab_size=100))
    gpt.save_pretrained(tmp_path / "nest" / "text")
    c = bigsmall.compress(tmp_path / "nest")
    got, _ = _quiet_load(c, subfolder="text")
    _same_tensors(got, GPT2LMHeadModel.from_pretrained(tmp_path / "nest", subfolder="text"))
    _same_tensors(bigsmall.StreamingLoader(c, subfolder="text").load_model(progress=False), got)
    with pytest.raises(bigsmall.FileNotFoundError, match="subfolder"):
        _quiet_load(c, subfolder="nope")
    with pytest.raises(bigsmall.FileNotFoundError, match="variant 'fp16'"):  # a variant this directory lacks
        _quiet_load(c, variant="fp16")


def test_a_model_directory_with_model_bs_ignores_an_old_shard_index(tmp_path):
    """transformers looks for model.safetensors before a shard index; bigsmall followed a stale
    index of a transformers checkpoint saved there before and failed on its missing shards."""
    from transformers import BertModel

    _bert(tmp_path, "out", max_shard_size="20KB")  # leaves model.safetensors.index.json
    new = _bert(tmp_path, "other", seed=5)
    # transformers' own loader would follow that index to the old shards: said, not deleted
    with pytest.warns(UserWarning, match="would load those, not the model.bs just written"):
        bigsmall.save_pretrained(new, tmp_path / "out")
    _same_tensors(_quiet_load(tmp_path / "out", BertModel)[0], new)


def test_load_model_of_a_plain_module_and_its_arguments(tmp_path):
    """A plain torch module: what the checkpoint lacks cannot be initialised (it crashed on
    initialize_weights after loading); built on the CPU it keeps its constructor's values,
    with a warning. Arguments from_pretrained takes are refused by name, not ignored."""
    from transformers import BertModel

    class Net(torch.nn.Module):
        def __init__(self, extra=False):
            super().__init__()
            self.a = torch.nn.Linear(4, 4)
            if extra:
                self.head = torch.nn.Linear(4, 2)

    src = Net()
    bigsmall.save_pretrained(src, tmp_path / "net.bs")
    got, w = _streamed(tmp_path / "net.bs", Net(extra=True))
    assert torch.equal(got.a.weight, src.a.weight) and any("left as the model was built" in m for m in w)
    with pytest.raises(bigsmall.InvalidArgumentError, match="nothing can initialise"):
        _streamed(tmp_path / "net.bs", Net(extra=True).to("meta"))
    got, _ = _streamed(tmp_path / "net.bs", Net().to("meta"))
    assert torch.equal(got.a.bias, src.a.bias)
    _bert(tmp_path)
    c = bigsmall.compress(tmp_path / "hf")
    with pytest.raises(bigsmall.InvalidArgumentError, match="dtype"):
        _streamed(c, BertModel, torch_dtype=torch.int8)
    with pytest.raises(bigsmall.InvalidArgumentError, match="device_map"):
        _streamed(c, BertModel, device_map="cpu")
    assert _streamed(c, BertModel, torch_dtype=torch.float16)[0].dtype == torch.float16


def test_auto_dtype_skips_float8_and_a_tied_pair_stored_twice_loads_into_a_built_model(tmp_path):
    """A float8 scale tensor sorting first made dtype='auto' float8 (torch cannot build a model in
    it: TypeError); transformers skips float8/float4. A model built on the CPU (tied at
    construction) got both tensors of a pair the checkpoint holds twice, with different values,
    decoded into its one shared tensor."""
    import safetensors.torch as st
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(0)
    cfg = GPT2Config(n_layer=1, n_embd=32, n_head=2, vocab_size=100)
    sd = {k: v.to(torch.bfloat16).contiguous() for k, v in GPT2LMHeadModel(cfg).state_dict().items()}
    sd["a.weight_scale"] = torch.ones(4).to(torch.float8_e4m3fn)
    sd["lm_head.weight"] = torch.randn(100, 32).to(torch.bfloat16)
    (tmp_path / "hf").mkdir()
    cfg.save_pretrained(tmp_path / "hf")
    _drop_config_dtype(tmp_path / "hf")
    st.save_file(sd, str(tmp_path / "hf" / "model.safetensors"))
    ref = GPT2LMHeadModel.from_pretrained(tmp_path / "hf")
    assert ref.dtype == torch.bfloat16
    comp = bigsmall.compress(tmp_path / "hf")
    for got in (_quiet_load(comp, GPT2LMHeadModel)[0], _streamed(comp, GPT2LMHeadModel)[0],
                _streamed(comp, GPT2LMHeadModel(cfg).to(torch.bfloat16))[0]):
        assert got.dtype == torch.bfloat16
        assert torch.equal(got.lm_head.weight, sd["lm_head.weight"])
        assert torch.equal(got.transformer.wte.weight, sd["transformer.wte.weight"])


def test_save_pretrained_moves_in_all_or_nothing_and_keeps_overwrite_false(tmp_path, monkeypatch):
    """A failure while the staged files moved in left the new weights and config under the old
    index (the directory no longer loaded); a file that appeared during an overwrite=False save
    was replaced; parents made for "nope/../x" stayed after a failure."""
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(0)
    m1 = GPT2LMHeadModel(GPT2Config(n_layer=1, n_embd=32, n_head=2, vocab_size=100))
    m2 = GPT2LMHeadModel(GPT2Config(n_layer=2, n_embd=32, n_head=2, vocab_size=100))
    out = tmp_path / "sp"
    bigsmall.save_pretrained(m1, out)
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    real_replace, calls = bigsmall._models.os.replace, []

    def fail_third(a, b):  # the third move in: after model.bs and config.json
        calls.append(b)
        if len(calls) == 5:  # 2 files moved aside and in, then the third target
            raise OSError(5, "Input/output error")
        return real_replace(a, b)

    monkeypatch.setattr(bigsmall._models.os, "replace", fail_third)
    with pytest.raises(OSError):
        bigsmall.save_pretrained(m2, out)
    monkeypatch.setattr(bigsmall._models.os, "replace", real_replace)
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before
    _same_tensors(_quiet_load(out, GPT2LMHeadModel)[0], m1)
    # overwrite=False: a model.bs written by someone else meanwhile is not replaced.
    fresh = tmp_path / "fresh"
    real_save = bigsmall.torch.save_file

    def racing_save(tensors, filename, **kw):
        real_save(tensors, filename, **kw)
        (fresh / "model.bs").write_bytes(b"someone else's")

    monkeypatch.setattr(bigsmall._models.bt, "save_file", racing_save)
    with pytest.raises(FileExistsError):
        bigsmall.save_pretrained(m1, fresh, overwrite=False)
    assert (fresh / "model.bs").read_bytes() == b"someone else's"
    assert not (fresh / "config.json").exists()
    monkeypatch.setattr(bigsmall._models.bt, "save_file", real_save)
    monkeypatch.chdir(tmp_path)
    with pytest.raises(bigsmall.Error):
        bigsmall.save_pretrained({"a": torch.ones(2), "b": "not a tensor"}, "nope/../x")
    assert not (tmp_path / "nope").exists() and not (tmp_path / "x").exists()


def test_auto_dtype_follows_the_shard_index_of_a_single_shard(tmp_path):
    """transformers takes a shard index's metadata dtype whenever the checkpoint is sharded, one
    shard included; bigsmall read it only for two or more."""
    import json

    import safetensors.torch as st
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(0)
    cfg = GPT2Config(n_layer=1, n_embd=32, n_head=2, vocab_size=100)
    sd = {k: v.to(torch.bfloat16).contiguous() for k, v in GPT2LMHeadModel(cfg).state_dict().items()
          if k != "lm_head.weight"}
    (tmp_path / "hf").mkdir()
    cfg.save_pretrained(tmp_path / "hf")
    _drop_config_dtype(tmp_path / "hf")
    shard = "model-00001-of-00001.safetensors"
    st.save_file(sd, str(tmp_path / "hf" / shard))
    (tmp_path / "hf" / "model.safetensors.index.json").write_text(
        json.dumps({"metadata": {"dtype": "float16"}, "weight_map": {k: shard for k in sd}}))
    assert GPT2LMHeadModel.from_pretrained(tmp_path / "hf").dtype == torch.float16
    c = bigsmall.compress(tmp_path / "hf")
    assert _quiet_load(c, GPT2LMHeadModel)[0].dtype == torch.float16
    assert _streamed(c, GPT2LMHeadModel)[0].dtype == torch.float16


def test_name_or_path_is_what_was_given_as_transformers_records_it(tmp_path):
    """Tokenizers, pipelines and PEFT read model.name_or_path back; a concrete class's config
    class does not set it, so it was empty (and "None" after the fallback through transformers)."""
    from transformers import LlamaForCausalLM

    torch.manual_seed(0)
    LlamaForCausalLM(_llama_config()).save_pretrained(tmp_path / "hf")
    d = str(bigsmall.compress(tmp_path / "hf"))
    for got in (_quiet_load(d, LlamaForCausalLM)[0], _quiet_load(d)[0],
                _quiet_load(d, LlamaForCausalLM, attn_implementation="eager")[0],  # through transformers
                _streamed(d, LlamaForCausalLM)[0], _streamed(d)[0]):
        assert got.name_or_path == d and got.config.name_or_path == d


def test_a_built_model_loaded_with_a_dtype_keeps_the_buffers_it_computes(tmp_path):
    """dtype= on a model passed in built cast its rotary inv_freq too (model.to(dtype)), which a
    class built in that dtype keeps float32, as transformers does: the logits differed."""
    from transformers import AutoConfig, LlamaForCausalLM

    torch.manual_seed(0)
    LlamaForCausalLM(_llama_config()).save_pretrained(tmp_path / "hf")
    d = bigsmall.compress(tmp_path / "hf")
    built = LlamaForCausalLM(AutoConfig.from_pretrained(tmp_path / "hf"))
    got, _ = _streamed(d, built, dtype=torch.bfloat16)
    ref = LlamaForCausalLM.from_pretrained(tmp_path / "hf", dtype=torch.bfloat16).eval()
    assert got.model.rotary_emb.inv_freq.dtype == torch.float32
    _same_tensors(got, ref)
    ids = torch.arange(40).reshape(2, 20) % 100
    with torch.no_grad():
        assert torch.equal(got(ids).logits, ref(ids).logits)
    # Gemma 3 names its frequencies per attention type (sliding_attention_inv_freq, ...): the rule
    # is the name's ending, not the two plain names.
    from transformers import Gemma3ForCausalLM, Gemma3TextConfig

    gemma = Gemma3TextConfig(hidden_size=64, num_hidden_layers=2, num_attention_heads=2, num_key_value_heads=1,
                             intermediate_size=64, vocab_size=100, head_dim=32, sliding_window=4)
    torch.manual_seed(0)
    Gemma3ForCausalLM(gemma).save_pretrained(tmp_path / "g")
    got, _ = _streamed(bigsmall.compress(tmp_path / "g"), Gemma3ForCausalLM(gemma), dtype=torch.bfloat16)
    ref = Gemma3ForCausalLM.from_pretrained(tmp_path / "g", dtype=torch.bfloat16).eval()
    freqs = {n: b.dtype for n, b in got.named_buffers() if n.endswith("inv_freq")}
    assert freqs and freqs == {n: b.dtype for n, b in ref.named_buffers() if n.endswith("inv_freq")}
    with torch.no_grad():
        assert torch.equal(got(ids[:, :12]).logits, ref(ids[:, :12]).logits)

    # Other computed buffers go with the weights, as a class built in that dtype makes them: a
    # position table left float32 does not run against bfloat16 weights.
    class Positional(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.proj = torch.nn.Linear(8, 8)
            self.register_buffer("pe", torch.linspace(0, 1, 8), persistent=False)

        def forward(self, x):
            return self.proj(x + self.pe)

    torch.manual_seed(0)
    bigsmall.torch.save_model(Positional(), str(tmp_path / "p.bs"))
    (tmp_path / "p").mkdir()
    (tmp_path / "p.bs").rename(tmp_path / "p" / "model.bs")
    plain, _ = _streamed(tmp_path / "p", Positional(), dtype=torch.bfloat16)
    assert plain.pe.dtype == torch.bfloat16
    plain(torch.ones(2, 8, dtype=torch.bfloat16))


def test_a_directory_without_config_and_a_dtype_given_as_text_are_named(tmp_path):
    from transformers import LlamaForCausalLM

    torch.manual_seed(0)
    LlamaForCausalLM(_llama_config()).save_pretrained(tmp_path / "hf")
    d = bigsmall.compress(tmp_path / "hf")
    with pytest.raises(bigsmall.InvalidArgumentError, match=r"give the dtype itself \(torch.bfloat16\) or its name"):
        bigsmall.from_pretrained(d, dtype="torch.bfloat16", progress=False)
    (tmp_path / "hf.bs" / "config.json").unlink()
    for load in (lambda: bigsmall.from_pretrained(d, progress=False),
                 lambda: bigsmall.StreamingLoader(d).load_model(LlamaForCausalLM, progress=False)):
        with pytest.raises(bigsmall.FileNotFoundError, match="no config.json"):
            load()


def test_a_directory_of_both_kinds_of_weights_says_which_it_loads(tmp_path):
    """transformers loads the .safetensors file of such a directory and bigsmall the .bs: when
    they are different models, the user must be told which one came back."""
    from transformers import LlamaForCausalLM

    torch.manual_seed(0)
    LlamaForCausalLM(_llama_config()).save_pretrained(tmp_path / "hf")
    bigsmall.compress(tmp_path / "hf" / "model.safetensors")
    for load in (lambda: bigsmall.from_pretrained(tmp_path / "hf", progress=False),
                 lambda: bigsmall.from_pretrained(tmp_path / "hf", attn_implementation="eager", progress=False),
                 lambda: bigsmall.StreamingLoader(tmp_path / "hf")):
        with warnings.catch_warnings(record=True) as w:
            warnings.simplefilter("always")
            load()
        said = [x for x in w if "bigsmall loads the .bs files" in str(x.message)]
        assert len(said) == 1 and said[0].filename == __file__, [(str(x.message), x.filename) for x in w]
    # Other .safetensors files (a PEFT adapter) are not weights transformers would load instead.
    (tmp_path / "hf" / "model.safetensors").rename(tmp_path / "adapter_model.safetensors")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        bigsmall.StreamingLoader(tmp_path / "hf")
    # Nor is a shard index whose shards were compressed one by one and removed: bigsmall needs
    # it to find their .bs files, and transformers has nothing to load.
    torch.manual_seed(0)
    LlamaForCausalLM(_llama_config()).save_pretrained(tmp_path / "sh", max_shard_size="20KB")
    shards = sorted((tmp_path / "sh").glob("model-*.safetensors"))
    assert len(shards) > 1
    for shard in shards:
        bigsmall.compress(shard)
        shard.unlink()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        bigsmall.StreamingLoader(tmp_path / "sh")
    shards[0].write_bytes(b"")  # one shard is there again: transformers would read it
    with pytest.warns(UserWarning, match="bigsmall loads the .bs files"):
        bigsmall.StreamingLoader(tmp_path / "sh")


def test_remote_code_and_a_given_config_as_transformers_takes_them(tmp_path):
    from transformers import AutoConfig, LlamaForCausalLM

    torch.manual_seed(0)
    LlamaForCausalLM(_llama_config()).save_pretrained(tmp_path / "hf")
    d = bigsmall.compress(tmp_path / "hf")
    _streamed(d, LlamaForCausalLM, trust_remote_code=False)  # nothing to trust: as without it
    with pytest.raises(bigsmall.InvalidArgumentError, match="trust_remote_code=True is not supported"):
        bigsmall.StreamingLoader(d).load_model(LlamaForCausalLM, trust_remote_code=True, progress=False)
    config = AutoConfig.from_pretrained(tmp_path / "hf")
    before = config.to_dict()
    bigsmall.from_pretrained(d, config=config, dtype=torch.bfloat16, progress=False)
    _streamed(d, LlamaForCausalLM, config=config)
    assert config.to_dict() == before  # copied, as transformers copies it, not changed in place


def test_load_model_gives_the_loading_info_transformers_gives(tmp_path):
    """output_loading_info=True was refused by load_model (from_pretrained took it)."""
    from transformers import BertForMaskedLM

    _bert(tmp_path)
    d = bigsmall.compress(tmp_path / "hf")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the same lists, reported as warnings as well
        got, info = bigsmall.StreamingLoader(d).load_model(BertForMaskedLM, output_loading_info=True, progress=False)
        _, ref = BertForMaskedLM.from_pretrained(tmp_path / "hf", output_loading_info=True)
        plain = bigsmall.StreamingLoader(d).load_model(BertForMaskedLM, output_loading_info=False, progress=False)
    assert info == {k: ref[k] for k in ("missing_keys", "unexpected_keys", "mismatched_keys", "error_msgs")}
    assert info["missing_keys"] and info["unexpected_keys"]  # a head model from a base checkpoint
    assert isinstance(got, BertForMaskedLM) and isinstance(plain, BertForMaskedLM)


def test_a_model_built_with_memory_keeps_its_own_values_where_the_checkpoint_has_none(tmp_path):
    """load_model(model) on a model already built on the CPU: a head the checkpoint lacks keeps
    the caller's values (as load_state_dict(strict=False)), and the warning says so (it said
    "newly initialised" while transformers 5 had left them, and transformers 4 reinitialised them)."""
    from transformers import BertForSequenceClassification

    ref = _bert(tmp_path)
    c = bigsmall.compress(tmp_path / "hf")
    m = BertForSequenceClassification(_bert_config())
    with torch.no_grad():
        m.classifier.weight.fill_(1.0)
        m.classifier.bias.fill_(0.5)
    got, warned = _streamed(c, m)
    assert bool((got.classifier.weight == 1).all()) and bool((got.classifier.bias == 0.5).all())
    assert len(warned) == 1 and "left as the model was built" in warned[0] and "classifier.weight" in warned[0]
    _same_tensors(got.bert, ref)


def test_two_checkpoint_names_for_one_tensor_load_as_transformers_loads_them(tmp_path):
    """A checkpoint holding both LayerNorm.gamma and LayerNorm.weight: both renamed into one
    parameter, they were decoded into it at once (a torn tensor or a false checksum error on
    large ones). The first in transformers' order of names is loaded, as transformers loads
    it, and the other reported unused, under the name transformers reports."""
    import safetensors.torch as st
    from transformers import BertModel

    ref = _bert(tmp_path)
    sd = {k: v.clone().contiguous() for k, v in ref.state_dict().items()}
    sd["embeddings.LayerNorm.gamma"] = torch.full_like(sd["embeddings.LayerNorm.weight"], 3.0)
    (tmp_path / "two").mkdir()
    ref.config.save_pretrained(tmp_path / "two")
    st.save_file(sd, str(tmp_path / "two" / "model.safetensors"))
    want, info = BertModel.from_pretrained(tmp_path / "two", output_loading_info=True)
    assert torch.equal(want.embeddings.LayerNorm.weight, sd["embeddings.LayerNorm.gamma"])
    c = bigsmall.compress(tmp_path / "two")
    with warnings.catch_warnings(record=True) as w:
        warnings.simplefilter("always")
        got, got_info = bigsmall.StreamingLoader(c).load_model(BertModel, progress=False, output_loading_info=True)
    _same_tensors(got, want)
    assert any("embeddings.LayerNorm.weight -> embeddings.LayerNorm.weight" in str(x.message) for x in w)
    assert got_info["unexpected_keys"] == set(info["unexpected_keys"])
    assert got_info["missing_keys"] == set(info["missing_keys"])


def test_unused_renamed_tensors_are_reported_under_transformers_names(tmp_path):
    """BertModel from a BertForMaskedLM checkpoint with legacy gamma/beta names: the head's
    tensors are unused, and output_loading_info names them as transformers does (renamed)."""
    import safetensors.torch as st
    from transformers import BertForMaskedLM, BertModel

    torch.manual_seed(0)
    mlm = BertForMaskedLM(_bert_config())
    sd = {k.replace("LayerNorm.weight", "LayerNorm.gamma").replace("LayerNorm.bias", "LayerNorm.beta"): v.contiguous()
          for k, v in mlm.state_dict().items() if k not in ("cls.predictions.decoder.weight", "cls.predictions.decoder.bias")}
    (tmp_path / "mlm").mkdir()
    mlm.config.save_pretrained(tmp_path / "mlm")
    st.save_file(sd, str(tmp_path / "mlm" / "model.safetensors"))
    want, info = BertModel.from_pretrained(tmp_path / "mlm", output_loading_info=True)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        got, got_info = bigsmall.StreamingLoader(bigsmall.compress(tmp_path / "mlm")).load_model(
            BertModel, progress=False, output_loading_info=True)
    a, b = got.state_dict(), want.state_dict()
    assert info["missing_keys"] and got_info["missing_keys"] == set(info["missing_keys"])  # the pooler: initialised, not compared
    assert all(torch.equal(a[k], b[k]) for k in b if k not in info["missing_keys"])
    assert any("gamma" not in k and "LayerNorm" in k for k in info["unexpected_keys"])
    assert got_info["unexpected_keys"] == set(info["unexpected_keys"])


def test_a_plain_module_holding_a_transformers_model_loads_by_its_own_names(tmp_path):
    """A torch module that holds a transformers model (here a Mixtral, whose class has weight
    conversions) is not a transformers model: it loads its own state dict's names, as
    load_state_dict does (asking transformers for its conversions failed with AttributeError)."""
    import safetensors.torch as st
    from transformers import MixtralConfig, MixtralForCausalLM

    class Wrapper(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.lm = MixtralForCausalLM(MixtralConfig(num_hidden_layers=1, hidden_size=32, intermediate_size=64,
                                                       num_attention_heads=4, num_key_value_heads=2, vocab_size=100,
                                                       num_local_experts=4, num_experts_per_tok=2))

    torch.manual_seed(0)
    src = Wrapper()
    st.save_file({k: v.contiguous() for k, v in src.state_dict().items() if k != "lm.lm_head.weight" or
                  v.data_ptr() != src.state_dict()["lm.model.embed_tokens.weight"].data_ptr()},
                 str(tmp_path / "w.safetensors"))
    (tmp_path / "wd").mkdir()
    os.replace(tmp_path / "w.safetensors", tmp_path / "wd" / "model.safetensors")
    torch.manual_seed(1)
    dst = Wrapper()
    got, _ = _streamed(bigsmall.compress(tmp_path / "wd"), dst)
    _same_tensors(got, src)


def test_a_tensor_in_two_shards_loads_from_the_later_as_transformers_does(tmp_path):
    """A sharded checkpoint whose second shard repeats a tensor of the first: transformers'
    merged state dict keeps the later copy. The streaming loader took the two copies for two
    names competing for one tensor, loaded neither, and from_pretrained handed back the
    tensor's uninitialised memory (found by a review)."""
    import json

    import safetensors.torch as st
    from transformers import BertModel

    ref = _bert(tmp_path)
    sd = {k: v.clone().contiguous() for k, v in ref.state_dict().items()}
    name = "encoder.layer.0.output.dense.weight"
    names = sorted(sd)
    half = len(names) // 2
    first = {k: sd[k] for k in names[:half] if k != name} | {name: sd[name]}
    second = {k: sd[k] for k in names[half:] if k != name} | {name: torch.full_like(sd[name], 7.0)}
    d = tmp_path / "sh"
    d.mkdir()
    ref.config.save_pretrained(d)
    st.save_file(first, str(d / "model-00001-of-00002.safetensors"))
    st.save_file(second, str(d / "model-00002-of-00002.safetensors"))
    weight_map = {k: "model-00001-of-00002.safetensors" for k in first} | {k: "model-00002-of-00002.safetensors" for k in second}
    (d / "model.safetensors.index.json").write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))
    want = BertModel.from_pretrained(d)
    assert bool((want.state_dict()[name] == 7.0).all())
    c = bigsmall.compress(d)
    got, _ = _quiet_load(c, BertModel)
    _same_tensors(got, want)
    streamed, warned = _streamed(c, BertModel)
    _same_tensors(streamed, want)
    assert warned == []
    # A tensor the model does not use, in both shards: reported once, as one name.
    extra = torch.ones(3)
    st.save_file(first | {"extra.w": extra}, str(d / "model-00001-of-00002.safetensors"))
    st.save_file(second | {"extra.w": extra}, str(d / "model-00002-of-00002.safetensors"))
    c = bigsmall.compress(d, overwrite=True)
    streamed, warned = _streamed(c, BertModel)
    _same_tensors(streamed, want)
    assert len(warned) == 1 and warned[0].count("extra.w") == 1 and "1 tensor of" in warned[0], warned


def test_save_pretrained_errors_name_the_output_not_its_staging_file(tmp_path):
    with pytest.raises(bigsmall.InvalidArgumentError) as e:
        bigsmall.save_pretrained({"__metadata__": torch.ones(2)}, tmp_path / "out")
    assert str(tmp_path / "out" / "model.bs") in str(e.value) and ".bigsmall-save-" not in str(e.value)


def test_a_model_the_loader_built_gets_its_missing_tensors_initialised(tmp_path):
    """from_pretrained builds the model through the loader and hands it to load_model as a module.
    Such a model holds uninitialised memory (here NaN stands for it): a tensor the checkpoint
    lacks is initialised, not "left as the model was built" as for a model the caller built."""
    import safetensors.torch as st
    from transformers import BertModel

    ref = _bert(tmp_path)
    sd = {k: v.contiguous() for k, v in ref.state_dict().items() if not k.startswith("pooler.")}
    (tmp_path / "np").mkdir()
    ref.config.save_pretrained(tmp_path / "np")
    st.save_file(sd, str(tmp_path / "np" / "model.safetensors"))
    loader = bigsmall.StreamingLoader(bigsmall.compress(tmp_path / "np"))
    m = loader._build(BertModel, None, {"config": ref.config})
    with torch.no_grad():
        for p in m.parameters():
            p.fill_(float("nan"))
    with warnings.catch_warnings(record=True) as w:
        warnings.simplefilter("always")
        got = loader.load_model(m, progress=False)
    said = [str(x.message) for x in w if x.category is UserWarning]
    assert not torch.isnan(got.pooler.dense.bias).any() and not torch.isnan(got.pooler.dense.weight).any()
    assert any("newly initialised" in s and "pooler.dense.bias" in s for s in said), said
    assert not hasattr(got, "_bigsmall_uninitialised")
    a, b = got.state_dict(), ref.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in sd)


def test_a_head_on_a_base_checkpoint_is_tied_and_warned_about_once(tmp_path, capfd):
    """A masked-LM head loaded from a base checkpoint: its decoder tied to the embeddings, values
    as transformers gives them (seeded alike), and transformers' warning about the pair it cannot
    tie logged once per load, as its own from_pretrained logs it (the loader tied twice)."""
    import warnings

    from transformers import BertForMaskedLM

    _bert(tmp_path)
    bigsmall.compress(tmp_path / "hf")
    capfd.readouterr()
    torch.manual_seed(1)
    ref = BertForMaskedLM.from_pretrained(tmp_path / "hf")
    theirs = capfd.readouterr().err.count("checkpoint seem corrupted")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the missing head, reported as a warning
        torch.manual_seed(1)
        got = bigsmall.StreamingLoader(tmp_path / "hf.bs").load_model(BertForMaskedLM, progress=False)
    ours = capfd.readouterr().err.count("checkpoint seem corrupted")
    assert ours == theirs, (ours, theirs)
    sd = got.state_dict()
    assert sd["cls.predictions.decoder.weight"].data_ptr() == sd["bert.embeddings.word_embeddings.weight"].data_ptr()
    _same_tensors(got, ref)
