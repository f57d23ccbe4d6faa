"""Gated DeltaProduct: every backend against the naive per-step oracle (outputs, final state, every gradient),
the oracle against the matrix form, n = 1 against the gated delta rule, continuation, packed sequences, negative
eigenvalues (beta in (0, 2)) and the error paths. The Triton backend runs under TRITON_INTERPRET=1 on CPU."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from kernels.delta_rule import naive_recurrent_gated_delta_rule
from kernels.gated_delta_product import (
    chunk_gated_delta_product,
    fused_recurrent_gated_delta_product,
    naive_recurrent_gated_delta_product,
)
from tests.helpers import assert_close

TOL64 = {"rtol": 1e-9, "atol": 1e-10}
NAMES = ["q", "k", "v", "g", "beta", "h0"]


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny tensors: more threads only add contention
    yield
    torch.set_num_threads(before)


def make_inputs(B, T, H, K, V, n, dtype=torch.float64, seed=0, beta_max=1.0, gated=True):
    gen = torch.Generator().manual_seed(seed)

    def rand(*shape):
        return torch.randn(*shape, generator=gen, dtype=torch.float64)

    x = {"q": rand(B, T, H, K), "k": F.normalize(rand(B, T * n, H, K), dim=-1), "v": rand(B, T * n, H, V)}
    x["beta"] = beta_max * rand(B, T * n, H).sigmoid()
    x["g"] = F.logsigmoid(2 * rand(B, T, H)) if gated else None
    x["h0"] = rand(B, H, K, V)
    return {name: None if t is None else t.to(dtype).requires_grad_() for name, t in x.items()}


OPS = {"chunk": chunk_gated_delta_product, "fused": fused_recurrent_gated_delta_product}


def run(op, x, backend, seed=1, **kw):
    fn = OPS[op]
    o, S = fn(
        x["q"], x["k"], x["v"], x["g"], x["beta"], initial_state=x["h0"], output_final_state=True, backend=backend, **kw
    )
    gen = torch.Generator().manual_seed(seed)
    loss = (o * torch.randn(o.shape, generator=gen, dtype=o.dtype)).sum()
    loss = loss + (S * torch.randn(S.shape, generator=gen, dtype=S.dtype)).sum()
    grads = torch.autograd.grad(loss, [x[n] for n in NAMES if x[n] is not None])
    return o, S, grads


def check(actual, expected, tol):
    for a, e, name in zip(actual[:2], expected[:2], ["o", "final_state"], strict=True):
        assert_close(a, e, **tol, name=name)
    for a, e in zip(actual[2], expected[2], strict=True):
        assert_close(a, e, **tol, name="grad")


def test_naive_matches_the_product_of_householder_matrices():
    B, T, H, K, V, n = 2, 5, 2, 4, 3, 3
    x = make_inputs(B, T, H, K, V, n)
    o, S_out = naive_recurrent_gated_delta_product(
        x["q"], x["k"], x["v"], x["g"], x["beta"], n, initial_state=x["h0"], output_final_state=True
    )
    S, eye, outs = x["h0"], torch.eye(K, dtype=torch.float64), []
    for t in range(T):
        S = x["g"][:, t, :, None, None].exp() * S
        for j in range(t * n, t * n + n):
            k, b = x["k"][:, j, :, :, None], x["beta"][:, j, :, None, None]
            S = (eye - b * k @ k.transpose(-1, -2)) @ S + b * k @ x["v"][:, j, :, None, :]
        outs.append((S.transpose(-1, -2) @ (x["q"][:, t, :, :, None] * K**-0.5)).squeeze(-1))
    assert_close(o, torch.stack(outs, dim=1), name="o")
    assert_close(S_out, S, name="final_state")


def test_one_householder_step_is_the_gated_delta_rule():
    x = make_inputs(2, 9, 2, 8, 4, n=1)
    args = (x["q"], x["k"], x["v"], x["g"], x["beta"])
    ours = chunk_gated_delta_product(*args, initial_state=x["h0"], output_final_state=True, backend="torch")
    ref = naive_recurrent_gated_delta_rule(*args, initial_state=x["h0"], output_final_state=True)
    assert_close(ours[0], ref[0], **TOL64, name="o")
    assert_close(ours[1], ref[1], **TOL64, name="final_state")


# (B, T, H, K, V, n, chunk): T = 1, T*n not a multiple of the chunk, K != V, n = 1..3
CASES = [(1, 1, 1, 8, 8, 2, 64), (2, 21, 2, 16, 8, 2, 16), (1, 30, 2, 8, 16, 3, 32), (2, 17, 1, 8, 8, 1, 7)]


@pytest.mark.parametrize("op", ["chunk", "fused"])
@pytest.mark.parametrize("case", CASES, ids=lambda c: "B{}-T{}-H{}-K{}-V{}-n{}-C{}".format(*c))
@pytest.mark.parametrize("gated", [True, False], ids=["gated", "no_decay"])
def test_torch_matches_naive_with_gradients(op, case, gated):
    B, T, H, K, V, n, C = case
    x = make_inputs(B, T, H, K, V, n, gated=gated)
    kw = {"chunk_size": C} if op == "chunk" else {}
    check(run(op, x, "torch", **kw), run(op, x, "naive"), TOL64)


def test_negative_eigenvalues_stay_stable_over_long_sequences():
    """beta in (0, 2): eigenvalues 1 - beta in (-1, 1). The chunked fp32 form against the fp64 oracle at T = 512."""
    x64 = make_inputs(1, 512, 2, 16, 16, 2, beta_max=2.0, seed=3)
    x32 = {k: None if t is None else t.detach().float() for k, t in x64.items()}
    args = lambda x: (x["q"], x["k"], x["v"], x["g"], x["beta"])  # noqa: E731
    o, S = chunk_gated_delta_product(*args(x32), initial_state=x32["h0"], output_final_state=True, backend="torch")
    o_ref, S_ref = naive_recurrent_gated_delta_product(
        *[t.detach() for t in args(x64)], 2, initial_state=x64["h0"].detach(), output_final_state=True
    )
    assert torch.isfinite(o).all() and torch.isfinite(S).all()
    assert_close(o.double(), o_ref, rtol=1e-3, atol=1e-4, name="o")
    assert_close(S.double(), S_ref, rtol=1e-3, atol=1e-4, name="final_state")


def test_prefill_then_decode_continues_the_parallel_form():
    n, x = 2, make_inputs(1, 19, 2, 8, 8, 2)
    full, S_full = chunk_gated_delta_product(
        x["q"], x["k"], x["v"], x["g"], x["beta"], initial_state=x["h0"], output_final_state=True, backend="torch"
    )
    cut = 12
    o, S = chunk_gated_delta_product(
        x["q"][:, :cut],
        x["k"][:, : cut * n],
        x["v"][:, : cut * n],
        x["g"][:, :cut],
        x["beta"][:, : cut * n],
        initial_state=x["h0"],
        output_final_state=True,
        backend="torch",
        chunk_size=8,
    )
    outs = [o]
    for t in range(cut, 19):
        steps = slice(t * n, t * n + n)
        o, S = fused_recurrent_gated_delta_product(
            x["q"][:, t : t + 1],
            x["k"][:, steps],
            x["v"][:, steps],
            x["g"][:, t : t + 1],
            x["beta"][:, steps],
            initial_state=S,
            output_final_state=True,
        )
        outs.append(o)
    assert_close(torch.cat(outs, dim=1), full, **TOL64, name="o")
    assert_close(S, S_full, **TOL64, name="final_state")


@pytest.mark.parametrize("backend", ["torch", "naive"])
def test_packed_sequences_equal_separate_calls(backend):
    n, lengths = 2, [5, 0, 9, 3]
    x = make_inputs(1, sum(lengths), 2, 8, 4, n)
    h0 = torch.randn(len(lengths), 2, 8, 4, dtype=torch.float64)
    cu = torch.tensor([0, *torch.tensor(lengths).cumsum(0).tolist()])
    args = (x["q"], x["k"], x["v"], x["g"], x["beta"])
    o, S = chunk_gated_delta_product(*args, initial_state=h0, output_final_state=True, cu_seqlens=cu, backend=backend)
    for i, (a, b) in enumerate(zip(cu.tolist(), cu.tolist()[1:], strict=False)):
        if a == b:
            assert_close(S[i], h0[i], name="empty sequence keeps its state")
            continue
        steps = slice(a * n, b * n)
        o_i, S_i = naive_recurrent_gated_delta_product(
            x["q"][:, a:b],
            x["k"][:, steps],
            x["v"][:, steps],
            x["g"][:, a:b],
            x["beta"][:, steps],
            n,
            initial_state=h0[i : i + 1],
            output_final_state=True,
        )
        assert_close(o[:, a:b], o_i, **TOL64, name=f"o of sequence {i}")
        assert_close(S[i : i + 1], S_i, **TOL64, name=f"state of sequence {i}")


def test_bad_inputs_are_named():
    x = make_inputs(1, 4, 2, 8, 8, 2)
    args = (x["q"], x["k"], x["v"], x["g"], x["beta"])
    with pytest.raises(ValueError, match=r"k.shape=\(1, 8, 2, 8\) must be \[B, T\*n, H, K\]=\[1, 12, 2, 8\]"):
        chunk_gated_delta_product(*args, num_householder=3)
    with pytest.raises(ValueError, match="num_householder must be a positive int"):
        chunk_gated_delta_product(*args, num_householder=0)
    with pytest.raises(ValueError, match=r"g.shape=\(1, 8, 2\) must be \[B, T, H\]=\[1, 4, 2\]"):
        chunk_gated_delta_product(x["q"], x["k"], x["v"], x["beta"], x["beta"])
    with pytest.raises(ValueError, match=r"cu_seqlens must rise from 0 to T=4"):
        chunk_gated_delta_product(*args, cu_seqlens=torch.tensor([0, 5]))


@pytest.fixture
def interpret(monkeypatch):
    if not torch.cuda.is_available():
        monkeypatch.setenv("TRITON_INTERPRET", "1")


@pytest.mark.parametrize("op", ["chunk", "fused"])
def test_triton_matches_naive(op, interpret):
    """The Triton path (the gated delta rule's kernels on the interleaved sequence), fp32, with gradients."""
    device = "cuda" if torch.cuda.is_available() else "cpu"
    x = make_inputs(1, 11, 2, 16, 16, 2, dtype=torch.float32)
    x = {k: None if t is None else t.detach().to(device).requires_grad_() for k, t in x.items()}
    kw = {"chunk_size": 16} if op == "chunk" else {}
    check(run(op, x, "triton", **kw), run(op, x, "naive"), {"rtol": 1e-3, "atol": 1e-4})
