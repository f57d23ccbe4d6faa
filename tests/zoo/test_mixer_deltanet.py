"""DeltaNet and Gated DeltaNet layers against a per-token loop of the whole layer written from MIXERS.md (short
convs, SiLU, L2 norm, beta, decay, delta-rule state, output norm and gate), with the layer's own parameters; the
same loop continued from a cache; gradients to every parameter; the Gated DeltaNet init; config errors."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

import kernels
import zoo
from tests.helpers import assert_close
from zoo.config import compose
from zoo.errors import ConfigError
from zoo.model.config import mixer_defaults
from zoo.model.mixers.deltanet import DeltaNet
from zoo.model.mixers.gated_deltanet import GatedDeltaNet

CASES = {
    "deltanet": (DeltaNet, {}),
    "deltanet-gate-convbias": (DeltaNet, {"use_gate": True, "conv_bias": True}),
    "deltanet-noconv-expandv2": (DeltaNet, {"use_short_conv": False, "expand_v": 2.0}),
    "gated_deltanet": (GatedDeltaNet, {}),
    "gated_deltanet-noconv-2heads": (GatedDeltaNet, {"use_short_conv": False, "num_heads": 2}),
    "deltanet-negeig": (DeltaNet, {"allow_neg_eigval": True}),
    # OLMo-Hybrid / Qwen3.5: beta in (0, 2); 2 key heads shared by 4 value heads of 8 (a 0.75 * d key width)
    "gated_deltanet-negeig-grouped": (
        GatedDeltaNet,
        {"allow_neg_eigval": True, "num_heads": 2, "num_v_heads": 4, "expand_k": 0.75, "expand_v": 1.0},
    ),
}
D, HEAD_DIM, CHUNK = 32, 8, 8


def conf(cls: type, **overrides) -> dict:
    """conf/mixer/<name>.yaml's options (the constructors have no defaults), `overrides` replacing some."""
    return {**mixer_defaults(cls.name), **overrides}


def make_layer(case: str, dtype=torch.float64, seed: int = 0):
    cls, opts = CASES[case]
    torch.manual_seed(seed)
    layer = cls(D, 0, n_layers=1, head_dim=HEAD_DIM, **conf(cls, chunk_size=CHUNK, **opts)).to(dtype)
    with torch.no_grad():  # move every parameter off its init (zero conv biases, unit norm weights)
        for p in layer.parameters():
            p.add_(torch.randn_like(p) * 0.1)
    return layer


def qkv_step(layer, xt: torch.Tensor, history: dict) -> dict[str, torch.Tensor]:
    """One token's q, k, v of a delta-rule layer (DeltaNet, Gated DeltaNet / DeltaProduct, KDA): the projections,
    each through its causal depthwise short conv (`history`: conv name -> its last `conv_size` inputs, kept
    across calls) when the layer has them, then SiLU."""
    feats = {"q": layer.q_proj(xt), "k": layer.k_proj(xt), "v": layer.v_proj(xt)}
    for name, u in feats.items():
        if layer.use_short_conv:
            conv = getattr(layer, f"{name}_conv")
            past = history.get(name, xt.new_zeros(xt.shape[0], layer.conv_size, u.shape[-1]))
            history[name] = torch.cat([past[:, 1:], u[:, None]], dim=1)
            u = (history[name] * conv.weight[:, 0, :].T).sum(1)  # causal depthwise conv
            u = u + (conv.bias if conv.bias is not None else 0)
        feats[name] = F.silu(u)
    return feats


def reference(layer: DeltaNet, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The layer token by token: `y [B, T, d]` and the final state `[B, H, K, V]`."""
    B, T, _ = x.shape
    Hk, K, V, H = layer.num_heads, layer.head_k, layer.head_v, layer.num_v_heads
    gated = isinstance(layer, GatedDeltaNet)
    S = x.new_zeros(B, H, K, V)
    eye = torch.eye(K, dtype=x.dtype)
    history = {}  # conv name -> (B, conv_size, dim): the conv's last inputs, zeros before the sequence
    ys = []
    for t in range(T):
        xt = x[:, t]
        feats = qkv_step(layer, xt, history)
        q, k = (feats[n].view(B, Hk, K) for n in "qk")
        q, k = (z / (z.pow(2).sum(-1, keepdim=True) + 1e-6).sqrt() for z in (q, k))  # L2 norm per head
        q, k = (z.repeat_interleave(H // Hk, dim=1) for z in (q, k))  # value head h reads key head h // (H / Hk)
        v = feats["v"].view(B, H, V)
        beta = torch.sigmoid(layer.b_proj(xt))[:, :, None, None]  # (B, H, 1, 1)
        beta = 2 * beta if layer.allow_neg_eigval else beta
        g = x.new_zeros(B, H)
        if gated:
            g = -layer.A_log.exp() * F.softplus(layer.a_proj(xt) + layer.dt_bias)
        kk = k[..., :, None] * k[..., None, :]  # k k^T  (B, H, K, K)
        S = g.exp()[:, :, None, None] * ((eye - beta * kk) @ S) + beta * k[..., :, None] * v[..., None, :]
        o = torch.einsum("bhkv,bhk->bhv", S, q * K**-0.5)  # S^T (scale q)
        o = o / (o.pow(2).mean(-1, keepdim=True) + layer.o_norm.eps).sqrt() * layer.o_norm.weight
        if layer.use_gate:
            o = o * F.silu(layer.g_proj(xt).view(B, H, V))
        ys.append(layer.o_proj(o.reshape(B, H * V)))
    return torch.stack(ys, 1), S


@pytest.mark.parametrize("case", CASES)
def test_parallel_form_matches_per_token_reference(case):
    layer = make_layer(case)
    x = torch.randn(2, 21, D, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        y, cache = layer(x)
        expected, _ = reference(layer, x)
    assert cache is None
    # the output RMSNorm (zoo.model.layers) computes in fp32, so fp64 agreement stops near 1e-7 (absolute)
    assert_close(y, expected, rtol=1e-5, atol=1e-6, name=f"{case} parallel")


@pytest.mark.parametrize("case", CASES)
def test_continuation_from_cache_matches_reference(case):
    """Prefill 7 tokens (chunked, into a fresh cache), 6 more chunked from the cache, then 4 one-token steps."""
    layer = make_layer(case)
    x = torch.randn(2, 17, D, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        expected, state = reference(layer, x)
        cache, pieces = layer.init_cache(), []
        for lo, hi in [(0, 7), (7, 13), (13, 14), (14, 15), (15, 16), (16, 17)]:
            y, cache = layer(x[:, lo:hi], cache)
            pieces.append(y)
    assert_close(torch.cat(pieces, 1), expected, rtol=1e-5, atol=1e-6, name=f"{case} continuation")
    assert_close(cache.state, state, rtol=1e-10, atol=1e-12, name=f"{case} state")
    assert cache.state.shape == (2, layer.num_v_heads, layer.head_k, layer.head_v)


@pytest.mark.parametrize("case", CASES)
def test_gradients_reach_every_parameter(case):
    layer = make_layer(case, dtype=torch.float32)
    x = torch.randn(2, 19, D, generator=torch.Generator().manual_seed(3))
    y, _ = layer(x)
    (y * torch.randn_like(y)).sum().backward()
    for name, p in layer.named_parameters():
        assert p.grad is not None, name
        assert torch.isfinite(p.grad).all(), name
        assert p.grad.abs().sum() > 0, name


@pytest.mark.parametrize("case", ["deltanet", "gated_deltanet"])
def test_kernel_receives_unit_queries_and_keys(case, monkeypatch):
    """The kernels do not normalize: the layer must hand them L2-normalized q and k (and g <= 0)."""
    seen = {}
    op = "chunk_delta_rule" if case == "deltanet" else "chunk_gated_delta_rule"
    original = getattr(kernels, op)

    def spy(q, k, v, *rest, **kw):
        seen.update(q=q, k=k, rest=rest)
        return original(q, k, v, *rest, **kw)

    monkeypatch.setattr(kernels, op, spy)
    layer = make_layer(case, dtype=torch.float32)
    layer(torch.randn(1, 9, D) * 3)
    for name in "qk":
        assert_close(seen[name].norm(dim=-1), torch.ones(1, 9, layer.num_heads), rtol=1e-5, atol=1e-5, name=name)
    if case == "gated_deltanet":
        g, beta = seen["rest"]  # fla order (q, k, v, g, beta)
        assert g.shape == beta.shape == (1, 9, layer.num_heads) and (g <= 0).all()
    assert ((seen["rest"][-1] > 0) & (seen["rest"][-1] < 1)).all()  # beta


def test_gated_init_survives_model_init():
    """A ~ U(0, 16), softplus(dt_bias) ~ logU(1e-3, 1e-1): plain Parameters, untouched by HybridLM._init_weights."""
    torch.manual_seed(0)
    cfg = compose(["model=gated_deltanet", "model.d_model=256", "model.head_dim=8", "model.n_layers=2"]).model
    model = zoo.build_model(cfg)
    for block in model.blocks:
        mixer = block.mixer
        A, dt = mixer.A_log.exp(), F.softplus(mixer.dt_bias)
        assert mixer.A_log.shape == mixer.dt_bias.shape == (32,)
        assert ((A > 0) & (A < 16)).all() and A.max() > 8 and A.min() < 8
        assert ((dt >= 1e-3 * (1 - 1e-5)) & (dt <= 1e-1 * (1 + 1e-5))).all()
        assert dt.log().std() > 0.5  # spread over the log range, not a constant
    assert model.kernel_backends() == {"gated_delta_rule": "torch"}


@pytest.mark.parametrize(
    ("cls", "opts", "needle"),
    [
        (DeltaNet, {"num_heads": 3}, "num_heads must divide the deltanet key dim"),
        (DeltaNet, {"expand_k": 0.75}, "head_dim must divide"),
        (GatedDeltaNet, {"num_heads": 4, "expand_v": 0.5625}, "num_heads must divide the gated_deltanet value dim"),
        (GatedDeltaNet, {"A_init_range": (16.0, 1.0)}, "A_init_range"),
        (GatedDeltaNet, {"dt_min": 0.2}, "dt_min"),
    ],
)
def test_config_errors_name_the_option(cls, opts, needle):
    with pytest.raises(ConfigError, match=needle):
        cls(32, 3, n_layers=4, head_dim=16, **conf(cls, **opts))


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float64], ids=str)
@pytest.mark.parametrize("case", CASES)
def test_state_bytes_is_the_cache(case, dtype):
    """fp32 (fp64) state whatever the activations, conv tails in the activations' dtype."""
    layer = make_layer(case, dtype=dtype)
    with torch.no_grad():
        _, cache = layer(torch.randn(3, 5, D, dtype=dtype), layer.init_cache())
    assert cache.state.dtype == torch.promote_types(dtype, torch.float32)
    real = sum(t.numel() * t.element_size() for t in vars(cache).values() if t is not None)
    assert layer.state_bytes(5, batch_size=3) == layer.state_bytes(100_000, batch_size=3) == real


@pytest.mark.parametrize("name", ["deltanet", "gated_deltanet", "gated_deltaproduct", "kda"])
def test_the_torch_backend_runs_torch_chunk_size(monkeypatch, name):
    """`torch_chunk_size` (kda's default 16; the MQAR grid sets 16 for the others) is the chunk of the chunked op
    where the torch backend runs it, `chunk_size` where Triton does; both chunkings give the same output. A config
    from before the option builds with the mixer's chunk_size everywhere."""
    from zoo.model.lm import build_mixer

    opts = {**mixer_defaults(name), "chunk_size": 64, "torch_chunk_size": 8}
    torch.manual_seed(0)
    layer = build_mixer(name, D, 0, 1, HEAD_DIM, opts).to(torch.float64)
    op_name = f"chunk_{layer.kernel_family}"
    seen, real = [], getattr(kernels, op_name)
    monkeypatch.setattr(
        kernels, op_name, lambda *a, chunk_size, **kw: seen.append(chunk_size) or real(*a, chunk_size=chunk_size, **kw)
    )
    x = torch.randn(2, 40, D, dtype=torch.float64, generator=torch.Generator().manual_seed(7))
    own, _ = layer(x)
    layer.torch_chunk_size = None
    plain, _ = layer(x)
    assert seen == [8, 64]
    assert_close(own, plain, rtol=1e-9, atol=1e-11, name=f"{name}: chunk 8 vs chunk 64")
    layer.torch_chunk_size = 8
    monkeypatch.setattr(kernels, "resolve_backend", lambda *a, **kw: "triton")
    assert layer.op_chunk_size(x) == 64  # on Triton (CUDA tensors) the chunk_size
    old = {k: v for k, v in opts.items() if k != "torch_chunk_size"}  # a checkpoint's config from before it
    assert build_mixer(name, D, 0, 1, HEAD_DIM, old).torch_chunk_size is None


def test_the_mqar_grid_runs_the_family_at_chunk_16_on_cpu():
    mixers = compose(["+experiment=zoology_mqar"]).model.mixers
    assert [mixers[n].torch_chunk_size for n in ("deltanet", "gated_deltanet", "gated_deltaproduct")] == [16] * 3
