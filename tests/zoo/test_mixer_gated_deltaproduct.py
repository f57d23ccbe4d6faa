"""Gated DeltaProduct against a per-token loop of the whole layer (short convs on the n-wide k and v, SiLU, L2
norm, n delta steps per token after the decay, output norm and gate), with the layer's own parameters; the same
loop continued from a cache; n = 1 against Gated DeltaNet with the same weights; gradients; config errors."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from tests.helpers import assert_close
from tests.zoo.test_mixer_deltanet import qkv_step
from zoo.errors import ConfigError
from zoo.model.config import mixer_defaults
from zoo.model.mixers.gated_deltanet import GatedDeltaNet
from zoo.model.mixers.gated_deltaproduct import GatedDeltaProduct

D, HEAD_DIM, CHUNK = 32, 8, 8
CASES = {
    "n2-negeig": {"num_householder": 2},
    "n3-posbeta-noconv": {"num_householder": 3, "allow_neg_eigval": False, "use_short_conv": False},
    "n1-2heads-expandv1": {"num_householder": 1, "num_heads": 2, "expand_v": 1.0},
}


def make_layer(opts: dict, dtype=torch.float64, seed: int = 0) -> GatedDeltaProduct:
    torch.manual_seed(seed)
    conf = {**mixer_defaults("gated_deltaproduct"), "chunk_size": CHUNK, **opts}
    layer = GatedDeltaProduct(D, 0, n_layers=1, head_dim=HEAD_DIM, **conf).to(dtype)
    with torch.no_grad():  # off the init: zero conv biases and unit norm weights would hide terms
        for p in layer.parameters():
            p.add_(torch.randn_like(p) * 0.1)
    return layer


def reference(layer: GatedDeltaProduct, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    B, T, _ = x.shape
    H, K, V, n = layer.num_heads, layer.head_k, layer.head_v, layer.steps_per_token
    S, eye, history, ys = x.new_zeros(B, H, K, V), torch.eye(K, dtype=x.dtype), {}, []
    for t in range(T):
        xt = x[:, t]
        feats = qkv_step(layer, xt, history)
        unit = lambda z: z / (z.pow(2).sum(-1, keepdim=True) + 1e-6).sqrt()  # noqa: E731
        q = unit(feats["q"].view(B, H, K))
        k = unit(feats["k"].view(B, n, H, K))  # step-major within the token: (n h d)
        v = feats["v"].view(B, n, H, V)
        beta = torch.sigmoid(layer.b_proj(xt)).view(B, n, H)
        beta = 2 * beta if layer.allow_neg_eigval else beta
        g = -layer.A_log.exp() * F.softplus(layer.a_proj(xt) + layer.dt_bias)  # (B, H)
        S = g.exp()[:, :, None, None] * S
        for j in range(n):
            kj, bj = k[:, j, :, :, None], beta[:, j, :, None, None]
            S = (eye - bj * kj @ kj.transpose(-1, -2)) @ S + bj * kj * v[:, j, :, None, :]
        o = torch.einsum("bhkv,bhk->bhv", S, q * K**-0.5)
        o = o / (o.pow(2).mean(-1, keepdim=True) + layer.o_norm.eps).sqrt() * layer.o_norm.weight
        o = o * F.silu(layer.g_proj(xt).view(B, H, V))
        ys.append(layer.o_proj(o.reshape(B, H * V)))
    return torch.stack(ys, 1), S


@pytest.mark.parametrize("case", CASES)
def test_parallel_form_matches_per_token_reference(case):
    layer = make_layer(CASES[case])
    x = torch.randn(2, 21, D, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        y, _ = layer(x)
        expected, _ = reference(layer, x)
    assert_close(y, expected, rtol=1e-5, atol=1e-6, name=case)  # the output RMSNorm computes in fp32


@pytest.mark.parametrize("case", CASES)
def test_continuation_from_cache_matches_reference(case):
    layer = make_layer(CASES[case])
    x = torch.randn(2, 15, D, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        expected, state = reference(layer, x)
        cache, pieces = layer.init_cache(), []
        for lo, hi in [(0, 6), (6, 12), (12, 13), (13, 14), (14, 15)]:
            y, cache = layer(x[:, lo:hi], cache)
            pieces.append(y)
    assert_close(torch.cat(pieces, 1), expected, rtol=1e-5, atol=1e-6, name=f"{case} continuation")
    assert_close(cache.state, state, rtol=1e-10, atol=1e-12, name=f"{case} state")
    real = sum(t.numel() * t.element_size() for t in vars(cache).values() if isinstance(t, torch.Tensor))
    assert layer.state_bytes(15, batch_size=2) == real


def test_one_householder_step_is_gated_deltanet():
    product = make_layer({"num_householder": 1})
    net = GatedDeltaNet(
        D, 0, n_layers=1, head_dim=HEAD_DIM, **{**mixer_defaults("gated_deltanet"), "chunk_size": CHUNK}
    )
    net = net.to(torch.float64)
    net.allow_neg_eigval = product.allow_neg_eigval
    net.load_state_dict(product.state_dict())
    x = torch.randn(2, 13, D, dtype=torch.float64, generator=torch.Generator().manual_seed(4))
    with torch.no_grad():
        assert_close(product(x)[0], net(x)[0], rtol=1e-10, atol=1e-12, name="n_h = 1")


def test_gradients_reach_every_parameter():
    layer = make_layer(CASES["n2-negeig"], dtype=torch.float32)
    y, _ = layer(torch.randn(2, 11, D, generator=torch.Generator().manual_seed(3)))
    (y * torch.randn_like(y)).sum().backward()
    for name, p in layer.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all() and p.grad.abs().sum() > 0, name


@pytest.mark.parametrize(
    "opts, needle",
    [({"num_householder": 0}, "num_householder must be a positive int"), ({"num_v_heads": 8}, "no grouped values")],
)
def test_config_errors_name_the_option(opts, needle):
    with pytest.raises(ConfigError, match=needle):
        make_layer(opts)
