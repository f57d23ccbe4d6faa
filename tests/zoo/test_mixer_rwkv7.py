"""RWKV-7 time mix against a per-token loop of the whole layer written from the equations (token shift, static
mixes, the LoRAs, the decay, the in-context learning rate, the value residual, the DPLR state update, GroupNorm,
the per-head bonus and the gate), as the first layer (it writes v_first) and as a later one (it reads it); the
same continued from a cache; the carry inside a model; the channel mix; gradients."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

import zoo
from tests.helpers import assert_close
from zoo.config import compose
from zoo.model.config import mixer_defaults
from zoo.model.mixers.rwkv7 import MIXES, RWKV7ChannelMix, RWKV7TimeMix

D, HEAD = 32, 8


def make_layer(layer_idx=0, dtype=torch.float64, seed=0) -> RWKV7TimeMix:
    torch.manual_seed(seed)
    opts = {**mixer_defaults("rwkv7"), "chunk_size": 16, "decay_lora_rank": 8, "a_lora_rank": 8}
    layer = RWKV7TimeMix(D, layer_idx, n_layers=4, head_dim=HEAD, **opts | {"v_lora_rank": 4, "gate_lora_rank": 8})
    layer = layer.to(dtype)
    with torch.no_grad():  # off the init: zero LoRA matrices would hide their terms
        for p in layer.parameters():
            p.add_(torch.randn_like(p) * 0.1)
    return layer


def reference(layer: RWKV7TimeMix, x: torch.Tensor, v_first: torch.Tensor | None):
    """`(y, v_first of this layer's tokens, final state)`, token by token."""
    B, T, C = x.shape
    H, K = layer.num_heads, layer.head_size
    S, prev, ys, firsts = x.new_zeros(B, H, K, K), x.new_zeros(B, C), [], []
    for t in range(T):
        xt = x[:, t]
        xx = prev - xt
        prev = xt
        mixed = {m: xt + xx * layer.mu[m] for m in MIXES}
        r, k, v = layer.receptance(mixed["r"]), layer.key(mixed["k"]), layer.value(mixed["v"])
        w = -math.exp(-0.5) * torch.sigmoid(layer.w0 + torch.tanh(mixed["w"] @ layer.w_lora[0]) @ layer.w_lora[1])
        a = torch.sigmoid(layer.a0 + mixed["a"] @ layer.a_lora[0] @ layer.a_lora[1])
        if v_first is None:
            firsts.append(v)
        else:
            v = v + (v_first[:, t] - v) * torch.sigmoid(layer.v0 + mixed["v"] @ layer.v_lora[0] @ layer.v_lora[1])
        g = torch.sigmoid(mixed["g"] @ layer.g_lora[0]) @ layer.g_lora[1]
        kk = F.normalize((k * layer.k_k).view(B, H, K), dim=-1)
        k = (k * (1 + (a - 1) * layer.k_a)).view(B, H, K)
        r, v, w, a = r.view(B, H, K), v.view(B, H, K), w.view(B, H, K), a.view(B, H, K)
        # S <- Diag(exp(w)) S - (kk * a) (kk^T S) + k v^T
        S = w.exp()[..., None] * S - (kk * a)[..., None] * (kk[..., None] * S).sum(-2, keepdim=True)
        S = S + k[..., None] * v[..., None, :]
        o = torch.einsum("bhk,bhkv->bhv", r, S)
        o = (o - o.mean(-1, keepdim=True)) / (o.var(-1, unbiased=False, keepdim=True) + layer.norm_eps).sqrt()
        o = o * layer.ln_x.weight.view(H, K) + layer.ln_x.bias.view(H, K)
        o = o + (r * k * layer.r_k).sum(-1, keepdim=True) * v
        ys.append(layer.output(o.reshape(B, C) * g))
    return torch.stack(ys, 1), (torch.stack(firsts, 1) if firsts else None), S


def test_first_and_later_layers_match_the_per_token_reference():
    first, later = make_layer(0), make_layer(1, seed=1)
    x = torch.randn(2, 21, D, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        carry = {}
        y0, _ = first(x, carry=carry)
        y1, _ = later(x, carry=carry)
        r0, v_first, _ = reference(first, x, None)
        r1, _, _ = reference(later, x, v_first)
    assert_close(carry["v_first"], v_first, rtol=1e-10, atol=1e-12, name="v_first")
    assert_close(y0, r0, rtol=1e-6, atol=1e-8, name="first layer")  # GroupNorm runs in fp32
    assert_close(y1, r1, rtol=1e-6, atol=1e-8, name="later layer")


def test_continuation_from_cache_matches_reference():
    first, later = make_layer(0), make_layer(1, seed=1)
    x = torch.randn(2, 19, D, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        _, v_first, _ = reference(first, x, None)
        expected, _, state = reference(later, x, v_first)
        caches, pieces = (first.init_cache(), later.init_cache()), []
        for a, b in [(0, 7), (7, 16), (16, 17), (17, 18), (18, 19)]:
            carry = {}  # a new call: the carry holds these tokens' v_first only
            _, c0 = first(x[:, a:b], caches[0], carry=carry)
            y, c1 = later(x[:, a:b], caches[1], carry=carry)
            caches = (c0, c1)
            pieces.append(y)
    assert_close(torch.cat(pieces, 1), expected, rtol=1e-6, atol=1e-8, name="continuation")
    assert_close(caches[1].state, state, rtol=1e-9, atol=1e-11, name="state")


def test_the_model_hands_the_first_layers_values_to_the_later_ones(monkeypatch):
    cfg = compose(["model=rwkv7", "model.d_model=32", "model.head_dim=8", "model.n_layers=3", "data.vocab_size=50"])
    model = zoo.build_model(cfg.model).eval()
    seen = []
    original = RWKV7TimeMix.forward

    def spy(self, x, cache=None, carry=None):
        seen.append((self.layer_idx, None if carry is None else carry.get("v_first")))
        return original(self, x, cache, carry)

    monkeypatch.setattr(RWKV7TimeMix, "forward", spy)
    with torch.no_grad():
        model(torch.randint(0, 50, (2, 9)))
    assert [i for i, _ in seen] == [0, 1, 2]
    assert seen[0][1] is None and seen[1][1] is not None and seen[2][1] is seen[1][1]


def test_channel_mix_is_relu_squared_with_a_token_shift():
    torch.manual_seed(0)
    cmix = RWKV7ChannelMix(D, 1, n_layers=4, mlp_ratio=2.0, mlp_hidden=None).double()
    x = torch.randn(2, 5, D, dtype=torch.float64)
    prev = torch.cat([torch.zeros(2, 1, D, dtype=torch.float64), x[:, :-1]], 1)
    expected = cmix.value(torch.relu(cmix.key(x + (prev - x) * cmix.mu_k)).square())
    with torch.no_grad():
        y, _ = cmix(x)
        cache = cmix.init_cache()
        y1, cache = cmix(x[:, :3], cache)
        y2, _ = cmix(x[:, 3:], cache)
    assert_close(y, expected, name="cmix")
    assert_close(torch.cat([y1, y2], 1), expected, name="cmix continued")


@pytest.mark.parametrize("layer_idx", [0, 2])
def test_gradients_reach_every_parameter(layer_idx):
    layer = make_layer(layer_idx, dtype=torch.float32)
    x = torch.randn(2, 11, D, generator=torch.Generator().manual_seed(3))
    carry = {} if layer_idx == 0 else {"v_first": torch.randn(2, 11, D)}
    y, _ = layer(x, carry=carry)
    (y * torch.randn_like(y)).sum().backward()
    unused = {"v0", "v_lora.0", "v_lora.1"} if layer_idx == 0 else set()  # the first layer has no value residual
    for name, p in layer.named_parameters():
        if name in unused:
            assert p.grad is None, name
            continue
        assert p.grad is not None and torch.isfinite(p.grad).all() and p.grad.abs().sum() > 0, name


def test_the_chunked_form_under_autograd_equals_the_step_form_of_inference():
    layer = make_layer(1)
    x = torch.randn(2, 40, D, dtype=torch.float64, generator=torch.Generator().manual_seed(6))
    v_first = torch.randn(2, 40, D, dtype=torch.float64)
    with torch.no_grad():
        stepped, _ = layer(x, carry={"v_first": v_first})
    chunked, _ = layer(x, carry={"v_first": v_first})
    assert chunked.requires_grad
    assert_close(chunked.detach(), stepped, rtol=1e-9, atol=1e-11, name="chunk vs step")


def test_the_torch_backend_chunk_comes_from_the_config():
    layer = make_layer()
    layer.chunk_size = 64  # the config's Triton chunk (make_layer's is 16)
    assert layer.op_chunk_size(torch.zeros(1, 4, D, dtype=torch.float64)) == mixer_defaults("rwkv7")["torch_chunk_size"]
