"""Forgetting attention layer: against a per-query loop of its own parameters (the gates summed token by token),
gates that never forget against plain attention with the same weights, prefill in pieces and decode from the cache
of cumulative gates (with a window, grouped queries, QK norm and the output gate), gradients, and the cache that
cannot be stacked."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F

from tests.helpers import assert_close
from zoo.model.config import mixer_defaults
from zoo.model.mixers.attention import Attention
from zoo.model.mixers.fox import ForgetCache, ForgettingAttention

D, HEAD_DIM = 32, 8
CASES = {
    "default": {},
    "gqa-window": {"num_kv_heads": 2, "window_size": 5},
    "pro": {"qk_norm": "head", "output_gate": True},
}


def make_layer(opts: dict, dtype=torch.float64, seed: int = 0) -> ForgettingAttention:
    torch.manual_seed(seed)
    layer = ForgettingAttention(D, 0, n_layers=1, head_dim=HEAD_DIM, **{**mixer_defaults("fox"), **opts}).to(dtype)
    with torch.no_grad():
        for p in layer.parameters():
            p.add_(torch.randn_like(p) * 0.1)
    return layer


def reference(layer: ForgettingAttention, x: torch.Tensor) -> torch.Tensor:
    B, T, _ = x.shape
    q, k, v, gate, _ = layer.heads(x, None)  # attention's projections (tested with attention)
    g = F.logsigmoid(layer.f_proj(x) + layer.f_bias)  # (B, T, H)
    H, group, w = layer.num_heads, layer.num_heads // layer.num_kv_heads, layer.window_size or T
    o = torch.zeros(B, H, T, v.shape[-1], dtype=x.dtype)
    for i in range(T):
        for h in range(H):
            js = list(range(max(0, i - w + 1), i + 1))
            logits = torch.stack(
                [
                    (q[:, h, i] * k[:, h // group, j]).sum(-1) * HEAD_DIM**-0.5 + g[:, j + 1 : i + 1, h].sum(-1)
                    for j in js
                ],
                -1,
            )
            o[:, h, i] = (logits.softmax(-1)[..., None] * v[:, h // group, js]).sum(1)
    o = o.transpose(1, 2).reshape(B, T, -1)
    if gate is not None:
        o = o * torch.sigmoid(gate)
    return layer.o_proj(o)


@pytest.mark.parametrize("case", CASES)
def test_parallel_form_matches_per_query_reference(case):
    layer = make_layer(CASES[case])
    x = torch.randn(2, 13, D, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        assert_close(layer(x)[0], reference(layer, x), rtol=1e-6, atol=1e-8, name=case)


def test_gates_that_never_forget_are_plain_attention():
    layer = make_layer({})
    with torch.no_grad():
        layer.f_bias.fill_(60.0)  # logsigmoid(60) ~ -1e-26: every gate 1
    attn = Attention(
        D,
        0,
        n_layers=1,
        head_dim=HEAD_DIM,
        **{k: v for k, v in mixer_defaults("fox").items() if k != "forget_bias_init"},
    )
    attn = attn.to(torch.float64)
    attn.load_state_dict({k: v for k, v in layer.state_dict().items() if not k.startswith("f_")})
    x = torch.randn(2, 11, D, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        assert_close(layer(x)[0], attn(x)[0], rtol=1e-9, atol=1e-10, name="no forgetting")


@pytest.mark.parametrize("case", CASES)
def test_prefill_in_pieces_then_decode_matches_parallel(case):
    layer = make_layer(CASES[case])
    x = torch.randn(2, 17, D, dtype=torch.float64, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        full, _ = layer(x)
        cache, pieces = layer.init_cache(), []
        for a, b in [(0, 6), (6, 13), *((t, t + 1) for t in range(13, 17))]:
            y, cache = layer(x[:, a:b], cache)
            pieces.append(y)
    assert_close(torch.cat(pieces, 1), full, rtol=1e-9, atol=1e-10, name=case)
    assert cache.gc.shape == (2, layer.num_heads, cache.k.shape[2])  # one running gate per kept key


def test_gradients_reach_every_parameter():
    layer = make_layer(CASES["pro"], dtype=torch.float32)
    y, _ = layer(torch.randn(2, 9, D, generator=torch.Generator().manual_seed(4)))
    (y * torch.randn_like(y)).sum().backward()
    for name, p in layer.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all() and p.grad.abs().sum() > 0, name


def test_stacked_caches_hide_the_padding_through_infinite_gates():
    """Two prompts of different lengths prefilled alone, stacked (left padding), then one decode step each: the
    same outputs as each prompt's own decode step."""
    layer = make_layer({"num_kv_heads": 2})  # no window: the shorter prompt's row gets padding slots
    x = torch.randn(2, 9, D, dtype=torch.float64, generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        alone, caches = [], []
        for row, n in ((0, 6), (1, 8)):
            _, c = layer(x[row : row + 1, :n], layer.init_cache())
            caches.append(c)
            alone.append(layer(x[row : row + 1, n : n + 1], copy.deepcopy(c))[0])
        stacked = ForgetCache.stack(caches)
        assert torch.isinf(stacked.gc[0, :, :2]).all() and torch.isfinite(stacked.gc[1]).all()
        step = torch.cat([x[0:1, 6:7], x[1:2, 8:9]])
        together, _ = layer(step, stacked)
    assert_close(together, torch.cat(alone), rtol=1e-9, atol=1e-10, name="batched decode step")
