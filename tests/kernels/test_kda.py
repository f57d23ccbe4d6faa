"""Kimi Delta Attention: the oracle against the matrix form, the chunked torch form and the step loop against the
oracle (outputs, final state, every gradient, fp64), a decay constant over K against the gated delta rule,
strong and mixed decay (finite, exact), long fp32 sequences against fp64, continuation, packed sequences, and the
error paths."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from kernels.delta_rule import naive_recurrent_gated_delta_rule
from kernels.kda import chunk_kda, fused_recurrent_kda, naive_recurrent_kda
from tests.helpers import assert_close

TOL64 = {"rtol": 1e-9, "atol": 1e-10}
NAMES = ["q", "k", "v", "g", "beta", "h0"]


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny tensors: more threads only add contention
    yield
    torch.set_num_threads(before)


def make_inputs(B, T, H, K, V, dtype=torch.float64, gate="random", seed=0, beta_max=1.0):
    gen = torch.Generator().manual_seed(seed)

    def rand(*shape):
        return torch.randn(*shape, generator=gen, dtype=torch.float64)

    x = {"q": rand(B, T, H, K), "k": F.normalize(rand(B, T, H, K), dim=-1), "v": rand(B, T, H, V)}
    x["beta"] = beta_max * rand(B, T, H).sigmoid()
    if gate == "random":  # per channel, from ~0 to ~-6 per step
        x["g"] = F.logsigmoid(2 * rand(B, T, H, K))
    elif gate == "strong":  # some channels wiped every step (exp(-30)), the others kept (g = 0)
        x["g"] = torch.where(rand(B, T, H, K) > 0, -30.0, 0.0).to(torch.float64)
    elif gate == "mixed":  # every other token wipes every channel
        x["g"] = torch.zeros(B, T, H, K, dtype=torch.float64)
        x["g"][:, ::2] = -30.0
    x["h0"] = rand(B, H, K, V)
    return {name: t.to(dtype).requires_grad_() for name, t in x.items()}


def run(op, x, backend, seed=1, **kw):
    fn = {"chunk": chunk_kda, "fused": fused_recurrent_kda}[op]
    o, S = fn(
        x["q"], x["k"], x["v"], x["g"], x["beta"], initial_state=x["h0"], output_final_state=True, backend=backend, **kw
    )
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
    x = make_inputs(B, T, H, K, V)
    o, S_out = naive_recurrent_kda(
        x["q"], x["k"], x["v"], x["g"], x["beta"], initial_state=x["h0"], output_final_state=True
    )
    S, eye, outs = x["h0"], torch.eye(K, dtype=torch.float64), []
    for t in range(T):
        k, b = x["k"][:, t, :, :, None], x["beta"][:, t, :, None, None]
        S = (eye - b * k @ k.transpose(-1, -2)) @ torch.diag_embed(x["g"][:, t].exp()) @ S + b * k @ x["v"][
            :, t, :, None, :
        ]
        outs.append((S.transpose(-1, -2) @ (x["q"][:, t, :, :, None] * K**-0.5)).squeeze(-1))
    assert_close(o, torch.stack(outs, dim=1), name="o")
    assert_close(S_out, S, name="final_state")


def test_a_decay_constant_over_k_is_the_gated_delta_rule():
    x = make_inputs(2, 37, 2, 8, 4)
    g_head = x["g"][..., 0].detach()
    g = g_head[..., None].expand(-1, -1, -1, 8)
    ours = chunk_kda(
        x["q"], x["k"], x["v"], g, x["beta"], initial_state=x["h0"], output_final_state=True, chunk_size=16
    )
    ref = naive_recurrent_gated_delta_rule(
        x["q"], x["k"], x["v"], g_head, x["beta"], initial_state=x["h0"], output_final_state=True
    )
    assert_close(ours[0], ref[0], **TOL64, name="o")
    assert_close(ours[1], ref[1], **TOL64, name="final_state")


# (B, T, H, K, V, chunk): T = 1, T < C, several sub-chunks, T not a multiple of C, K != V, C not a multiple of 16
CASES = [(1, 1, 1, 8, 8, 64), (2, 50, 2, 8, 16, 64), (1, 70, 2, 16, 8, 32), (2, 23, 1, 8, 8, 7), (1, 40, 2, 4, 4, 16)]


@pytest.mark.parametrize("op", ["chunk", "fused"])
@pytest.mark.parametrize("case", CASES, ids=lambda c: "B{}-T{}-H{}-K{}-V{}-C{}".format(*c))
def test_torch_matches_naive_with_gradients(op, case):
    B, T, H, K, V, C = case
    x = make_inputs(B, T, H, K, V)
    check(run(op, x, "torch", **({"chunk_size": C} if op == "chunk" else {})), run(op, x, "naive"), TOL64)


@pytest.mark.parametrize("gate", ["strong", "mixed"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["fp32", "fp64"])
def test_strong_decay_stays_finite_and_exact(gate, dtype):
    x = make_inputs(1, 45, 2, 8, 8, dtype=dtype, gate=gate)
    ours, ref = run("chunk", x, "torch", chunk_size=32), run("chunk", x, "naive")
    assert all(torch.isfinite(t).all() for t in (ours[0], ours[1], *ours[2]))
    check(ours, ref, TOL64 if dtype == torch.float64 else {"rtol": 1e-4, "atol": 1e-4})


@pytest.mark.parametrize("beta_max", [1.0, 2.0], ids=["beta01", "beta02"])
def test_long_fp32_sequences_against_fp64(beta_max):
    x64 = make_inputs(1, 1024, 2, 16, 16, beta_max=beta_max, seed=5)
    x32 = {n: t.detach().float() for n, t in x64.items()}
    args = lambda x: (x["q"], x["k"], x["v"], x["g"], x["beta"])  # noqa: E731
    o, S = chunk_kda(*args(x32), initial_state=x32["h0"], output_final_state=True)
    o_ref, S_ref = naive_recurrent_kda(
        *(t.detach() for t in args(x64)), initial_state=x64["h0"].detach(), output_final_state=True
    )
    assert_close(o.double(), o_ref, rtol=1e-3, atol=1e-4, name="o")
    assert_close(S.double(), S_ref, rtol=1e-3, atol=1e-4, name="final_state")


def test_prefill_then_decode_continues_the_parallel_form():
    x = make_inputs(1, 29, 2, 8, 8)
    args = lambda a, b: (x["q"][:, a:b], x["k"][:, a:b], x["v"][:, a:b], x["g"][:, a:b], x["beta"][:, a:b])  # noqa: E731
    full, S_full = chunk_kda(*args(0, 29), initial_state=x["h0"], output_final_state=True)
    o, S = chunk_kda(*args(0, 20), initial_state=x["h0"], output_final_state=True, chunk_size=16)
    outs = [o]
    for t in range(20, 29):
        o, S = fused_recurrent_kda(*args(t, t + 1), initial_state=S, output_final_state=True)
        outs.append(o)
    assert_close(torch.cat(outs, dim=1), full, **TOL64, name="o")
    assert_close(S, S_full, **TOL64, name="final_state")


def test_packed_sequences_equal_separate_calls():
    lengths = [6, 0, 19, 3]
    x = make_inputs(1, sum(lengths), 2, 8, 4)
    h0 = torch.randn(len(lengths), 2, 8, 4, dtype=torch.float64)
    cu = torch.tensor([0, *torch.tensor(lengths).cumsum(0).tolist()])
    o, S = chunk_kda(
        x["q"],
        x["k"],
        x["v"],
        x["g"],
        x["beta"],
        initial_state=h0,
        output_final_state=True,
        cu_seqlens=cu,
        chunk_size=16,
    )
    for i, (a, b) in enumerate(zip(cu.tolist(), cu.tolist()[1:], strict=False)):
        if a == b:
            assert_close(S[i], h0[i], name="an empty sequence keeps its state")
            continue
        o_i, S_i = naive_recurrent_kda(
            x["q"][:, a:b],
            x["k"][:, a:b],
            x["v"][:, a:b],
            x["g"][:, a:b],
            x["beta"][:, a:b],
            initial_state=h0[i : i + 1],
            output_final_state=True,
        )
        assert_close(o[:, a:b], o_i, **TOL64, name=f"o of sequence {i}")
        assert_close(S[i : i + 1], S_i, **TOL64, name=f"state of sequence {i}")


def test_bad_inputs_are_named():
    x = make_inputs(1, 5, 2, 8, 8)
    with pytest.raises(ValueError, match=r"g.shape=\(1, 5, 2\) must be \[B, T, H, K\]=\[1, 5, 2, 8\]"):
        chunk_kda(x["q"], x["k"], x["v"], x["beta"], x["beta"])
    with pytest.raises(ValueError, match="kda needs g"):
        chunk_kda(x["q"], x["k"], x["v"], None, x["beta"])
    for backend in ("naive", "torch", "triton"):  # checked once, before any backend runs
        with pytest.raises(ValueError, match="chunk_size must be a positive int, got True"):
            chunk_kda(x["q"], x["k"], x["v"], x["g"], x["beta"], chunk_size=True, backend=backend)


@pytest.mark.parametrize(("chunk", "sub"), [(64, 8), (32, 4), (16, 4), (7, 2), (1, 1)])
def test_the_default_sub_chunk_is_about_the_square_root_of_the_chunk(chunk, sub):
    from kernels.utils import sub_chunked

    x = torch.zeros(1, 5, 1, 2)
    assert sub_chunked((x,), chunk, None, torch.float32)[1] == sub
