"""RWKV-6 "Finch" / RWKV-5 "Eagle" time mix (`rwkv6`) and channel mix (`rwkv_cmix`): the parallel and cached
forwards against a per-step loop written from the equations (fp64), gradients, the v5 / v6 differences, the
RWKV-LM init and the config errors."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

import zoo
from tests.helpers import assert_close
from zoo.config import compose
from zoo.errors import ConfigError
from zoo.model.config import mixer_defaults
from zoo.model.mixers.rwkv6 import RWKV6TimeMix, RWKVChannelMix

D, HEAD = 32, 8  # 4 heads


def conf(**overrides) -> dict:
    """conf/mixer/rwkv6.yaml's options (the constructor has no defaults), `overrides` replacing some."""
    return {**mixer_defaults("rwkv6"), **overrides}


def make_layer(version: int, seed: int = 0, layer_idx: int = 1, n_layers: int = 3) -> RWKV6TimeMix:
    torch.manual_seed(seed)
    options = conf(version=version, chunk_size=8)
    layer = RWKV6TimeMix(D, layer_idx, n_layers=n_layers, head_dim=HEAD, **options).double()
    with torch.no_grad():  # wake the zero-initialized LoRA matrices, so every term is exercised
        for p in layer.parameters():
            p.add_(torch.randn_like(p) * 0.1)
    return layer


def make_cmix(seed: int = 0) -> RWKVChannelMix:
    torch.manual_seed(seed)
    mlp = RWKVChannelMix(D, 1, n_layers=3, mlp_ratio=3.5, mlp_hidden=None).double()
    with torch.no_grad():
        for p in mlp.parameters():
            p.add_(torch.randn_like(p) * 0.1)
    return mlp


def reference_time_mix(layer: RWKV6TimeMix, x, prev=None, state=None):
    """The MIXERS.md recurrence, one token at a time. Returns (y [B, T, C], final state, last token)."""
    B, T, C = x.shape
    H, K, R = layer.num_heads, layer.head_size, layer.mix_lora_rank
    S = x.new_zeros(B, H, K, K) if state is None else state.clone()
    prev = x.new_zeros(B, C) if prev is None else prev
    u = layer.time_faaaa  # (H, K)
    ys = []
    for t in range(T):
        xt = x[:, t]
        xx = prev - xt
        if layer.version == 6:
            a = torch.tanh((xt + xx * layer.time_maa_x) @ layer.time_maa_w1)  # (B, 5 R)
            m = [a[:, i * R : (i + 1) * R] @ layer.time_maa_w2[i] for i in range(5)]
            mus = [layer.time_maa_w, layer.time_maa_k, layer.time_maa_v, layer.time_maa_r, layer.time_maa_g]
            xw, xk, xv, xr, xg = (xt + xx * (mu + mi) for mu, mi in zip(mus, m, strict=True))
            w = -torch.exp(layer.time_decay + torch.tanh(xw @ layer.time_decay_w1) @ layer.time_decay_w2)
        else:
            mus = [layer.time_maa_k, layer.time_maa_v, layer.time_maa_r, layer.time_maa_g]
            xk, xv, xr, xg = (xt + xx * mu for mu in mus)
            w = -torch.exp(layer.time_decay).expand(B, C)
        r, k, v = (f(z).view(B, H, K) for f, z in ((layer.receptance, xr), (layer.key, xk), (layer.value, xv)))
        kv = k[..., :, None] * v[..., None, :]  # (B, H, K, V)
        o = torch.einsum("bhk,bhkv->bhv", r, S + u[None, :, :, None] * kv)  # scale 1, exclusive + bonus
        S = torch.exp(w.view(B, H, K))[..., None] * S + kv
        mean, var = o.mean(-1, keepdim=True), o.var(-1, unbiased=False, keepdim=True)
        o = (o - mean) / torch.sqrt(var + layer.norm_eps) * layer.ln_x.weight.view(H, K) + layer.ln_x.bias.view(H, K)
        ys.append(layer.output(o.reshape(B, C) * F.silu(layer.gate(xg))))
        prev = xt
    return torch.stack(ys, 1), S, prev


def reference_cmix(mlp: RWKVChannelMix, x, prev=None):
    ys = []
    prev = x.new_zeros(x.shape[0], x.shape[2]) if prev is None else prev
    for t in range(x.shape[1]):
        xt = x[:, t]
        xk = xt + (prev - xt) * mlp.time_maa_k
        xr = xt + (prev - xt) * mlp.time_maa_r
        ys.append(torch.sigmoid(mlp.receptance(xr)) * mlp.value(torch.relu(mlp.key(xk)) ** 2))
        prev = xt
    return torch.stack(ys, 1)


def inputs(T: int, seed: int = 1):
    return torch.randn(2, T, D, dtype=torch.float64, generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("version", [6, 5], ids=["v6", "v5"])
def test_parallel_matches_reference(version):
    layer = make_layer(version)
    x = inputs(21)  # not a multiple of the chunk size 8
    with torch.no_grad():
        y, cache = layer(x)
        ref, _, _ = reference_time_mix(layer, x)
    assert cache is None
    assert_close(y, ref, rtol=1e-10, atol=1e-12, name=f"v{version} parallel")


@pytest.mark.parametrize("version", [6, 5], ids=["v6", "v5"])
def test_cached_continuation_matches_reference(version):
    """Prefill 9 tokens, then 7 more in one chunked call, then 5 one at a time: outputs, state and shift."""
    layer = make_layer(version)
    x = inputs(21)
    with torch.no_grad():
        ref, ref_state, ref_prev = reference_time_mix(layer, x)
        cache = layer.init_cache()
        pieces = []
        for a, b in [(0, 9), (9, 16), *((t, t + 1) for t in range(16, 21))]:
            y, cache = layer(x[:, a:b], cache)
            pieces.append(y)
    assert_close(torch.cat(pieces, 1), ref, rtol=1e-10, atol=1e-12, name=f"v{version} cached")
    assert_close(cache.state, ref_state, rtol=1e-10, atol=1e-12, name="state")
    assert torch.equal(cache.shift, ref_prev)
    real = cache.state.numel() * cache.state.element_size() + cache.shift.numel() * cache.shift.element_size()
    assert layer.state_bytes(21, batch_size=2) == real
    # a cache from the middle of a sequence: the reference started from the same state and previous token
    with torch.no_grad():
        ref_tail, _, _ = reference_time_mix(layer, x[:, 9:], prev=x[:, 8], state=reference_time_mix(layer, x[:, :9])[1])
    assert_close(ref_tail, ref[:, 9:], rtol=1e-10, atol=1e-12, name="reference continuation")


def test_channel_mix_matches_reference_and_continues():
    mlp = make_cmix()
    x = inputs(13)
    with torch.no_grad():
        ref = reference_cmix(mlp, x)
        y, none = mlp(x)
        cache = mlp.init_cache()
        y1, cache = mlp(x[:, :6], cache)
        y2, cache = mlp(x[:, 6:7], cache)
        y3, cache = mlp(x[:, 7:], cache)
    assert none is None
    assert_close(y, ref, rtol=1e-10, atol=1e-12, name="cmix parallel")
    assert_close(torch.cat([y1, y2, y3], 1), ref, rtol=1e-10, atol=1e-12, name="cmix cached")
    assert torch.equal(cache.shift, x[:, -1])
    assert mlp.state_bytes(batch_size=2) == cache.shift.numel() * cache.shift.element_size()
    assert mlp.key.out_features == int(3.5 * D) // 32 * 32


@pytest.mark.parametrize("version", [6, 5], ids=["v6", "v5"])
def test_gradients_reach_every_parameter(version):
    layer, mlp = make_layer(version).float(), make_cmix().float()
    x = inputs(11).float().requires_grad_()
    y, _ = layer(x)
    z, _ = mlp(y)
    z.square().mean().backward()
    for name, p in [*layer.named_parameters(), *mlp.named_parameters()]:
        assert p.grad is not None and p.grad.abs().sum() > 0, name
    assert x.grad.abs().sum() > 0


def test_v5_has_static_decay_and_shift_v6_data_dependent():
    v5, v6 = make_layer(5), make_layer(6)
    names5 = {n for n, _ in v5.named_parameters()}
    assert not any("w1" in n or "w2" in n or n in ("time_maa_x", "time_maa_w") for n in names5)
    assert {"time_maa_w1", "time_maa_w2", "time_decay_w1", "time_decay_w2"} <= {n for n, _ in v6.named_parameters()}
    xa, xb = inputs(5, seed=3), inputs(5, seed=4)
    with torch.no_grad():
        wa5, wb5 = v5.log_decay(None, 2, 5), v5.log_decay(None, 2, 5)
        assert torch.equal(wa5, wb5) and torch.equal(wa5[0, 0].flatten(), -torch.exp(v5.time_decay))
        xw_a = v6.mix_inputs(xa, torch.zeros_like(xa))[0]
        xw_b = v6.mix_inputs(xb, torch.zeros_like(xb))[0]
        assert not torch.allclose(v6.log_decay(xw_a, 2, 5), v6.log_decay(xw_b, 2, 5))
        # v5's token shift is a fixed per-channel interpolation: x_k = x_t + (x_{t-1} - x_t) * mu_k
        x = inputs(4)
        xx = torch.cat([torch.zeros_like(x[:, :1]), x[:, :-1]], 1) - x
        assert torch.equal(v5.mix_inputs(x, xx)[1], x + xx * v5.time_maa_k)
    assert v5.norm_eps == 64e-5 * 64 and v6.norm_eps == 64e-5


def test_rwkv_lm_init_survives_model_init():
    L = 4
    cfg = compose(["model=rwkv6", "model.d_model=64", "model.head_dim=16", f"model.n_layers={L}"]).model
    model = zoo.build_model(cfg)
    n = torch.arange(64) / 63
    c = torch.arange(64) / 64
    for i, block in enumerate(model.blocks):
        mix, cmix = block.mixer, block.mlp
        ratio, lp = i / (L - 1), 1 - i / L
        assert_close(mix.time_decay.detach(), -6 + 5 * n ** (0.7 + 1.3 * ratio), name="time_decay")
        assert mix.time_decay[0] == -6 and abs(mix.time_decay[-1].item() + 1) < 1e-6
        zigzag = 0.1 * ((torch.arange(64) + 1) % 3 - 1)
        assert_close(mix.time_faaaa.detach().flatten(), ratio * (1 - n) + zigzag, name="time_faaaa")
        assert_close(mix.time_maa_k.detach(), 1 - c**lp, name="time_maa_k")
        assert_close(mix.time_maa_v.detach(), 1 - (c**lp + 0.3 * ratio), name="time_maa_v")
        assert_close(mix.time_maa_r.detach(), 1 - c ** (0.5 * lp), name="time_maa_r")
        assert_close(cmix.time_maa_k.detach(), 1 - c**lp, name="cmix time_maa_k")
        assert not mix.time_maa_w1.any() and not mix.time_decay_w1.any()  # LoRA first matrices: zero
        assert 0 < mix.time_maa_w2.abs().max() <= 0.01 and 0 < mix.time_decay_w2.abs().max() <= 0.01
        assert torch.equal(mix.ln_x.weight, torch.ones(64)) and not mix.ln_x.bias.any()
        assert mix.num_heads == 4 and mix.head_size == 16  # head_size null = model.head_dim
    assert model.kernel_backends() == {"rwkv6": "torch"}


def test_rwkv5_architecture_is_version_5():
    model = zoo.build_model(compose(["model=rwkv5", "model.d_model=64", "model.head_dim=16"]).model)
    assert {b.mixer.version for b in model.blocks} == {5}
    assert {type(b.mlp).__name__ for b in model.blocks} == {"RWKVChannelMix"}


@pytest.mark.parametrize(
    ("options", "message"),
    [({"version": 7}, "version must be 5 (Eagle) or 6 (Finch), got 7"), ({"head_size": 12}, "head_size must divide")],
    ids=["version", "head-size"],
)
def test_config_errors(options, message):
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace(")", r"\)")):
        RWKV6TimeMix(D, 0, n_layers=2, head_dim=HEAD, **conf(**options))
