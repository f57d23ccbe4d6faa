"""Mamba-2 / SSD layer against a per-step loop of the whole layer written from the paper's equations
(in_proj -> short conv -> h_t = exp(dt_t A) h_{t-1} + dt_t B_t x_t^T, y_t = C_t h_t + D x_t -> gated norm (or the
norm before the gate, or none) -> out_proj), with and without a carried cache; gradients; the paper's inits; config
errors."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

import zoo
from tests.helpers import assert_close
from zoo.config import compose
from zoo.errors import ConfigError
from zoo.model.config import mixer_defaults
from zoo.model.mixers.mamba2 import Mamba2

D_MODEL, HEAD_DIM = 32, 8  # d_inner 64 -> 8 heads of 8 channels


def conf(**overrides) -> dict:
    """conf/mixer/mamba2.yaml's options (the constructor has no defaults), `overrides` replacing some."""
    return {**mixer_defaults("mamba2"), **overrides}


def make_layer(ngroups: int = 1, seed: int = 0, **options) -> Mamba2:
    torch.manual_seed(seed)
    options = conf(d_state=6, ngroups=ngroups, chunk_size=4, **options)
    layer = Mamba2(D_MODEL, 0, n_layers=1, head_dim=HEAD_DIM, **options).double()
    with torch.no_grad():  # exercise every term: non-trivial conv bias, D and norm weight
        for p in layer.parameters():
            p.add_(torch.randn_like(p) * 0.1)
    return layer


def reference_mamba2(layer: Mamba2, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The layer one token at a time, from its parameters. `x` `[B, T, d_model]` -> (y, final state h)."""
    Bsz, T, _ = x.shape
    H, P, G, N, W = layer.nheads, layer.headdim, layer.ngroups, layer.d_state, layer.d_conv
    d_inner = layer.d_inner
    proj = x @ layer.in_proj.weight.T
    z, xbc_raw, dt_raw = proj[..., :d_inner], proj[..., d_inner : d_inner + layer.conv_dim], proj[..., -H:]
    conv_w = layer.conv.weight[:, 0, :]  # (conv_dim, W); tap W-1 multiplies the current token
    A = -torch.exp(layer.A_log)  # (H,)
    h = x.new_zeros(Bsz, H, N, P)
    ys = []
    for t in range(T):
        # causal depthwise conv over the last W inputs (zeros before the start), then SiLU
        acc = layer.conv.bias.clone() if layer.conv.bias is not None else 0.0
        for i in range(W):
            s = t - (W - 1) + i
            if s >= 0:
                acc = acc + conv_w[:, i] * xbc_raw[:, s]
        xbc = F.silu(acc)  # (B, conv_dim)
        xt = xbc[:, :d_inner].view(Bsz, H, P)
        Bt = xbc[:, d_inner : d_inner + G * N].view(Bsz, G, N)
        Ct = xbc[:, d_inner + G * N :].view(Bsz, G, N)
        dt = F.softplus(dt_raw[:, t] + layer.dt_bias)  # (B, H)
        y = torch.empty(Bsz, H, P, dtype=x.dtype)
        for hd in range(H):
            g = hd // (H // G)  # heads share their group's B and C
            decay = torch.exp(dt[:, hd] * A[hd])[:, None, None]
            h[:, hd] = decay * h[:, hd] + dt[:, hd, None, None] * Bt[:, g, :, None] * xt[:, hd, None, :]
            y[:, hd] = (Ct[:, g, :, None] * h[:, hd]).sum(1) + layer.D[hd] * xt[:, hd]
        y, gate = y.reshape(Bsz, d_inner), F.silu(z[:, t])
        if layer.norm == "none":
            out = y * gate
        else:  # RMSNorm per group, after the gate (gated) or before it
            u = (y * gate if layer.norm == "gated" else y).view(Bsz, G, -1)
            out = (u / torch.sqrt(u.pow(2).mean(-1, keepdim=True) + layer.norm_eps)).reshape(Bsz, d_inner)
            out = out * layer.norm_weight * (gate if layer.norm == "before_gate" else 1.0)
        ys.append(out @ layer.out_proj.weight.T)
    return torch.stack(ys, dim=1), h


@pytest.mark.parametrize("norm", ["gated", "before_gate", "none"])
@pytest.mark.parametrize("ngroups", [1, 2], ids=lambda g: f"G{g}")
def test_parallel_forward_matches_per_step_reference(ngroups, norm):
    layer = make_layer(ngroups, norm=norm)
    assert hasattr(layer, "norm_weight") == (norm != "none")
    x = torch.randn(2, 11, D_MODEL, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    expected, _ = reference_mamba2(layer, x)
    y, cache = layer(x)
    assert cache is None
    assert_close(y, expected, rtol=1e-10, atol=1e-12, name="parallel vs reference")


@pytest.mark.parametrize("ngroups", [1, 2], ids=lambda g: f"G{g}")
def test_cached_continuation_matches_reference(ngroups):
    """Prefill 5 tokens into a cache, then 4 tokens (chunked path) and 2 single tokens (recurrent path)."""
    layer = make_layer(ngroups, seed=1)
    x = torch.randn(2, 11, D_MODEL, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
    expected, h_final = reference_mamba2(layer, x)
    cache, pieces = layer.init_cache(), []
    for a, b in [(0, 5), (5, 9), (9, 10), (10, 11)]:
        y, cache = layer(x[:, a:b], cache)
        pieces.append(y)
    assert_close(torch.cat(pieces, 1), expected, rtol=1e-10, atol=1e-12, name="cached vs reference")
    assert_close(cache.state, h_final, rtol=1e-10, atol=1e-12, name="final SSM state")
    assert cache.state.shape == (2, layer.nheads, layer.d_state, layer.headdim)
    assert cache.conv.shape == (2, layer.d_conv - 1, layer.conv_dim)
    assert cache.conv.untyped_storage().nbytes() == cache.conv.numel() * cache.conv.element_size()  # no big view
    real = sum(t.numel() * t.element_size() for t in (cache.state, cache.conv))  # fp64 state and tail here
    assert layer.state_bytes(11, batch_size=2) == real


def test_every_parameter_gets_a_gradient():
    layer = make_layer(2, seed=2)
    x = torch.randn(2, 9, D_MODEL, dtype=torch.float64, generator=torch.Generator().manual_seed(3))
    y, _ = layer(x)
    y.square().sum().backward()
    for name, p in layer.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, name


def test_inits_survive_the_model_init():
    """A_log = log U(1, 16), softplus(dt_bias) ~ logU(dt_min, dt_max), D = 1: nn.Parameters that
    HybridLM._init_weights (which re-initializes Linear layers) leaves alone."""
    torch.manual_seed(0)
    sizes = ["model.d_model=512", "model.head_dim=1", "model.n_layers=1", "model.mixers.mamba2.d_state=1"]
    cfg = compose(["model=mamba2", *sizes])
    layer = zoo.build_model(cfg.model).blocks[0].mixer  # 1024 heads
    A = -torch.exp(layer.A_log.detach())
    assert A.numel() == 1024 and bool(((A <= -1) & (A >= -16)).all())
    dt = F.softplus(layer.dt_bias.detach())
    assert bool(((dt >= 1e-3 * (1 - 1e-5)) & (dt <= 1e-1 * (1 + 1e-5))).all())
    assert abs(dt.log().mean().item() - math.log(1e-2)) < 0.2  # log-uniform: centred on the log midpoint
    assert bool((layer.D == 1).all()) and bool((layer.norm_weight == 1).all())
    assert layer.kernel_backends() == {"simple_gla": "torch"}


def test_config_errors_name_the_option():
    with pytest.raises(ConfigError, match="headdim"):
        Mamba2(D_MODEL, 3, n_layers=4, head_dim=HEAD_DIM, **conf(headdim=7))
    with pytest.raises(ConfigError, match="ngroups"):
        Mamba2(D_MODEL, 3, n_layers=4, head_dim=HEAD_DIM, **conf(ngroups=3))
    with pytest.raises(ConfigError, match="expand"):
        Mamba2(D_MODEL, 3, n_layers=4, head_dim=HEAD_DIM, **conf(expand=1.01))
    with pytest.raises(ConfigError, match="A_init_range"):
        Mamba2(D_MODEL, 3, n_layers=4, head_dim=HEAD_DIM, **conf(A_init_range=[0, 16]))
    with pytest.raises(ConfigError, match="mamba2 norm='rms'; valid: gated, before_gate, none"):
        Mamba2(D_MODEL, 3, n_layers=4, head_dim=HEAD_DIM, **conf(norm="rms"))
