"""Delta rule / gated delta rule Triton kernels against the naive oracle, on CPU through Triton's interpreter.

Sizes stay tiny: the interpreter executes every program of every kernel in Python. The same tests run unchanged
on a GPU (the inputs are created on ``DEVICE``: CUDA when available, else CPU with ``TRITON_INTERPRET=1``).
Keys are L2-normalized and beta is a sigmoid output, as the mixers feed them; the oracle runs in fp64 on the
same (rounded) values.
"""

from __future__ import annotations

from dataclasses import dataclass

import pytest
import torch
import torch.nn.functional as F

from kernels.delta_rule import (  # noqa: E402
    chunk_delta_rule,
    chunk_gated_delta_rule,
    fused_recurrent_delta_rule,
    fused_recurrent_gated_delta_rule,
    naive_recurrent_delta_rule,
    naive_recurrent_gated_delta_rule,
)
from tests.helpers import assert_close  # noqa: E402
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
NAMES = ["q", "k", "v", "g", "beta", "h0"]


@dataclass(frozen=True)
class Family:
    name: str
    chunk: object
    fused: object
    naive: object
    gated: bool

    def args(self, x: dict) -> tuple:
        """Positional inputs in fla order: (q, k, v, beta) or (q, k, v, g, beta)."""
        return (x["q"], x["k"], x["v"], x["g"], x["beta"]) if self.gated else (x["q"], x["k"], x["v"], x["beta"])

    def grad_names(self) -> list[str]:
        return NAMES if self.gated else [n for n in NAMES if n != "g"]


DELTA = Family("delta_rule", chunk_delta_rule, fused_recurrent_delta_rule, naive_recurrent_delta_rule, False)
GATED = Family(
    "gated_delta_rule", chunk_gated_delta_rule, fused_recurrent_gated_delta_rule, naive_recurrent_gated_delta_rule, True
)
FAMILIES = pytest.mark.parametrize("fam", [DELTA, GATED], ids=lambda f: f.name)

# (B, T, H, K, V, chunk): T = 1, T not a multiple of C, T == C, K != V, K < 16 and V not a power of two
CASES = [
    (1, 1, 1, 16, 16, 16),
    (2, 50, 2, 16, 32, 32),
    (1, 64, 2, 32, 16, 64),
    (1, 40, 1, 8, 40, 16),
]
CASE_IDS = [f"B{B}-T{T}-H{H}-K{K}-V{V}-C{C}" for B, T, H, K, V, C in CASES]


def make_inputs(B, T, H, K, V, dtype=torch.float32, gate="random", seed=0, N=None, requires_grad=False):
    """Dict of q, k (unit rows), v ``[B, T, H, *]``, g, beta ``[B, T, H]`` and h0 ``[N or B, H, K, V]`` on DEVICE."""
    gen = torch.Generator().manual_seed(seed)
    x = {"q": torch.randn(B, T, H, K, generator=gen)}
    x["k"] = F.normalize(torch.randn(B, T, H, K, generator=gen), dim=-1)
    x["v"] = torch.randn(B, T, H, V, generator=gen)
    x["beta"] = torch.randn(B, T, H, generator=gen).sigmoid()
    if gate == "random":  # from ~0 to ~-6 per step
        x["g"] = F.logsigmoid(2 * torch.randn(B, T, H, generator=gen))
    elif gate == "const-30":
        x["g"] = torch.full((B, T, H), -30.0)
    elif gate == "mixed":  # every other token wipes the memory (exp(-30)), the rest keep it (g = 0)
        x["g"] = torch.zeros(B, T, H)
        x["g"][:, ::2] = -30.0
    else:
        raise ValueError(gate)
    x["h0"] = torch.randn(N or B, H, K, V, generator=gen)
    return {n: t.to(DEVICE, dtype).requires_grad_(requires_grad) for n, t in x.items()}


def run_with_grads(fam, fn, x, **kwargs):
    """Forward with final state, backward of a random linear loss on o (and the final state); o, S, grads."""
    return triton_helpers.run_with_grads(fn, x, fam.args, fam.grad_names(), **kwargs)


def oracle(fam, x, fn=None, **kwargs):
    """The naive loop (or ``fn``) on fp64 copies of the same values, with gradients."""
    return run_with_grads(fam, fam.naive if fn is None else fn, fp64_copies(x), **kwargs)


# ----------------------------------------------------------------------------- chunked kernels vs naive


@FAMILIES
@pytest.mark.parametrize("with_h0", [False, True], ids=["h0-none", "h0"])
@pytest.mark.parametrize(("B", "T", "H", "K", "V", "C"), CASES, ids=CASE_IDS)
def test_forward_matches_naive(B, T, H, K, V, C, with_h0, fam):
    x = make_inputs(B, T, H, K, V)
    h0 = x["h0"] if with_h0 else None
    ref = {n: t.double() for n, t in x.items()}
    o_ref, S_ref = fam.naive(*fam.args(ref), initial_state=None if h0 is None else ref["h0"], output_final_state=True)
    o, S = fam.chunk(*fam.args(x), initial_state=h0, output_final_state=True, backend="triton", chunk_size=C)
    assert o.dtype == torch.float32 and o.shape == (B, T, H, V)
    assert S.dtype == torch.float32 and S.shape == (B, H, K, V)
    assert_close(o, o_ref, **FP32, name="o")
    assert_close(S, S_ref, **FP32, name="final_state")
    assert fam.chunk(*fam.args(x), initial_state=h0, backend="triton", chunk_size=C)[1] is None


@FAMILIES
@pytest.mark.parametrize(("B", "T", "H", "K", "V", "C"), CASES[1:], ids=CASE_IDS[1:])
def test_backward_matches_naive(B, T, H, K, V, C, fam):
    x = make_inputs(B, T, H, K, V, requires_grad=True)
    check(run_with_grads(fam, fam.chunk, x, backend="triton", chunk_size=C), oracle(fam, x), FP32)


@FAMILIES
def test_backward_without_final_state_grad(fam):
    """Only o feeds the loss: the final-state gradient is None inside the backward."""
    x = make_inputs(1, 37, 2, 16, 16, requires_grad=True)
    expected = oracle(fam, x, final_state_grad=False)
    check(run_with_grads(fam, fam.chunk, x, final_state_grad=False, backend="triton", chunk_size=16), expected, FP32)


def test_gate_and_beta_without_grad():
    """A gate and beta that need no gradient skip dg (and dbeta is not asked for); the other gradients hold."""
    x = make_inputs(1, 37, 2, 16, 16, requires_grad=True)
    x["g"], x["beta"] = x["g"].detach(), x["beta"].detach()
    expected = oracle(GATED, x)
    actual = run_with_grads(GATED, GATED.chunk, x, backend="triton", chunk_size=16)
    assert actual[2]["g"] is None and actual[2]["beta"] is None
    check(actual, expected, FP32, names=["q", "k", "v", "h0"])


@FAMILIES
def test_several_tiles_per_head_dim(monkeypatch, fam):
    """K and V wider than one tile: the chunk kernels loop over K / V tiles, the state kernels launch V tiles."""
    from kernels.delta_rule.triton import chunk as triton_chunk

    monkeypatch.setattr(triton_chunk, "MAX_TILE", 16)
    x = make_inputs(1, 40, 1, 40, 48, requires_grad=True)
    check(run_with_grads(fam, fam.chunk, x, backend="triton", chunk_size=32), oracle(fam, x), FP32)


@FAMILIES
def test_custom_scale(fam):
    x = make_inputs(1, 20, 2, 16, 16)
    o_ref, _ = fam.naive(*fam.args({n: t.double() for n, t in x.items()}), scale=0.3)
    assert_close(fam.chunk(*fam.args(x), scale=0.3, backend="triton", chunk_size=16)[0], o_ref, **FP32, name="o")
    assert_close(fam.fused(*fam.args(x), scale=0.3, backend="triton")[0], o_ref, **FP32, name="o")


@FAMILIES
def test_varlen_equals_separate_runs(fam):
    """Packed sequences (one of them empty) give the outputs, final states and gradients of separate runs."""
    cu = torch.tensor([0, 13, 13, 45, 64], device=DEVICE)
    x = make_inputs(1, 64, 2, 16, 16, N=4, requires_grad=True)
    # the naive backend runs each sequence on its own (kernels.utils.run_varlen): the reference
    expected = oracle(fam, x, fn=fam.chunk, backend="naive", cu_seqlens=cu)
    actual = run_with_grads(fam, fam.chunk, x, backend="triton", chunk_size=16, cu_seqlens=cu)
    check(actual, expected, FP32)
    assert_close(actual[1][1], x["h0"][1], name="final_state of the empty sequence")


@pytest.mark.parametrize("gate", ["const-30", "mixed"])
def test_strong_decay_is_finite_and_matches_naive(gate):
    x = make_inputs(1, 80, 2, 16, 16, gate=gate, requires_grad=True)
    o, S, grads = actual = run_with_grads(GATED, GATED.chunk, x, backend="triton", chunk_size=64)
    assert all(bool(t.isfinite().all()) for t in (o, S, *grads.values())), "non-finite output, state or gradient"
    check(actual, oracle(GATED, x), {"rtol": 1e-3, "atol": 1e-4})


@FAMILIES
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=["bf16", "fp16"])
def test_low_precision_inputs_close_to_fp32(dtype, fam):
    x = make_inputs(1, 40, 2, 16, 32, dtype, requires_grad=True)
    expected = oracle(fam, x)  # on the same rounded values
    check_low_precision(run_with_grads(fam, fam.chunk, x, backend="triton", chunk_size=32), expected, dtype)


# ----------------------------------------------------------------------------- fused recurrent (decode)


@FAMILIES
@pytest.mark.parametrize("T", [1, 3])
@pytest.mark.parametrize("K", [16, 24])
def test_fused_recurrent_matches_naive(T, K, fam):
    x = make_inputs(2, T, 2, K, 32)
    o_ref, S_ref, _ = oracle(fam, x)
    with torch.no_grad():
        o, S = fam.fused(*fam.args(x), initial_state=x["h0"], output_final_state=True, backend="triton")
    assert_close(o, o_ref, **FP32, name="o")
    assert_close(S, S_ref, **FP32, name="final_state")
    assert fam.fused(*fam.args(x), backend="triton")[1] is None


@FAMILIES
def test_fused_recurrent_varlen(fam):
    cu = torch.tensor([0, 2, 2, 5], device=DEVICE)
    x = make_inputs(1, 5, 2, 16, 16, N=3)
    expected = oracle(fam, x, fn=fam.fused, backend="naive", cu_seqlens=cu)
    with torch.no_grad():
        o, S = fam.fused(*fam.args(x), initial_state=x["h0"], output_final_state=True, cu_seqlens=cu, backend="triton")
    assert_close(o, expected[0], **FP32, name="o")
    assert_close(S, expected[1], **FP32, name="final_state")


@FAMILIES
def test_fused_recurrent_with_grad_matches_naive(fam):
    """With autograd recording, the decode op runs the chunked Triton kernels, which have a backward."""
    x = make_inputs(1, 3, 2, 16, 16, requires_grad=True)
    check(run_with_grads(fam, fam.fused, x, backend="triton"), oracle(fam, x), FP32)


@FAMILIES
def test_prefill_then_decode_matches_parallel(fam):
    x = make_inputs(1, 38, 2, 16, 16)
    o_full, o_steps = prefill_then_decode(fam.chunk, fam.fused, fam.args, x, T1=35)
    assert_close(o_steps, o_full, **FP32, name="o")


# ----------------------------------------------------------------------------- errors


@FAMILIES
def test_cpu_without_interpreter_raises(fam, monkeypatch):
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    x = {n: t.cpu() for n, t in make_inputs(1, 4, 1, 16, 16).items()}
    for op in (fam.chunk, fam.fused):
        with pytest.raises(RuntimeError, match=r"set TRITON_INTERPRET=1 to run the Triton kernels on CPU"):
            op(*fam.args(x), backend="triton")


@FAMILIES
def test_unsupported_chunk_size_dtype_and_key_dim_raise(fam):
    x = make_inputs(1, 4, 1, 16, 16)
    with pytest.raises(ValueError, match=r"backend='triton' needs chunk_size in \(16, 32, 64\), got chunk_size=24"):
        fam.chunk(*fam.args(x), backend="triton", chunk_size=24)
    with pytest.raises(ValueError, match=r"float64.*backend='torch'"):
        fam.chunk(*fam.args({n: t.double() for n, t in x.items()}), backend="triton")
    wide = make_inputs(1, 2, 1, 272, 16)
    for op in (fam.chunk, fam.fused):
        with pytest.raises(ValueError, match=r"K <= 256.*\(1, 2, 1, 272\).*backend='torch'"):
            op(*fam.args(wide), backend="triton")


# ----------------------------------------------------------------------------- compiled kernels


@pytest.mark.slow
def test_every_kernel_compiles_for_sm90_without_a_gpu():
    """The interpreter cannot tell whether the kernels compile: compile each one for an H100 (sm_90) in a fresh
    process without TRITON_INTERPRET, and check its shared memory (``kernels/delta_rule/triton/compile_check.py``)."""
    assert_compiles_for_sm90("kernels.delta_rule.triton.compile_check")


@GPU_ONLY
@FAMILIES
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
@pytest.mark.parametrize("varlen", [False, True], ids=["padded", "varlen"])
@pytest.mark.parametrize("K", [128, 256])
def test_realistic_sizes_match_torch_backend_on_gpu(K, varlen, dtype, fam):
    """T = 1000 (not a multiple of 64), V = 128, against the chunked torch backend in fp64."""
    B, T, H, V = (1, 1000, 4, 128) if varlen else (2, 1000, 4, 128)
    cu = torch.tensor([0, 300, 301, 1000], device=DEVICE) if varlen else None
    x = make_inputs(B, T, H, K, V, dtype, N=3 if varlen else B, requires_grad=True)
    kwargs = {"cu_seqlens": cu} if varlen else {}
    expected = oracle(fam, x, fn=fam.chunk, backend="torch", **kwargs)
    actual = run_with_grads(fam, fam.chunk, x, backend="triton", **kwargs)
    check_relative(actual, expected, 2e-3 if dtype == torch.float32 else 5e-2)


@GPU_ONLY
@FAMILIES
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
@pytest.mark.parametrize("K", [128, 256])
def test_realistic_decode_matches_torch_backend_on_gpu(K, dtype, fam):
    """The fused recurrent kernel at decode sizes (one token, B = 8, V = 128) against the torch step loop in fp64."""
    x = make_inputs(8, 1, 4, K, 128, dtype)
    ref = {n: t.double() for n, t in x.items()}
    o_ref, S_ref = fam.fused(*fam.args(ref), initial_state=ref["h0"], output_final_state=True, backend="torch")
    o, S = fam.fused(*fam.args(x), initial_state=x["h0"], output_final_state=True, backend="triton")
    rel = 2e-3 if dtype == torch.float32 else 5e-2
    assert_close(o.float(), o_ref, rtol=rel, atol=rel * o_ref.abs().max().item(), name="o")
    assert_close(S, S_ref, rtol=rel, atol=rel * S_ref.abs().max().item(), name="final_state")


@FAMILIES
@pytest.mark.parametrize("op", ["chunk", "fused"])
def test_beta_up_to_two_matches_naive(op, fam):
    """Negative eigenvalues (beta in (0, 2), allow_neg_eigval) through the Triton kernels, gradients included."""
    x = make_inputs(1, 37, 2, 16, 16, requires_grad=False)
    x["beta"] = 2 * x["beta"]
    x = {n: t.requires_grad_() for n, t in x.items()}
    fn = fam.chunk if op == "chunk" else fam.fused
    kwargs = {"chunk_size": 16} if op == "chunk" else {}
    check(run_with_grads(fam, fn, x, backend="triton", **kwargs), oracle(fam, x), FP32)
