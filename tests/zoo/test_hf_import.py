"""transformers checkpoints imported as zoo models, and zoo models exported to transformers: tiny random-init models
of every supported class are built locally from their config classes and saved with `save_pretrained` (no
downloads); the import must give transformers' logits, continue from its cache, and generate transformers' greedy
tokens; export must load in transformers with the zoo's logits; every bad input names what is wrong."""

from __future__ import annotations

import json
import shutil

import pytest
import torch

import zoo
from tests.helpers import assert_close
from zoo.config import compose
from zoo.errors import CheckpointConfigError, CheckpointError
from zoo.io.hf import ARCHS, export_transformers

transformers = pytest.importorskip("transformers")

VOCAB = 101
COMMON = {"vocab_size": VOCAB, "hidden_size": 32, "num_hidden_layers": 3, "eos_token_id": 7, "bos_token_id": 1}
LLAMA = {
    **COMMON,
    "intermediate_size": 44,  # not a multiple of 8, nor what mlp_ratio would give
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
}
MAMBA2 = {**COMMON, "num_heads": 8, "head_dim": 8, "state_size": 16, "n_groups": 2, "expand": 2, "conv_kernel": 4}
BAMBA = {"mamba_n_heads": 8, "mamba_d_head": 8, "mamba_d_state": 16, "mamba_n_groups": 2, "mamba_expand": 2}
NEMOTRON_H = {
    **LLAMA,
    "head_dim": 8,
    "layers_block_type": ["linear_attention", "mlp", "full_attention", "mlp", "linear_attention"],
    "mamba_num_heads": 8,
    "mamba_head_dim": 8,
    "ssm_state_size": 16,
    "n_groups": 2,
    "time_step_min": 0.05,  # a dt floor that clamps some of the perturbed dt values
}
OLMO_HYBRID = {
    **LLAMA,
    "num_hidden_layers": 4,
    "layer_types": ["linear_attention", "full_attention", "linear_attention", "full_attention"],
    "pad_token_id": 0,
    "linear_num_key_heads": 4,
    "linear_num_value_heads": 4,
    "linear_key_head_dim": 6,  # 0.75 * hidden / heads, as the config's default
    "linear_value_head_dim": 12,
}
QWEN3_5 = {
    **LLAMA,
    "num_hidden_layers": 4,
    "head_dim": 16,  # RoPE on its first quarter
    "layer_types": ["linear_attention", "full_attention", "linear_attention", "full_attention"],
    "linear_num_key_heads": 2,
    "linear_num_value_heads": 4,  # grouped values
    "linear_key_head_dim": 8,
    "linear_value_head_dim": 6,
}
FALCON_H1 = {
    **LLAMA,
    "mamba_d_ssm": 48,  # the Mamba-2 branch 1.5 x hidden wide, not mamba_expand x hidden
    "mamba_n_heads": 6,
    "mamba_d_head": 8,
    "mamba_d_state": 16,
    "mamba_n_groups": 2,
    # every multiplier != 1, so that each fold into the weights is checked
    "embedding_multiplier": 1.3,
    "lm_head_multiplier": 0.7,
    "mlp_multipliers": [0.8, 1.2],
    "key_multiplier": 0.9,
    "attention_in_multiplier": 0.85,
    "attention_out_multiplier": 1.1,
    "ssm_multipliers": [1.1, 0.9, 1.2, 0.8, 1.3],
    "ssm_in_multiplier": 0.95,
    "ssm_out_multiplier": 1.05,
}
ZAMBA2 = {
    **COMMON,
    "num_hidden_layers": 5,
    "layers_block_type": ["mamba", "hybrid", "mamba", "hybrid", "hybrid"],  # 3 uses of 2 blocks: block 0 twice
    "num_mem_blocks": 2,
    "num_attention_heads": 4,  # heads 16 wide over the 64-wide [x, embeddings]
    "intermediate_size": 44,
    "use_shared_attention_adapter": True,
    "adapter_rank": 4,
    "use_mem_rope": True,
    "n_mamba_heads": 8,
    "mamba_d_state": 16,
    "mamba_ngroups": 2,
}
# (config class, fields): every supported model_type and the options that change its math
CASES = {
    "llama": ("LlamaConfig", {**LLAMA, "tie_word_embeddings": True}),
    "llama-untied-bias": ("LlamaConfig", {**LLAMA, "attention_bias": True, "rms_norm_eps": 1e-5}),
    "llama3-rope": (
        "LlamaConfig",
        {
            **LLAMA,
            "rope_parameters": {
                "rope_type": "llama3",
                "rope_theta": 500000.0,
                "factor": 8.0,
                "low_freq_factor": 1.0,
                "high_freq_factor": 4.0,
                "original_max_position_embeddings": 8,
            },
        },
    ),
    "mistral-window": ("MistralConfig", {**LLAMA, "sliding_window": 5}),
    "qwen2": ("Qwen2Config", {**LLAMA, "tie_word_embeddings": True}),
    "qwen3": ("Qwen3Config", {**LLAMA, "head_dim": 16}),  # heads 16 wide at hidden 32: q is 64 wide
    "qwen3-sliding-layers": (
        "Qwen3Config",
        {**LLAMA, "head_dim": 16, "use_sliding_window": True, "sliding_window": 4, "max_window_layers": 1},
    ),
    "mamba2": ("Mamba2Config", {**MAMBA2, "tie_word_embeddings": True}),
    "mamba2-untied-no-conv-bias": ("Mamba2Config", {**MAMBA2, "use_conv_bias": False, "layer_norm_epsilon": 1e-6}),
    "bamba": ("BambaConfig", {**LLAMA, **BAMBA, "attn_layer_indices": [1]}),
    "nemotron_h": ("NemotronHConfig", NEMOTRON_H),
    # transformers' Nemotron-H keeps its own lm_head even when the config says tied
    "nemotron_h-tied-flag": ("NemotronHConfig", {**NEMOTRON_H, "tie_word_embeddings": True}),
    "olmo_hybrid": ("OlmoHybridConfig", OLMO_HYBRID),
    "qwen3_5": ("Qwen3_5TextConfig", QWEN3_5),
    # no RoPE, grouped values (2 key heads for 4 value heads), beta in (0, 1)
    "olmo_hybrid-nope-grouped": (
        "OlmoHybridConfig",
        {**OLMO_HYBRID, "rope_parameters": None, "linear_num_key_heads": 2, "linear_allow_neg_eigval": False},
    ),
    "falcon_h1": ("FalconH1Config", FALCON_H1),  # untied, no Mamba norm (Falcon-H1's default)
    "falcon_h1-tied-norm-bias": (  # the tied head scaled back, the norm before the gate, biases scaled too
        "FalconH1Config",
        {**FALCON_H1, "tie_word_embeddings": True, "mamba_rms_norm": True, "attention_bias": True},
    ),
    "zamba2": ("Zamba2Config", ZAMBA2),
    # one block read by every hybrid layer, no RoPE, no q / k / v adapters, SiLU, untied head
    "zamba2-one-block": (
        "Zamba2Config",
        {**ZAMBA2, "num_mem_blocks": 1, "use_mem_rope": False, "use_shared_attention_adapter": False}
        | {"hidden_act": "silu", "tie_word_embeddings": False, "rms_norm_eps": 1e-6},
    ),
}


def hf_model(case: str, seed: int = 0):
    name, fields = CASES[case]
    config = getattr(transformers, name)(**fields)
    torch.manual_seed(seed)
    model = transformers.AutoModelForCausalLM.from_config(config, attn_implementation="eager").eval()
    with torch.no_grad():  # norms start at 1 and biases at 0: perturb them so that their mapping is checked
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    return model


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    """Each case saved once: `{case: (folder, transformers model)}`."""
    out = {}
    for case in CASES:
        folder = tmp_path_factory.mktemp(case)
        model = hf_model(case)
        model.save_pretrained(folder)
        out[case] = (folder, model)
    return out


def ids(T=19, B=2, seed=1):
    return torch.randint(0, VOCAB, (B, T), generator=torch.Generator().manual_seed(seed))


def close_to(actual, expected, name):
    scale = expected.abs().max().item()
    assert_close(actual, expected, rtol=0, atol=1e-4 * scale, name=name)


@pytest.mark.parametrize("case", list(CASES))
def test_import_gives_the_logits_of_transformers(saved, case):
    folder, reference = saved[case]
    model = zoo.from_pretrained(folder)
    x = ids()
    with torch.no_grad():
        close_to(model(x).logits, reference(x).logits, case)
    assert sorted(ARCHS) == [
        *["bamba", "falcon_h1", "llama", "mamba2", "mistral", "nemotron_h", "olmo_hybrid", "qwen2", "qwen3"],
        *["qwen3_5", "qwen3_5_text", "zamba2"],
    ]


@pytest.mark.parametrize("case", list(CASES))
def test_imported_prefill_then_decode_matches_parallel(saved, case):
    model = zoo.from_pretrained(saved[case][0])
    x = ids()
    with torch.no_grad():
        full = model(x).logits
        out = model(x[:, :9], use_cache=True)
        steps = [out.logits]
        for t in range(9, x.shape[1]):
            out = model(x[:, t : t + 1], cache=out.cache)
            steps.append(out.logits)
    assert_close(torch.cat(steps, 1), full, rtol=1e-4, atol=1e-5, name=f"{case} prefill+decode")


@pytest.mark.parametrize(
    "case",
    ["llama", "mistral-window", "qwen3-sliding-layers", "mamba2", "bamba", "olmo_hybrid", "qwen3_5", "falcon_h1"]
    # nemotron_h is left out: transformers clamps its dt in the parallel form but not in its decode step
    + ["qwen2", "qwen3", "zamba2", "zamba2-one-block"],  # transformers' Zamba2 decode agrees with its parallel form
)
def test_greedy_generate_equals_transformers(saved, case):
    folder, reference = saved[case]
    model = zoo.from_pretrained(folder)
    prompt = ids(T=6, B=1, seed=3)
    ours = model.generate(prompt, max_new_tokens=12, eos_token_id=COMMON["eos_token_id"])
    theirs = reference.generate(
        prompt, attention_mask=torch.ones_like(prompt), max_new_tokens=12, do_sample=False, pad_token_id=0
    )
    assert ours.tolist() == theirs.tolist()


def test_older_spellings_load(saved, tmp_path):
    """Nemotron-H as the Hub stores it: `hybrid_override_pattern`, `mamba_*` field names, `backbone.` weights."""
    from safetensors.torch import load_file, save_file

    folder, reference = saved["nemotron_h"]
    shutil.copytree(folder, tmp_path / "old")
    data = json.loads((tmp_path / "old" / "config.json").read_text())
    del data["layers_block_type"]
    data |= {"hybrid_override_pattern": "M-*-M", "mamba_n_groups": data.pop("n_groups")}
    (tmp_path / "old" / "config.json").write_text(json.dumps(data))
    tensors = load_file(tmp_path / "old" / "model.safetensors")
    renamed = {k.replace("model.", "backbone.", 1): v for k, v in tensors.items()}
    save_file(renamed, tmp_path / "old" / "model.safetensors", metadata={"format": "pt"})
    model = zoo.from_pretrained(tmp_path / "old")
    assert model.layer_mixers == ["mamba2", "none", "attn", "none", "mamba2"]
    x = ids()
    with torch.no_grad():
        close_to(model(x).logits, reference(x).logits, "nemotron_h, old spellings")
    data["hybrid_override_pattern"] = "M-E-M"
    (tmp_path / "old" / "config.json").write_text(json.dumps(data))
    with pytest.raises(CheckpointConfigError, match="layers_block_type='moe'.*mixture-of-experts"):
        zoo.from_pretrained(tmp_path / "old")


def test_qwen3_5_multimodal_checkpoint_loads_its_language_model(saved, tmp_path):
    """The released Qwen3.5 checkpoints: config `qwen3_5` with a `text_config`, the language model's weights under
    `model.language_model.`, a vision tower beside it (skipped)."""
    from safetensors.torch import load_file, save_file

    folder, reference = saved["qwen3_5"]
    shutil.copytree(folder, tmp_path / "mm")
    text = json.loads((tmp_path / "mm" / "config.json").read_text())
    (tmp_path / "mm" / "config.json").write_text(json.dumps({"model_type": "qwen3_5", "text_config": text}))
    tensors = load_file(tmp_path / "mm" / "model.safetensors")
    moved = {k.replace("model.", "model.language_model.", 1): v for k, v in tensors.items()}
    moved["model.visual.patch_embed.proj.weight"] = torch.zeros(4, 3)
    save_file(moved, tmp_path / "mm" / "model.safetensors", metadata={"format": "pt"})
    model = zoo.from_pretrained(tmp_path / "mm")
    x = ids()
    with torch.no_grad():
        close_to(model(x).logits, reference(x).logits, "qwen3_5 multimodal checkpoint")


def test_sharded_checkpoint_imports(tmp_path):
    reference = hf_model("qwen3")
    reference.save_pretrained(tmp_path, max_shard_size="40KB")
    assert (tmp_path / "model.safetensors.index.json").exists() and not (tmp_path / "model.safetensors").exists()
    model = zoo.from_pretrained(tmp_path)
    x = ids()
    with torch.no_grad():
        close_to(model(x).logits, reference(x).logits, "sharded")


def test_tokenizer_and_special_ids_come_along(saved, tmp_path):
    from tokenizers import Tokenizer, models, pre_tokenizers

    vocab = {w: i for i, w in enumerate(["<unk>", "<s>", "a", "b", "ab", "c", "abc", "</s>"])}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    shutil.copytree(saved["llama"][0], tmp_path / "ckpt")
    tok.save(str(tmp_path / "ckpt" / "tokenizer.json"))
    model = zoo.from_pretrained(tmp_path / "ckpt")
    assert model.tokenizer.encode("ab c abc") == [4, 5, 6]
    assert model.tokenizer.decode([4, 5]) == "ab c"
    assert (model.tokenizer.eos_token_id, model.tokenizer.bos_token_id) == (7, 1)
    # zoo-convert writes a zoo checkpoint that keeps the tokenizer and the logits
    from zoo.io.hf.cli import convert

    assert convert([str(tmp_path / "ckpt"), "--out", str(tmp_path / "zoo")]) == 0
    again = zoo.from_pretrained(tmp_path / "zoo")
    assert json.loads((tmp_path / "zoo" / "config.json").read_text())["model_type"] == "hybrid_zoo"
    assert again.tokenizer == model.tokenizer
    with torch.no_grad():
        assert torch.equal(again(ids()).logits, model(ids()).logits)


@pytest.mark.parametrize(
    "overrides",
    [
        ["model=transformer"],
        ["model=transformer", "model.attn.window_size=6", "model.attn.num_kv_heads=2"],
        ["model=transformer", "model.attn.qk_norm=head", "model.attn.norm_eps=1e-5", "model.attn.qkv_bias=true"]
        + ["model.attn.out_bias=true"],
        ["model=mamba2", "model.mlp=none", "model.mixers.mamba2.d_state=16", "model.mixers.mamba2.ngroups=2"],
        ["model=gated_deltanet", "model.attn.layers=[1]", "model.norm_position=[pre,post]", "model.attn.qk_norm=full"]
        + ["model.mixers.gated_deltanet.allow_neg_eigval=true", "model.mixers.gated_deltanet.num_v_heads=8"]
        + ["model.mixers.gated_deltanet.expand_k=0.5", "model.norm_eps=1e-6"],
    ],
    ids=["llama", "mistral", "qwen3", "mamba2", "olmo_hybrid"],
)
def test_export_loads_in_transformers_and_round_trips(tmp_path, overrides):
    small = ["model.d_model=64", "model.head_dim=16", "model.n_layers=2", "data.vocab_size=97"]
    torch.manual_seed(0)
    model = zoo.build_model(compose([*overrides, *small]).model).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    export_transformers(model, tmp_path / "hf")
    x = torch.randint(0, 97, (2, 15), generator=torch.Generator().manual_seed(0))
    theirs = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "hf").eval()
    back = zoo.from_pretrained(tmp_path / "hf")
    with torch.no_grad():
        ours = model(x).logits
        close_to(theirs(x).logits, ours, "exported, in transformers")
        assert torch.equal(back(x).logits, ours)


def test_export_refuses_what_has_no_transformers_equivalent(tmp_path):
    tiny = ["model.d_model=32", "model.head_dim=16", "model.n_layers=2"]
    model = zoo.build_model(compose(["model=gla", *tiny]).model)
    with pytest.raises(CheckpointError, match="no transformers equivalent.*only attention layers.*'gla'"):
        export_transformers(model, tmp_path / "out")
    plain_hybrid = zoo.build_model(compose(["model=gated_deltanet", "model.attn.layers=[1]", *tiny]).model)
    with pytest.raises(CheckpointError, match="olmo_hybrid: OLMo-Hybrid's attention layers are post-norm"):
        export_transformers(plain_hybrid, tmp_path / "out")
    learned = zoo.build_model(
        compose(["model=transformer", "model.d_model=32", "model.head_dim=16", "model.learned_positions=16"]).model
    )
    with pytest.raises(CheckpointError, match="learned_positions"):
        export_transformers(learned, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def edit_config(folder, **changes):
    path = folder / "config.json"
    data = json.loads(path.read_text())
    data.update(changes)
    path.write_text(json.dumps(data))


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        (
            {"model_type": "gpt2"},
            r"model_type 'gpt2' is not supported; supported: bamba, falcon_h1, llama, mamba2, mistral, nemotron_h",
        ),
        ({"auto_map": {"AutoModelForCausalLM": "modeling_x.X"}}, r"auto_map.*trust_remote_code.*never runs code"),
        ({"hidden_act": "gelu"}, r"hidden_act='gelu' is not supported.*'silu'"),
        ({"rope_parameters": {"rope_type": "yarn", "rope_theta": 1e4, "factor": 2.0}}, r"rope_scaling=.*yarn"),
        ({"mlp_bias": True}, r"mlp_bias=True is not supported"),
        ({"quantization_config": {"quant_method": "gptq"}}, r"quantization_config"),
    ],
    ids=["model_type", "remote-code", "hidden_act", "rope-type", "mlp_bias", "quantized"],
)
def test_bad_configs_name_the_field(saved, tmp_path, changes, message):
    shutil.copytree(saved["llama"][0], tmp_path / "ckpt")
    edit_config(tmp_path / "ckpt", **changes)
    with pytest.raises(CheckpointConfigError, match=message):
        zoo.from_pretrained(tmp_path / "ckpt")


def test_falcon_h1_is_the_parallel_block_with_its_multipliers_folded(saved):
    model = zoo.from_pretrained(saved["falcon_h1"][0])
    assert model.layer_mixers == ["parallel"] * 3
    assert list(model.blocks[0].mixer.branches) == ["attn", "mamba2"]
    assert model.config.mixers["mamba2"]["expand"] == 1.5 and model.config.mixers["mamba2"]["norm"] == "none"
    assert "multiplier" not in json.dumps(model.config.to_dict())  # folded into the weights, not zoo options


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"projectors_bias": True}, r"projectors_bias=True is not supported.*out_proj has no bias"),
        ({"mamba_proj_bias": True}, r"mamba_proj_bias=True is not supported"),
        ({"ssm_multipliers": [1.0, 1.0]}, r"ssm_multipliers=\[1.0, 1.0\] is not supported.*a list of 5 numbers"),
        ({"hidden_act": "gelu"}, r"hidden_act='gelu' is not supported"),
    ],
    ids=["projectors_bias", "mamba_proj_bias", "ssm_multipliers", "hidden_act"],
)
def test_bad_falcon_h1_configs_name_the_field(saved, tmp_path, changes, message):
    shutil.copytree(saved["falcon_h1"][0], tmp_path / "ckpt")
    edit_config(tmp_path / "ckpt", **changes)
    with pytest.raises(CheckpointConfigError, match=message):
        zoo.from_pretrained(tmp_path / "ckpt")


def test_zamba2_is_mamba2_with_shared_blocks_stored_once(saved):
    model = zoo.from_pretrained(saved["zamba2"][0])
    assert model.layer_mixers == ["mamba2"] * 5 and model.config.shared["layers"] == [1, 3, 4]
    assert len(model.shared_blocks) == 2 and [model.blocks[i].shared_use.block_id for i in (1, 3, 4)] == [0, 1, 0]
    with torch.no_grad():  # three KV caches, one per use, though two uses share block 0
        cache = model(ids(), use_cache=True).cache
    assert [layer.shared is not None for layer in cache.layers] == [False, True, False, True, True]
    assert model.state_bytes(19, batch_size=2) > model.state_bytes(18, batch_size=2)


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"hidden_act": "relu"}, r"hidden_act='relu' is not supported.*'gelu', 'silu'"),
        ({"add_bias_linear": True}, r"add_bias_linear=True is not supported"),
        ({"use_long_context": True}, r"use_long_context=True is not supported"),
        ({"num_key_value_heads": 2}, r"num_key_value_heads=2 is not supported"),
        ({"layers_block_type": ["mamba", "hybrid", "attention", "hybrid", "hybrid"]}, r"layers_block_type=.*hybrid"),
    ],
    ids=["hidden_act", "bias", "long_context", "gqa-adapters", "layer-type"],
)
def test_bad_zamba2_configs_name_the_field(saved, tmp_path, changes, message):
    shutil.copytree(saved["zamba2"][0], tmp_path / "ckpt")
    edit_config(tmp_path / "ckpt", **changes)
    with pytest.raises(CheckpointConfigError, match=message):
        zoo.from_pretrained(tmp_path / "ckpt")


def test_missing_unexpected_and_misshaped_tensors_are_named(saved, tmp_path):
    from safetensors.torch import load_file, save_file

    def with_tensors(edit) -> str:
        folder = tmp_path / f"case{len(list(tmp_path.iterdir()))}"
        shutil.copytree(saved["llama-untied-bias"][0], folder)
        tensors = load_file(folder / "model.safetensors")
        edit(tensors)
        save_file(tensors, folder / "model.safetensors", metadata={"format": "pt"})
        with pytest.raises(CheckpointError) as err:
            zoo.from_pretrained(folder)
        return str(err.value)

    msg = with_tensors(lambda t: t.pop("model.layers.1.mlp.up_proj.weight"))
    assert "missing tensor 'model.layers.1.mlp.up_proj.weight'" in msg and "blocks.1.mlp.gate_up.weight" in msg
    msg = with_tensors(lambda t: t.update({"model.layers.0.extra.weight": torch.zeros(2)}))
    assert "unexpected tensor 'model.layers.0.extra.weight'" in msg
    msg = with_tensors(lambda t: t.update({"model.layers.2.self_attn.k_proj.weight": torch.zeros(8, 32)}))
    assert "'model.layers.2.self_attn.k_proj.weight' (8, 32) cannot make the zoo's" in msg and "(16, 32)" in msg
    msg = with_tensors(lambda t: t.pop("lm_head.weight"))  # untied: the head must be there
    assert "missing tensor 'lm_head.weight'" in msg
