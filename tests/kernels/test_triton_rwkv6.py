"""RWKV-6 Triton kernels against the naive oracle, run on CPU through Triton's interpreter (TRITON_INTERPRET=1).

The oracle is the naive per-step loop in fp64 on the same (rounded) values, so the tolerances measure the
kernels' own fp32 error. Sizes stay tiny: the interpreter executes every program of every kernel in
Python. The same tests run unchanged on a GPU (the inputs are created on ``DEVICE``: CUDA when available).
"""

from __future__ import annotations

import pytest
import torch

from kernels.rwkv6 import chunk_rwkv6, fused_recurrent_rwkv6, naive_recurrent_rwkv6  # noqa: E402
from tests.helpers import assert_close  # noqa: E402
from tests.kernels.triton_helpers import DEVICE, GPU_ONLY, check_relative, run_without_interpreter

pytestmark = pytest.mark.usefixtures("triton_interpreter")

NAMES = ("r", "k", "v", "w", "u", "h0")
FP32 = {"rtol": 1e-4, "atol": 1e-5}
"""Relative error, and an absolute floor that scales with the largest reference entry (at least 1): dw is a
sum of terms of the size of ``r * dr``, so entries far below that size carry their fp32 round-off."""


# (B, T, H, K, V, chunk): T = 1, T not a multiple of C with K != V, T == C, K < 16 with V not a power of
# two, several chunks of 64
CASES = [
    (1, 1, 1, 16, 16, 16),
    (2, 50, 2, 16, 32, 32),
    (1, 64, 2, 32, 16, 64),
    (1, 40, 1, 8, 40, 16),
    (1, 150, 1, 16, 16, 64),
]
CASE_IDS = [f"B{B}-T{T}-H{H}-K{K}-V{V}-C{C}" for B, T, H, K, V, C in CASES]


def make_inputs(B, T, H, K, V, dtype=torch.float32, decay="random", seed=0, requires_grad=False, N=None):
    """r, k, v, w ``[B, T, H, *]``, u ``[H, K]`` and an initial state ``[N or B, H, K, V]`` on DEVICE."""
    gen = torch.Generator().manual_seed(seed)
    r, k, v = (torch.randn(B, T, H, d, generator=gen) for d in (K, K, V))
    u, h0 = torch.randn(H, K, generator=gen), torch.randn(N or B, H, K, V, generator=gen)
    if decay == "random":  # RWKV-6: w = -exp(x), from almost no decay to exp(-e^2) per step
        w = -torch.exp(torch.randn(B, T, H, K, generator=gen).clamp(-4, 2))
    elif decay.startswith("const"):  # "const-30": w = -30 in every step and channel
        w = torch.full((B, T, H, K), -float(decay.split("-")[1]))
    elif decay == "mixed":  # half the channels never decay, the other half decay at -30 per step
        w = torch.zeros(B, T, H, K)
        w[..., ::2] = -30.0
    elif decay == "burst":  # -30 for the first 20 tokens of every 64, then almost none: large chunk sums
        w = torch.where((torch.arange(T) % 64 < 20)[None, :, None, None], -30.0, -0.01).expand(B, T, H, K)
    else:
        raise ValueError(decay)
    return tuple(x.to(DEVICE, dtype).requires_grad_(requires_grad) for x in (r, k, v, w, u, h0))


def run_with_grads(fn, r, k, v, w, u, h0, seed=1, final_state_grad=True, **kwargs):
    """Forward, then backward of a random linear loss on o (and the final state); returns o, S, grads."""
    o, S = fn(r, k, v, w, u, initial_state=h0, output_final_state=True, **kwargs)
    gen = torch.Generator().manual_seed(seed)
    do = torch.randn(o.shape, generator=gen).to(DEVICE, o.dtype)
    dS = torch.randn(S.shape, generator=gen).to(DEVICE, S.dtype)
    loss = (o * do).sum() + ((S * dS).sum() if final_state_grad else 0)
    loss.backward()
    return o, S, {name: x.grad for name, x in zip(NAMES, (r, k, v, w, u, h0), strict=True)}


def oracle(*inputs, fn=naive_recurrent_rwkv6, **kwargs):
    """The naive loop in fp64 on copies of the same values, with gradients."""
    fresh = [x.detach().double().requires_grad_(True) for x in inputs]
    return run_with_grads(fn, *fresh, **kwargs)


def check(name, actual, expected, rtol=FP32["rtol"], atol=FP32["atol"]):
    assert actual is not None and bool(actual.isfinite().all()), f"{name} missing or not finite"
    floor = atol * max(1.0, expected.abs().max().item())
    assert_close(actual.double(), expected, rtol=rtol, atol=floor, name=name)


def check_all(got, ref, **tol):
    (o, S, grads), (o_ref, S_ref, grads_ref) = got, ref
    check("o", o, o_ref, **tol)
    check("final_state", S, S_ref, **tol)
    for name, grad in grads.items():
        if grads_ref[name] is not None:
            check(f"d{name}", grad, grads_ref[name], **tol)


# ----------------------------------------------------------------------------- chunked kernels vs naive


@pytest.mark.parametrize("with_h0", [False, True], ids=["h0-none", "h0"])
@pytest.mark.parametrize(("B", "T", "H", "K", "V", "C"), CASES[:4], ids=CASE_IDS[:4])
def test_forward_matches_naive(B, T, H, K, V, C, with_h0):
    r, k, v, w, u, h0 = make_inputs(B, T, H, K, V)
    h0 = h0 if with_h0 else None
    o_ref, S_ref = naive_recurrent_rwkv6(
        *(x.double() for x in (r, k, v, w, u)), initial_state=h0, output_final_state=True
    )
    o, S = chunk_rwkv6(r, k, v, w, u, initial_state=h0, output_final_state=True, backend="triton", chunk_size=C)
    assert o.dtype == torch.float32 and o.shape == (B, T, H, V)
    assert S.dtype == torch.float32 and S.shape == (B, H, K, V)
    check("o", o, o_ref)
    check("final_state", S, S_ref)
    assert chunk_rwkv6(r, k, v, w, u, initial_state=h0, backend="triton", chunk_size=C)[1] is None


@pytest.mark.parametrize(("B", "T", "H", "K", "V", "C"), CASES[1:], ids=CASE_IDS[1:])
def test_backward_matches_naive(B, T, H, K, V, C):
    """Gradients of r, k, v, w, u and the initial state."""
    inputs = make_inputs(B, T, H, K, V, requires_grad=True)
    got = run_with_grads(chunk_rwkv6, *inputs, backend="triton", chunk_size=C)
    check_all(got, oracle(*inputs))


def test_backward_without_final_state_grad():
    """Only o feeds the loss: the final-state gradient is None inside the backward."""
    inputs = make_inputs(1, 37, 2, 16, 16, requires_grad=True)
    got = run_with_grads(chunk_rwkv6, *inputs, final_state_grad=False, backend="triton", chunk_size=16)
    check_all(got, oracle(*inputs, final_state_grad=False))


def test_backward_without_initial_state():
    r, k, v, w, u, _ = make_inputs(1, 37, 2, 16, 16, requires_grad=True)
    o, S = chunk_rwkv6(r, k, v, w, u, output_final_state=True, backend="triton", chunk_size=32)
    (o.sum() + S.sum()).backward()
    fresh = [x.detach().double().requires_grad_(True) for x in (r, k, v, w, u)]
    o_ref, S_ref = naive_recurrent_rwkv6(*fresh, output_final_state=True)
    (o_ref.sum() + S_ref.sum()).backward()
    for name, x, ref in zip(NAMES, (r, k, v, w, u), fresh, strict=False):
        check(f"d{name}", x.grad, ref.grad)


def test_several_tiles_per_head_dim(monkeypatch):
    """K and V wider than one tile: the kernels loop over K tiles and launch one program per V tile."""
    from kernels.rwkv6.triton import chunk as triton_chunk

    monkeypatch.setattr(triton_chunk, "MAX_TILE", 16)
    inputs = make_inputs(1, 40, 1, 40, 48, requires_grad=True)
    check_all(run_with_grads(chunk_rwkv6, *inputs, backend="triton", chunk_size=32), oracle(*inputs))


def test_custom_scale_and_static_decay():
    """scale=1 (RWKV's own) and an RWKV-5 static decay broadcast over T as an expanded (stride-0) view."""
    r, k, v, _, u, h0 = make_inputs(1, 20, 2, 16, 16)
    w = -torch.exp(torch.randn(2, 16, generator=torch.Generator().manual_seed(3))).to(DEVICE).expand(1, 20, 2, 16)
    o_ref, S_ref = naive_recurrent_rwkv6(
        *(x.double() for x in (r, k, v, w, u)), scale=1.0, initial_state=h0.double(), output_final_state=True
    )
    for op, kw in ((chunk_rwkv6, {"chunk_size": 16}), (fused_recurrent_rwkv6, {})):
        o, S = op(r, k, v, w, u, scale=1.0, initial_state=h0, output_final_state=True, backend="triton", **kw)
        check("o", o, o_ref)
        check("final_state", S, S_ref)


@pytest.mark.parametrize("with_h0", [False, True], ids=["h0-none", "h0"])
def test_varlen_equals_separate_runs(with_h0):
    """Packed sequences (one of them empty, one longer than a chunk) give the outputs, final states and
    gradients of separate runs; no chunk crosses a sequence boundary."""
    lengths = [13, 0, 35, 16]
    cu = torch.tensor([0, 13, 13, 48, 64], device=DEVICE)
    r, k, v, w, u, h0 = make_inputs(1, sum(lengths), 2, 16, 16, N=len(lengths))
    h0 = h0 if with_h0 else torch.zeros_like(h0)  # a zero initial state still gets its gradient
    inputs = [x.requires_grad_(True) for x in (r, k, v, w, u, h0)]
    got = run_with_grads(chunk_rwkv6, *inputs, backend="triton", chunk_size=16, cu_seqlens=cu)
    # the naive backend runs each sequence on its own (kernels.utils.run_varlen): the reference
    ref = oracle(*inputs, fn=chunk_rwkv6, backend="naive", cu_seqlens=cu)
    check_all(got, ref)
    if not with_h0:
        o, S = chunk_rwkv6(r, k, v, w, u, output_final_state=True, backend="triton", chunk_size=16, cu_seqlens=cu)
        check("o (no initial state)", o, ref[0])
        assert bool((S[1] == 0).all()), "the empty sequence must keep its (zero) state"


@pytest.mark.parametrize("decay", ["const-30", "const-120", "mixed", "burst"])
def test_strong_decay_is_finite_and_matches_naive(decay):
    """w = -30 per step: a chunk of 64 decays by exp(-1920), far below fp32 (exp(+1920) would overflow in
    any form that divides by a cumulative decay); "burst" puts a large decay early in each chunk and small
    ones after it (a large cumulative sum, then decays that must not be taken as differences of it)."""
    inputs = make_inputs(1, 80, 2, 16, 16, decay=decay, requires_grad=True)
    got = run_with_grads(chunk_rwkv6, *inputs, backend="triton", chunk_size=64)
    check_all(got, oracle(*inputs))


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=["bf16", "fp16"])
def test_low_precision_inputs_close_to_fp32(dtype):
    inputs = make_inputs(1, 40, 2, 16, 32, dtype, requires_grad=True)
    o, S, grads = run_with_grads(chunk_rwkv6, *inputs, backend="triton", chunk_size=32)
    o_ref, S_ref, grads_ref = oracle(*inputs)  # on the same rounded values
    assert o.dtype == dtype and S.dtype == torch.float32
    loose = {"rtol": 5e-2, "atol": 2e-2}
    check("o", o, o_ref, **loose)
    check("final_state", S, S_ref, **loose)
    for name, grad in grads.items():
        assert grad.dtype == dtype, f"d{name} has dtype {grad.dtype}"
        check(f"d{name}", grad, grads_ref[name], **loose)


# ----------------------------------------------------------------------------- fused recurrent (decode)


@pytest.mark.parametrize("T", [1, 3])
@pytest.mark.parametrize("K", [16, 24])
def test_fused_recurrent_matches_naive(T, K):
    r, k, v, w, u, h0 = make_inputs(2, T, 2, K, 32)
    o_ref, S_ref = naive_recurrent_rwkv6(
        *(x.double() for x in (r, k, v, w, u)), initial_state=h0.double(), output_final_state=True
    )
    o, S = fused_recurrent_rwkv6(r, k, v, w, u, initial_state=h0, output_final_state=True, backend="triton")
    assert o.dtype == torch.float32 and S.dtype == torch.float32
    check("o", o, o_ref)
    check("final_state", S, S_ref)
    assert fused_recurrent_rwkv6(r, k, v, w, u, backend="triton")[1] is None


def test_fused_recurrent_wide_key_and_packed():
    """K > 128 (two K tiles, partial outputs summed) and sequences packed with cu_seqlens."""
    cu = torch.tensor([0, 1, 4, 4, 6], device=DEVICE)
    r, k, v, w, u, h0 = make_inputs(1, 6, 1, 200, 16, N=4)
    o, S = fused_recurrent_rwkv6(
        r, k, v, w, u, initial_state=h0, output_final_state=True, backend="triton", cu_seqlens=cu
    )
    o_ref, S_ref = fused_recurrent_rwkv6(
        *(x.double() for x in (r, k, v, w, u)),
        initial_state=h0.double(),
        output_final_state=True,
        backend="naive",
        cu_seqlens=cu,
    )
    check("o", o, o_ref)
    check("final_state", S, S_ref)


def test_fused_recurrent_with_grad_runs_the_chunked_kernels():
    """The decode kernel is forward-only; with autograd recording the op runs the chunked Triton kernels,
    which have a backward."""
    inputs = make_inputs(1, 3, 2, 16, 16, requires_grad=True)
    check_all(run_with_grads(fused_recurrent_rwkv6, *inputs, backend="triton"), oracle(*inputs))


def test_prefill_then_decode_matches_parallel():
    T1, T = 35, 38
    r, k, v, w, u, _ = make_inputs(1, T, 2, 16, 16)
    o_full, _ = chunk_rwkv6(r, k, v, w, u, backend="triton", chunk_size=16)
    o, S = chunk_rwkv6(*(x[:, :T1] for x in (r, k, v, w)), u, output_final_state=True, backend="triton", chunk_size=16)
    outs = [o]
    for t in range(T1, T):
        o_t, S = fused_recurrent_rwkv6(
            *(x[:, t : t + 1] for x in (r, k, v, w)), u, initial_state=S, output_final_state=True, backend="triton"
        )
        outs.append(o_t)
    assert_close(torch.cat(outs, dim=1), o_full, rtol=1e-4, atol=1e-5, name="o")


# ----------------------------------------------------------------------------- errors and laziness


@pytest.mark.parametrize("op", [chunk_rwkv6, fused_recurrent_rwkv6], ids=["chunk", "fused_recurrent"])
def test_cpu_without_interpreter_raises(op, monkeypatch):
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    r, k, v, w, u, _ = (x.cpu() for x in make_inputs(1, 4, 1, 16, 16))
    with pytest.raises(RuntimeError, match=r"set TRITON_INTERPRET=1 to run the Triton kernels on CPU"):
        op(r, k, v, w, u, backend="triton")


def test_unsupported_chunk_size_and_dtype_raise():
    r, k, v, w, u, _ = make_inputs(1, 4, 1, 16, 16)
    with pytest.raises(ValueError, match=r"backend='triton' needs chunk_size in \(16, 32, 64\), got chunk_size=24"):
        chunk_rwkv6(r, k, v, w, u, backend="triton", chunk_size=24)
    with pytest.raises(ValueError, match=r"float64.*backend='torch'"):
        chunk_rwkv6(*(x.double() for x in (r, k, v, w, u)), backend="triton")


def test_import_kernels_never_imports_triton():
    code = (
        "import sys, torch, kernels, kernels.rwkv6\n"
        "x = torch.zeros(1, 4, 1, 16)\n"
        "kernels.chunk_rwkv6(x, x, x, x, torch.zeros(1, 16))\n"  # auto on CPU: the torch backend
        "assert 'triton' not in sys.modules, 'triton was imported'\n"
    )
    done = run_without_interpreter("-c", code, CUDA_VISIBLE_DEVICES="")
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-4000:]


# ----------------------------------------------------------------------------- compiled kernels (GPU only)


@GPU_ONLY
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
@pytest.mark.parametrize("varlen", [False, True], ids=["padded", "varlen"])
def test_realistic_sizes_match_torch_backend_on_gpu(dtype, varlen):
    """T = 1000 (not a multiple of 64), K = V = 64 (RWKV-6's head size) and 128 (two tiles), against the
    chunked torch backend in fp32; ``auto`` resolves to the Triton kernels on CUDA."""
    for K in (64, 128):
        B, T, H = (1, 1000, 4) if varlen else (2, 1000, 4)
        cu = torch.tensor([0, 300, 301, 1000], device=DEVICE) if varlen else None
        r, k, v, w, u, _ = make_inputs(B, T, H, K, K, dtype, requires_grad=True)
        h0 = torch.randn(3 if varlen else B, H, K, K, device=DEVICE, requires_grad=True)
        kwargs = {"cu_seqlens": cu} if varlen else {}
        fresh = [x.detach().float().requires_grad_(True) for x in (r, k, v, w, u, h0)]
        expected = run_with_grads(chunk_rwkv6, *fresh, backend="torch", **kwargs)
        actual = run_with_grads(chunk_rwkv6, r, k, v, w, u, h0, backend="auto", **kwargs)
        check_relative(actual, expected, 1e-3 if dtype == torch.float32 else 5e-2, prefix=f"K={K} ")
