"""Simple GLA Triton kernels against the naive oracle, on CPU through Triton's interpreter (TRITON_INTERPRET=1).

Every gate mode: none (linear attention), data-dependent ``g [B, T, H]``, constant ``g_gamma [H]``.
Sizes stay tiny; on a GPU the same tests run on CUDA tensors.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from kernels.simple_gla import chunk_simple_gla, fused_recurrent_simple_gla, naive_recurrent_simple_gla  # noqa: E402
from tests.helpers import assert_close  # noqa: E402
from tests.kernels import triton_helpers
from tests.kernels.triton_helpers import DEVICE, GPU_ONLY, check_low_precision, check_relative

pytestmark = pytest.mark.usefixtures("triton_interpreter")

FP32 = {"rtol": 1e-4, "atol": 1e-4}
GATES = ["none", "g", "gamma"]


# (B, T, H, K, V, chunk): T = 1, T not a multiple of C, K != V, K < 16 and V not a power of two, T > C = 64
CASES = [
    (1, 1, 1, 16, 16, 16),
    (2, 50, 2, 16, 32, 32),
    (1, 40, 1, 8, 40, 16),
    (1, 80, 2, 32, 16, 64),
]
CASE_IDS = [f"B{B}-T{T}-H{H}-K{K}-V{V}-C{C}" for B, T, H, K, V, C in CASES]


def make_inputs(B, T, H, K, V, gate="g", dtype=torch.float32, strong=False, seed=0, requires_grad=False, N=None):
    """q, k, v, a gate dict (``g`` or ``g_gamma`` or empty) and an initial state ``[N or B, H, K, V]``."""
    gen = torch.Generator().manual_seed(seed)
    q, k, v = (torch.randn(B, T, H, d, generator=gen) for d in (K, K, V))
    h0 = torch.randn(N or B, H, K, V, generator=gen)
    if gate == "g":
        g = torch.full((B, T, H), -20.0) if strong else F.logsigmoid(4 * torch.randn(B, T, H, generator=gen)) / 4
        gates = {"g": g}
    elif gate == "gamma":  # RetNet's per-head decays, or -20 per step
        gamma = torch.full((H,), -20.0) if strong else torch.log(1 - 2.0 ** (-5.0 - torch.arange(H)))
        gates = {"g_gamma": gamma}
    else:
        gates = {}
    q, k, v, h0 = (x.to(DEVICE, dtype).requires_grad_(requires_grad) for x in (q, k, v, h0))
    gates = {name: x.to(DEVICE, dtype).requires_grad_(requires_grad) for name, x in gates.items()}
    return q, k, v, gates, h0


def run_with_grads(fn, q, k, v, gates, h0, seed=1, **kwargs):
    """Forward, then backward of a random linear loss on (o, final state); returns o, S, grads by name."""
    o, S = fn(q, k, v, **gates, initial_state=h0, output_final_state=True, **kwargs)
    gen = torch.Generator().manual_seed(seed)
    do = torch.randn(o.shape, generator=gen).to(DEVICE, o.dtype)
    dS = torch.randn(S.shape, generator=gen).to(DEVICE, S.dtype)
    ((o * do).sum() + (S * dS).sum()).backward()
    named = {"q": q, "k": k, "v": v, "h0": h0, **gates}
    return o, S, {name: x.grad for name, x in named.items()}


def oracle(q, k, v, gates, h0, fn=naive_recurrent_simple_gla, **kwargs):
    """The reference on fp32 copies of the same values, with gradients."""
    fresh = [x.detach().float().requires_grad_(True) for x in (q, k, v, h0)]
    fresh_gates = {name: x.detach().float().requires_grad_(True) for name, x in gates.items()}
    return run_with_grads(fn, fresh[0], fresh[1], fresh[2], fresh_gates, fresh[3], **kwargs)


def check_grads(grads, grads_ref, tol):
    assert set(grads) == set(grads_ref)
    triton_helpers.check_grads(grads, grads_ref, tol)


# ----------------------------------------------------------------------------- chunked kernels vs naive


@pytest.mark.parametrize("with_h0", [False, True], ids=["h0-none", "h0"])
@pytest.mark.parametrize("gate", GATES)
@pytest.mark.parametrize(("B", "T", "H", "K", "V", "C"), CASES, ids=CASE_IDS)
def test_forward_matches_naive(B, T, H, K, V, C, gate, with_h0):
    q, k, v, gates, h0 = make_inputs(B, T, H, K, V, gate)
    h0 = h0 if with_h0 else None
    o_ref, S_ref = naive_recurrent_simple_gla(q, k, v, **gates, initial_state=h0, output_final_state=True)
    o, S = chunk_simple_gla(q, k, v, **gates, initial_state=h0, output_final_state=True, backend="triton", chunk_size=C)
    assert o.dtype == torch.float32 and o.shape == (B, T, H, V)
    assert S.dtype == torch.float32 and S.shape == (B, H, K, V)
    assert_close(o, o_ref, **FP32, name="o")
    assert_close(S, S_ref, **FP32, name="final_state")


@pytest.mark.parametrize("gate", GATES)
@pytest.mark.parametrize(("B", "T", "H", "K", "V", "C"), CASES[1:], ids=CASE_IDS[1:])
def test_backward_matches_naive(B, T, H, K, V, C, gate):
    inputs = make_inputs(B, T, H, K, V, gate, requires_grad=True)
    o_ref, S_ref, grads_ref = oracle(*inputs)
    o, S, grads = run_with_grads(chunk_simple_gla, *inputs, backend="triton", chunk_size=C)
    assert_close(o, o_ref, **FP32, name="o")
    assert_close(S, S_ref, **FP32, name="final_state")
    check_grads(grads, grads_ref, FP32)


def test_gate_without_grad():
    """A gate that needs no gradient skips the dg kernels; the other gradients are unchanged."""
    q, k, v, gates, h0 = make_inputs(1, 37, 2, 16, 16, "g", requires_grad=True)
    gates = {"g": gates["g"].detach()}
    _, _, grads_ref = oracle(q, k, v, gates, h0)
    _, _, grads = run_with_grads(chunk_simple_gla, q, k, v, gates, h0, backend="triton", chunk_size=16)
    assert grads.pop("g") is None
    grads_ref.pop("g")
    check_grads(grads, grads_ref, FP32)


def test_several_tiles_per_head_dim(monkeypatch):
    from kernels.simple_gla.triton import chunk as triton_chunk

    monkeypatch.setattr(triton_chunk, "MAX_TILE", 16)
    inputs = make_inputs(1, 40, 1, 40, 48, "g", requires_grad=True)
    o_ref, S_ref, grads_ref = oracle(*inputs)
    o, S, grads = run_with_grads(chunk_simple_gla, *inputs, backend="triton", chunk_size=32)
    assert_close(o, o_ref, **FP32, name="o")
    assert_close(S, S_ref, **FP32, name="final_state")
    check_grads(grads, grads_ref, FP32)


@pytest.mark.parametrize("gate", ["g", "gamma"])
def test_varlen_equals_separate_runs(gate):
    """Packed sequences (one of them empty) give the outputs, final states and gradients of separate runs."""
    cu = torch.tensor([0, 13, 13, 45, 64], device=DEVICE)
    inputs = make_inputs(1, 64, 2, 16, 16, gate, requires_grad=True, N=4)
    # the naive backend runs each sequence on its own (kernels.utils.run_varlen): the reference
    o_ref, S_ref, grads_ref = oracle(*inputs, fn=chunk_simple_gla, backend="naive", cu_seqlens=cu)
    o, S, grads = run_with_grads(chunk_simple_gla, *inputs, backend="triton", chunk_size=16, cu_seqlens=cu)
    assert_close(o, o_ref, **FP32, name="o")
    assert_close(S, S_ref, **FP32, name="final_state")
    check_grads(grads, grads_ref, FP32)


@pytest.mark.parametrize("gate", ["g", "gamma"])
def test_strong_decay_is_finite_and_matches_naive(gate):
    inputs = make_inputs(1, 80, 2, 16, 16, gate, strong=True, requires_grad=True)
    o_ref, S_ref, grads_ref = oracle(*inputs)
    o, S, grads = run_with_grads(chunk_simple_gla, *inputs, backend="triton", chunk_size=64)
    assert bool(o.isfinite().all()) and bool(S.isfinite().all())
    tol = {"rtol": 1e-3, "atol": 1e-4}
    assert_close(o, o_ref, **tol, name="o")
    assert_close(S, S_ref, **tol, name="final_state")
    if gate == "gamma":
        # dg_gamma is the sum of B*T per-token gate gradients, each an O(1) difference q.dq - k.dk that cancels
        # to ~e^-20 here, so rounding errors add up like a random walk: the first compiled run on an H100 gave
        # |err| 3.8e-4 against the per-token atol 1e-4 (the per-token gradients of the "g" case pass at 1e-4)
        gamma_atol = tol["atol"] * (inputs[0].shape[0] * inputs[0].shape[1]) ** 0.5
        assert_close(grads.pop("g_gamma"), grads_ref.pop("g_gamma"), rtol=tol["rtol"], atol=gamma_atol, name="dg_gamma")
    check_grads(grads, grads_ref, tol)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=["bf16", "fp16"])
def test_low_precision_inputs_close_to_fp32(dtype):
    inputs = make_inputs(1, 40, 2, 16, 32, "g", dtype, requires_grad=True)
    expected = oracle(*inputs)  # fp32 oracle on the same rounded values
    check_low_precision(run_with_grads(chunk_simple_gla, *inputs, backend="triton", chunk_size=32), expected, dtype)


# ----------------------------------------------------------------------------- fused recurrent (decode)


@pytest.mark.parametrize("gate", GATES)
@pytest.mark.parametrize("T", [1, 3])
def test_fused_recurrent_matches_naive(T, gate):
    q, k, v, gates, h0 = make_inputs(2, T, 2, 16, 32, gate)
    o_ref, S_ref = naive_recurrent_simple_gla(q, k, v, **gates, initial_state=h0, output_final_state=True)
    with torch.no_grad():
        o, S = fused_recurrent_simple_gla(q, k, v, **gates, initial_state=h0, output_final_state=True, backend="triton")
    assert_close(o, o_ref, **FP32, name="o")
    assert_close(S, S_ref, **FP32, name="final_state")


def test_fused_recurrent_varlen():
    cu = torch.tensor([0, 2, 2, 5], device=DEVICE)
    q, k, v, gates, h0 = make_inputs(1, 5, 2, 16, 16, "g", N=3)
    o_ref, S_ref = fused_recurrent_simple_gla(
        q, k, v, **gates, initial_state=h0, output_final_state=True, backend="naive", cu_seqlens=cu
    )
    with torch.no_grad():
        o, S = fused_recurrent_simple_gla(
            q, k, v, **gates, initial_state=h0, output_final_state=True, backend="triton", cu_seqlens=cu
        )
    assert_close(o, o_ref, **FP32, name="o")
    assert_close(S, S_ref, **FP32, name="final_state")


@pytest.mark.parametrize("gate", ["g", "gamma"])
def test_fused_recurrent_with_grad_matches_naive(gate):
    """With autograd recording, the decode op runs the chunked kernels, which have a backward."""
    inputs = make_inputs(1, 3, 2, 16, 16, gate, requires_grad=True)
    o_ref, S_ref, grads_ref = oracle(*inputs)
    o, S, grads = run_with_grads(fused_recurrent_simple_gla, *inputs, backend="triton")
    assert_close(o, o_ref, **FP32, name="o")
    check_grads(grads, grads_ref, FP32)


@pytest.mark.parametrize("gate", GATES)
def test_prefill_then_decode_matches_parallel(gate):
    T1, T = 35, 37
    q, k, v, gates, _ = make_inputs(1, T, 2, 16, 16, gate)
    o_full, _ = chunk_simple_gla(q, k, v, **gates, backend="triton", chunk_size=16)
    head = {name: (x[:, :T1] if name == "g" else x) for name, x in gates.items()}
    o, S = chunk_simple_gla(
        q[:, :T1], k[:, :T1], v[:, :T1], **head, output_final_state=True, backend="triton", chunk_size=16
    )
    outs = [o]
    with torch.no_grad():
        for t in range(T1, T):
            step = {name: (x[:, t : t + 1] if name == "g" else x) for name, x in gates.items()}
            o_t, S = fused_recurrent_simple_gla(
                *(x[:, t : t + 1] for x in (q, k, v)),
                **step,
                initial_state=S,
                output_final_state=True,
                backend="triton",
            )
            outs.append(o_t)
    assert_close(torch.cat(outs, dim=1), o_full, **FP32, name="o")


# ----------------------------------------------------------------------------- errors


@pytest.mark.parametrize("op", [chunk_simple_gla, fused_recurrent_simple_gla], ids=["chunk", "fused_recurrent"])
def test_cpu_without_interpreter_raises(op, monkeypatch):
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    q, k, v, gates, _ = make_inputs(1, 4, 1, 16, 16, "g")
    q, k, v = (x.cpu() for x in (q, k, v))
    with pytest.raises(
        RuntimeError, match=r"set TRITON_INTERPRET=1 to run the Triton kernels on CPU \(slow; for tests\)"
    ):
        op(q, k, v, g=gates["g"].cpu(), backend="triton")


def test_unsupported_chunk_size_and_dtype_raise():
    q, k, v, gates, _ = make_inputs(1, 4, 1, 16, 16, "g")
    with pytest.raises(ValueError, match=r"backend='triton' needs chunk_size in \(16, 32, 64\), got chunk_size=128"):
        chunk_simple_gla(q, k, v, **gates, backend="triton", chunk_size=128)
    with pytest.raises(ValueError, match=r"float64.*backend='torch'"):
        chunk_simple_gla(q.double(), k.double(), v.double(), g=gates["g"].double(), backend="triton")


# ----------------------------------------------------------------------------- compiled kernels (GPU only)


@GPU_ONLY
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
@pytest.mark.parametrize("gate", GATES)
def test_realistic_sizes_match_torch_backend_on_gpu(gate, dtype):
    """T = 1000 (not a multiple of 64), K = V = 128 (two tiles), against the chunked torch backend in fp32."""
    inputs = make_inputs(2, 1000, 4, 128, 128, gate, dtype, requires_grad=True)
    expected = oracle(*inputs, fn=chunk_simple_gla, backend="torch")
    actual = run_with_grads(chunk_simple_gla, *inputs, backend="triton")
    check_relative(actual, expected, 1e-3 if dtype == torch.float32 else 3e-2)
