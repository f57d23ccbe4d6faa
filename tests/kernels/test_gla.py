"""GLA kernels: every backend against the naive per-step oracle (outputs, final state, all gradients)."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

import kernels
from kernels import backend as kbackend
from kernels.gla import chunk_gla, fused_recurrent_gla, naive_recurrent_gla
from kernels.gla import torch as gla_torch
from tests.helpers import assert_close

# (B, T, H, K, V, chunk_size): T = 1, T < C, T not a multiple of C, T == C, C not a multiple of the sub-block
CASES = [
    (1, 1, 1, 8, 8, 64),
    (2, 63, 2, 16, 32, 32),
    (2, 100, 2, 16, 32, 64),
    (1, 64, 3, 32, 16, 64),
    (1, 70, 1, 16, 8, 24),
    (1, 23, 2, 8, 8, 7),
]
CASE_IDS = [f"B{B}-T{T}-H{H}-K{K}-V{V}-C{C}" for B, T, H, K, V, C in CASES]
TOL = {torch.float64: {"rtol": 1e-9, "atol": 1e-10}, torch.float32: {"rtol": 1e-4, "atol": 1e-5}}


def make_inputs(B, T, H, K, V, dtype=torch.float64, gate="random", seed=0, requires_grad=False):
    """Random q, k, v, g [B, T, H, *] and an initial state [B, H, K, V]; ``gate`` picks the decay regime."""
    gen = torch.Generator().manual_seed(seed)

    def rand(*shape):
        return torch.randn(*shape, generator=gen, dtype=torch.float64)

    q, k, v, h0 = rand(B, T, H, K), rand(B, T, H, K), rand(B, T, H, V), rand(B, H, K, V)
    if gate == "random":  # GLA's gate: logsigmoid(x) / 16, here with a wide spread of x
        g = F.logsigmoid(4 * rand(B, T, H, K)) / 4
    elif gate == "const-20":
        g = torch.full((B, T, H, K), -20.0, dtype=torch.float64)
    elif gate == "logsigmoid-200":  # logits down to -200: g as small as -12.5
        g = F.logsigmoid(-200 * torch.rand(B, T, H, K, generator=gen, dtype=torch.float64)) / 16
    elif gate == "time-mixed":  # mild decay, but -20 per step from t = 40 on: chunks of both intra-chunk forms
        g = torch.full((B, T, H, K), -0.05, dtype=torch.float64)
        g[:, 40:] = -20.0
    elif gate == "mixed":  # half the channels never decay, the other half decay at -20 per step
        g = torch.zeros(B, T, H, K, dtype=torch.float64)
        g[..., ::2] = -20.0
    else:
        raise ValueError(gate)
    out = [x.to(dtype).requires_grad_(requires_grad) for x in (q, k, v, g, h0)]
    return tuple(out)


def run_with_grads(fn, q, k, v, g, h0, seed=1, **kwargs):
    """Forward with final state, backward of a random linear loss on (o, final_state); returns o, S, grads."""
    o, S = fn(q, k, v, g, initial_state=h0, output_final_state=True, **kwargs)
    gen = torch.Generator().manual_seed(seed)
    do = torch.randn(o.shape, generator=gen, dtype=torch.float64).to(o.dtype)
    dS = torch.randn(S.shape, generator=gen, dtype=torch.float64).to(S.dtype)
    ((o * do).sum() + (S * dS).sum()).backward()
    grads = {name: x.grad for name, x in zip(["q", "k", "v", "g", "h0"], (q, k, v, g, h0), strict=True)}
    return o, S, grads


# ----------------------------------------------------------------------------- the oracle itself


def test_naive_matches_closed_form():
    """o_t = sum_{j<=t} (q_t exp(G_t - G_j)) . k_j v_j + (q_t exp(G_t)) S_0, with G the inclusive cumsum."""
    B, T, H, K, V = 2, 9, 2, 4, 3
    q, k, v, g, h0 = make_inputs(B, T, H, K, V)
    o, S = naive_recurrent_gla(q, k, v, g, initial_state=h0, output_final_state=True)
    G = g.cumsum(1)  # (B, T, H, K)
    decay = (G[:, :, None] - G[:, None, :]).exp()  # (B, t, j, H, K)
    causal = torch.ones(T, T, dtype=torch.bool).tril()[None, :, :, None, None]
    scores = torch.einsum("bthk,bjhk,btjhk->bhtj", q, k, decay * causal)
    expected = torch.einsum("bhtj,bjhv->bthv", scores, v) + torch.einsum("bthk,bhkv->bthv", q * G.exp(), h0)
    assert_close(o, expected * K**-0.5, name="o")
    S_expected = torch.einsum("bjhk,bjhv->bhkv", k * (G[:, -1:] - G).exp(), v) + G[:, -1, :, :, None].exp() * h0
    assert_close(S, S_expected, name="final_state")


# ----------------------------------------------------------------------------- chunked torch vs naive


@pytest.mark.parametrize("with_h0", [False, True], ids=["h0-none", "h0"])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["fp64", "fp32"])
@pytest.mark.parametrize(("B", "T", "H", "K", "V", "C"), CASES, ids=CASE_IDS)
def test_chunk_forward_matches_naive(B, T, H, K, V, C, dtype, with_h0):
    q, k, v, g, h0 = make_inputs(B, T, H, K, V, dtype)
    h0 = h0 if with_h0 else None
    o_ref, S_ref = chunk_gla(q, k, v, g, initial_state=h0, output_final_state=True, backend="naive")
    o, S = chunk_gla(q, k, v, g, initial_state=h0, output_final_state=True, backend="torch", chunk_size=C)
    assert o.dtype == dtype and o.shape == (B, T, H, V)
    assert S.shape == (B, H, K, V)
    assert_close(o, o_ref, **TOL[dtype], name="o")
    assert_close(S, S_ref, **TOL[dtype], name="final_state")


@pytest.mark.parametrize(("B", "T", "H", "K", "V", "C"), CASES, ids=CASE_IDS)
def test_chunk_backward_matches_naive(B, T, H, K, V, C):
    inputs = make_inputs(B, T, H, K, V, torch.float64, requires_grad=True)
    o_ref, S_ref, grads_ref = run_with_grads(naive_recurrent_gla, *inputs)
    inputs = make_inputs(B, T, H, K, V, torch.float64, requires_grad=True)
    o, S, grads = run_with_grads(chunk_gla, *inputs, backend="torch", chunk_size=C)
    assert_close(o, o_ref, **TOL[torch.float64], name="o")
    assert_close(S, S_ref, **TOL[torch.float64], name="final_state")
    for name, grad in grads.items():
        assert_close(grad, grads_ref[name], **TOL[torch.float64], name=f"d{name}")


@pytest.mark.parametrize("mode", ["no_grad", "inference_mode"])
def test_inference_path_matches_autograd_path(mode):
    """Without autograd the chunked form takes an in-place path; it must give the same numbers."""
    inputs = make_inputs(2, 100, 2, 16, 8, torch.float32, gate="mixed", requires_grad=True)
    o_ref, S_ref = chunk_gla(*inputs[:4], initial_state=inputs[4], output_final_state=True)
    with getattr(torch, mode)():
        o, S = chunk_gla(*inputs[:4], initial_state=inputs[4], output_final_state=True)
    assert_close(o, o_ref, rtol=1e-6, atol=1e-6, name="o")
    assert_close(S, S_ref, rtol=1e-6, atol=1e-6, name="final_state")


@pytest.mark.parametrize("op", [chunk_gla, fused_recurrent_gla], ids=["chunk", "fused_recurrent"])
def test_final_state_only_when_requested(op):
    q, k, v, g, h0 = make_inputs(1, 5, 1, 4, 4, torch.float32)
    assert op(q, k, v, g, initial_state=h0)[1] is None
    S = op(q, k, v, g, output_final_state=True)[1]
    assert S.dtype == torch.float32 and S.shape == (1, 1, 4, 4)


def test_custom_scale():
    q, k, v, g, _ = make_inputs(1, 20, 2, 8, 4)
    o_ref, _ = naive_recurrent_gla(q, k, v, g, scale=0.3)
    assert_close(chunk_gla(q, k, v, g, scale=0.3, chunk_size=8)[0], o_ref, **TOL[torch.float64], name="o")
    assert_close(fused_recurrent_gla(q, k, v, g, scale=0.3)[0], o_ref, **TOL[torch.float64], name="o")


# ----------------------------------------------------------------------------- strong decay


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["fp64", "fp32"])
@pytest.mark.parametrize("gate", ["const-20", "logsigmoid-200", "mixed", "time-mixed"])
def test_strong_decay_is_finite_and_matches_naive(gate, dtype):
    B, T, H, K, V, C = 2, 100, 2, 16, 8, 32  # exp(+20 * 31) would overflow even fp64
    inputs = make_inputs(B, T, H, K, V, torch.float64, gate=gate, requires_grad=True)
    o_ref, S_ref, grads_ref = run_with_grads(naive_recurrent_gla, *inputs)
    inputs = make_inputs(B, T, H, K, V, dtype, gate=gate, requires_grad=True)
    o, S, grads = run_with_grads(chunk_gla, *inputs, backend="torch", chunk_size=C)
    assert bool(o.isfinite().all()) and bool(S.isfinite().all())
    tol = TOL[torch.float64] if dtype == torch.float64 else {"rtol": 1e-3, "atol": 1e-4}
    assert_close(o, o_ref, **tol, name="o")
    assert_close(S, S_ref, **tol, name="final_state")
    for name, grad in grads.items():
        assert bool(grad.isfinite().all()), f"d{name} has non-finite entries"
        assert_close(grad, grads_ref[name], **tol, name=f"d{name}")


# ----------------------------------------------------------------------------- decode and continuation


@pytest.mark.parametrize("T", [1, 3, 17])
def test_fused_recurrent_matches_naive(T):
    inputs = make_inputs(2, T, 2, 8, 16, torch.float64, requires_grad=True)
    o_ref, S_ref, grads_ref = run_with_grads(naive_recurrent_gla, *inputs)
    inputs = make_inputs(2, T, 2, 8, 16, torch.float64, requires_grad=True)
    o, S, grads = run_with_grads(fused_recurrent_gla, *inputs, backend="torch")
    assert_close(o, o_ref, **TOL[torch.float64], name="o")
    assert_close(S, S_ref, **TOL[torch.float64], name="final_state")
    for name, grad in grads.items():
        assert_close(grad, grads_ref[name], **TOL[torch.float64], name=f"d{name}")


@pytest.mark.parametrize(("T1", "T2", "C"), [(37, 30, 16), (64, 1, 64), (1, 50, 32)], ids=lambda x: str(x))
def test_chunked_continuation(T1, T2, C):
    """Running T1 then T2 tokens, passing the final state on, equals one call on T1 + T2 tokens."""
    q, k, v, g, h0 = make_inputs(2, T1 + T2, 2, 16, 8, torch.float64)
    o_full, S_full = chunk_gla(q, k, v, g, initial_state=h0, output_final_state=True, chunk_size=C)
    first, second = ([x[:, :T1] for x in (q, k, v, g)], [x[:, T1:] for x in (q, k, v, g)])
    o1, S1 = chunk_gla(*first, initial_state=h0, output_final_state=True, chunk_size=C)
    o2, S2 = chunk_gla(*second, initial_state=S1, output_final_state=True, chunk_size=C)
    assert_close(torch.cat([o1, o2], dim=1), o_full, **TOL[torch.float64], name="o")
    assert_close(S2, S_full, **TOL[torch.float64], name="final_state")


def test_prefill_then_decode_matches_parallel():
    """Chunked prefill followed by one-token fused_recurrent decode steps equals the parallel forward."""
    T1, T = 40, 46
    q, k, v, g, _ = make_inputs(1, T, 2, 16, 8, torch.float32)
    o_full, _ = chunk_gla(q, k, v, g, chunk_size=16)
    o, S = chunk_gla(q[:, :T1], k[:, :T1], v[:, :T1], g[:, :T1], output_final_state=True, chunk_size=16)
    outs = [o]
    for t in range(T1, T):
        step = [x[:, t : t + 1] for x in (q, k, v, g)]
        o_t, S = fused_recurrent_gla(*step, initial_state=S, output_final_state=True)
        outs.append(o_t)
    assert_close(torch.cat(outs, dim=1), o_full, **TOL[torch.float32], name="o")


# ----------------------------------------------------------------------------- low precision


@pytest.mark.parametrize("op", [chunk_gla, fused_recurrent_gla], ids=["chunk", "fused_recurrent"])
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=["bf16", "fp16"])
def test_low_precision_inputs(dtype, op):
    inputs = make_inputs(2, 50, 2, 16, 16, dtype, requires_grad=True)
    o, S, grads = run_with_grads(op, *inputs)
    assert o.dtype == dtype and S.dtype == torch.float32
    ref_inputs = [x.detach().float() for x in inputs]  # same rounded values, fp32 oracle
    o_ref, S_ref = naive_recurrent_gla(*ref_inputs[:4], initial_state=ref_inputs[4], output_final_state=True)
    assert_close(o, o_ref, rtol=2e-2, atol=2e-2, name="o")
    assert_close(S, S_ref, rtol=1e-4, atol=1e-4, name="final_state")
    for name, grad in grads.items():
        assert grad.dtype == dtype and bool(grad.isfinite().all()), f"d{name}"


# ----------------------------------------------------------------------------- input validation


def _bad(**shapes):
    base = {"q": (2, 10, 3, 8), "k": (2, 10, 3, 8), "v": (2, 10, 3, 4), "g": (2, 10, 3, 8), "h0": None}
    base.update(shapes)
    return base


BAD_INPUTS = {
    "q-3d": (_bad(q=(2, 10, 8)), r"q must be 4-D.*\(2, 10, 8\)"),
    "k-other-K": (_bad(k=(2, 10, 3, 6)), r"k\.shape=\(2, 10, 3, 6\) must equal q\.shape=\(2, 10, 3, 8\)"),
    "g-other-T": (_bad(g=(2, 9, 3, 8)), r"g\.shape=\(2, 9, 3, 8\)"),
    "v-other-H": (_bad(v=(2, 10, 2, 4)), r"v\.shape=\(2, 10, 2, 4\) must start with \[B, T, H\]=\[2, 10, 3\]"),
    "h0-wrong": (_bad(h0=(2, 3, 4, 8)), r"initial_state\.shape=\(2, 3, 4, 8\) must be \[N, H, K, V\]=\[2, 3, 8, 4\]"),
    "T-0": (_bad(q=(2, 0, 3, 8), k=(2, 0, 3, 8), v=(2, 0, 3, 4), g=(2, 0, 3, 8)), r"T=0"),
}


@pytest.mark.parametrize("op", [chunk_gla, fused_recurrent_gla], ids=["chunk", "fused_recurrent"])
@pytest.mark.parametrize(("shapes", "match"), BAD_INPUTS.values(), ids=BAD_INPUTS.keys())
def test_bad_inputs_raise(op, shapes, match):
    q, k, v, g = (torch.zeros(shapes[name]) for name in "qkvg")
    h0 = None if shapes["h0"] is None else torch.zeros(shapes["h0"])
    with pytest.raises(ValueError, match=match):
        op(q, k, v, g, initial_state=h0)


@pytest.mark.parametrize("chunk_size", [0, -4, 2.5])
def test_bad_chunk_size_raises(chunk_size):
    q, k, v, g, _ = make_inputs(1, 4, 1, 4, 4)
    with pytest.raises(ValueError, match="chunk_size"):
        chunk_gla(q, k, v, g, chunk_size=chunk_size)


# ----------------------------------------------------------------------------- backend resolution


@pytest.mark.parametrize("op", [chunk_gla, fused_recurrent_gla], ids=["chunk", "fused_recurrent"])
def test_triton_backend_on_cpu_raises_with_the_fix(op, monkeypatch):
    """The Triton kernels run on CPU tensors only under TRITON_INTERPRET=1 (tests/kernels/test_triton_gla.py)."""
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    q, k, v, g, _ = make_inputs(1, 4, 1, 4, 4, torch.float32)
    with pytest.raises(RuntimeError, match=r"backend='triton' runs on CUDA tensors.*set TRITON_INTERPRET=1"):
        op(q, k, v, g, backend="triton")


def test_unknown_backend_lists_options():
    q, k, v, g, _ = make_inputs(1, 4, 1, 4, 4)
    with pytest.raises(ValueError, match=r"unknown backend 'cuda'.*'auto', 'triton', 'torch', 'naive'"):
        chunk_gla(q, k, v, g, backend="cuda")


def test_unknown_family_lists_families():
    with pytest.raises(ValueError, match=r"unknown kernel family 'nope'.*'gla'"):
        kernels.resolve_backend("auto", family="nope")


class _FakeCuda:
    is_cuda = True


def test_auto_resolution(monkeypatch):
    cpu = torch.zeros(1)
    assert kernels.resolve_backend("auto", cpu, None, family="gla") == "torch"
    monkeypatch.setitem(kbackend.AVAILABLE, "gla", {"torch", "naive"})  # a family without Triton kernels
    assert kernels.resolve_backend("auto", _FakeCuda(), family="gla") == "torch"
    monkeypatch.setitem(kbackend.AVAILABLE, "gla", {"torch", "naive", "triton"})
    monkeypatch.setattr(kbackend, "check_triton", lambda *tensors: None)  # as if triton were installed
    assert kernels.resolve_backend("auto", _FakeCuda(), family="gla") == "triton"
    assert kernels.resolve_backend("auto", cpu, family="gla") == "torch"
    assert kernels.resolve_backend("naive", _FakeCuda(), family="gla") == "naive"


def test_resolution_logged_once(monkeypatch, caplog):
    monkeypatch.setattr(kbackend, "_LOGGED", set())
    with caplog.at_level(logging.INFO, logger="kernels.backend"):
        for _ in range(3):
            kernels.resolve_backend("auto", torch.zeros(1), family="gla")
    assert len([r for r in caplog.records if "resolved to 'torch'" in r.getMessage()]) == 1


def test_import_is_cheap_and_cuda_free():
    code = "import sys, kernels; assert 'triton' not in sys.modules, 'kernels imported triton'"
    env = dict(os.environ, CUDA_VISIBLE_DEVICES="")
    subprocess.run([sys.executable, "-c", code], check=True, env=env, cwd=Path(__file__).resolve().parents[2])


@pytest.mark.parametrize("gate", ["random", "time-mixed"])
def test_long_sequences_run_in_slabs_exactly(gate, monkeypatch):
    """Slab-by-slab processing (state carried between slabs) equals the oracle, gradients included."""
    monkeypatch.setattr(gla_torch, "SLAB_TOKENS", 32)
    inputs = make_inputs(2, 100, 2, 8, 16, torch.float64, gate=gate, requires_grad=True)
    o_ref, S_ref, grads_ref = run_with_grads(naive_recurrent_gla, *inputs)
    inputs = make_inputs(2, 100, 2, 8, 16, torch.float64, gate=gate, requires_grad=True)
    o, S, grads = run_with_grads(chunk_gla, *inputs, backend="torch", chunk_size=16)
    assert_close(o, o_ref, **TOL[torch.float64], name="o")
    assert_close(S, S_ref, **TOL[torch.float64], name="final_state")
    for name, grad in grads.items():
        assert_close(grad, grads_ref[name], **TOL[torch.float64], name=f"d{name}")
