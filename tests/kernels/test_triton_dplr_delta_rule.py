"""DPLR delta rule (and RWKV-7) Triton kernels against the naive oracle, on CPU through Triton's interpreter.

Sizes stay tiny: the interpreter executes every program of every kernel in Python. The same tests run unchanged on
a GPU (the inputs are created on ``DEVICE``: CUDA when available, else CPU with ``TRITON_INTERPRET=1``). The
low-rank term has RWKV-7's shape, as the mixers feed it: ``a = -kk``, ``b = kk * a_gate`` with ``kk`` unit rows and
``a_gate`` in (0, 1) per channel; the oracle runs in fp64 on the same (rounded) values.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from kernels import backend as kbackend
from kernels.delta_rule import naive_recurrent_gated_delta_rule
from kernels.dplr_delta_rule import (
    chunk_dplr_delta_rule,
    fused_recurrent_dplr_delta_rule,
    naive_recurrent_dplr_delta_rule,
)
from kernels.gla import naive_recurrent_gla
from kernels.rwkv7 import chunk_rwkv7, fused_recurrent_rwkv7
from tests.helpers import assert_close
from tests.kernels import triton_helpers
from tests.kernels.triton_helpers import (
    DEVICE,
    GPU_ONLY,
    assert_compiles_for_sm90,
    check,
    check_low_precision,
    check_relative,
    fp64_copies,
    prefill_then_decode,
)

pytestmark = pytest.mark.usefixtures("triton_interpreter")

FP32 = {"rtol": 1e-4, "atol": 1e-4}
NAMES = ["q", "k", "v", "a", "b", "gk", "h0"]


# (B, T, H, K, V, chunk): T = 1, T not a multiple of C, T == C, K != V, K < 16 and V not a power of two
CASES = [
    (1, 1, 1, 16, 16, 16),
    (2, 50, 1, 16, 32, 32),
    (1, 64, 2, 32, 16, 64),
    (1, 40, 1, 8, 40, 16),
]
CASE_IDS = [f"B{B}-T{T}-H{H}-K{K}-V{V}-C{C}" for B, T, H, K, V, C in CASES]


def make_inputs(B, T, H, K, V, dtype=torch.float32, gate="random", seed=0, N=None, requires_grad=False):
    """Dict of q, k, v, a, b, gk ``[B, T, H, *]`` and h0 ``[N or B, H, K, V]`` on DEVICE."""
    gen = torch.Generator().manual_seed(seed)

    def rand(*shape):
        return torch.randn(*shape, generator=gen)

    kk = F.normalize(rand(B, T, H, K), dim=-1)
    x = {"q": rand(B, T, H, K), "k": 0.5 * rand(B, T, H, K), "v": rand(B, T, H, V), "a": -kk}
    x["b"] = kk * rand(B, T, H, K).sigmoid()
    if gate == "random":  # from ~0 to ~-6 per step and channel
        x["gk"] = F.logsigmoid(2 * rand(B, T, H, K))
    elif gate == "const-30":
        x["gk"] = torch.full((B, T, H, K), -30.0)
    elif gate == "mixed":  # every other token wipes the memory (exp(-30)), the rest keep it (gk = 0)
        x["gk"] = torch.zeros(B, T, H, K)
        x["gk"][:, ::2] = -30.0
    else:
        raise ValueError(gate)
    x["h0"] = rand(N or B, H, K, V)
    return {n: t.to(DEVICE, dtype).requires_grad_(requires_grad) for n, t in x.items()}


def args(x: dict) -> tuple:
    return x["q"], x["k"], x["v"], x["a"], x["b"], x["gk"]


def run_with_grads(fn, x, **kwargs):
    """Forward with final state, backward of a random linear loss on o (and the final state); o, S, grads."""
    return triton_helpers.run_with_grads(fn, x, args, NAMES, **kwargs)


def oracle(x, fn=naive_recurrent_dplr_delta_rule, **kwargs):
    """The naive loop (or ``fn``) on fp64 copies of the same values, with gradients."""
    return run_with_grads(fn, fp64_copies(x), **kwargs)


# ----------------------------------------------------------------------------- chunked kernels vs naive


@pytest.mark.parametrize("with_h0", [False, True], ids=["h0-none", "h0"])
@pytest.mark.parametrize(("B", "T", "H", "K", "V", "C"), CASES, ids=CASE_IDS)
def test_forward_matches_naive(B, T, H, K, V, C, with_h0):
    x = make_inputs(B, T, H, K, V)
    h0 = x["h0"] if with_h0 else None
    ref = {n: t.double() for n, t in x.items()}
    o_ref, S_ref = naive_recurrent_dplr_delta_rule(
        *args(ref), initial_state=None if h0 is None else ref["h0"], output_final_state=True
    )
    o, S = chunk_dplr_delta_rule(*args(x), initial_state=h0, output_final_state=True, backend="triton", chunk_size=C)
    assert o.dtype == torch.float32 and o.shape == (B, T, H, V)
    assert S.dtype == torch.float32 and S.shape == (B, H, K, V)
    assert_close(o, o_ref, **FP32, name="o")
    assert_close(S, S_ref, **FP32, name="final_state")
    assert chunk_dplr_delta_rule(*args(x), initial_state=h0, backend="triton", chunk_size=C)[1] is None


@pytest.mark.parametrize(("B", "T", "H", "K", "V", "C"), CASES[1:], ids=CASE_IDS[1:])
def test_backward_matches_naive(B, T, H, K, V, C):
    x = make_inputs(B, T, H, K, V, requires_grad=True)
    check(run_with_grads(chunk_dplr_delta_rule, x, backend="triton", chunk_size=C), oracle(x), FP32)


def test_backward_without_final_state_grad_or_decay_grad():
    """Only o feeds the loss (the final-state gradient is None inside the backward), and a decay that needs no
    gradient skips dgk; the other gradients hold."""
    x = make_inputs(1, 37, 2, 16, 16, requires_grad=True)
    x["gk"] = x["gk"].detach()
    expected = oracle(x, final_state_grad=False)
    actual = run_with_grads(chunk_dplr_delta_rule, x, final_state_grad=False, backend="triton", chunk_size=16)
    assert actual[2]["gk"] is None
    check(actual, expected, FP32, names=[n for n in NAMES if n != "gk"])


def test_several_tiles_per_head_dim(monkeypatch):
    """K and V wider than one tile: the chunk kernels loop over K / V tiles, the state kernels launch V tiles."""
    from kernels.dplr_delta_rule.triton import chunk as triton_chunk

    monkeypatch.setattr(triton_chunk, "MAX_TILE", 16)
    x = make_inputs(1, 40, 1, 40, 48, requires_grad=True)
    check(run_with_grads(chunk_dplr_delta_rule, x, backend="triton", chunk_size=32), oracle(x), FP32)


def test_custom_scale():
    x = make_inputs(1, 20, 2, 16, 16)
    o_ref, _ = naive_recurrent_dplr_delta_rule(*args({n: t.double() for n, t in x.items()}), scale=0.3)
    o_chunk, _ = chunk_dplr_delta_rule(*args(x), scale=0.3, backend="triton", chunk_size=16)
    assert_close(o_chunk, o_ref, **FP32, name="o")
    assert_close(fused_recurrent_dplr_delta_rule(*args(x), scale=0.3, backend="triton")[0], o_ref, **FP32, name="o")


def test_varlen_equals_separate_runs():
    """Packed sequences (one of them empty) give the outputs, final states and gradients of separate runs."""
    cu = torch.tensor([0, 13, 13, 45, 64], device=DEVICE)
    x = make_inputs(1, 64, 2, 16, 16, N=4, requires_grad=True)
    # the naive backend runs each sequence on its own (kernels.utils.run_varlen): the reference
    expected = oracle(x, fn=chunk_dplr_delta_rule, backend="naive", cu_seqlens=cu)
    actual = run_with_grads(chunk_dplr_delta_rule, x, backend="triton", chunk_size=16, cu_seqlens=cu)
    check(actual, expected, FP32)
    assert_close(actual[1][1], x["h0"][1], name="final_state of the empty sequence")


@pytest.mark.parametrize("gate", ["const-30", "mixed"])
def test_strong_decay_is_finite_and_matches_naive(gate):
    x = make_inputs(1, 80, 2, 16, 16, gate=gate, requires_grad=True)
    o, S, grads = actual = run_with_grads(chunk_dplr_delta_rule, x, backend="triton", chunk_size=64)
    assert all(bool(t.isfinite().all()) for t in (o, S, *grads.values())), "non-finite output, state or gradient"
    check(actual, oracle(x), {"rtol": 1e-3, "atol": 1e-4})


def test_no_low_rank_term_is_gla():
    x = make_inputs(1, 40, 2, 16, 16)
    zero = torch.zeros_like(x["a"])
    o, S = chunk_dplr_delta_rule(
        x["q"], x["k"], x["v"], zero, zero, x["gk"], initial_state=x["h0"], output_final_state=True, backend="triton"
    )
    ref = {n: t.double() for n, t in x.items()}
    o_ref, S_ref = naive_recurrent_gla(
        ref["q"], ref["k"], ref["v"], ref["gk"], initial_state=ref["h0"], output_final_state=True
    )
    assert_close(o, o_ref, **FP32, name="o")
    assert_close(S, S_ref, **FP32, name="final_state")


def test_a_rank_one_erase_with_a_scalar_decay_is_the_gated_delta_rule():
    """``exp(g) (I - beta k k^T) S + beta k v^T`` is the DPLR rule with ``a = -beta k``, ``b = exp(g) k`` and keys
    ``beta k``: a low-rank term of another shape than RWKV-7's."""
    x = make_inputs(1, 40, 2, 16, 16)
    k = F.normalize(x["k"], dim=-1)
    beta, g = x["b"][..., 0].sigmoid(), x["gk"][..., 0]  # (B, T, H)
    o, S = chunk_dplr_delta_rule(
        x["q"],
        beta[..., None] * k,
        x["v"],
        -beta[..., None] * k,
        g.exp()[..., None] * k,
        g[..., None].expand_as(k).contiguous(),
        initial_state=x["h0"],
        output_final_state=True,
        backend="triton",
        chunk_size=32,
    )
    o_ref, S_ref = naive_recurrent_gated_delta_rule(
        *(t.double() for t in (x["q"], k, x["v"], g, beta)), initial_state=x["h0"].double(), output_final_state=True
    )
    assert_close(o, o_ref, **FP32, name="o")
    assert_close(S, S_ref, **FP32, name="final_state")


def test_rwkv7_runs_on_the_triton_backend():
    """RWKV-7's ops pass through ``chunk_dplr_delta_rule``: its names (r, w), no query scale, gradients included."""
    assert "triton" in kbackend.available_backends("rwkv7")
    x = make_inputs(1, 37, 2, 16, 16, requires_grad=True)

    def rwkv7(q, k, v, a, b, gk, **kw):
        return chunk_rwkv7(q, gk, k, v, a, b, **kw)

    expected = oracle(x, scale=1.0)
    check(run_with_grads(rwkv7, x, backend="triton", chunk_size=16), expected, FP32)
    with torch.no_grad():
        o1, S1 = fused_recurrent_rwkv7(
            *(x[n][:, :3] for n in ("q", "gk", "k", "v", "a", "b")), initial_state=x["h0"], output_final_state=True
        )
    ref = {n: t.detach().double() for n, t in x.items()}
    o1_ref, S1_ref = naive_recurrent_dplr_delta_rule(
        *(t[:, :3] for t in args(ref)), scale=1.0, initial_state=ref["h0"], output_final_state=True
    )
    assert_close(o1, o1_ref, **FP32, name="o of three decode steps")
    assert_close(S1, S1_ref, **FP32, name="state after three decode steps")


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=["bf16", "fp16"])
def test_low_precision_inputs_close_to_fp32(dtype):
    x = make_inputs(1, 40, 2, 16, 32, dtype, requires_grad=True)
    expected = oracle(x)  # on the same rounded values
    check_low_precision(run_with_grads(chunk_dplr_delta_rule, x, backend="triton", chunk_size=32), expected, dtype)


# ----------------------------------------------------------------------------- fused recurrent (decode)


@pytest.mark.parametrize("T", [1, 3])
@pytest.mark.parametrize("K", [16, 24])
def test_fused_recurrent_matches_naive(T, K):
    x = make_inputs(2, T, 2, K, 32)
    o_ref, S_ref, _ = oracle(x)
    with torch.no_grad():
        o, S = fused_recurrent_dplr_delta_rule(
            *args(x), initial_state=x["h0"], output_final_state=True, backend="triton"
        )
    assert_close(o, o_ref, **FP32, name="o")
    assert_close(S, S_ref, **FP32, name="final_state")
    assert fused_recurrent_dplr_delta_rule(*args(x), backend="triton")[1] is None


def test_fused_recurrent_varlen():
    cu = torch.tensor([0, 2, 2, 5], device=DEVICE)
    x = make_inputs(1, 5, 2, 16, 16, N=3)
    expected = oracle(x, fn=fused_recurrent_dplr_delta_rule, backend="naive", cu_seqlens=cu)
    with torch.no_grad():
        o, S = fused_recurrent_dplr_delta_rule(
            *args(x), initial_state=x["h0"], output_final_state=True, cu_seqlens=cu, backend="triton"
        )
    assert_close(o, expected[0], **FP32, name="o")
    assert_close(S, expected[1], **FP32, name="final_state")


def test_fused_recurrent_with_grad_matches_naive():
    """With autograd recording, the decode op runs the chunked Triton kernels, which have a backward."""
    x = make_inputs(1, 3, 2, 16, 16, requires_grad=True)
    check(run_with_grads(fused_recurrent_dplr_delta_rule, x, backend="triton"), oracle(x), FP32)


def test_prefill_then_decode_matches_parallel():
    x = make_inputs(1, 38, 2, 16, 16)
    o_full, o_steps = prefill_then_decode(chunk_dplr_delta_rule, fused_recurrent_dplr_delta_rule, args, x, T1=35)
    assert_close(o_steps, o_full, **FP32, name="o")


# ----------------------------------------------------------------------------- errors


def test_cpu_without_interpreter_raises(monkeypatch):
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    x = {n: t.cpu() for n, t in make_inputs(1, 4, 1, 16, 16).items()}
    rwkv7 = (x["q"], x["gk"], x["k"], x["v"], x["a"], x["b"])
    calls = [(op, args(x)) for op in (chunk_dplr_delta_rule, fused_recurrent_dplr_delta_rule)]
    calls += [(op, rwkv7) for op in (chunk_rwkv7, fused_recurrent_rwkv7)]
    for op, inputs in calls:
        with pytest.raises(RuntimeError, match=r"set TRITON_INTERPRET=1 to run the Triton kernels on CPU"):
            op(*inputs, backend="triton")


def test_unsupported_chunk_size_dtype_and_key_dim_raise():
    x = make_inputs(1, 4, 1, 16, 16)
    with pytest.raises(ValueError, match=r"backend='triton' needs chunk_size in \(16, 32, 64\), got chunk_size=24"):
        chunk_dplr_delta_rule(*args(x), backend="triton", chunk_size=24)
    with pytest.raises(ValueError, match=r"float64.*backend='torch'"):
        chunk_dplr_delta_rule(*args({n: t.double() for n, t in x.items()}), backend="triton")
    wide = make_inputs(1, 2, 1, 272, 16)
    for op in (chunk_dplr_delta_rule, fused_recurrent_dplr_delta_rule):
        with pytest.raises(ValueError, match=r"K <= 256.*\(1, 2, 1, 272\).*backend='torch'"):
            op(*args(wide), backend="triton")


# ----------------------------------------------------------------------------- compiled kernels


@pytest.mark.slow
def test_every_kernel_compiles_for_sm90_without_a_gpu():
    """The interpreter cannot tell whether the kernels compile: compile each one for an H100 (sm_90) in a fresh
    process without TRITON_INTERPRET, and check its shared memory (``dplr_delta_rule/triton/compile_check.py``)."""
    assert_compiles_for_sm90("kernels.dplr_delta_rule.triton.compile_check")


@GPU_ONLY
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
@pytest.mark.parametrize("varlen", [False, True], ids=["padded", "varlen"])
@pytest.mark.parametrize("K", [64, 128])
def test_realistic_sizes_match_torch_backend_on_gpu(K, varlen, dtype):
    """T = 1000 (not a multiple of 64), V = 128, against the chunked torch backend in fp64."""
    B, T, H, V = (1, 1000, 4, 128) if varlen else (2, 1000, 4, 128)
    cu = torch.tensor([0, 300, 301, 1000], device=DEVICE) if varlen else None
    x = make_inputs(B, T, H, K, V, dtype, N=3 if varlen else B, requires_grad=True)
    kwargs = {"cu_seqlens": cu} if varlen else {}
    expected = oracle(x, fn=chunk_dplr_delta_rule, backend="torch", **kwargs)
    actual = run_with_grads(chunk_dplr_delta_rule, x, backend="triton", **kwargs)
    check_relative(actual, expected, 2e-3 if dtype == torch.float32 else 5e-2)


@GPU_ONLY
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
@pytest.mark.parametrize("K", [64, 128])
def test_realistic_decode_matches_torch_backend_on_gpu(K, dtype):
    """The fused recurrent kernel at decode sizes (one token, B = 8, V = 128) against the torch step loop in fp64."""
    x = make_inputs(8, 1, 4, K, 128, dtype)
    ref = {n: t.double() for n, t in x.items()}
    o_ref, S_ref = fused_recurrent_dplr_delta_rule(
        *args(ref), initial_state=ref["h0"], output_final_state=True, backend="torch"
    )
    o, S = fused_recurrent_dplr_delta_rule(*args(x), initial_state=x["h0"], output_final_state=True, backend="triton")
    rel = 2e-3 if dtype == torch.float32 else 5e-2
    assert_close(o.float(), o_ref, rtol=rel, atol=rel * o_ref.abs().max().item(), name="o")
    assert_close(S, S_ref, rtol=rel, atol=rel * S_ref.abs().max().item(), name="final_state")


@GPU_ONLY
def test_auto_runs_triton_for_rwkv7_on_cuda(monkeypatch):
    """``auto`` on CUDA tensors resolves to the Triton kernels for both families (RWKV-7 through the DPLR rule)."""
    from kernels.dplr_delta_rule import triton as dplr_triton

    calls = []
    real = dplr_triton.chunk_dplr_delta_rule_triton
    monkeypatch.setattr(dplr_triton, "chunk_dplr_delta_rule_triton", lambda *a, **kw: calls.append(1) or real(*a, **kw))
    x = make_inputs(1, 64, 2, 64, 64)
    chunk_rwkv7(x["q"], x["gk"], x["k"], x["v"], x["a"], x["b"])
    chunk_dplr_delta_rule(*args(x))
    assert len(calls) == 2
