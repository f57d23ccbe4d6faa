"""Every architecture in `conf/model/`, pure and with one attention layer: it builds, cached inference
(prefill + one-token decode, prefill in two pieces, all-recurrent decode) reproduces the parallel
forward, a few MQAR steps reduce the loss, and `state_bytes` is the real cache size, flat in the
sequence length for every pure model without full attention.

A new mixer is covered here as soon as its `conf/model/<name>.yaml` exists; `test_registry_table`
fails until it does."""

from __future__ import annotations

import pytest
import torch

import zoo
from tests.helpers import assert_close
from zoo.config import compose, conf_dir
from zoo.data.mqar import mqar
from zoo.model.mlps import MLPS
from zoo.train.loop import lm_loss

ARCHS = sorted(p.stem for p in (conf_dir() / "model").glob("*.yaml"))
ATTENTION_ARCHS = {"transformer", "fox"}  # softmax attention in every layer: a KV cache that grows
PURE, HYBRID = ("model.attn.layers=[]",), ("model.attn.layers=[1]",)
# Options that imported checkpoints need, on the architectures that use them: each passes the same harness
FEATURES = {
    "transformer-qwen3-attention": (
        "transformer",
        ("model.attn.qk_norm=head", "model.attn.num_heads=4", "model.attn.head_size=24", "model.attn.num_kv_heads=2")
        + ("model.attn.rope_dim=8", "model.attn.qkv_bias=true", "model.attn.out_bias=true", "model.mlp_hidden=44")
        + ("model.attn.output_gate=true",),
    ),
    "transformer-window-per-layer": (
        "transformer",
        ("model.layers=[swa,attn]", "+model.mixers.swa.window_size=5", "+model.attn.rope_scaling.rope_type=linear")
        + ("+model.attn.rope_scaling.factor=4.0",),
    ),
}
FEATURES["nemotron-h-layout"] = (  # blocks of a mixer alone and of an MLP alone, per-layer MLPs
    "mamba2",
    ("model.layers=[mamba2,none,attn,none]", "model.n_layers=4", "model.mlp=[none,relu2]", "model.mlp_hidden=40")
    + ("model.mixers.mamba2.dt_limit=[0.05,null]",),
)
FEATURES["olmo-hybrid-layout"] = (  # grouped values, beta in (0, 2), post-norm attention with full QK norm
    "gated_deltanet",
    ("model.attn.layers=[1]", "model.mixers.gated_deltanet.num_v_heads=8", "model.norm_position=[pre,post]")
    + ("model.mixers.gated_deltanet.allow_neg_eigval=true", "model.attn.qk_norm=full"),
)
FEATURES["falcon-h1-layer"] = (  # attention and a Mamba-2 without norm side by side in every layer (the parallel mixer)
    "parallel",
    ("model.mixers.parallel.branches=[attn,mamba2]", "model.attn.num_kv_heads=2", "model.mixers.mamba2.norm=none")
    + ("model.mixers.mamba2.expand=1.5", "model.mixers.mamba2.d_state=16", "model.mixers.mamba2.ngroups=2"),
)
FEATURES["zamba2-shared-blocks"] = (  # Mamba-2 layers; one shared attention block read by both, RoPE, adapters
    "mamba2",
    ("model.shared.layers=[0,1]", "model.shared.num_heads=4", "model.shared.num_kv_heads=2")
    + ("model.shared.rope_theta=10000.0", "model.shared.mlp_hidden=48", "model.shared.adapter_rank=4")
    + ("model.mlp=none",),
)
FEATURES["rwkv7-in-parallel"] = (  # a mixer that reads the forward call's carry (v_first), as a parallel branch
    "parallel",
    ("model.mixers.parallel.branches=[swa,rwkv7]", "+mixer@model.mixers.rwkv7=rwkv7"),
)
VARIANTS = [(arch, extra) for arch in ARCHS for extra in (PURE, HYBRID)] + list(FEATURES.values())
VARIANT_IDS = [f"{arch}{'+attn' if extra == HYBRID else ''}" for arch in ARCHS for extra in (PURE, HYBRID)] + list(
    FEATURES
)
SMALL = ["model.d_model=64", "model.head_dim=16", "data.vocab_size=97", "model.n_layers=2"]
CHUNK = 8  # chunk size forced on every chunked mixer, so that the test lengths span several chunks
VOCAB = 97


def small_config(arch: str, extra: tuple[str, ...]):
    cfg = compose([f"model={arch}", *SMALL, *extra])
    for kwargs in cfg.model.mixers.values():
        if "chunk_size" in kwargs:
            kwargs.chunk_size = CHUNK
    return cfg.model


def small_model(arch: str, extra: tuple[str, ...], seed: int = 0) -> zoo.HybridLM:
    torch.manual_seed(seed)
    model = zoo.build_model(small_config(arch, extra)).eval()
    # Zero-initialized projections (e.g. RWKV's LoRA first matrices) would hide bugs behind a path that
    # multiplies by zero: perturb every parameter so that every term of every mixer is exercised.
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.02)
    return model


def test_registry_table():
    """Every registered mixer has its config, a pure architecture and is covered by these tests."""
    used = {}
    for arch in ARCHS:
        for name in zoo.build_model(small_config(arch, PURE)).layer_mixers:
            used.setdefault(name, arch)
    for name in zoo.MIXERS:
        assert (conf_dir() / "mixer" / f"{name}.yaml").exists(), f"conf/mixer/{name}.yaml is missing"
        pure = "transformer" if name == "attn" else name
        assert pure in ARCHS, f"mixer {name!r} has no pure architecture conf/model/{pure}.yaml"
        assert name in used, f"mixer {name!r} is used by no architecture in conf/model/"
    for name in MLPS:
        used_by = [a for a, extra in VARIANTS if name in zoo.ModelConfig.from_any(small_config(a, extra)).mlp_names()]
        assert used_by, f"mlp {name!r} is used by no architecture nor FEATURES variant"


@pytest.mark.parametrize(("arch", "extra"), VARIANTS, ids=VARIANT_IDS)
def test_prefill_then_decode_matches_parallel(arch, extra):
    model = small_model(arch, extra)
    ids = torch.randint(0, VOCAB, (2, 21), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        full = model(ids).logits
        out = model(ids[:, :11], use_cache=True)  # 11: not a multiple of the chunk size
        steps = [out.logits]
        for t in range(11, 21):
            out = model(ids[:, t : t + 1], cache=out.cache)
            steps.append(out.logits)
    assert out.cache.seen_tokens == 21
    assert_close(torch.cat(steps, 1), full, rtol=1e-4, atol=1e-5, name=f"{arch} prefill+decode")


@pytest.mark.parametrize(("arch", "extra"), VARIANTS, ids=VARIANT_IDS)
def test_prefill_in_two_pieces_matches_parallel(arch, extra):
    model = small_model(arch, extra)
    ids = torch.randint(0, VOCAB, (2, 30), generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        full = model(ids).logits
        first = model(ids[:, :13], use_cache=True)
        second = model(ids[:, 13:], cache=first.cache)
    assert_close(torch.cat([first.logits, second.logits], 1), full, rtol=1e-4, atol=1e-5, name=f"{arch} 13+17")


@pytest.mark.parametrize("arch", ARCHS)
def test_recurrent_form_matches_parallel(arch):
    """Every token through the one-token (recurrent) path, from an empty cache, equals the parallel form."""
    model = small_model(arch, PURE)
    ids = torch.randint(0, VOCAB, (1, 19), generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        full = model(ids).logits
        cache, steps = model.init_cache(), []
        for t in range(ids.shape[1]):
            out = model(ids[:, t : t + 1], cache=cache)
            cache = out.cache
            steps.append(out.logits)
    assert_close(torch.cat(steps, 1), full, rtol=1e-4, atol=1e-5, name=f"{arch} recurrent")


def _cache_bytes(obj) -> int:
    if torch.is_tensor(obj):
        return obj.numel() * obj.element_size()
    if isinstance(obj, (list, tuple)):
        return sum(_cache_bytes(o) for o in obj)
    if isinstance(obj, dict):
        return sum(_cache_bytes(o) for o in obj.values())
    if hasattr(obj, "__dict__"):
        # `_buf` is a KV cache's spare capacity, which the benchmark's peak memory counts, not the state
        return sum(_cache_bytes(v) for name, v in vars(obj).items() if not name.startswith("_"))
    return 0


# every variant in fp32, and the pure ones (which cover every mixer) in bf16 too
STATE_CASES = [(*v, torch.float32) for v in VARIANTS] + [(a, PURE, torch.bfloat16) for a in ARCHS]
STATE_CASES.append((*FEATURES["zamba2-shared-blocks"], torch.bfloat16))  # the shared uses' KV caches halve too
STATE_IDS = VARIANT_IDS + [f"{a}-bf16" for a in ARCHS] + ["zamba2-shared-blocks-bf16"]


@pytest.mark.parametrize(("arch", "extra", "dtype"), STATE_CASES, ids=STATE_IDS)
def test_state_bytes_is_the_real_cache(arch, extra, dtype):
    """In bf16 the KV cache, conv tails and previous tokens halve; recurrent states stay fp32."""
    model = small_model(arch, extra).to(dtype)
    for seq_len in (3, 70):
        with torch.no_grad():
            out = model(torch.zeros(2, seq_len, dtype=torch.long), use_cache=True)
            out = model(torch.zeros(2, 1, dtype=torch.long), cache=out.cache)
        assert model.state_bytes(seq_len + 1, batch_size=2) == _cache_bytes(out.cache.layers), seq_len


@pytest.mark.parametrize("arch", ARCHS)
def test_state_bytes_flat_unless_full_attention(arch):
    model = small_model(arch, PURE)
    for block in model.blocks:  # the declared property says what the bytes do
        assert block.mixer.state_grows == (block.mixer.state_bytes(2048) > block.mixer.state_bytes(1024))
    if arch in ATTENTION_ARCHS:
        assert model.state_grows
        assert model.state_bytes(65536) == 64 * model.state_bytes(1024)
    else:
        assert not model.state_grows, f"pure {arch} keeps a cache that grows with the sequence"
        assert model.state_bytes(1024) == model.state_bytes(65536) == model.state_bytes(1_000_000)
    assert small_model(arch, HYBRID).state_grows


@pytest.mark.parametrize(("arch", "extra"), VARIANTS, ids=VARIANT_IDS)
def test_a_few_mqar_steps_reduce_the_loss(arch, extra):
    model = small_model(arch, extra).train()
    x, y = mqar(vocab_size=VOCAB, seq_len=32, num_kv_pairs=4, num_examples=64, seed=0)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    losses = []
    for step in range(12):
        batch = slice(16 * (step % 4), 16 * (step % 4 + 1))
        loss = lm_loss(model(x[batch]).logits, y[batch])
        assert torch.isfinite(loss), f"{arch}: loss {loss} at step {step}"
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert sum(losses[-4:]) < sum(losses[:4]), losses
