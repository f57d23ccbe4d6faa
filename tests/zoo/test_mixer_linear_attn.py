"""Linear attention (zoo/model/mixers/linear_attn.py) against a per-step loop of the whole layer written from the
paper's equations (Katharopoulos et al. 2020): parallel form, continuation from a cache (chunked and
one-token), the cached `[K, V + 1]` state of the normalized form, gradients, config errors."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from tests.helpers import assert_close
from zoo.errors import ConfigError
from zoo.model.config import mixer_defaults
from zoo.model.mixers.linear_attn import LinearAttention

D_MODEL, HEAD_DIM = 32, 8
VARIANTS = [
    ("elu", False, True),  # the default
    ("elu", True, False),  # the paper's layer
    ("relu", True, True),
    ("identity", False, False),
]
IDS = [f"{fm}-{'norm' if n else 'nonorm'}-{'rms' if r else 'raw'}" for fm, n, r in VARIANTS]


def conf(**overrides) -> dict:
    """conf/mixer/linear_attn.yaml's options (the constructor has no defaults), `overrides` replacing some."""
    return {**mixer_defaults("linear_attn"), **overrides}


def make_layer(feature_map, normalize, norm_output, **kw) -> LinearAttention:
    torch.manual_seed(0)
    options = conf(feature_map=feature_map, normalize=normalize, norm_output=norm_output, chunk_size=4, **kw)
    layer = LinearAttention(D_MODEL, 0, n_layers=1, head_dim=HEAD_DIM, **options).double()
    with torch.no_grad():  # no parameter sits at its init value (RMSNorm weight = 1)
        for p in layer.parameters():
            p.add_(torch.randn_like(p) * 0.1)
    return layer


def tol(layer: LinearAttention) -> dict:
    """fp64 throughout, except zoo.model.layers.RMSNorm, which computes in fp32."""
    return {"rtol": 1e-10, "atol": 1e-12} if layer.o_norm is None else {"rtol": 1e-5, "atol": 1e-7}


def reference(layer: LinearAttention, x: torch.Tensor, S=None, z=None):
    """Per-step loop: S_t = S_{t-1} + phi(k_t) v_t^T, z_t = z_{t-1} + phi(k_t),
    o_t = scale phi(q_t) S_t [/ (scale phi(q_t) . z_t + eps)], y_t = W_o RMSNorm_head(o_t).
    Returns y [B, T, d] and the final (S [B, H, K, V], z [B, H, K])."""
    B, T, _ = x.shape
    H, K, V = layer.num_heads, layer.head_k, layer.head_v
    phi = {"elu": lambda t: F.elu(t) + 1, "relu": lambda t: t.clamp_min(0), "identity": lambda t: t}[layer.feature_map]
    S = x.new_zeros(B, H, K, V) if S is None else S.clone()
    z = x.new_zeros(B, H, K) if z is None else z.clone()
    ys = []
    for t in range(T):
        q = phi(x[:, t] @ layer.q_proj.weight.T).view(B, H, K) * K**-0.5
        k = phi(x[:, t] @ layer.k_proj.weight.T).view(B, H, K)
        v = (x[:, t] @ layer.v_proj.weight.T).view(B, H, V)
        S = S + k[..., :, None] * v[..., None, :]
        z = z + k
        o = torch.einsum("bhk,bhkv->bhv", q, S)
        if layer.normalize:
            o = o / ((q * z).sum(-1, keepdim=True) + layer.eps)
        if layer.o_norm is not None:
            o = o / (o.pow(2).mean(-1, keepdim=True) + layer.o_norm.eps).sqrt() * layer.o_norm.weight
        ys.append(o.reshape(B, H * V) @ layer.o_proj.weight.T)
    return torch.stack(ys, 1), (S, z)


@pytest.mark.parametrize(("feature_map", "normalize", "norm_output"), VARIANTS, ids=IDS)
def test_parallel_and_cached_match_the_per_step_reference(feature_map, normalize, norm_output):
    layer = make_layer(feature_map, normalize, norm_output)
    x = torch.randn(2, 11, D_MODEL, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    expected, (S, z) = reference(layer, x)
    y, cache = layer(x)
    assert cache is None
    assert_close(y, expected, **tol(layer), name="parallel")

    # prefill 5 (chunked, from an empty cache), then 4 more in one chunked call, then 2 one-token steps
    cache = layer.init_cache()
    pieces = []
    for a, b in ((0, 5), (5, 9), (9, 10), (10, 11)):
        y, cache = layer(x[:, a:b], cache)
        pieces.append(y)
    assert_close(torch.cat(pieces, 1), expected, **tol(layer), name="cached")
    V = layer.head_v
    assert cache.state.shape == (2, layer.num_heads, layer.head_k, V + int(normalize))
    assert_close(cache.state[..., :V], S, rtol=1e-10, atol=1e-12, name="state")
    if normalize:  # the ones column of v makes the state's last column the running key sum
        assert_close(cache.state[..., V], z, rtol=1e-10, atol=1e-12, name="key sum")
    # the state in fp64 here (fp64 activations), fp32 for fp32 / bf16 ones: the kernels' accumulation dtype
    assert layer.state_bytes(11, batch_size=2) == cache.state.element_size() * cache.state.numel() > 0


@pytest.mark.parametrize(("feature_map", "normalize", "norm_output"), VARIANTS[:2], ids=IDS[:2])
def test_continuation_from_a_carried_in_state(feature_map, normalize, norm_output):
    """A cache carried in (from another sequence's prefill) continues exactly as the reference from that state."""
    layer = make_layer(feature_map, normalize, norm_output)
    g = torch.Generator().manual_seed(2)
    prefix, x = (torch.randn(1, n, D_MODEL, dtype=torch.float64, generator=g) for n in (6, 7))
    _, (S, z) = reference(layer, prefix)
    expected, _ = reference(layer, x, S, z)
    _, cache = layer(prefix, layer.init_cache())
    y_chunk, _ = layer(x, type(cache)(cache.state.clone()))
    assert_close(y_chunk, expected, **tol(layer), name="chunked continuation")
    steps = []
    for t in range(x.shape[1]):
        y, cache = layer(x[:, t : t + 1], cache)
        steps.append(y)
    assert_close(torch.cat(steps, 1), expected, **tol(layer), name="recurrent continuation")


@pytest.mark.parametrize(("feature_map", "normalize", "norm_output"), VARIANTS, ids=IDS)
def test_gradients_reach_every_parameter(feature_map, normalize, norm_output):
    layer = make_layer(feature_map, normalize, norm_output).float()
    x = torch.randn(2, 9, D_MODEL, generator=torch.Generator().manual_seed(3))
    y, _ = layer(x)
    y.square().sum().backward()
    for name, p in layer.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all() and p.grad.abs().sum() > 0, name


def test_defaults_and_heads():
    layer = LinearAttention(64, 0, n_layers=2, head_dim=16, **conf())
    assert (layer.num_heads, layer.head_k, layer.head_v) == (4, 16, 16)  # heads from head_dim
    assert layer.feature_map == "elu" and not layer.normalize and layer.o_norm is not None
    assert layer.kernel_backends() == {"simple_gla": "torch"}
    layer = LinearAttention(64, 0, n_layers=2, head_dim=16, **conf(num_heads=2, expand_k=0.5))
    assert (layer.num_heads, layer.head_k, layer.head_v) == (2, 16, 32)


def test_config_errors_name_the_bad_option():
    with pytest.raises(ConfigError, match=r"feature_map 'softmax'.*identity, elu, relu"):
        LinearAttention(64, 0, n_layers=1, head_dim=16, **conf(feature_map="softmax"))
    with pytest.raises(ConfigError, match="normalize needs a non-negative feature_map"):
        LinearAttention(64, 0, n_layers=1, head_dim=16, **conf(feature_map="identity", normalize=True))
    with pytest.raises(
        ConfigError, match="layer 3: head_dim must divide the linear_attn key dim: 24 does not divide 64"
    ):
        LinearAttention(64, 3, n_layers=4, head_dim=24, **conf())
    with pytest.raises(ConfigError, match="num_heads must divide the linear_attn key dim"):
        LinearAttention(64, 0, n_layers=1, head_dim=16, **conf(num_heads=3))


def test_output_norm_divides_the_denominator_out():
    """normalize + norm_output == norm_output alone (up to eps): why the yaml treats them as alternatives."""
    layer = make_layer("elu", False, True, norm_eps=1e-12)
    x = torch.randn(1, 9, D_MODEL, dtype=torch.float64, generator=torch.Generator().manual_seed(4))
    y, _ = layer(x)
    layer.normalize, layer.eps = True, 0.0
    y_normalized, _ = layer(x)
    assert_close(y_normalized, y, rtol=1e-5, atol=1e-6, name="normalize + norm_output")
