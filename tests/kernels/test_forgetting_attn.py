"""Forgetting attention: the oracle against a per-query loop, a zero gate against causal softmax attention, the
blocked SDPA form against the oracle (outputs and every gradient, grouped queries, windows, blocks shorter than
T), continuation from a cache that keeps the cumulative gates, packed sequences, and the error paths."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from kernels.forgetting_attn import (
    forgetting_attn_cached,
    forgetting_attn_torch,
    naive_forgetting_attn,
    parallel_forgetting_attn,
)
from tests.helpers import assert_close

TOL64 = {"rtol": 1e-9, "atol": 1e-10}


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def make_inputs(B=2, T=23, HQ=4, H=2, K=8, V=6, dtype=torch.float64, seed=0):
    gen = torch.Generator().manual_seed(seed)

    def rand(*shape):
        return torch.randn(*shape, generator=gen, dtype=torch.float64)

    x = {
        "q": rand(B, T, HQ, K),
        "k": rand(B, T, H, K),
        "v": rand(B, T, H, V),
        "g": F.logsigmoid(2 + 2 * rand(B, T, HQ)),
    }
    return {n: t.to(dtype).requires_grad_() for n, t in x.items()}


def test_naive_matches_a_loop_over_queries():
    x = {n: t.detach() for n, t in make_inputs(B=1, T=9).items()}
    o = naive_forgetting_attn(x["q"], x["k"], x["v"], x["g"], window_size=4)
    for i in range(9):
        for h in range(4):
            js = range(max(0, i - 3), i + 1)
            logits = torch.stack(
                [x["q"][0, i, h] @ x["k"][0, j, h // 2] * 8**-0.5 + x["g"][0, j + 1 : i + 1, h].sum() for j in js]
            )
            expected = (logits.softmax(0)[:, None] * torch.stack([x["v"][0, j, h // 2] for j in js])).sum(0)
            assert_close(o[0, i, h], expected, **TOL64, name=f"o[{i}, {h}]")


def test_a_zero_gate_is_causal_softmax_attention():
    x = make_inputs(H=4)
    o = parallel_forgetting_attn(x["q"], x["k"], x["v"], torch.zeros_like(x["g"]))
    ref = F.scaled_dot_product_attention(*(x[n].transpose(1, 2) for n in "qkv"), is_causal=True).transpose(1, 2)
    assert_close(o, ref, **TOL64, name="o")


def grads(o, x, seed=1):
    gen = torch.Generator().manual_seed(seed)
    loss = (o * torch.randn(o.shape, generator=gen, dtype=o.dtype)).sum()
    return torch.autograd.grad(loss, [x[n] for n in "qkvg"])


@pytest.mark.parametrize("window", [None, 5], ids=["full", "window5"])
@pytest.mark.parametrize("block", [256, 7], ids=["one-block", "block7"])
def test_blocked_sdpa_form_matches_the_oracle_with_gradients(window, block):
    x = make_inputs()
    G = x["g"].cumsum(1)
    o = forgetting_attn_torch(x["q"], x["k"], x["v"], G, G, window_size=window, block=block)
    o_ref = naive_forgetting_attn(x["q"], x["k"], x["v"], x["g"], window_size=window)
    assert_close(o, o_ref, **TOL64, name="o")
    for a, e, n in zip(grads(o, x), grads(o_ref, x), "qkvg", strict=True):
        assert_close(a, e, **TOL64, name=f"d{n}")


def test_continuation_from_a_cache_of_cumulative_gates():
    """Prefill 10 tokens, 6 more in one call, then one at a time: the cache keeps k, v and each key's running gate."""
    x = {n: t.detach() for n, t in make_inputs(T=20).items()}
    full = parallel_forgetting_attn(x["q"], x["k"], x["v"], x["g"], window_size=8)
    G = x["g"].cumsum(1)
    pieces = []
    for a, b in [(0, 10), (10, 16), *((t, t + 1) for t in range(16, 20))]:
        q, gq = x["q"][:, a:b], G[:, a:b]
        pieces.append(forgetting_attn_cached(q, x["k"][:, :b], x["v"][:, :b], gq, G[:, :b], window_size=8))
    assert_close(torch.cat(pieces, 1), full, **TOL64, name="o")


@pytest.mark.parametrize("backend", ["torch", "naive"])
def test_packed_sequences_equal_separate_calls(backend):
    lengths = [5, 0, 11, 3]
    x = {n: t.detach() for n, t in make_inputs(B=1, T=sum(lengths)).items()}
    cu = torch.tensor([0, *torch.tensor(lengths).cumsum(0).tolist()])
    o = parallel_forgetting_attn(x["q"], x["k"], x["v"], x["g"], cu_seqlens=cu, backend=backend)
    for a, b in zip(cu.tolist(), cu.tolist()[1:], strict=False):
        if b > a:
            ref = naive_forgetting_attn(*(x[n][:, a:b] for n in "qkvg"))
            assert_close(o[:, a:b], ref, **TOL64, name=f"sequence {a}:{b}")


def test_bf16_inputs_come_back_in_bf16_close_to_fp32():
    x = {n: t.detach().float() for n, t in make_inputs(dtype=torch.float32).items()}
    o32 = parallel_forgetting_attn(x["q"], x["k"], x["v"], x["g"])
    o16 = parallel_forgetting_attn(*(x[n].bfloat16() for n in "qkv"), x["g"])
    assert o16.dtype == torch.bfloat16
    assert_close(o16.float(), o32, rtol=3e-2, atol=3e-2, name="bf16")


def test_bad_inputs_are_named():
    x = {n: t.detach() for n, t in make_inputs().items()}
    with pytest.raises(ValueError, match=r"g must be \[B, T, HQ\]=\[2, 23, 4\]"):
        parallel_forgetting_attn(x["q"], x["k"], x["v"], x["g"][..., :2])
    with pytest.raises(ValueError, match=r"query heads \(4\) must be a multiple of the key/value heads \(3\)"):
        parallel_forgetting_attn(
            x["q"], x["k"].repeat(1, 1, 2, 1)[:, :, :3], x["v"].repeat(1, 1, 2, 1)[:, :, :3], x["g"]
        )
    with pytest.raises(ValueError, match="window_size must be a positive int"):
        parallel_forgetting_attn(x["q"], x["k"], x["v"], x["g"], window_size=0)
