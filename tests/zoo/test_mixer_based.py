"""Based linear attention against a per-step reference of the whole layer written from MIXERS.md, the
Taylor feature-map identity, cached continuation, gradients, state size and config errors."""

from __future__ import annotations

import math
import sys

import pytest
import torch

from tests.helpers import assert_close
from zoo.errors import ConfigError
from zoo.model.config import mixer_defaults
from zoo.model.mixers.based import BasedLinearAttention, TaylorFeatureMap

D_MODEL, HEAD_DIM = 32, 8  # 4 heads, d_v = 8


def conf(**overrides) -> dict:
    """conf/mixer/based.yaml's options (the constructor has no defaults), `overrides` replacing some."""
    return {**mixer_defaults("based"), **overrides}


def make_layer(seed: int = 0, **options) -> BasedLinearAttention:
    torch.manual_seed(seed)
    options = conf(chunk_size=8, feature_dim=4, **options)
    layer = BasedLinearAttention(D_MODEL, 0, n_layers=1, head_dim=HEAD_DIM, **options).double()
    with torch.no_grad():  # q, k large enough that the quadratic Taylor term matters
        for p in layer.parameters():
            p.normal_(0.0, 0.3)
    return layer


def taylor_features(x: torch.Tensor) -> torch.Tensor:
    """phi(x) = [1, x / d'^{1/4}, (x x^T) / (sqrt(2) sqrt(d'))] with the full outer product."""
    d = x.shape[-1]
    outer = (x[..., :, None] * x[..., None, :]).flatten(-2)
    return torch.cat([torch.ones_like(x[..., :1]), x / d**0.25, outer / (math.sqrt(2) * math.sqrt(d))], -1)


def reference_layer(layer: BasedLinearAttention, x: torch.Tensor, S=None, z=None):
    """Per-step loop: S_t = S_{t-1} + phi(k_t) v_t^T, z_t = z_{t-1} + phi(k_t),
    o_t = phi(q_t)^T S_t / (phi(q_t)^T z_t + eps), y_t = W_o o_t. Returns y and the final (S, z)."""
    B, T, _ = x.shape
    H, F, V = layer.num_heads, layer.feature_dim, layer.head_v
    q = taylor_features((x @ layer.q_proj.weight.T).view(B, T, H, F))
    k = taylor_features((x @ layer.k_proj.weight.T).view(B, T, H, F))
    v = (x @ layer.v_proj.weight.T).view(B, T, H, V)
    E = q.shape[-1]
    S = x.new_zeros(B, H, E, V) if S is None else S
    z = x.new_zeros(B, H, E) if z is None else z
    out = []
    for t in range(T):
        S = S + k[:, t, :, :, None] * v[:, t, :, None, :]
        z = z + k[:, t]
        num = torch.einsum("bhe,bhev->bhv", q[:, t], S)
        den = torch.einsum("bhe,bhe->bh", q[:, t], z)
        out.append((num / (den[..., None] + layer.eps)).reshape(B, H * V))
    return torch.stack(out, 1) @ layer.o_proj.weight.T, (S, z)


@pytest.mark.parametrize("upper", [True, False], ids=["upper-triangular", "full-outer"])
@pytest.mark.parametrize("d", [1, 4, 16])
def test_taylor_feature_map_identity(d, upper):
    """phi(q).phi(k) = 1 + q.k / sqrt(d') + (q.k)^2 / (2 d'), with E = 1 + d' + d'(d'+1)/2 (or + d'^2)."""
    fmap = TaylorFeatureMap(d, upper_triangular=upper).double()
    g = torch.Generator().manual_seed(d)
    q, k = (
        torch.randn(2, 50, d, generator=g, dtype=torch.float64),
        torch.randn(2, 50, d, generator=g, dtype=torch.float64),
    )
    E = 1 + d + (d * (d + 1) // 2 if upper else d * d)
    assert fmap.expanded_dim == E and fmap(q).shape == (2, 50, E)
    qk = (q * k).sum(-1)
    assert_close((fmap(q) * fmap(k)).sum(-1), 1 + qk / d**0.5 + qk**2 / (2 * d), rtol=1e-12, atol=1e-12)
    if upper:
        assert TaylorFeatureMap(16).expanded_dim == 153


@pytest.mark.parametrize("upper", [True, False], ids=["upper-triangular", "full-outer"])
def test_parallel_matches_per_step_reference(upper):
    layer = make_layer(upper_triangular=upper)
    x = torch.randn(2, 19, D_MODEL, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    y, cache = layer(x)
    assert cache is None
    y_ref, _ = reference_layer(layer, x)
    assert_close(y, y_ref, rtol=1e-9, atol=1e-10, name="parallel")
    naive = make_layer(upper_triangular=upper, backend="naive")
    assert_close(naive(x)[0], y_ref, rtol=1e-9, atol=1e-10, name="naive backend")


def test_cached_continuation_matches_reference():
    """Prefill 7 tokens, continue with a 5-token chunk and 4 single tokens: the reference loop carried
    from the same point, and the cache holds [S | z]."""
    layer = make_layer()
    x = torch.randn(2, 16, D_MODEL, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
    y_ref, (S, z) = reference_layer(layer, x)
    cache = layer.init_cache()
    pieces = []
    for lo, hi in [(0, 7), (7, 12), (12, 13), (13, 14), (14, 15), (15, 16)]:
        y, cache = layer(x[:, lo:hi], cache)
        pieces.append(y)
    assert_close(torch.cat(pieces, 1), y_ref, rtol=1e-9, atol=1e-10, name="cached")
    # The cache holds [S | z] in the upper-triangular basis: row (i, j), i <= j, is c_ij times the reference's
    # full-outer-product row (i, j), with c_ii = 1 and c_ij = sqrt(2) (S and z are linear in phi(k)).
    F = layer.feature_dim
    i, j = torch.triu_indices(F, F)
    rows = torch.cat([torch.arange(1 + F), 1 + F + i * F + j])
    c = torch.ones(len(rows), dtype=torch.float64)
    c[1 + F :][i != j] = 2**0.5
    S_upper = torch.cat([S, z[..., None]], -1)[:, :, rows] * c[:, None]
    assert cache.state.dtype == torch.float64 and cache.state.shape == (2, layer.num_heads, 1 + F + len(i), 9)
    assert_close(cache.state, S_upper, rtol=1e-9, atol=1e-10, name="state [S | z]")


def test_gradients_reach_every_parameter():
    layer = make_layer()
    x = torch.randn(2, 11, D_MODEL, dtype=torch.float64, requires_grad=True)
    layer(x)[0].square().sum().backward()
    for name, p in layer.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, name
    assert x.grad.abs().sum() > 0


def test_state_bytes_and_defaults():
    """Default heads follow head_dim; state = fp32 H * (d_v * E + E), flat in seq_len."""
    layer = BasedLinearAttention(64, 0, n_layers=2, head_dim=16, **conf())
    assert (layer.num_heads, layer.head_v, layer.feature_dim, layer.expanded_dim) == (4, 16, 16, 153)
    with torch.no_grad():
        _, cache = layer(torch.randn(3, 5, 64), layer.init_cache())
    assert cache.state.shape == (3, 4, 153, 17) and cache.state.dtype == torch.float32
    expected = 4 * 3 * 4 * (16 * 153 + 153)
    assert layer.state_bytes(5, batch_size=3) == cache.state.numel() * 4 == expected
    assert layer.state_bytes(1_000_000, batch_size=3) == expected
    assert layer.kernel_backends() == {"simple_gla": "torch"}


def test_config_errors_name_the_option():
    with pytest.raises(ConfigError, match="num_heads must divide d_model"):
        BasedLinearAttention(64, 3, n_layers=4, head_dim=16, **conf(num_heads=5))
    with pytest.raises(ConfigError, match="head_dim must divide d_model"):
        BasedLinearAttention(64, 3, n_layers=4, head_dim=24, **conf())
    with pytest.raises(ConfigError, match="feature_dim"):
        BasedLinearAttention(64, 3, n_layers=4, head_dim=16, **conf(feature_dim=0))


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="triton has wheels only for Linux")
def test_triton_backend_takes_non_power_of_two_feature_dim(monkeypatch):
    """E = 153 and d_v + 1 = 17 are not powers of two: the Triton kernels mask their K / V tiles, so the
    layer needs no padding. On CPU this runs in Triton's interpreter."""
    if not torch.cuda.is_available():  # set before Triton is first imported (lazily, by the first Triton call)
        monkeypatch.setenv("TRITON_INTERPRET", "1")
    device = "cuda" if torch.cuda.is_available() else "cpu"
    torch.manual_seed(0)
    ref = BasedLinearAttention(32, 0, n_layers=1, head_dim=16, **conf(chunk_size=16, backend="torch")).to(device)
    tri = BasedLinearAttention(32, 0, n_layers=1, head_dim=16, **conf(chunk_size=16, backend="triton")).to(device)
    tri.load_state_dict(ref.state_dict())
    assert tri.expanded_dim == 153
    x = torch.randn(1, 20, 32, device=device)
    with torch.no_grad():
        y_ref, _ = ref(x)
        y_tri, _ = tri(x)
        _, c_ref = ref(x[:, :19], ref.init_cache())
        y1_ref, c_ref = ref(x[:, 19:], c_ref)
        _, c_tri = tri(x[:, :19], tri.init_cache())
        y1_tri, c_tri = tri(x[:, 19:], c_tri)  # the fused recurrent decode kernel
    assert_close(y_tri, y_ref, rtol=1e-4, atol=1e-5, name="triton chunk")
    assert_close(y1_tri, y1_ref, rtol=1e-4, atol=1e-5, name="triton decode")
    assert_close(c_tri.state, c_ref.state, rtol=1e-4, atol=1e-4, name="triton state")
