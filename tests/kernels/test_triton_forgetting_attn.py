"""Forgetting attention Triton kernels against the naive oracle, on CPU through Triton's interpreter.

Sizes stay tiny: the interpreter executes every program of every kernel in Python. The same tests run unchanged on
a GPU (the inputs are created on ``DEVICE``: CUDA when available, else CPU with ``TRITON_INTERPRET=1``). Most tests
shrink the blocks to 16 rows (``small_blocks``) so that a few dozen tokens already span several query and key
blocks; the oracle runs in fp64 on the same (rounded) values.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from kernels.forgetting_attn import forgetting_attn_cached, naive_forgetting_attn, parallel_forgetting_attn
from kernels.forgetting_attn.naive import naive_forgetting_attn_cached
from tests.helpers import assert_close
from tests.kernels.triton_helpers import DEVICE, GPU_ONLY, assert_compiles_for_sm90, check, check_relative, fp64_copies

pytestmark = pytest.mark.usefixtures("triton_interpreter")

FP32 = {"rtol": 1e-4, "atol": 1e-5}


@pytest.fixture
def small_blocks(monkeypatch):
    """16-row query and key blocks: several blocks per sequence, windows that skip key blocks."""
    from kernels.forgetting_attn.triton import parallel

    monkeypatch.setattr(parallel, "BLOCK", 16)


def make_inputs(B, T, HQ, H, K, V, dtype=torch.float32, gate="random", seed=0, requires_grad=False):
    """Dict of q ``[B, T, HQ, K]``, k ``[B, T, H, K]``, v ``[B, T, H, V]`` (dtype) and g ``[B, T, HQ]`` (fp32)."""
    gen = torch.Generator().manual_seed(seed)
    x = {
        "q": torch.randn(B, T, HQ, K, generator=gen).to(dtype),
        "k": torch.randn(B, T, H, K, generator=gen).to(dtype),
        "v": torch.randn(B, T, H, V, generator=gen).to(dtype),
    }
    if gate == "random":  # from ~0 to ~-6 per step
        x["g"] = F.logsigmoid(1 + 2 * torch.randn(B, T, HQ, generator=gen))
    elif gate == "zero":
        x["g"] = torch.zeros(B, T, HQ)
    elif gate == "const-30":
        x["g"] = torch.full((B, T, HQ), -30.0)
    elif gate == "mixed":  # every other token forgets everything before it (exp(-30)), the rest nothing
        x["g"] = torch.zeros(B, T, HQ)
        x["g"][:, ::2] = -30.0
    else:
        raise ValueError(gate)
    return {n: t.to(DEVICE).requires_grad_(requires_grad) for n, t in x.items()}


def run_with_grads(fn, x, *args, seed=1, **kwargs):
    """``fn(q, k, v, g, ...)``, then the backward of a random linear loss on o: o and the gradients of x."""
    o = fn(*(x[n] for n in "qkvg"), *args, **kwargs)
    gen = torch.Generator().manual_seed(seed)
    (o * torch.randn(o.shape, generator=gen).to(o.device, o.dtype)).sum().backward()
    return o, {n: x[n].grad for n in "qkvg"}


def oracle(x, fn=naive_forgetting_attn, **kwargs):
    """The oracle (or ``fn``) on fp64 copies of the same values, with gradients."""
    return run_with_grads(fn, fp64_copies(x), **kwargs)


# (B, T, HQ, H, K, V): T = 1, T not a multiple of the block, K != V, grouped queries (HQ = 2H), K < 16 and
# V not a power of two, odd head dims
CASES = [
    (1, 1, 2, 2, 16, 16),
    (2, 50, 4, 2, 16, 32),
    (1, 40, 2, 1, 8, 40),
    (1, 35, 3, 3, 24, 12),
]
CASE_IDS = [f"B{B}-T{T}-HQ{HQ}-H{H}-K{K}-V{V}" for B, T, HQ, H, K, V in CASES]


# ----------------------------------------------------------------------------- parallel op vs naive


@pytest.mark.parametrize("window", [None, 7], ids=["causal", "window7"])
@pytest.mark.parametrize(("B", "T", "HQ", "H", "K", "V"), CASES, ids=CASE_IDS)
def test_matches_naive_with_gradients(B, T, HQ, H, K, V, window, small_blocks):
    x = make_inputs(B, T, HQ, H, K, V, requires_grad=True)
    actual = run_with_grads(parallel_forgetting_attn, x, window_size=window, backend="triton")
    assert actual[0].dtype == torch.float32 and actual[0].shape == (B, T, HQ, V)
    check(actual, oracle(x, window_size=window), FP32)


@pytest.mark.parametrize("window", [None, 40], ids=["causal", "window40"])
def test_default_blocks_match_naive(window):
    """The production block sizes (fp32, head dims <= 64: 32 query rows, 32 keys): three query blocks, the last
    partial, and a window that skips key blocks."""
    x = make_inputs(1, 90, 4, 2, 32, 16, requires_grad=True)
    actual = run_with_grads(parallel_forgetting_attn, x, window_size=window, backend="triton")
    check(actual, oracle(x, window_size=window), FP32)


def test_custom_scale(small_blocks):
    x = make_inputs(1, 20, 2, 1, 16, 16, requires_grad=True)
    actual = run_with_grads(parallel_forgetting_attn, x, scale=0.3, backend="triton")
    check(actual, oracle(x, scale=0.3), FP32)


def test_a_zero_gate_is_causal_softmax_attention(small_blocks):
    x = make_inputs(2, 37, 4, 2, 16, 16, gate="zero")
    o = parallel_forgetting_attn(*(x[n] for n in "qkvg"), backend="triton")
    qh, kh, vh = (x[n].double().transpose(1, 2) for n in "qkv")
    ref = F.scaled_dot_product_attention(qh, kh, vh, is_causal=True, enable_gqa=True).transpose(1, 2)
    assert_close(o, ref, **FP32, name="o")


@pytest.mark.parametrize("gate", ["const-30", "mixed"])
def test_strong_gates_are_finite_and_match_naive(gate, small_blocks):
    x = make_inputs(1, 50, 2, 1, 16, 16, gate=gate, requires_grad=True)
    o, grads = actual = run_with_grads(parallel_forgetting_attn, x, backend="triton")
    assert all(bool(t.isfinite().all()) for t in (o, *grads.values())), "non-finite output or gradient"
    check(actual, oracle(x), {"rtol": 1e-3, "atol": 1e-4})


@pytest.mark.parametrize("window", [None, 6], ids=["causal", "window6"])
def test_packed_sequences_equal_separate_runs(window, small_blocks):
    """Packed sequences (one of them empty) give the outputs and gradients of separate runs; the gate gradient of
    each sequence's first token is 0 (g_1 never enters a logit)."""
    cu = torch.tensor([0, 21, 21, 30, 64], device=DEVICE)
    x = make_inputs(1, 64, 4, 2, 16, 16, requires_grad=True)
    o, grads = run_with_grads(parallel_forgetting_attn, x, window_size=window, cu_seqlens=cu, backend="triton")
    ref = {n: t.detach().double().requires_grad_() for n, t in x.items()}
    bounds = [(a, b) for a, b in zip(cu.tolist(), cu.tolist()[1:], strict=False) if b > a]
    o_ref = torch.cat(
        [naive_forgetting_attn(*(ref[n][:, a:b] for n in "qkvg"), window_size=window) for a, b in bounds], 1
    )
    gen = torch.Generator().manual_seed(1)
    (o_ref * torch.randn(o_ref.shape, generator=gen).to(DEVICE, o_ref.dtype)).sum().backward()
    check((o, grads), (o_ref, {n: ref[n].grad for n in "qkvg"}), FP32)
    starts = torch.tensor([a for a, _ in bounds], device=DEVICE)
    assert float(grads["g"][0, starts].abs().max()) < 1e-5, grads["g"][0, starts]


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=["bf16", "fp16"])
def test_low_precision_inputs_close_to_fp32(dtype, small_blocks):
    x = make_inputs(1, 40, 4, 2, 16, 32, dtype, requires_grad=True)
    o_ref, grads_ref = oracle(x, window_size=25)  # on the same rounded values
    o, grads = run_with_grads(parallel_forgetting_attn, x, window_size=25, backend="triton")
    assert o.dtype == dtype
    assert_close(o.float(), o_ref, rtol=3e-2, atol=3e-2, name="o")
    for name, grad in grads.items():
        assert grad.dtype == x[name].dtype, f"d{name} has dtype {grad.dtype}"
        scale = grads_ref[name].abs().max().item()
        assert_close(grad.float(), grads_ref[name], rtol=5e-2, atol=2e-2 * scale, name=f"d{name}")


# ----------------------------------------------------------------------------- cached op (prefill, decode)


def test_prefill_in_pieces_and_decode_equal_the_parallel_run(small_blocks):
    """Prefill 21 tokens, 12 more in one call, then one at a time, from a cache of k, v and cumulative gates."""
    x = make_inputs(2, 37, 4, 2, 16, 24)
    window = 9
    full = parallel_forgetting_attn(*(x[n] for n in "qkvg"), window_size=window, backend="triton")
    G = x["g"].cumsum(1)
    pieces = []
    for a, b in [(0, 21), (21, 33), *((t, t + 1) for t in range(33, 37))]:
        q, gq = x["q"][:, a:b], G[:, a:b]
        kv = x["k"][:, :b], x["v"][:, :b]
        pieces.append(forgetting_attn_cached(q, *kv, gq, G[:, :b], window_size=window, backend="triton"))
    assert_close(torch.cat(pieces, 1), full, **FP32, name="o")


@pytest.mark.parametrize("T", [1, 19])
def test_cached_matches_naive_with_gradients(T, small_blocks):
    """Queries at the last T of S = 40 positions, gradients of q, k, v and both cumulative gates."""
    S = 40
    x = make_inputs(2, S, 4, 2, 16, 16, requires_grad=False)
    G = x.pop("g").cumsum(1)
    x = {"q": x["q"][:, S - T :], "k": x["k"], "v": x["v"], "gq": G[:, S - T :], "gk": G}
    x = {n: t.contiguous().requires_grad_() for n, t in x.items()}

    def run(inputs, fn, **kwargs):
        o = fn(*inputs.values(), window_size=12, **kwargs)
        gen = torch.Generator().manual_seed(1)
        (o * torch.randn(o.shape, generator=gen).to(o.device, o.dtype)).sum().backward()
        return o, {n: t.grad for n, t in inputs.items()}

    o, grads = run(x, forgetting_attn_cached, backend="triton")
    o_ref, grads_ref = run(fp64_copies(x), naive_forgetting_attn_cached)
    check((o, grads), (o_ref, grads_ref), FP32)


def test_padding_slots_with_infinite_gates_are_never_seen(small_blocks):
    """A stacked cache pads shorter rows on the left with gc_k = +inf (and arbitrary keys): no query sees them."""
    x = make_inputs(1, 30, 2, 1, 16, 16)
    G = x["g"].cumsum(1)
    pad = 20
    k = torch.cat([torch.randn(1, pad, 1, 16).to(DEVICE), x["k"]], 1)
    v = torch.cat([torch.randn(1, pad, 1, 16).to(DEVICE), x["v"]], 1)
    gk = torch.cat([torch.full((1, pad, 2), float("inf"), device=DEVICE), G], 1)
    for a in (0, 29):  # prefill of every token, decode of the last
        o = forgetting_attn_cached(x["q"][:, a:], k, v, G[:, a:], gk, backend="triton")
        ref = forgetting_attn_cached(x["q"][:, a:], x["k"], x["v"], G[:, a:], G, backend="triton")
        assert_close(o, ref, **FP32, name=f"o from token {a}")


# ----------------------------------------------------------------------------- errors


def test_cpu_without_interpreter_raises(monkeypatch):
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    x = {n: t.cpu() for n, t in make_inputs(1, 4, 2, 1, 16, 16).items()}
    with pytest.raises(RuntimeError, match=r"set TRITON_INTERPRET=1 to run the Triton kernels on CPU"):
        parallel_forgetting_attn(*(x[n] for n in "qkvg"), backend="triton")
    G = x["g"].cumsum(1)
    with pytest.raises(RuntimeError, match=r"set TRITON_INTERPRET=1 to run the Triton kernels on CPU"):
        forgetting_attn_cached(x["q"], x["k"], x["v"], G, G, backend="triton")


def test_unsupported_dtype_and_head_dims_raise():
    x = make_inputs(1, 4, 2, 1, 16, 16)
    with pytest.raises(ValueError, match=r"float64.*backend='torch'"):
        parallel_forgetting_attn(*(x[n].double() for n in "qkvg"), backend="triton")
    G = x["g"].double().cumsum(1)
    with pytest.raises(ValueError, match=r"float64.*backend='torch'"):
        forgetting_attn_cached(x["q"], x["k"], x["v"], G, G, backend="triton")
    for K, V in [(272, 16), (16, 300)]:
        wide = make_inputs(1, 2, 2, 1, K, V)
        with pytest.raises(ValueError, match=r"K, V <= 256.*backend='torch'"):
            parallel_forgetting_attn(*(wide[n] for n in "qkvg"), backend="triton")


# ----------------------------------------------------------------------------- compiled kernels


@pytest.mark.slow
def test_every_kernel_compiles_for_sm90_without_a_gpu():
    """The interpreter cannot tell whether the kernels compile: compile each one for an H100 (sm_90) in a fresh
    process without TRITON_INTERPRET (``kernels/forgetting_attn/triton/compile_check.py``)."""
    assert_compiles_for_sm90("kernels.forgetting_attn.triton.compile_check")


@GPU_ONLY
def test_auto_is_triton_on_cuda():
    from kernels.backend import resolve_backend

    assert resolve_backend("auto", torch.empty(0, device="cuda"), family="forgetting_attn") == "triton"


@GPU_ONLY
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
@pytest.mark.parametrize("window", [None, 256], ids=["causal", "window256"])
@pytest.mark.parametrize("varlen", [False, True], ids=["padded", "varlen"])
@pytest.mark.parametrize(("K", "V"), [(64, 64), (128, 128), (256, 256)], ids=["d64", "d128", "d256"])
def test_realistic_sizes_match_torch_backend_on_gpu(K, V, varlen, window, dtype):
    """T = 1000 (not a multiple of 64), 8 query heads on 2 key/value heads, against the torch backend in fp64."""
    B, T = (1, 1000) if varlen else (2, 1000)
    cu = torch.tensor([0, 300, 301, 1000], device=DEVICE) if varlen else None
    x = make_inputs(B, T, 8, 2, K, V, dtype, requires_grad=True)
    kwargs = {"window_size": window, "cu_seqlens": cu}
    expected = oracle(x, fn=parallel_forgetting_attn, backend="torch", **kwargs)
    actual = run_with_grads(parallel_forgetting_attn, x, backend="triton", **kwargs)
    check_relative(actual, expected, 2e-3 if dtype == torch.float32 else 5e-2)


@GPU_ONLY
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
@pytest.mark.parametrize("T", [1, 100])
def test_realistic_decode_matches_torch_backend_on_gpu(T, dtype):
    """One token (decode) or 100 (a prefill chunk) against a cache of 2000 keys, B = 4, K = V = 128."""
    S = 2000
    x = make_inputs(4, S, 8, 2, 128, 128, dtype)
    G = x["g"].cumsum(1)
    args = (x["q"][:, S - T :], x["k"], x["v"], G[:, S - T :], G)
    o_ref = forgetting_attn_cached(*(t.double() for t in args), backend="torch")
    o = forgetting_attn_cached(*args, backend="triton")
    rel = 2e-3 if dtype == torch.float32 else 5e-2
    assert_close(o.float(), o_ref, rtol=rel, atol=rel * o_ref.abs().max().item(), name="o")
