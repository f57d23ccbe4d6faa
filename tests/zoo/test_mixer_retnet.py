"""Multi-scale retention (zoo/model/mixers/retnet.py) against a per-step loop of the whole layer written from the
paper's equations (Sun et al. 2023): parallel form, continuation from a cache (chunked and one-token, RoPE at
absolute positions), the decay schedule gamma_h = 1 - 2^(-5-h), gradients, config errors."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from tests.helpers import assert_close
from zoo.errors import ConfigError
from zoo.model.config import mixer_defaults
from zoo.model.mixers.retnet import MultiScaleRetention

D_MODEL, HEAD_DIM = 32, 8
TOL = {"rtol": 1e-5, "atol": 1e-6}  # fp64 throughout, except zoo.model.layers.rotary and RMSNorm, which compute in fp32


def conf(**overrides) -> dict:
    """conf/mixer/retnet.yaml's options (the constructor has no defaults), `overrides` replacing some."""
    return {**mixer_defaults("retnet"), **overrides}


def make_layer(**kw) -> MultiScaleRetention:
    torch.manual_seed(0)
    layer = MultiScaleRetention(D_MODEL, 0, n_layers=1, head_dim=HEAD_DIM, **conf(chunk_size=4, **kw)).double()
    with torch.no_grad():  # no parameter sits at its init value (RMSNorm weight = 1)
        for p in layer.parameters():
            p.add_(torch.randn_like(p) * 0.1)
    return layer


def rope(x: torch.Tensor, pos: int, theta: float) -> torch.Tensor:
    """Rotate the pairs (x_i, x_{i + D/2}) of `x` `[B, H, D]` by the angle pos * theta^(-2i/D)."""
    D = x.shape[-1]
    angle = pos * theta ** (-torch.arange(D // 2, dtype=torch.float64) * 2 / D)
    x1, x2 = x[..., : D // 2], x[..., D // 2 :]
    return torch.cat([x1 * angle.cos() - x2 * angle.sin(), x2 * angle.cos() + x1 * angle.sin()], -1)


def reference(layer: MultiScaleRetention, x: torch.Tensor, S=None, start: int = 0):
    """Per-step loop: q, k rotated at absolute position n, S_n = gamma_h S_{n-1} + k_n^T v_n,
    o_n = K^-0.5 q_n S_n, y_n = W_o(RMSNorm_head(o_n) * silu(W_g x_n)), gamma_h = 1 - 2^(-5-h).
    Returns y [B, T, d] and the final S [B, H, K, V]."""
    B, T, _ = x.shape
    H, K, V = layer.num_heads, layer.head_k, layer.head_v
    gamma = torch.tensor([1 - 2.0 ** (-5 - h) for h in range(H)], dtype=torch.float64)[None, :, None, None]
    S = x.new_zeros(B, H, K, V) if S is None else S.clone()
    ys = []
    for t in range(T):
        n = start + t
        q = rope((x[:, t] @ layer.q_proj.weight.T).view(B, H, K), n, layer.rope_theta) * K**-0.5
        k = rope((x[:, t] @ layer.k_proj.weight.T).view(B, H, K), n, layer.rope_theta)
        v = (x[:, t] @ layer.v_proj.weight.T).view(B, H, V)
        S = gamma * S + k[..., :, None] * v[..., None, :]
        o = torch.einsum("bhk,bhkv->bhv", q, S)
        o = o / (o.pow(2).mean(-1, keepdim=True) + layer.o_norm.eps).sqrt() * layer.o_norm.weight
        o = o * F.silu(x[:, t] @ layer.g_proj.weight.T).view(B, H, V)
        ys.append(o.reshape(B, H * V) @ layer.o_proj.weight.T)
    return torch.stack(ys, 1), S


def test_decay_schedule_is_the_papers():
    layer = MultiScaleRetention(64, 0, n_layers=2, head_dim=16, **conf())
    assert layer.num_heads == 4 and layer.g_gamma.dtype == torch.float32
    assert_close(layer.g_gamma.exp().double(), torch.tensor([31 / 32, 63 / 64, 127 / 128, 255 / 256]), rtol=1e-7)
    big = MultiScaleRetention(768, 0, n_layers=12, head_dim=64, **conf())  # the 125M-scale layer: 12 heads
    expected = torch.tensor([math.log1p(-(2.0 ** (-5 - h))) for h in range(12)], dtype=torch.float64)
    assert_close(big.g_gamma.double(), expected, rtol=1e-7, atol=0, name="log gamma")
    assert not any(p is big.g_gamma for p in big.parameters())  # a buffer, not trained
    assert "g_gamma" not in big.state_dict()  # derived from the config, not saved


def test_parallel_and_cached_match_the_per_step_reference():
    layer = make_layer()
    x = torch.randn(2, 11, D_MODEL, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    expected, S = reference(layer, x)
    y, cache = layer(x)
    assert cache is None
    assert_close(y, expected, **TOL, name="parallel")

    # prefill 5 (chunked, from an empty cache), then 4 more in one chunked call, then 2 one-token steps
    cache = layer.init_cache()
    pieces = []
    for a, b in ((0, 5), (5, 9), (9, 10), (10, 11)):
        y, cache = layer(x[:, a:b], cache)
        pieces.append(y)
        assert cache.offset == b
    assert_close(torch.cat(pieces, 1), expected, **TOL, name="cached")
    assert_close(cache.state, S, **TOL, name="state")
    # the state in fp64 here (fp64 activations), fp32 for fp32 / bf16 ones; the offset is an int, not a tensor
    assert layer.state_bytes(11, batch_size=2) == cache.state.element_size() * cache.state.numel() > 0


def test_continuation_from_a_carried_in_state():
    """A cache carried in continues exactly as the reference from that state and absolute position."""
    layer = make_layer()
    g = torch.Generator().manual_seed(2)
    prefix, x = (torch.randn(1, n, D_MODEL, dtype=torch.float64, generator=g) for n in (6, 7))
    _, S = reference(layer, prefix)
    expected, _ = reference(layer, x, S, start=6)
    _, cache = layer(prefix, layer.init_cache())
    y_chunk, _ = layer(x, type(cache)(cache.state.clone(), cache.offset))
    assert_close(y_chunk, expected, **TOL, name="chunked continuation")
    steps = []
    for t in range(x.shape[1]):
        y, cache = layer(x[:, t : t + 1], cache)
        steps.append(y)
    assert_close(torch.cat(steps, 1), expected, **TOL, name="recurrent continuation")
    # RoPE really uses absolute positions: restarting the positions at 0 gives another output
    y_wrong, _ = layer(x, type(cache)(S.clone(), 0))
    assert (y_wrong - expected).abs().max() > 1e-3


def test_gradients_reach_every_parameter():
    layer = make_layer().float()
    x = torch.randn(2, 9, D_MODEL, generator=torch.Generator().manual_seed(3))
    y, _ = layer(x)
    y.square().sum().backward()
    for name, p in layer.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all() and p.grad.abs().sum() > 0, name


def test_defaults_and_heads():
    layer = MultiScaleRetention(64, 0, n_layers=2, head_dim=16, **conf())
    assert (layer.num_heads, layer.head_k, layer.head_v) == (4, 16, 32)  # key dim d, value dim 2d
    assert layer.kernel_backends() == {"simple_gla": "torch"}
    n = sum(p.numel() for name, p in layer.named_parameters() if name.endswith("proj.weight"))
    assert n == 8 * 64 * 64  # q, k: d x d; v, g: 2d x d; o: d x 2d


def test_config_errors_name_the_bad_option():
    with pytest.raises(ConfigError, match="layer 2: head_dim must divide the retnet key dim: 24 does not divide 64"):
        MultiScaleRetention(64, 2, n_layers=4, head_dim=24, **conf())
    with pytest.raises(ConfigError, match="num_heads must divide the retnet key dim"):
        MultiScaleRetention(64, 0, n_layers=1, head_dim=16, **conf(num_heads=3))
    with pytest.raises(ConfigError, match="RoPE needs an even retnet key size per head"):
        MultiScaleRetention(64, 0, n_layers=1, head_dim=16, **conf(num_heads=64))
