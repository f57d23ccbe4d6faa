"""The DPLR delta rule and RWKV-7: the oracle against the matrix form; a = b = 0 against GLA, a = -beta k, b = k
with a scalar decay against the gated delta rule; the chunked form and the step loop against the oracle (outputs,
final state, every gradient, fp64); strong decay; long fp32 sequences; continuation; packed sequences; RWKV-7's
names; error paths."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from kernels.delta_rule import naive_recurrent_gated_delta_rule
from kernels.dplr_delta_rule import (
    chunk_dplr_delta_rule,
    fused_recurrent_dplr_delta_rule,
    naive_recurrent_dplr_delta_rule,
)
from kernels.gla import naive_recurrent_gla
from kernels.rwkv7 import chunk_rwkv7, fused_recurrent_rwkv7
from tests.helpers import assert_close

TOL64 = {"rtol": 1e-9, "atol": 1e-10}
NAMES = ["q", "k", "v", "a", "b", "gk", "h0"]


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def make_inputs(B, T, H, K, V, dtype=torch.float64, gate="random", seed=0):
    """RWKV-7's shape of the low-rank term: a = -kk, b = kk * a_gate, kk unit, a_gate in (0, 1) per channel."""
    gen = torch.Generator().manual_seed(seed)

    def rand(*shape):
        return torch.randn(*shape, generator=gen, dtype=torch.float64)

    kk = F.normalize(rand(B, T, H, K), dim=-1)
    x = {"q": rand(B, T, H, K), "k": 0.5 * rand(B, T, H, K), "v": rand(B, T, H, V), "a": -kk}
    x["b"] = kk * rand(B, T, H, K).sigmoid()
    x["gk"] = F.logsigmoid(2 * rand(B, T, H, K)) if gate == "random" else torch.where(rand(B, T, H, K) > 0, -30.0, 0.0)
    x["h0"] = rand(B, H, K, V)
    return {n: t.to(dtype).requires_grad_() for n, t in x.items()}


def args(x):
    return x["q"], x["k"], x["v"], x["a"], x["b"], x["gk"]


def run(op, x, backend, seed=1, **kw):
    fn = {"chunk": chunk_dplr_delta_rule, "fused": fused_recurrent_dplr_delta_rule}[op]
    o, S = fn(*args(x), initial_state=x["h0"], output_final_state=True, backend=backend, **kw)
    gen = torch.Generator().manual_seed(seed)
    loss = (o * torch.randn(o.shape, generator=gen, dtype=o.dtype)).sum()
    loss = loss + (S * torch.randn(S.shape, generator=gen, dtype=S.dtype)).sum()
    return o, S, torch.autograd.grad(loss, [x[n] for n in NAMES])


def check(actual, expected, tol):
    assert_close(actual[0], expected[0], **tol, name="o")
    assert_close(actual[1], expected[1], **tol, name="final_state")
    for a, e, name in zip(actual[2], expected[2], NAMES, strict=True):
        assert_close(a, e, **tol, name=f"d{name}")


def test_naive_matches_the_matrix_form():
    B, T, H, K, V = 2, 6, 2, 4, 3
    x = {n: t.detach() for n, t in make_inputs(B, T, H, K, V).items()}
    o, S_out = naive_recurrent_dplr_delta_rule(*args(x), initial_state=x["h0"], output_final_state=True)
    S, outs = x["h0"], []
    for t in range(T):
        transition = torch.diag_embed(x["gk"][:, t].exp()) + x["b"][:, t, :, :, None] * x["a"][:, t, :, None, :]
        S = transition @ S + x["k"][:, t, :, :, None] * x["v"][:, t, :, None, :]
        outs.append((S.transpose(-1, -2) @ (x["q"][:, t, :, :, None] * K**-0.5)).squeeze(-1))
    assert_close(o, torch.stack(outs, dim=1), name="o")
    assert_close(S_out, S, name="final_state")


def test_no_low_rank_term_is_gla():
    x = {n: t.detach() for n, t in make_inputs(2, 40, 2, 8, 4).items()}
    zero = torch.zeros_like(x["a"])
    o, S = chunk_dplr_delta_rule(
        x["q"], x["k"], x["v"], zero, zero, x["gk"], initial_state=x["h0"], output_final_state=True, chunk_size=16
    )
    o_ref, S_ref = naive_recurrent_gla(x["q"], x["k"], x["v"], x["gk"], initial_state=x["h0"], output_final_state=True)
    assert_close(o, o_ref, **TOL64, name="o")
    assert_close(S, S_ref, **TOL64, name="final_state")


def test_a_rank_one_erase_with_a_scalar_decay_is_the_gated_delta_rule():
    """S_t = exp(g) (I - beta k k^T) S + beta k v^T is (exp(g) I + b a^T) S + k' v^T with a = -beta k,
    b = exp(g) k, k' = beta k."""
    x = {n: t.detach() for n, t in make_inputs(1, 33, 2, 8, 8).items()}
    k = F.normalize(x["k"], dim=-1)
    beta, g = x["b"][..., 0].sigmoid(), x["gk"][..., 0]  # (B, T, H)
    a, b = -beta[..., None] * k, g.exp()[..., None] * k
    o, S = chunk_dplr_delta_rule(
        x["q"],
        beta[..., None] * k,
        x["v"],
        a,
        b,
        g[..., None].expand_as(k),
        initial_state=x["h0"],
        output_final_state=True,
        chunk_size=16,
    )
    o_ref, S_ref = naive_recurrent_gated_delta_rule(
        x["q"], k, x["v"], g, beta, initial_state=x["h0"], output_final_state=True
    )
    assert_close(o, o_ref, **TOL64, name="o")
    assert_close(S, S_ref, **TOL64, name="final_state")


# (B, T, H, K, V, chunk): T = 1, T < C, several sub-chunks, T not a multiple of C, K != V, small chunks
CASES = [(1, 1, 1, 8, 8, 64), (2, 50, 2, 8, 16, 64), (1, 70, 2, 16, 8, 32), (2, 23, 1, 8, 8, 7)]


@pytest.mark.parametrize("op", ["chunk", "fused"])
@pytest.mark.parametrize("case", CASES, ids=lambda c: "B{}-T{}-H{}-K{}-V{}-C{}".format(*c))
def test_torch_matches_naive_with_gradients(op, case):
    B, T, H, K, V, C = case
    x = make_inputs(B, T, H, K, V)
    check(run(op, x, "torch", **({"chunk_size": C} if op == "chunk" else {})), run(op, x, "naive"), TOL64)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["fp32", "fp64"])
def test_strong_decay_stays_finite_and_exact(dtype):
    x = make_inputs(1, 45, 2, 8, 8, dtype=dtype, gate="strong")
    ours, ref = run("chunk", x, "torch", chunk_size=32), run("chunk", x, "naive")
    assert all(torch.isfinite(t).all() for t in (ours[0], ours[1], *ours[2]))
    check(ours, ref, TOL64 if dtype == torch.float64 else {"rtol": 1e-4, "atol": 1e-4})


def test_long_fp32_sequences_against_fp64():
    x64 = {n: t.detach() for n, t in make_inputs(1, 1024, 2, 16, 16, seed=5).items()}
    x32 = {n: t.float() for n, t in x64.items()}
    o, S = chunk_dplr_delta_rule(*args(x32), initial_state=x32["h0"], output_final_state=True)
    o_ref, S_ref = naive_recurrent_dplr_delta_rule(*args(x64), initial_state=x64["h0"], output_final_state=True)
    assert_close(o.double(), o_ref, rtol=1e-3, atol=1e-4, name="o")
    assert_close(S.double(), S_ref, rtol=1e-3, atol=1e-4, name="final_state")


def test_prefill_then_decode_continues_the_parallel_form():
    x = {n: t.detach() for n, t in make_inputs(1, 29, 2, 8, 8).items()}
    part = lambda a, b: [t[:, a:b] for t in args(x)]  # noqa: E731
    full, S_full = chunk_dplr_delta_rule(*part(0, 29), initial_state=x["h0"], output_final_state=True)
    o, S = chunk_dplr_delta_rule(*part(0, 20), initial_state=x["h0"], output_final_state=True, chunk_size=16)
    outs = [o]
    for t in range(20, 29):
        o, S = fused_recurrent_dplr_delta_rule(*part(t, t + 1), initial_state=S, output_final_state=True)
        outs.append(o)
    assert_close(torch.cat(outs, dim=1), full, **TOL64, name="o")
    assert_close(S, S_full, **TOL64, name="final_state")


def test_packed_sequences_equal_separate_calls():
    lengths = [6, 0, 19, 3]
    x = {n: t.detach() for n, t in make_inputs(1, sum(lengths), 2, 8, 4).items()}
    h0 = torch.randn(len(lengths), 2, 8, 4, dtype=torch.float64)
    cu = torch.tensor([0, *torch.tensor(lengths).cumsum(0).tolist()])
    o, S = chunk_dplr_delta_rule(*args(x), initial_state=h0, output_final_state=True, cu_seqlens=cu, chunk_size=16)
    for i, (a, b) in enumerate(zip(cu.tolist(), cu.tolist()[1:], strict=False)):
        if a == b:
            assert_close(S[i], h0[i], name="an empty sequence keeps its state")
            continue
        o_i, S_i = naive_recurrent_dplr_delta_rule(
            *(t[:, a:b] for t in args(x)), initial_state=h0[i : i + 1], output_final_state=True
        )
        assert_close(o[:, a:b], o_i, **TOL64, name=f"o of sequence {i}")
        assert_close(S[i : i + 1], S_i, **TOL64, name=f"state of sequence {i}")


def test_rwkv7_is_the_dplr_rule_under_rwkv_names_without_a_query_scale():
    x = {n: t.detach() for n, t in make_inputs(2, 21, 2, 8, 8).items()}
    o, S = chunk_rwkv7(x["q"], x["gk"], x["k"], x["v"], x["a"], x["b"], initial_state=x["h0"], output_final_state=True)
    o_ref, S_ref = naive_recurrent_dplr_delta_rule(*args(x), scale=1.0, initial_state=x["h0"], output_final_state=True)
    assert_close(o, o_ref, **TOL64, name="o")
    assert_close(S, S_ref, **TOL64, name="final_state")
    o1, _ = fused_recurrent_rwkv7(
        x["q"][:, :1], x["gk"][:, :1], x["k"][:, :1], x["v"][:, :1], x["a"][:, :1], x["b"][:, :1], initial_state=x["h0"]
    )
    assert_close(o1, o_ref[:, :1], **TOL64, name="o of one step")


def test_bad_inputs_are_named():
    x = {n: t.detach() for n, t in make_inputs(1, 5, 2, 8, 8).items()}
    with pytest.raises(ValueError, match=r"gk.shape=\(1, 5, 2\) must be \[B, T, H, K\]=\[1, 5, 2, 8\]"):
        chunk_dplr_delta_rule(x["q"], x["k"], x["v"], x["a"], x["b"], x["gk"][..., 0])
    with pytest.raises(ValueError, match="needs a, b and gk"):
        chunk_dplr_delta_rule(x["q"], x["k"], x["v"], None, x["b"], x["gk"])
