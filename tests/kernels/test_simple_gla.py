"""Simple GLA kernels: every backend against the naive per-step oracle (outputs, final state, all gradients),
for the three gate modes: none (linear attention), g [B, T, H] (Mamba-2 / SSD) and g_gamma [H] (RetNet)."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

import kernels
from kernels import backend as kbackend
from kernels.simple_gla import chunk_simple_gla, fused_recurrent_simple_gla, naive_recurrent_simple_gla
from tests.helpers import assert_close

# (B, T, H, K, V, chunk_size): T = 1, T < C, T not a multiple of C, T == C, odd C; K != V
CASES = [
    (1, 1, 1, 8, 8, 64),
    (2, 63, 2, 16, 32, 32),
    (2, 100, 2, 16, 32, 64),
    (1, 64, 3, 32, 16, 64),
    (1, 23, 2, 8, 8, 7),
]
GATES = ["none", "g", "g_gamma"]
CASE_GATE = [pytest.param(*c, gate, id="B{}-T{}-H{}-K{}-V{}-C{}-".format(*c) + gate) for c in CASES for gate in GATES]
TOL = {torch.float64: {"rtol": 1e-9, "atol": 1e-10}, torch.float32: {"rtol": 1e-4, "atol": 1e-5}}
OPS = [pytest.param(chunk_simple_gla, id="chunk"), pytest.param(fused_recurrent_simple_gla, id="fused_recurrent")]


def make_inputs(B, T, H, K, V, gate="g", dtype=torch.float64, seed=0, requires_grad=False):
    """Random q, k [B, T, H, K], v [B, T, H, V], initial state [B, H, K, V] and the gate as keyword
    arguments: ``{}``, ``{"g": [B, T, H]}`` or ``{"g_gamma": [H]}``; ``gate`` picks the mode and regime."""
    gen = torch.Generator().manual_seed(seed)

    def rand(*shape):
        return torch.randn(*shape, generator=gen, dtype=torch.float64)

    q, k, v, h0 = rand(B, T, H, K), rand(B, T, H, K), rand(B, T, H, V), rand(B, H, K, V)
    if gate == "none":
        gates = {}
    elif gate == "g":  # data-dependent, from about -7 to about 0
        gates = {"g": F.logsigmoid(2 * rand(B, T, H))}
    elif gate == "g_gamma":  # constant per head, from -0.05 to -1.05
        gates = {"g_gamma": -0.05 - torch.rand(H, generator=gen, dtype=torch.float64)}
    elif gate == "g-30":  # exp(30 * 63) overflows even fp64
        gates = {"g": torch.full((B, T, H), -30.0, dtype=torch.float64)}
    elif gate == "g-mixed":  # even heads never decay, odd heads decay at -30 per step
        g = torch.zeros(B, T, H, dtype=torch.float64)
        g[:, :, 1::2] = -30.0
        gates = {"g": g}
    elif gate == "g_gamma-strong":  # -30 and -1000 (exp underflows to exactly 0) per step
        gates = {"g_gamma": torch.tensor([-30.0, -1000.0] * H, dtype=torch.float64)[:H]}
    else:
        raise ValueError(gate)
    q, k, v, h0 = (x.to(dtype).requires_grad_(requires_grad) for x in (q, k, v, h0))
    gates = {name: x.to(dtype).requires_grad_(requires_grad) for name, x in gates.items()}
    return q, k, v, gates, h0


def run_with_grads(fn, q, k, v, gates, h0, seed=1, **kwargs):
    """Forward with final state, backward of a random linear loss on (o, final_state); returns o, S, grads."""
    o, S = fn(q, k, v, **gates, initial_state=h0, output_final_state=True, **kwargs)
    gen = torch.Generator().manual_seed(seed)
    do = torch.randn(o.shape, generator=gen, dtype=torch.float64).to(o.dtype)
    dS = torch.randn(S.shape, generator=gen, dtype=torch.float64).to(S.dtype)
    ((o * do).sum() + (S * dS).sum()).backward()
    grads = {"q": q.grad, "k": k.grad, "v": v.grad, "h0": h0.grad}
    grads.update({name: x.grad for name, x in gates.items()})
    return o, S, grads


def check_all(o, S, grads, o_ref, S_ref, grads_ref, tol):
    assert_close(o, o_ref, **tol, name="o")
    assert_close(S, S_ref, **tol, name="final_state")
    assert grads.keys() == grads_ref.keys()
    for name, grad in grads.items():
        assert grad is not None, f"no gradient for {name}"
        assert_close(grad, grads_ref[name], **tol, name=f"d{name}")


# ----------------------------------------------------------------------------- the oracle itself


@pytest.mark.parametrize("gate", GATES)
def test_naive_matches_closed_form(gate):
    """o_t = scale sum_{j<=t} exp(G_t - G_j) (q_t . k_j) v_j + scale exp(G_t) q_t S_0, G the inclusive cumsum."""
    B, T, H, K, V = 2, 9, 2, 4, 3
    q, k, v, gates, h0 = make_inputs(B, T, H, K, V, gate)
    o, S = naive_recurrent_simple_gla(q, k, v, **gates, initial_state=h0, output_final_state=True)
    g = gates.get("g", gates.get("g_gamma", torch.zeros(H, dtype=torch.float64)).expand(B, T, H))
    G = g.cumsum(1)  # (B, T, H)
    decay = (G[:, :, None] - G[:, None, :]).exp() * torch.ones(T, T).tril()[None, :, :, None]  # (B, t, j, H)
    scores = torch.einsum("bthk,bjhk,btjh->bhtj", q, k, decay)
    expected = torch.einsum("bhtj,bjhv->bthv", scores, v) + torch.einsum("bthk,bhkv->bthv", q * G.exp()[..., None], h0)
    assert_close(o, expected * K**-0.5, name="o")
    S_expected = torch.einsum("bjhk,bjhv->bhkv", k * (G[:, -1:] - G).exp()[..., None], v)
    assert_close(S, S_expected + G[:, -1, :, None, None].exp() * h0, name="final_state")


# ----------------------------------------------------------------------------- chunked torch vs naive


@pytest.mark.parametrize("with_h0", [False, True], ids=["h0-none", "h0"])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["fp64", "fp32"])
@pytest.mark.parametrize(("B", "T", "H", "K", "V", "C", "gate"), CASE_GATE)
def test_chunk_forward_matches_naive(B, T, H, K, V, C, gate, dtype, with_h0):
    q, k, v, gates, h0 = make_inputs(B, T, H, K, V, gate, dtype)
    h0 = h0 if with_h0 else None
    o_ref, S_ref = chunk_simple_gla(q, k, v, **gates, initial_state=h0, output_final_state=True, backend="naive")
    o, S = chunk_simple_gla(q, k, v, **gates, initial_state=h0, output_final_state=True, backend="torch", chunk_size=C)
    assert o.dtype == dtype and o.shape == (B, T, H, V)
    assert S.dtype == dtype and S.shape == (B, H, K, V)
    assert_close(o, o_ref, **TOL[dtype], name="o")
    assert_close(S, S_ref, **TOL[dtype], name="final_state")


@pytest.mark.parametrize(("B", "T", "H", "K", "V", "C", "gate"), CASE_GATE)
def test_chunk_backward_matches_naive(B, T, H, K, V, C, gate):
    """Gradients of q, k, v, the gate (g or g_gamma) and initial_state, fp64, against autograd through the loop."""
    ref = run_with_grads(naive_recurrent_simple_gla, *make_inputs(B, T, H, K, V, gate, requires_grad=True))
    out = run_with_grads(chunk_simple_gla, *make_inputs(B, T, H, K, V, gate, requires_grad=True), chunk_size=C)
    check_all(*out, *ref, TOL[torch.float64])


@pytest.mark.parametrize("op", OPS)
def test_final_state_only_when_requested(op):
    q, k, v, gates, h0 = make_inputs(1, 5, 1, 4, 4, "g", torch.float32)
    assert op(q, k, v, **gates, initial_state=h0)[1] is None
    S = op(q, k, v, **gates, output_final_state=True)[1]
    assert S.dtype == torch.float32 and S.shape == (1, 1, 4, 4)


@pytest.mark.parametrize("gate", GATES)
def test_custom_scale(gate):
    q, k, v, gates, _ = make_inputs(1, 20, 2, 8, 4, gate)
    o_ref, _ = naive_recurrent_simple_gla(q, k, v, **gates, scale=0.3)
    assert_close(chunk_simple_gla(q, k, v, **gates, scale=0.3, chunk_size=8)[0], o_ref, **TOL[torch.float64])
    assert_close(fused_recurrent_simple_gla(q, k, v, **gates, scale=0.3)[0], o_ref, **TOL[torch.float64])


# ----------------------------------------------------------------------------- strong decay


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["fp64", "fp32"])
@pytest.mark.parametrize("gate", ["g-30", "g-mixed", "g_gamma-strong"])
def test_strong_decay_is_finite_and_matches_naive(gate, dtype):
    """exp(G_i - G_j) above the diagonal reaches exp(30 * 63): it must never be evaluated (nor 0 * inf)."""
    B, T, H, K, V, C = 2, 100, 2, 16, 8, 64
    ref = run_with_grads(naive_recurrent_simple_gla, *make_inputs(B, T, H, K, V, gate, requires_grad=True))
    inputs = make_inputs(B, T, H, K, V, gate, dtype, requires_grad=True)
    o, S, grads = run_with_grads(chunk_simple_gla, *inputs, backend="torch", chunk_size=C)
    for name, x in {"o": o, "final_state": S, **{f"d{n}": grad for n, grad in grads.items()}}.items():
        assert bool(x.isfinite().all()), f"{name} has {int((~x.isfinite()).sum())} non-finite entries"
    tol = TOL[torch.float64] if dtype == torch.float64 else {"rtol": 1e-3, "atol": 1e-4}
    check_all(o, S, grads, *ref, tol)


# ----------------------------------------------------------------------------- RetNet


@pytest.mark.parametrize("C", [32, 64])
def test_retnet_parallel_form(C):
    """With g_gamma = log(gamma_h), gamma_h = 1 - 2^(-5-h), the recurrence is RetNet's parallel retention
    ``((q k^T) * scale * M) v`` with ``M[n, m] = gamma^(n - m)`` for ``n >= m``; a constant ``g`` agrees too."""
    B, T, H, K, V = 2, 100, 4, 16, 8
    q, k, v, _, _ = make_inputs(B, T, H, K, V, "none")
    gamma = 1 - 2.0 ** (-5 - torch.arange(H, dtype=torch.float64))  # (H,)
    n = torch.arange(T, dtype=torch.float64)
    M = gamma[:, None, None] ** (n[:, None] - n[None, :]).clamp(min=0) * torch.ones(T, T).tril()  # (H, T, T)
    expected = torch.einsum("bnhk,bmhk,hnm,bmhv->bnhv", q, k, M, v) * K**-0.5
    o, _ = chunk_simple_gla(q, k, v, g_gamma=gamma.log(), chunk_size=C)
    assert_close(o, expected, **TOL[torch.float64], name="o (g_gamma)")
    o, _ = chunk_simple_gla(q, k, v, g=gamma.log().expand(B, T, H), chunk_size=C)
    assert_close(o, expected, **TOL[torch.float64], name="o (constant g)")


# ----------------------------------------------------------------------------- decode and continuation


@pytest.mark.parametrize("gate", GATES)
@pytest.mark.parametrize("T", [1, 3, 17])
def test_fused_recurrent_matches_naive(T, gate):
    ref = run_with_grads(naive_recurrent_simple_gla, *make_inputs(2, T, 2, 8, 16, gate, requires_grad=True))
    out = run_with_grads(fused_recurrent_simple_gla, *make_inputs(2, T, 2, 8, 16, gate, requires_grad=True))
    check_all(*out, *ref, TOL[torch.float64])


@pytest.mark.parametrize("gate", GATES)
@pytest.mark.parametrize(("T1", "T2", "C"), [(37, 30, 16), (64, 1, 64), (1, 50, 32)], ids=lambda x: str(x))
def test_chunked_continuation(T1, T2, C, gate):
    """Running T1 then T2 tokens, passing the final state on, equals one call on T1 + T2 tokens."""
    q, k, v, gates, h0 = make_inputs(2, T1 + T2, 2, 16, 8, gate)
    o_full, S_full = chunk_simple_gla(q, k, v, **gates, initial_state=h0, output_final_state=True, chunk_size=C)
    g = gates.get("g")

    def part(s):  # the tokens in slice s, with their gate
        rest = {"g": g[:, s]} if g is not None else gates
        return [x[:, s] for x in (q, k, v)], rest

    (x1, g1), (x2, g2) = part(slice(None, T1)), part(slice(T1, None))
    o1, S1 = chunk_simple_gla(*x1, **g1, initial_state=h0, output_final_state=True, chunk_size=C)
    o2, S2 = chunk_simple_gla(*x2, **g2, initial_state=S1, output_final_state=True, chunk_size=C)
    assert_close(torch.cat([o1, o2], dim=1), o_full, **TOL[torch.float64], name="o")
    assert_close(S2, S_full, **TOL[torch.float64], name="final_state")


@pytest.mark.parametrize("gate", GATES)
def test_prefill_then_decode_matches_parallel(gate):
    """Chunked prefill followed by one-token fused_recurrent decode steps equals the parallel forward."""
    T1, T = 40, 46
    q, k, v, gates, _ = make_inputs(1, T, 2, 16, 8, gate, torch.float32)
    o_full, _ = chunk_simple_gla(q, k, v, **gates, chunk_size=16)
    g = gates.get("g")
    prefix = {"g": g[:, :T1]} if g is not None else gates
    o, S = chunk_simple_gla(q[:, :T1], k[:, :T1], v[:, :T1], **prefix, output_final_state=True, chunk_size=16)
    outs = [o]
    for t in range(T1, T):
        step = {"g": g[:, t : t + 1]} if g is not None else gates
        o_t, S = fused_recurrent_simple_gla(
            *(x[:, t : t + 1] for x in (q, k, v)), **step, initial_state=S, output_final_state=True
        )
        outs.append(o_t)
    assert_close(torch.cat(outs, dim=1), o_full, **TOL[torch.float32], name="o")


# ----------------------------------------------------------------------------- packed sequences (cu_seqlens)


@pytest.mark.parametrize("gate", GATES)
@pytest.mark.parametrize("op", OPS)
def test_varlen_matches_separate_sequences(op, gate):
    """Sequences of lengths [5, 0, 17, 40] packed along T equal the four runs done separately; the empty one
    passes its initial state through."""
    lengths, H, K, V = [5, 0, 17, 40], 2, 8, 16
    q, k, v, gates, _ = make_inputs(1, sum(lengths), H, K, V, gate)
    h0 = torch.randn(len(lengths), H, K, V, dtype=torch.float64)
    cu_seqlens = torch.tensor([0, *torch.tensor(lengths).cumsum(0).tolist()])
    kw = {"chunk_size": 16} if op is chunk_simple_gla else {}
    o, S = op(q, k, v, **gates, initial_state=h0, output_final_state=True, cu_seqlens=cu_seqlens, **kw)
    assert o.shape == (1, sum(lengths), H, V) and S.shape == (len(lengths), H, K, V)
    for i, (a, b) in enumerate(zip(cu_seqlens[:-1].tolist(), cu_seqlens[1:].tolist(), strict=True)):
        if a == b:
            assert_close(S[i], h0[i], rtol=0, atol=0, name=f"final_state[{i}] (empty sequence)")
            continue
        seq_gates = {"g": gates["g"][:, a:b]} if "g" in gates else gates
        o_i, S_i = naive_recurrent_simple_gla(
            q[:, a:b], k[:, a:b], v[:, a:b], **seq_gates, initial_state=h0[i : i + 1], output_final_state=True
        )
        assert_close(o[:, a:b], o_i, **TOL[torch.float64], name=f"o[{a}:{b}]")
        assert_close(S[i : i + 1], S_i, **TOL[torch.float64], name=f"final_state[{i}]")


# ----------------------------------------------------------------------------- low precision


@pytest.mark.parametrize("gate", GATES)
@pytest.mark.parametrize("op", OPS)
def test_bf16_inputs(op, gate):
    """bf16 in, bf16 out (fp32 inside), close to the fp32 oracle on the same rounded values; finite gradients."""
    q, k, v, gates, h0 = make_inputs(2, 50, 2, 16, 16, gate, torch.bfloat16, requires_grad=True)
    o, S, grads = run_with_grads(op, q, k, v, gates, h0)
    assert o.dtype == torch.bfloat16 and S.dtype == torch.float32
    ref = [x.detach().float() for x in (q, k, v, h0)]
    ref_gates = {name: x.detach().float() for name, x in gates.items()}
    o_ref, S_ref = naive_recurrent_simple_gla(*ref[:3], **ref_gates, initial_state=ref[3], output_final_state=True)
    assert_close(o, o_ref, rtol=2e-2, atol=2e-2, name="o")
    assert_close(S, S_ref, rtol=1e-4, atol=1e-4, name="final_state")
    for name, grad in grads.items():
        assert grad.dtype == torch.bfloat16 and bool(grad.isfinite().all()), f"d{name}"


# ----------------------------------------------------------------------------- input validation


def _bad(**over):
    base = {"q": (1, 10, 3, 8), "k": (1, 10, 3, 8), "v": (1, 10, 3, 4), "g": (1, 10, 3), "g_gamma": None}
    base |= {"h0": None, "cu_seqlens": None}
    return base | over


BAD_INPUTS = {
    "g-and-g_gamma": (_bad(g_gamma=(3,)), r"either g \[B, T, H\].*or g_gamma \[H\].*not both"),
    "g-per-channel": (_bad(g=(1, 10, 3, 8)), r"g\.shape=\(1, 10, 3, 8\) must be \[B, T, H\]=\[1, 10, 3\]"),
    "g-other-T": (_bad(g=(1, 9, 3)), r"g\.shape=\(1, 9, 3\) must be \[B, T, H\]=\[1, 10, 3\]"),
    "g_gamma-other-H": (_bad(g=None, g_gamma=(2,)), r"g_gamma\.shape=\(2,\) must be \[H\]=\[3\]"),
    "q-3d": (_bad(q=(1, 10, 8)), r"q must be 4-D.*\(1, 10, 8\)"),
    "k-other-K": (_bad(k=(1, 10, 3, 6)), r"k\.shape=\(1, 10, 3, 6\) must equal q\.shape=\(1, 10, 3, 8\)"),
    "h0-wrong": (_bad(h0=(1, 3, 4, 8)), r"initial_state\.shape=\(1, 3, 4, 8\) must be \[N, H, K, V\]=\[1, 3, 8, 4\]"),
    "cu-not-from-0": (_bad(cu_seqlens=[1, 4, 10]), r"cu_seqlens must rise from 0 to T=10.*\[1, 4, 10\]"),
    "cu-not-to-T": (_bad(cu_seqlens=[0, 4, 9]), r"cu_seqlens must rise from 0 to T=10.*\[0, 4, 9\]"),
    "cu-decreasing": (_bad(cu_seqlens=[0, 6, 4, 10]), r"without decreasing, got \[0, 6, 4, 10\]"),
    "cu-float": (_bad(cu_seqlens=[0.0, 10.0]), r"cu_seqlens must be a 1-D integer tensor"),
    "cu-batch-2": (
        _bad(q=(2, 10, 3, 8), k=(2, 10, 3, 8), v=(2, 10, 3, 4), g=(2, 10, 3), cu_seqlens=[0, 10]),
        r"B must be 1, got B=2",
    ),
    "cu-h0-wrong-N": (
        _bad(cu_seqlens=[0, 4, 10], h0=(3, 3, 8, 4)),
        r"\[N, H, K, V\]=\[2, 3, 8, 4\].*len\(cu_seqlens\)",
    ),
}


@pytest.mark.parametrize("op", OPS)
@pytest.mark.parametrize(("shapes", "match"), BAD_INPUTS.values(), ids=BAD_INPUTS.keys())
def test_bad_inputs_raise(op, shapes, match):
    q, k, v = (torch.zeros(shapes[name]) for name in "qkv")
    g, g_gamma, h0 = (None if shapes[name] is None else torch.zeros(shapes[name]) for name in ("g", "g_gamma", "h0"))
    cu = None if shapes["cu_seqlens"] is None else torch.tensor(shapes["cu_seqlens"])
    with pytest.raises(ValueError, match=match):
        op(q, k, v, g=g, g_gamma=g_gamma, initial_state=h0, cu_seqlens=cu)


@pytest.mark.parametrize("chunk_size", [0, -4, 2.5])
def test_bad_chunk_size_raises(chunk_size):
    q, k, v, gates, _ = make_inputs(1, 4, 1, 4, 4)
    with pytest.raises(ValueError, match="chunk_size"):
        chunk_simple_gla(q, k, v, **gates, chunk_size=chunk_size)


# ----------------------------------------------------------------------------- backend resolution


@pytest.mark.parametrize("op", OPS)
def test_triton_backend_on_cpu_raises_with_the_fix(op, monkeypatch):
    """The Triton kernels run on CPU tensors only under TRITON_INTERPRET=1 (tests/kernels/test_triton_simple_gla.py)."""
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    q, k, v, gates, _ = make_inputs(1, 4, 1, 4, 4, "g", torch.float32)
    with pytest.raises(
        RuntimeError, match=r"backend='triton' (runs on CUDA tensors|needs the triton package).*'torch'"
    ):
        op(q, k, v, **gates, backend="triton")


@pytest.mark.parametrize("op", OPS)
def test_triton_backend_not_registered_raises_with_the_fix(op, monkeypatch):
    """Where the family has no Triton kernels registered, an explicit request names the alternatives."""
    monkeypatch.setitem(kbackend.AVAILABLE, "simple_gla", {"torch", "naive"})
    q, k, v, gates, _ = make_inputs(1, 4, 1, 4, 4)
    with pytest.raises(RuntimeError, match=r"backend='triton' is not available for the simple_gla family.*'torch'"):
        op(q, k, v, **gates, backend="triton")


def test_auto_resolves_to_torch_on_cpu_and_ops_are_exported():
    assert kernels.resolve_backend("auto", torch.zeros(1), family="simple_gla") == "torch"
    assert kernels.chunk_simple_gla is chunk_simple_gla
    assert kernels.fused_recurrent_simple_gla is fused_recurrent_simple_gla
    q, k, v, gates, _ = make_inputs(1, 4, 1, 4, 4)
    assert math.isfinite(float(kernels.chunk_simple_gla(q, k, v, **gates)[0].sum()))
