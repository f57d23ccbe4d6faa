"""Kimi Delta Attention against a per-token loop of the whole layer (short convs, SiLU, L2 norm, the low-rank decay
per key channel, decay then delta step, the low-rank sigmoid output gate), with the layer's own parameters; the
same loop continued from a cache; gradients; the init; config errors."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from tests.helpers import assert_close
from tests.zoo.test_mixer_deltanet import qkv_step
from zoo.errors import ConfigError
from zoo.model.config import mixer_defaults
from zoo.model.mixers.kda import KimiDeltaAttention

D, HEAD_DIM, CHUNK = 32, 8, 16
CASES = {
    "default": {},
    "negeig-grouped-halfkeys": {"allow_neg_eigval": True, "num_heads": 2, "num_v_heads": 4, "expand_k": 0.5},
    "noconv": {"use_short_conv": False, "conv_bias": True},
}


def make_layer(opts: dict, dtype=torch.float64, seed: int = 0) -> KimiDeltaAttention:
    torch.manual_seed(seed)
    conf = {**mixer_defaults("kda"), "chunk_size": CHUNK, **opts}
    layer = KimiDeltaAttention(D, 0, n_layers=1, head_dim=HEAD_DIM, **conf).to(dtype)
    with torch.no_grad():  # off the init: zero biases and unit norm weights would hide terms
        for p in layer.parameters():
            p.add_(torch.randn_like(p) * 0.1)
    return layer


def reference(layer: KimiDeltaAttention, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    B, T, _ = x.shape
    Hk, K, V, H = layer.num_heads, layer.head_k, layer.head_v, layer.num_v_heads
    S, eye, history, ys = x.new_zeros(B, H, K, V), torch.eye(K, dtype=x.dtype), {}, []
    for t in range(T):
        xt = x[:, t]
        feats = qkv_step(layer, xt, history)
        q, k = ((z := feats[n].view(B, Hk, K)) / (z.pow(2).sum(-1, keepdim=True) + 1e-6).sqrt() for n in "qk")
        q, k = (z.repeat_interleave(H // Hk, dim=1) for z in (q, k))
        v = feats["v"].view(B, H, V)
        beta = torch.sigmoid(layer.b_proj(xt))[:, :, None, None]
        beta = 2 * beta if layer.allow_neg_eigval else beta
        f = layer.f_proj[1](layer.f_proj[0](xt)) + layer.dt_bias  # (B, H * K)
        g = -layer.A_log.exp()[:, None] * F.softplus(f).view(B, H, K)
        kk = k[..., :, None] * k[..., None, :]
        S = (eye - beta * kk) @ (g.exp()[..., None] * S) + beta * k[..., :, None] * v[..., None, :]
        o = torch.einsum("bhkv,bhk->bhv", S, q * K**-0.5)
        o = o / (o.pow(2).mean(-1, keepdim=True) + layer.o_norm.eps).sqrt() * layer.o_norm.weight
        o = o * torch.sigmoid(layer.g_proj[1](layer.g_proj[0](xt))).view(B, H, V)
        ys.append(layer.o_proj(o.reshape(B, H * V)))
    return torch.stack(ys, 1), S


@pytest.mark.parametrize("case", CASES)
def test_parallel_form_matches_per_token_reference(case):
    layer = make_layer(CASES[case])
    x = torch.randn(2, 37, D, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        y, _ = layer(x)
        expected, _ = reference(layer, x)
    assert_close(y, expected, rtol=1e-5, atol=1e-6, name=case)  # the output RMSNorm computes in fp32


@pytest.mark.parametrize("case", CASES)
def test_continuation_from_cache_matches_reference(case):
    layer = make_layer(CASES[case])
    x = torch.randn(2, 23, D, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        expected, state = reference(layer, x)
        cache, pieces = layer.init_cache(), []
        for lo, hi in [(0, 9), (9, 20), (20, 21), (21, 22), (22, 23)]:
            y, cache = layer(x[:, lo:hi], cache)
            pieces.append(y)
    assert_close(torch.cat(pieces, 1), expected, rtol=1e-5, atol=1e-6, name=f"{case} continuation")
    assert_close(cache.state, state, rtol=1e-10, atol=1e-12, name=f"{case} state")


def test_gradients_reach_every_parameter():
    layer = make_layer(CASES["default"], dtype=torch.float32)
    y, _ = layer(torch.randn(2, 19, D, generator=torch.Generator().manual_seed(3)))
    (y * torch.randn_like(y)).sum().backward()
    for name, p in layer.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all() and p.grad.abs().sum() > 0, name


def test_init_and_decay_range():
    torch.manual_seed(0)
    layer = KimiDeltaAttention(64, 0, n_layers=1, head_dim=16, **mixer_defaults("kda"))
    A = layer.A_log.exp()
    assert ((A > 1) & (A < 16)).all() and (layer.dt_bias == 0).all()
    g = layer.log_decay(torch.randn(2, 5, 64))
    assert g.shape == (2, 5, 4, 16) and (g <= 0).all()


def test_config_errors_name_the_option():
    with pytest.raises(ConfigError, match="A_init_range must satisfy 0 < low < high"):
        make_layer({"A_init_range": (0.0, 16.0)})


def test_the_chunked_form_under_autograd_equals_the_step_form_of_inference():
    """Without autograd on CPU the layer runs the step op (steps_for_inference); with it, the chunked op."""
    layer = make_layer(CASES["default"])
    x = torch.randn(2, 40, D, dtype=torch.float64, generator=torch.Generator().manual_seed(6))
    with torch.no_grad():
        stepped, _ = layer(x)
    chunked, _ = layer(x)
    assert chunked.requires_grad
    assert_close(chunked.detach(), stepped, rtol=1e-9, atol=1e-11, name="chunk vs step")
