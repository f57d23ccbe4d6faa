"""GLA Triton kernels against the naive oracle, run on CPU through Triton's interpreter (TRITON_INTERPRET=1).

Sizes stay tiny: the interpreter executes every program of every kernel in Python. The same tests run
unchanged on a GPU (the inputs are created on ``DEVICE``: CUDA when available, else CPU).
"""

from __future__ import annotations

import importlib.util

import pytest
import torch
import torch.nn.functional as F

from kernels import backend as kbackend  # noqa: E402
from kernels.gla import chunk_gla, fused_recurrent_gla, naive_recurrent_gla  # noqa: E402
from tests.helpers import assert_close  # noqa: E402
from tests.kernels.triton_helpers import (
    DEVICE,
    GPU_ONLY,
    check_grads,
    check_low_precision,
    check_relative,
    run_without_interpreter,
)

pytestmark = pytest.mark.usefixtures("triton_interpreter")

FP32 = {"rtol": 1e-4, "atol": 1e-4}  # dg is a reverse cumsum of q dq - k dk: fp32 cancellation ~1e-6 * |q dq|


# (B, T, H, K, V, chunk): T = 1, T not a multiple of C, T == C, K != V, K < 16 and V not a power of two
CASES = [
    (1, 1, 1, 16, 16, 16),
    (2, 50, 2, 16, 32, 32),
    (1, 64, 2, 32, 16, 64),
    (1, 40, 1, 8, 40, 16),
]
CASE_IDS = [f"B{B}-T{T}-H{H}-K{K}-V{V}-C{C}" for B, T, H, K, V, C in CASES]


def make_inputs(B, T, H, K, V, dtype=torch.float32, gate="random", seed=0, requires_grad=False):
    """q, k, v, g ``[B, T, H, *]`` and an initial state ``[B, H, K, V]`` on DEVICE."""
    gen = torch.Generator().manual_seed(seed)
    q, k, v = (torch.randn(B, T, H, d, generator=gen) for d in (K, K, V))
    h0 = torch.randn(B, H, K, V, generator=gen)
    if gate == "random":
        g = F.logsigmoid(4 * torch.randn(B, T, H, K, generator=gen)) / 4
    elif gate == "const-20":
        g = torch.full((B, T, H, K), -20.0)
    elif gate == "mixed":  # half the channels never decay, the other half decay at -20 per step
        g = torch.zeros(B, T, H, K)
        g[..., ::2] = -20.0
    else:
        raise ValueError(gate)
    return tuple(x.to(DEVICE, dtype).requires_grad_(requires_grad) for x in (q, k, v, g, h0))


def run_with_grads(fn, q, k, v, g, h0, seed=1, final_state_grad=True, **kwargs):
    """Forward, then backward of a random linear loss on o (and the final state); returns o, S, grads."""
    o, S = fn(q, k, v, g, initial_state=h0, output_final_state=True, **kwargs)
    gen = torch.Generator().manual_seed(seed)
    do = torch.randn(o.shape, generator=gen).to(DEVICE, o.dtype)
    dS = torch.randn(S.shape, generator=gen).to(DEVICE, S.dtype)
    loss = (o * do).sum() + ((S * dS).sum() if final_state_grad else 0)
    loss.backward()
    grads = {name: x.grad for name, x in zip(["q", "k", "v", "g", "h0"], (q, k, v, g, h0), strict=True)}
    return o, S, grads


def oracle(q, k, v, g, h0, fn=naive_recurrent_gla, **kwargs):
    """The naive loop on fp32 copies of the same values, with gradients."""
    fresh = [x.detach().float().requires_grad_(True) for x in (q, k, v, g, h0)]
    return run_with_grads(fn, *fresh, **kwargs)


# ----------------------------------------------------------------------------- chunked kernels vs naive


@pytest.mark.parametrize("with_h0", [False, True], ids=["h0-none", "h0"])
@pytest.mark.parametrize(("B", "T", "H", "K", "V", "C"), CASES, ids=CASE_IDS)
def test_forward_matches_naive(B, T, H, K, V, C, with_h0):
    q, k, v, g, h0 = make_inputs(B, T, H, K, V)
    h0 = h0 if with_h0 else None
    o_ref, S_ref = naive_recurrent_gla(q, k, v, g, initial_state=h0, output_final_state=True)
    o, S = chunk_gla(q, k, v, g, initial_state=h0, output_final_state=True, backend="triton", chunk_size=C)
    assert o.dtype == torch.float32 and o.shape == (B, T, H, V)
    assert S.dtype == torch.float32 and S.shape == (B, H, K, V)
    assert_close(o, o_ref, **FP32, name="o")
    assert_close(S, S_ref, **FP32, name="final_state")
    assert chunk_gla(q, k, v, g, initial_state=h0, backend="triton", chunk_size=C)[1] is None


@pytest.mark.parametrize(("B", "T", "H", "K", "V", "C"), CASES[1:], ids=CASE_IDS[1:])
def test_backward_matches_naive(B, T, H, K, V, C):
    inputs = make_inputs(B, T, H, K, V, requires_grad=True)
    o_ref, S_ref, grads_ref = oracle(*inputs)
    o, S, grads = run_with_grads(chunk_gla, *inputs, backend="triton", chunk_size=C)
    assert_close(o, o_ref, **FP32, name="o")
    assert_close(S, S_ref, **FP32, name="final_state")
    check_grads(grads, grads_ref, FP32)


def test_backward_without_final_state_grad():
    """Only o feeds the loss: the final-state gradient is None inside the backward."""
    inputs = make_inputs(1, 37, 2, 16, 16, requires_grad=True)
    _, _, grads_ref = oracle(*inputs, final_state_grad=False)
    _, _, grads = run_with_grads(chunk_gla, *inputs, final_state_grad=False, backend="triton", chunk_size=16)
    check_grads(grads, grads_ref, FP32)


def test_gate_without_grad():
    """A gate that needs no gradient (e.g. a fixed decay) skips the dg kernel; the other gradients are unchanged."""
    q, k, v, g, h0 = make_inputs(1, 37, 2, 16, 16, requires_grad=True)
    g = g.detach()
    _, _, grads_ref = oracle(q, k, v, g, h0)
    _, _, grads = run_with_grads(chunk_gla, q, k, v, g, h0, backend="triton", chunk_size=16)
    assert grads.pop("g") is None
    grads_ref.pop("g")
    check_grads(grads, grads_ref, FP32)


def test_several_tiles_per_head_dim(monkeypatch):
    """K and V wider than one tile: the kernels loop over K tiles and launch one program per V tile."""
    from kernels.gla.triton import chunk as triton_chunk

    monkeypatch.setattr(triton_chunk, "MAX_TILE", 16)
    inputs = make_inputs(1, 40, 1, 40, 48, requires_grad=True)
    o_ref, S_ref, grads_ref = oracle(*inputs)
    o, S, grads = run_with_grads(chunk_gla, *inputs, backend="triton", chunk_size=32)
    assert_close(o, o_ref, **FP32, name="o")
    assert_close(S, S_ref, **FP32, name="final_state")
    check_grads(grads, grads_ref, FP32)


def test_custom_scale():
    q, k, v, g, _ = make_inputs(1, 20, 2, 16, 16)
    o_ref, _ = naive_recurrent_gla(q, k, v, g, scale=0.3)
    assert_close(chunk_gla(q, k, v, g, scale=0.3, backend="triton", chunk_size=16)[0], o_ref, **FP32, name="o")
    assert_close(fused_recurrent_gla(q, k, v, g, scale=0.3, backend="triton")[0], o_ref, **FP32, name="o")


def test_varlen_equals_separate_runs():
    """Packed sequences (one of them empty) give the outputs, final states and gradients of separate runs."""
    cu = torch.tensor([0, 13, 13, 45, 64], device=DEVICE)
    q, k, v, g, _ = make_inputs(1, 64, 2, 16, 16)
    h0 = torch.randn(4, 2, 16, 16, generator=torch.Generator().manual_seed(2)).to(DEVICE)
    inputs = [x.requires_grad_(True) for x in (q, k, v, g, h0)]
    # the naive backend runs each sequence on its own (kernels.utils.run_varlen): the reference
    o_ref, S_ref, grads_ref = oracle(*inputs, fn=chunk_gla, backend="naive", cu_seqlens=cu)
    o, S, grads = run_with_grads(chunk_gla, *inputs, backend="triton", chunk_size=16, cu_seqlens=cu)
    assert_close(o, o_ref, **FP32, name="o")
    assert_close(S, S_ref, **FP32, name="final_state")
    check_grads(grads, grads_ref, FP32)


@pytest.mark.parametrize("gate", ["const-20", "mixed"])
def test_strong_decay_is_finite_and_matches_naive(gate):
    inputs = make_inputs(1, 80, 2, 16, 16, gate=gate, requires_grad=True)
    o_ref, S_ref, grads_ref = oracle(*inputs)
    o, S, grads = run_with_grads(chunk_gla, *inputs, backend="triton", chunk_size=64)
    assert bool(o.isfinite().all()) and bool(S.isfinite().all())
    tol = {"rtol": 1e-3, "atol": 1e-4}
    assert_close(o, o_ref, **tol, name="o")
    assert_close(S, S_ref, **tol, name="final_state")
    check_grads(grads, grads_ref, tol)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=["bf16", "fp16"])
def test_low_precision_inputs_close_to_fp32(dtype):
    inputs = make_inputs(1, 40, 2, 16, 32, dtype, requires_grad=True)
    expected = oracle(*inputs)  # fp32 oracle on the same rounded values
    check_low_precision(run_with_grads(chunk_gla, *inputs, backend="triton", chunk_size=32), expected, dtype)


# ----------------------------------------------------------------------------- fused recurrent (decode)


@pytest.mark.parametrize("T", [1, 3])
@pytest.mark.parametrize("K", [16, 24])
def test_fused_recurrent_matches_naive(T, K):
    q, k, v, g, h0 = make_inputs(2, T, 2, K, 32)
    o_ref, S_ref = naive_recurrent_gla(q, k, v, g, initial_state=h0, output_final_state=True)
    with torch.no_grad():
        o, S = fused_recurrent_gla(q, k, v, g, initial_state=h0, output_final_state=True, backend="triton")
    assert_close(o, o_ref, **FP32, name="o")
    assert_close(S, S_ref, **FP32, name="final_state")
    o, S = fused_recurrent_gla(q, k, v, g, backend="triton")
    assert S is None


def test_fused_recurrent_wide_key_uses_several_tiles():
    q, k, v, g, h0 = make_inputs(1, 2, 1, 300, 16)  # K > 256: two K tiles, partial outputs summed
    o_ref, S_ref = naive_recurrent_gla(q, k, v, g, initial_state=h0, output_final_state=True)
    o, S = fused_recurrent_gla(q, k, v, g, initial_state=h0, output_final_state=True, backend="triton")
    assert_close(o, o_ref, **FP32, name="o")
    assert_close(S, S_ref, **FP32, name="final_state")


def test_fused_recurrent_with_grad_matches_naive():
    """With autograd recording, the decode op runs the chunked kernels, which have a backward."""
    inputs = make_inputs(1, 3, 2, 16, 16, requires_grad=True)
    o_ref, S_ref, grads_ref = oracle(*inputs)
    o, S, grads = run_with_grads(fused_recurrent_gla, *inputs, backend="triton")
    assert_close(o, o_ref, **FP32, name="o")
    check_grads(grads, grads_ref, FP32)


def test_prefill_then_decode_matches_parallel():
    T1, T = 35, 38
    q, k, v, g, _ = make_inputs(1, T, 2, 16, 16)
    o_full, _ = chunk_gla(q, k, v, g, backend="triton", chunk_size=16)
    o, S = chunk_gla(
        q[:, :T1], k[:, :T1], v[:, :T1], g[:, :T1], output_final_state=True, backend="triton", chunk_size=16
    )
    outs = [o]
    with torch.no_grad():
        for t in range(T1, T):
            o_t, S = fused_recurrent_gla(
                *(x[:, t : t + 1] for x in (q, k, v, g)), initial_state=S, output_final_state=True, backend="triton"
            )
            outs.append(o_t)
    assert_close(torch.cat(outs, dim=1), o_full, **FP32, name="o")


# ----------------------------------------------------------------------------- errors


@pytest.mark.parametrize("op", [chunk_gla, fused_recurrent_gla], ids=["chunk", "fused_recurrent"])
def test_cpu_without_interpreter_raises(op, monkeypatch):
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    q, k, v, g, _ = make_inputs(1, 4, 1, 16, 16)
    q, k, v, g = (x.cpu() for x in (q, k, v, g))
    with pytest.raises(
        RuntimeError, match=r"set TRITON_INTERPRET=1 to run the Triton kernels on CPU \(slow; for tests\)"
    ):
        op(q, k, v, g, backend="triton")


def test_cpu_without_interpreter_raises_in_a_fresh_process():
    code = (
        "import torch, kernels\n"
        "x = torch.zeros(1, 4, 1, 16)\n"
        "try:\n"
        "    kernels.chunk_gla(x, x, x, x, backend='triton')\n"
        "except RuntimeError as e:\n"
        "    assert 'set TRITON_INTERPRET=1' in str(e), e\n"
        "else:\n"
        "    raise SystemExit('no error')\n"
    )
    done = run_without_interpreter("-c", code, CUDA_VISIBLE_DEVICES="")
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-4000:]


def test_missing_triton_raises_with_install_hint(monkeypatch):
    find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "triton" else find_spec(name, *a))
    q, k, v, g, _ = make_inputs(1, 4, 1, 16, 16)
    with pytest.raises(RuntimeError, match=r"pip install triton"):
        chunk_gla(q, k, v, g, backend="triton")
    with pytest.raises(RuntimeError, match=r"pip install triton"):
        kbackend.check_triton(q)


def test_unsupported_chunk_size_and_dtype_raise():
    q, k, v, g, _ = make_inputs(1, 4, 1, 16, 16)
    with pytest.raises(ValueError, match=r"backend='triton' needs chunk_size in \(16, 32, 64\), got chunk_size=24"):
        chunk_gla(q, k, v, g, backend="triton", chunk_size=24)
    with pytest.raises(ValueError, match=r"float64.*backend='torch'"):
        chunk_gla(*(x.double() for x in (q, k, v, g)), backend="triton")


# ----------------------------------------------------------------------------- compiled kernels (GPU only)


@GPU_ONLY
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
@pytest.mark.parametrize("varlen", [False, True], ids=["padded", "varlen"])
def test_realistic_sizes_match_torch_backend_on_gpu(dtype, varlen):
    """T = 1000 (not a multiple of 64), K = V = 128 (two tiles), against the chunked torch backend in fp32."""
    B, T, H, K, V = (1, 1000, 4, 128, 128) if varlen else (2, 1000, 4, 128, 128)
    cu = torch.tensor([0, 300, 301, 1000], device=DEVICE) if varlen else None
    q, k, v, g, _ = make_inputs(B, T, H, K, V, dtype, requires_grad=True)
    h0 = torch.randn(3 if varlen else B, H, K, V, device=DEVICE, requires_grad=True)
    kwargs = {"cu_seqlens": cu} if varlen else {}
    expected = oracle(q, k, v, g, h0, fn=chunk_gla, backend="torch", **kwargs)
    actual = run_with_grads(chunk_gla, q, k, v, g, h0, backend="triton", **kwargs)
    check_relative(actual, expected, 1e-3 if dtype == torch.float32 else 3e-2)
