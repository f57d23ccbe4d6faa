"""RWKV-5/6 kernels: every backend against the naive per-step oracle (outputs, final state, all gradients)."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from kernels import backend as kbackend
from kernels.rwkv6 import chunk_rwkv6, fused_recurrent_rwkv6, naive_recurrent_rwkv6
from kernels.rwkv6 import torch as rwkv6_torch
from tests.helpers import assert_close

# (B, T, H, K, V, chunk_size): T = 1, T < C, T not a multiple of C, K != V, C = 24 (3 sub-blocks of 8),
# C = 7 (sub-blocks of a single token)
CASES = [
    (1, 1, 1, 8, 8, 64),
    (2, 63, 2, 16, 32, 32),
    (2, 100, 2, 16, 8, 64),
    (1, 70, 1, 16, 8, 24),
    (1, 23, 2, 8, 8, 7),
]
CASE_IDS = [f"B{B}-T{T}-H{H}-K{K}-V{V}-C{C}" for B, T, H, K, V, C in CASES]
TOL = {torch.float64: {"rtol": 1e-9, "atol": 1e-10}, torch.float32: {"rtol": 1e-4, "atol": 1e-5}}
NAMES = ("r", "k", "v", "w", "u", "h0")


def make_inputs(B, T, H, K, V, dtype=torch.float64, decay="random", seed=0, requires_grad=False, N=None):
    """Random r, k, v, w [B, T, H, *], u [H, K] and an initial state [N or B, H, K, V]."""
    gen = torch.Generator().manual_seed(seed)

    def rand(*shape):
        return torch.randn(*shape, generator=gen, dtype=torch.float64)

    r, k, v, u, h0 = rand(B, T, H, K), rand(B, T, H, K), rand(B, T, H, V), rand(H, K), rand(N or B, H, K, V)
    if decay == "random":  # RWKV-6: w = -exp(x), from almost no decay to exp(-e^2) per step
        w = -torch.exp(rand(B, T, H, K).clamp(-4, 2))
    elif decay.startswith("const"):  # "const-30": w = -30 in every step and channel
        w = torch.full((B, T, H, K), -float(decay.split("-")[1]), dtype=torch.float64)
    elif decay == "mixed":  # half the channels never decay, the other half decay at -30 per step
        w = torch.zeros(B, T, H, K, dtype=torch.float64)
        w[..., ::2] = -30.0
    else:
        raise ValueError(decay)
    return tuple(x.to(dtype).requires_grad_(requires_grad) for x in (r, k, v, w, u, h0))


def run_with_grads(fn, r, k, v, w, u, h0, seed=1, **kwargs):
    """Forward with final state, backward of a random linear loss on (o, final_state); returns o, S, grads."""
    o, S = fn(r, k, v, w, u, initial_state=h0, output_final_state=True, **kwargs)
    gen = torch.Generator().manual_seed(seed)
    do = torch.randn(o.shape, generator=gen, dtype=torch.float64).to(o.dtype)
    dS = torch.randn(S.shape, generator=gen, dtype=torch.float64).to(S.dtype)
    ((o * do).sum() + (S * dS).sum()).backward()
    return o, S, {name: x.grad for name, x in zip(NAMES, (r, k, v, w, u, h0), strict=True)}


def check_against_naive(fn, inputs_fn, tol, **kwargs):
    """Outputs, final state and every gradient of ``fn`` vs the naive loop (in fp64 on the same values)."""
    ref = [x.detach().double().requires_grad_() for x in inputs_fn()]
    o_ref, S_ref, grads_ref = run_with_grads(naive_recurrent_rwkv6, *ref)
    o, S, grads = run_with_grads(fn, *inputs_fn(), **kwargs)
    assert bool(o.isfinite().all()) and bool(S.isfinite().all()), "o or final_state has non-finite entries"
    assert_close(o, o_ref, **tol, name="o")
    assert_close(S, S_ref, **tol, name="final_state")
    for name, grad in grads.items():
        assert bool(grad.isfinite().all()), f"d{name} has non-finite entries"
        assert_close(grad, grads_ref[name], **tol, name=f"d{name}")


CHUNK_OPS = {
    "chunk-naive": lambda *a, **kw: chunk_rwkv6(*a, backend="naive", **kw),
    "chunk-torch": lambda *a, **kw: chunk_rwkv6(*a, backend="torch", **kw),
    "fused-naive": lambda *a, **kw: fused_recurrent_rwkv6(*a, backend="naive", **kw),
    "fused-torch": lambda *a, **kw: fused_recurrent_rwkv6(*a, backend="torch", **kw),
}


# ----------------------------------------------------------------------------- the convention itself


@pytest.mark.parametrize("op", CHUNK_OPS.values(), ids=CHUNK_OPS.keys())
def test_hand_computed_example(op):
    """T = 2, K = V = 1, scale = 1: pins the exclusive read-out and the bonus.

    o_1 = r_1 (s_0 + u k_1 v_1)             = 2 (4 + 0.1 * 5 * 11)        = 19
    S_1 = exp(w_1) s_0 + k_1 v_1            = 0.5 * 4 + 55                = 57
    o_2 = r_2 (S_1 + u k_2 v_2)             = 3 (57 + 0.1 * 7 * 13)       = 198.3
    S_2 = exp(w_2) S_1 + k_2 v_2            = 0.25 * 57 + 91              = 105.25
    (w_2 only decays the state after token 2 has read it.)
    """

    def seq(a, b):
        return torch.tensor([a, b], dtype=torch.float64).reshape(1, 2, 1, 1)

    r, k, v, w = seq(2.0, 3.0), seq(5.0, 7.0), seq(11.0, 13.0), seq(math.log(0.5), math.log(0.25))
    u, h0 = torch.tensor([[0.1]], dtype=torch.float64), torch.full((1, 1, 1, 1), 4.0, dtype=torch.float64)
    o, S = op(r, k, v, w, u, scale=1.0, initial_state=h0, output_final_state=True)
    assert_close(o.flatten(), torch.tensor([19.0, 198.3], dtype=torch.float64), name="o")
    assert_close(S.flatten(), torch.tensor([105.25], dtype=torch.float64), name="final_state")
    # K = 1 makes the default scale K ** -0.5 = 1 as well
    assert_close(op(r, k, v, w, u, initial_state=h0)[0], o, name="o (default scale)")


# ----------------------------------------------------------------------------- chunked torch vs naive


@pytest.mark.parametrize("with_h0", [False, True], ids=["h0-none", "h0"])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["fp64", "fp32"])
@pytest.mark.parametrize(("B", "T", "H", "K", "V", "C"), CASES, ids=CASE_IDS)
def test_chunk_forward_matches_naive(B, T, H, K, V, C, dtype, with_h0):
    r, k, v, w, u, h0 = make_inputs(B, T, H, K, V, dtype)
    h0 = h0 if with_h0 else None
    o_ref, S_ref = chunk_rwkv6(r, k, v, w, u, initial_state=h0, output_final_state=True, backend="naive")
    o, S = chunk_rwkv6(r, k, v, w, u, initial_state=h0, output_final_state=True, backend="torch", chunk_size=C)
    assert o.dtype == dtype and o.shape == (B, T, H, V)
    assert S.shape == (B, H, K, V)
    assert_close(o, o_ref, **TOL[dtype], name="o")
    assert_close(S, S_ref, **TOL[dtype], name="final_state")


@pytest.mark.parametrize(("B", "T", "H", "K", "V", "C"), CASES, ids=CASE_IDS)
def test_chunk_backward_matches_naive(B, T, H, K, V, C):
    def inputs():
        return make_inputs(B, T, H, K, V, torch.float64, requires_grad=True)

    check_against_naive(chunk_rwkv6, inputs, TOL[torch.float64], backend="torch", chunk_size=C)


@pytest.mark.parametrize("chunks_per_slab", [1, 3])
def test_chunk_slabs_match_naive(monkeypatch, chunks_per_slab):
    """The chunked form works through the chunks in slabs (cache-sized at real sizes, one slab in the tests
    above); force several slabs, the last one partial (T = 150, C = 32: 5 chunks)."""
    B, T, H, K, V, C = 2, 150, 2, 16, 8, 32
    monkeypatch.setattr(rwkv6_torch, "SLAB_NUMEL", chunks_per_slab * B * H * (C // rwkv6_torch.SUB_CHUNK) * K * V)

    def inputs():
        return make_inputs(B, T, H, K, V, torch.float64, requires_grad=True)

    check_against_naive(chunk_rwkv6, inputs, TOL[torch.float64], backend="torch", chunk_size=C)


def test_static_decay_rwkv5():
    """RWKV-5: one decay per head and channel, broadcast over B and T as an expanded (stride-0) view."""
    r, k, v, _, u, h0 = make_inputs(2, 50, 2, 16, 16)
    w = -torch.exp(torch.randn(2, 16, dtype=torch.float64)).expand(2, 50, 2, 16)
    o_ref, S_ref = naive_recurrent_rwkv6(r, k, v, w, u, scale=1.0, initial_state=h0, output_final_state=True)
    o, S = chunk_rwkv6(r, k, v, w, u, scale=1.0, initial_state=h0, output_final_state=True, chunk_size=16)
    assert_close(o, o_ref, **TOL[torch.float64], name="o")
    assert_close(S, S_ref, **TOL[torch.float64], name="final_state")


@pytest.mark.parametrize("op", [chunk_rwkv6, fused_recurrent_rwkv6], ids=["chunk", "fused_recurrent"])
def test_final_state_only_when_requested(op):
    r, k, v, w, u, h0 = make_inputs(1, 5, 1, 4, 4, torch.float32)
    assert op(r, k, v, w, u, initial_state=h0)[1] is None
    S = op(r, k, v, w, u, output_final_state=True)[1]
    assert S.dtype == torch.float32 and S.shape == (1, 1, 4, 4)


def test_custom_scale():
    r, k, v, w, u, _ = make_inputs(1, 20, 2, 8, 4)
    o_ref, _ = naive_recurrent_rwkv6(r, k, v, w, u, scale=0.3)
    assert_close(chunk_rwkv6(r, k, v, w, u, scale=0.3, chunk_size=8)[0], o_ref, **TOL[torch.float64], name="o")
    assert_close(fused_recurrent_rwkv6(r, k, v, w, u, scale=0.3)[0], o_ref, **TOL[torch.float64], name="o")


# ----------------------------------------------------------------------------- strong decay


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["fp64", "fp32"])
@pytest.mark.parametrize("decay", ["const-30", "const-120", "mixed"])
def test_strong_decay_is_finite_and_matches_naive(decay, dtype):
    """w = -30 per step: exp(+30 * 63) would overflow even fp64, so an unstable chunked form fails here;
    w = -120 also overflows ``exp(+120 * 7)`` inside an 8-token sub-block in fp64."""

    def inputs():
        return make_inputs(2, 100, 2, 16, 8, dtype, decay=decay, requires_grad=True)

    tol = TOL[torch.float64] if dtype == torch.float64 else {"rtol": 1e-3, "atol": 1e-4}
    check_against_naive(chunk_rwkv6, inputs, tol, backend="torch", chunk_size=64)


# ----------------------------------------------------------------------------- decode and continuation


@pytest.mark.parametrize("T", [1, 3, 17])
def test_fused_recurrent_matches_naive(T):
    def inputs():
        return make_inputs(2, T, 2, 8, 16, torch.float64, requires_grad=True)

    check_against_naive(fused_recurrent_rwkv6, inputs, TOL[torch.float64], backend="torch")


@pytest.mark.parametrize(("T1", "T2", "C"), [(37, 30, 16), (64, 1, 64), (1, 50, 32)], ids=lambda x: str(x))
def test_chunked_continuation(T1, T2, C):
    """Running T1 then T2 tokens, passing the final state on, equals one call on T1 + T2 tokens."""
    r, k, v, w, u, h0 = make_inputs(2, T1 + T2, 2, 16, 8, torch.float64)
    o_full, S_full = chunk_rwkv6(r, k, v, w, u, initial_state=h0, output_final_state=True, chunk_size=C)
    first, second = [x[:, :T1] for x in (r, k, v, w)], [x[:, T1:] for x in (r, k, v, w)]
    o1, S1 = chunk_rwkv6(*first, u, initial_state=h0, output_final_state=True, chunk_size=C)
    o2, S2 = chunk_rwkv6(*second, u, initial_state=S1, output_final_state=True, chunk_size=C)
    assert_close(torch.cat([o1, o2], dim=1), o_full, **TOL[torch.float64], name="o")
    assert_close(S2, S_full, **TOL[torch.float64], name="final_state")


def test_prefill_then_decode_matches_parallel():
    """Chunked prefill followed by one-token fused_recurrent decode steps equals the parallel forward."""
    T1, T = 40, 46
    r, k, v, w, u, _ = make_inputs(1, T, 2, 16, 8, torch.float32)
    o_full, _ = chunk_rwkv6(r, k, v, w, u, chunk_size=16)
    o, S = chunk_rwkv6(*(x[:, :T1] for x in (r, k, v, w)), u, output_final_state=True, chunk_size=16)
    outs = [o]
    for t in range(T1, T):
        o_t, S = fused_recurrent_rwkv6(
            *(x[:, t : t + 1] for x in (r, k, v, w)), u, initial_state=S, output_final_state=True
        )
        outs.append(o_t)
    assert_close(torch.cat(outs, dim=1), o_full, **TOL[torch.float32], name="o")


# ----------------------------------------------------------------------------- packed sequences


@pytest.mark.parametrize("with_h0", [False, True], ids=["h0-none", "h0"])
@pytest.mark.parametrize(
    ("op", "backend"),
    [(chunk_rwkv6, "torch"), (chunk_rwkv6, "naive"), (fused_recurrent_rwkv6, "torch")],
    ids=["chunk-torch", "chunk-naive", "fused-torch"],
)
def test_cu_seqlens_equals_separate_runs(op, backend, with_h0):
    """Lengths [5, 0, 17, 40] packed along T equal four separate calls; the empty one keeps its state."""
    lengths = [5, 0, 17, 40]
    offsets = [0, *torch.tensor(lengths).cumsum(0).tolist()]
    r, k, v, w, u, h0 = make_inputs(1, sum(lengths), 2, 16, 8, torch.float64, N=len(lengths))
    h0 = h0 if with_h0 else None
    cu_seqlens = torch.tensor(offsets, dtype=torch.int32)
    kwargs = {"backend": backend} | ({"chunk_size": 16} if op is chunk_rwkv6 else {})
    o, S = op(r, k, v, w, u, initial_state=h0, output_final_state=True, cu_seqlens=cu_seqlens, **kwargs)
    assert o.shape == v.shape and S.shape == (len(lengths), 2, 16, 8)
    for i, (a, b) in enumerate(zip(offsets, offsets[1:], strict=False)):
        h0_i = None if h0 is None else h0[i : i + 1]
        if a == b:
            expected = torch.zeros_like(S[i]) if h0 is None else h0[i]
            assert_close(S[i], expected, name=f"final_state[{i}] (empty)")
            continue
        o_i, S_i = naive_recurrent_rwkv6(
            *(x[:, a:b] for x in (r, k, v, w)), u, initial_state=h0_i, output_final_state=True
        )
        assert_close(o[:, a:b], o_i, **TOL[torch.float64], name=f"o[{i}]")
        assert_close(S[i : i + 1], S_i, **TOL[torch.float64], name=f"final_state[{i}]")


# ----------------------------------------------------------------------------- low precision


@pytest.mark.parametrize("op", [chunk_rwkv6, fused_recurrent_rwkv6], ids=["chunk", "fused_recurrent"])
def test_bf16_close_to_fp32(op):
    inputs = make_inputs(2, 50, 2, 16, 16, torch.bfloat16, requires_grad=True)
    o, S, grads = run_with_grads(op, *inputs)
    assert o.dtype == torch.bfloat16 and S.dtype == torch.float32
    ref = [x.detach().float() for x in inputs]  # the same rounded values, fp32 oracle
    o_ref, S_ref = naive_recurrent_rwkv6(*ref[:5], initial_state=ref[5], output_final_state=True)
    assert_close(o, o_ref, rtol=2e-2, atol=2e-2, name="o")
    assert_close(S, S_ref, rtol=1e-4, atol=1e-4, name="final_state")
    for name, grad in grads.items():
        assert grad.dtype == torch.bfloat16 and bool(grad.isfinite().all()), f"d{name}"


# ----------------------------------------------------------------------------- input validation


def _bad(**shapes):
    base = {"r": (2, 10, 3, 8), "k": (2, 10, 3, 8), "v": (2, 10, 3, 4), "w": (2, 10, 3, 8), "u": (3, 8), "h0": None}
    return base | shapes


BAD_INPUTS = {
    "u-transposed": (_bad(u=(8, 3)), r"u\.shape=\(8, 3\) must be \[H, K\]=\[3, 8\]"),
    "u-1d": (_bad(u=(8,)), r"u\.shape=\(8,\) must be \[H, K\]=\[3, 8\]"),
    "w-other-T": (_bad(w=(2, 9, 3, 8)), r"w\.shape=\(2, 9, 3, 8\) must be \[B, T, H, K\]=\[2, 10, 3, 8\]"),
    "w-per-head": (_bad(w=(2, 10, 3)), r"w\.shape=\(2, 10, 3\) must be \[B, T, H, K\]"),
    "r-3d": (_bad(r=(2, 10, 8)), r"must be 4-D.*\(2, 10, 8\)"),
    "k-other-K": (_bad(k=(2, 10, 3, 6)), r"k\.shape=\(2, 10, 3, 6\) must equal"),
    "h0-wrong": (_bad(h0=(2, 3, 4, 8)), r"initial_state\.shape=\(2, 3, 4, 8\) must be \[N, H, K, V\]=\[2, 3, 8, 4\]"),
    "T-0": (_bad(r=(2, 0, 3, 8), k=(2, 0, 3, 8), v=(2, 0, 3, 4), w=(2, 0, 3, 8)), r"T=0"),
}


@pytest.mark.parametrize("op", [chunk_rwkv6, fused_recurrent_rwkv6], ids=["chunk", "fused_recurrent"])
@pytest.mark.parametrize(("shapes", "match"), BAD_INPUTS.values(), ids=BAD_INPUTS.keys())
def test_bad_inputs_raise(op, shapes, match):
    r, k, v, w, u = (torch.zeros(shapes[name]) for name in ("r", "k", "v", "w", "u"))
    h0 = None if shapes["h0"] is None else torch.zeros(shapes["h0"])
    with pytest.raises(ValueError, match=match):
        op(r, k, v, w, u, initial_state=h0)


def test_bad_cu_seqlens_raise():
    r, k, v, w, u, _ = make_inputs(1, 10, 1, 4, 4)
    with pytest.raises(ValueError, match=r"cu_seqlens must rise from 0 to T=10"):
        chunk_rwkv6(r, k, v, w, u, cu_seqlens=torch.tensor([0, 4, 9]))
    with pytest.raises(ValueError, match=r"initial_state\.shape=\(1, 1, 4, 4\) must be \[N, H, K, V\]=\[2, 1, 4, 4\]"):
        fused_recurrent_rwkv6(r, k, v, w, u, initial_state=torch.zeros(1, 1, 4, 4), cu_seqlens=torch.tensor([0, 4, 10]))


@pytest.mark.parametrize("chunk_size", [0, -4, 2.5])
def test_bad_chunk_size_raises(chunk_size):
    r, k, v, w, u, _ = make_inputs(1, 4, 1, 4, 4)
    with pytest.raises(ValueError, match="chunk_size"):
        chunk_rwkv6(r, k, v, w, u, chunk_size=chunk_size)


# ----------------------------------------------------------------------------- backend resolution


@pytest.mark.parametrize("op", [chunk_rwkv6, fused_recurrent_rwkv6], ids=["chunk", "fused_recurrent"])
def test_triton_backend_on_cpu_raises_with_the_fix(op, monkeypatch):
    """The Triton kernels run on CPU tensors only under TRITON_INTERPRET=1 (tests/kernels/test_triton_rwkv6.py)."""
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    r, k, v, w, u, _ = make_inputs(1, 4, 1, 4, 4, torch.float32)
    with pytest.raises(
        RuntimeError, match=r"backend='triton' (runs on CUDA tensors|needs the triton package).*'torch'"
    ):
        op(r, k, v, w, u, backend="triton")


@pytest.mark.parametrize("op", [chunk_rwkv6, fused_recurrent_rwkv6], ids=["chunk", "fused_recurrent"])
def test_triton_backend_not_registered_raises_with_the_fix(op, monkeypatch):
    """Where the family has no Triton kernels registered, an explicit request names the alternatives."""
    monkeypatch.setitem(kbackend.AVAILABLE, "rwkv6", {"torch", "naive"})
    r, k, v, w, u, _ = make_inputs(1, 4, 1, 4, 4)
    with pytest.raises(RuntimeError, match=r"backend='triton' is not available for the rwkv6 family.*'torch'"):
        op(r, k, v, w, u, backend="triton")


def test_unknown_backend_lists_options():
    r, k, v, w, u, _ = make_inputs(1, 4, 1, 4, 4)
    with pytest.raises(ValueError, match=r"unknown backend 'cuda'.*'auto', 'triton', 'torch', 'naive'"):
        chunk_rwkv6(r, k, v, w, u, backend="cuda")


def test_lazy_top_level_exports():
    import kernels

    assert kernels.chunk_rwkv6 is chunk_rwkv6 and kernels.fused_recurrent_rwkv6 is fused_recurrent_rwkv6


def test_naive_matches_closed_form():
    """o_t = scale r_t [sum_{j<t} exp(W_{t-1} - W_j) k_j^T v_j + exp(W_{t-1}) S_0 + diag(u) k_t^T v_t]."""
    B, T, H, K, V = 2, 9, 2, 4, 3
    r, k, v, w, u, h0 = make_inputs(B, T, H, K, V)
    o, S = naive_recurrent_rwkv6(r, k, v, w, u, initial_state=h0, output_final_state=True)
    W = w.cumsum(1)  # (B, T, H, K) inclusive
    Wx = F.pad(W, (0, 0, 0, 0, 1, 0))[:, :-1]  # exclusive
    strict = torch.ones(T, T, dtype=torch.bool).tril(-1)[None, :, :, None, None]
    decay = (Wx[:, :, None] - W[:, None, :]).clamp(max=0).exp() * strict  # (B, t, j, H, K)
    scores = torch.einsum("bthk,bjhk,btjhk->bhtj", r, k, decay)
    expected = torch.einsum("bhtj,bjhv->bthv", scores, v) + torch.einsum("bthk,bhkv->bthv", r * Wx.exp(), h0)
    expected = expected + (r * u * k).sum(-1, keepdim=True) * v
    assert_close(o, expected * K**-0.5, name="o")
    S_expected = torch.einsum("bjhk,bjhv->bhkv", k * (W[:, -1:] - W).exp(), v) + W[:, -1, :, :, None].exp() * h0
    assert_close(S, S_expected, name="final_state")
