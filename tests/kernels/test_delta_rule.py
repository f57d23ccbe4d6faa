"""Delta rule and gated delta rule kernels: every backend against the naive per-step oracle.

Both families are checked on outputs, final state and every gradient (q, k, v, beta, g, initial_state), with T
not a multiple of the chunk size, under strong decay, for continuation, packed sequences, low precision and the
error paths. Keys are L2-normalized and beta is a sigmoid output: the recurrence is well conditioned only then.
"""

from __future__ import annotations

from dataclasses import dataclass

import pytest
import torch
import torch.nn.functional as F

import kernels
from kernels import backend as kbackend
from kernels.delta_rule import (
    chunk_delta_rule,
    chunk_gated_delta_rule,
    fused_recurrent_delta_rule,
    fused_recurrent_gated_delta_rule,
    naive_recurrent_delta_rule,
    naive_recurrent_gated_delta_rule,
)
from tests.helpers import assert_close


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


DELTA = Family("delta_rule", chunk_delta_rule, fused_recurrent_delta_rule, naive_recurrent_delta_rule, False)
GATED = Family(
    "gated_delta_rule", chunk_gated_delta_rule, fused_recurrent_gated_delta_rule, naive_recurrent_gated_delta_rule, True
)
FAMILIES = pytest.mark.parametrize("fam", [DELTA, GATED], ids=lambda f: f.name)
OPS = pytest.mark.parametrize("op", ["chunk", "fused"], ids=["chunk", "fused_recurrent"])

# (B, T, H, K, V, chunk_size): T = 1, T < C, T not a multiple of C, T == C, K != V, C not a power of two
CASES = [
    (1, 1, 1, 8, 8, 64),
    (2, 63, 2, 16, 32, 16),
    (2, 100, 2, 16, 8, 32),
    (1, 100, 3, 32, 16, 64),
    (1, 64, 2, 16, 16, 64),
    (1, 23, 2, 8, 4, 7),
]
CASE_IDS = [f"B{B}-T{T}-H{H}-K{K}-V{V}-C{C}" for B, T, H, K, V, C in CASES]
TOL = {torch.float64: {"rtol": 1e-9, "atol": 1e-10}, torch.float32: {"rtol": 1e-4, "atol": 1e-5}}
NAMES = ["q", "k", "v", "g", "beta", "h0"]


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """The tensors here are tiny: intra-op threads only add OpenMP contention (on a busy 2-core machine this
    file took 14-35 s with 2 threads and 1.5 s with 1). Restored afterwards."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def make_inputs(B, T, H, K, V, dtype=torch.float64, gate="random", seed=0, requires_grad=False):
    """Dict of q, k (unit rows), v [B, T, H, *], g, beta [B, T, H] and h0 [B, H, K, V], all leaves."""
    gen = torch.Generator().manual_seed(seed)

    def rand(*shape):
        return torch.randn(*shape, generator=gen, dtype=torch.float64)

    x = {"q": rand(B, T, H, K), "k": F.normalize(rand(B, T, H, K), dim=-1), "v": rand(B, T, H, V)}
    x["beta"] = rand(B, T, H).sigmoid()
    if gate == "random":  # spread from ~0 to ~-6 per step
        x["g"] = F.logsigmoid(2 * rand(B, T, H))
    elif gate == "const-30":
        x["g"] = torch.full((B, T, H), -30.0, dtype=torch.float64)
    elif gate == "mixed":  # every other token wipes the memory (exp(-30)), the rest keep it (g = 0)
        x["g"] = torch.zeros(B, T, H, dtype=torch.float64)
        x["g"][:, ::2] = -30.0
    else:
        raise ValueError(gate)
    x["h0"] = rand(B, H, K, V)
    return {name: t.to(dtype).requires_grad_(requires_grad) for name, t in x.items()}


def call(fam, op, x, **kwargs):
    fn = {"chunk": fam.chunk, "fused": fam.fused, "naive": fam.naive}[op]
    return fn(*fam.args(x), **kwargs)


def run_with_grads(fam, op, x, seed=1, **kwargs):
    """Forward with final state, backward of a random linear loss on (o, final_state); returns o, S, grads."""
    o, S = call(fam, op, x, initial_state=x["h0"], output_final_state=True, **kwargs)
    gen = torch.Generator().manual_seed(seed)
    do = torch.randn(o.shape, generator=gen, dtype=torch.float64).to(o.dtype)
    dS = torch.randn(S.shape, generator=gen, dtype=torch.float64).to(S.dtype)
    ((o * do).sum() + (S * dS).sum()).backward()
    names = NAMES if fam.gated else [n for n in NAMES if n != "g"]
    return o, S, {name: x[name].grad for name in names}


def check_all(actual, expected, tol):
    (o, S, grads), (o_ref, S_ref, grads_ref) = actual, expected
    assert_close(o, o_ref, **tol, name="o")
    assert_close(S, S_ref, **tol, name="final_state")
    for name, grad in grads.items():
        assert grad is not None, f"no gradient for {name}"
        assert_close(grad, grads_ref[name], **tol, name=f"d{name}")


# ----------------------------------------------------------------------------- the oracle itself


@FAMILIES
def test_naive_matches_matrix_form(fam):
    """The oracle against the textbook form S_t = exp(g_t) (I - beta_t k_t k_t^T) S_{t-1} + beta_t k_t v_t^T."""
    B, T, H, K, V = 2, 7, 2, 4, 3
    x = make_inputs(B, T, H, K, V)
    o, S_out = call(fam, "naive", x, initial_state=x["h0"], output_final_state=True)
    S, eye, outs = x["h0"], torch.eye(K, dtype=torch.float64), []
    for t in range(T):
        k, b = x["k"][:, t, :, :, None], x["beta"][:, t, :, None, None]  # (B, H, K, 1), (B, H, 1, 1)
        decay = x["g"][:, t, :, None, None].exp() if fam.gated else 1.0
        S = decay * ((eye - b * k @ k.transpose(-1, -2)) @ S) + b * k @ x["v"][:, t, :, None, :]
        outs.append((S.transpose(-1, -2) @ (x["q"][:, t, :, :, None] * K**-0.5)).squeeze(-1))
    assert_close(o, torch.stack(outs, dim=1), name="o")
    assert_close(S_out, S, name="final_state")


@FAMILIES
@pytest.mark.parametrize("op", ["naive", "chunk", "fused"])
def test_beta_one_overwrites_the_value_under_a_unit_key(fam, op):
    """With beta = 1 and ||k|| = 1, one step makes S^T k == v exactly, whatever was stored (and any decay)."""
    x = make_inputs(2, 1, 3, 8, 5)
    x["beta"] = torch.ones_like(x["beta"])
    _, S = call(fam, op, x, initial_state=x["h0"], output_final_state=True)
    recalled = (S.transpose(-1, -2) @ x["k"][:, 0, :, :, None]).squeeze(-1)  # (B, H, V)
    assert_close(recalled, x["v"][:, 0], name="S^T k")


# ----------------------------------------------------------------------------- chunked torch vs naive


@FAMILIES
@pytest.mark.parametrize("with_h0", [False, True], ids=["h0-none", "h0"])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["fp64", "fp32"])
@pytest.mark.parametrize(("B", "T", "H", "K", "V", "C"), CASES, ids=CASE_IDS)
def test_chunk_forward_matches_naive(B, T, H, K, V, C, dtype, with_h0, fam):
    x = make_inputs(B, T, H, K, V, dtype)
    h0 = x["h0"] if with_h0 else None
    o_ref, S_ref = call(fam, "chunk", x, initial_state=h0, output_final_state=True, backend="naive")
    o, S = call(fam, "chunk", x, initial_state=h0, output_final_state=True, backend="torch", chunk_size=C)
    assert o.dtype == dtype and o.shape == (B, T, H, V)
    assert S.dtype == dtype and S.shape == (B, H, K, V)
    assert_close(o, o_ref, **TOL[dtype], name="o")
    assert_close(S, S_ref, **TOL[dtype], name="final_state")


@FAMILIES
@pytest.mark.parametrize(("B", "T", "H", "K", "V", "C"), CASES, ids=CASE_IDS)
def test_chunk_backward_matches_naive(B, T, H, K, V, C, fam):
    expected = run_with_grads(fam, "naive", make_inputs(B, T, H, K, V, requires_grad=True))
    actual = run_with_grads(fam, "chunk", make_inputs(B, T, H, K, V, requires_grad=True), chunk_size=C)
    check_all(actual, expected, TOL[torch.float64])


def test_gated_with_zero_decay_equals_delta_rule():
    x = make_inputs(2, 50, 2, 16, 8)
    x["g"] = torch.zeros_like(x["g"])
    o_ref, S_ref = chunk_delta_rule(*DELTA.args(x), initial_state=x["h0"], output_final_state=True, chunk_size=16)
    o, S = chunk_gated_delta_rule(*GATED.args(x), initial_state=x["h0"], output_final_state=True, chunk_size=16)
    assert_close(o, o_ref, **TOL[torch.float64], name="o")
    assert_close(S, S_ref, **TOL[torch.float64], name="final_state")


@FAMILIES
@OPS
def test_final_state_only_when_requested(fam, op):
    x = make_inputs(1, 5, 1, 4, 4, torch.float32)
    assert call(fam, op, x, initial_state=x["h0"])[1] is None
    S = call(fam, op, x, output_final_state=True)[1]
    assert S.dtype == torch.float32 and S.shape == (1, 1, 4, 4)


@FAMILIES
@OPS
def test_custom_scale(fam, op):
    x = make_inputs(1, 20, 2, 8, 4)
    o_ref, _ = call(fam, "naive", x, scale=0.3)
    kwargs = {"chunk_size": 8} if op == "chunk" else {}
    assert_close(call(fam, op, x, scale=0.3, **kwargs)[0], o_ref, **TOL[torch.float64], name="o")


# ----------------------------------------------------------------------------- strong decay (gated)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["fp64", "fp32"])
@pytest.mark.parametrize("gate", ["const-30", "mixed"])
def test_strong_decay_is_finite_and_matches_naive(gate, dtype):
    B, T, H, K, V, C = 2, 100, 2, 16, 8, 64  # exp(+30 * 63) would overflow even fp64
    expected = run_with_grads(GATED, "naive", make_inputs(B, T, H, K, V, gate=gate, requires_grad=True))
    x = make_inputs(B, T, H, K, V, dtype, gate=gate, requires_grad=True)
    actual = run_with_grads(GATED, "chunk", x, chunk_size=C)
    o, S, grads = actual
    assert all(bool(t.isfinite().all()) for t in (o, S, *grads.values())), "non-finite output, state or gradient"
    check_all(actual, expected, TOL[torch.float64] if dtype == torch.float64 else {"rtol": 1e-3, "atol": 1e-4})


# ----------------------------------------------------------------------------- decode and continuation


@FAMILIES
@pytest.mark.parametrize("T", [1, 3, 17])
def test_fused_recurrent_matches_naive(T, fam):
    expected = run_with_grads(fam, "naive", make_inputs(2, T, 2, 8, 16, requires_grad=True))
    actual = run_with_grads(fam, "fused", make_inputs(2, T, 2, 8, 16, requires_grad=True), backend="torch")
    check_all(actual, expected, TOL[torch.float64])


@FAMILIES
@OPS
@pytest.mark.parametrize(("T1", "T2", "C"), [(37, 30, 16), (64, 1, 64), (1, 50, 32)], ids=lambda x: str(x))
def test_split_in_two_calls_equals_one_call(T1, T2, C, op, fam):
    """Running T1 then T2 tokens, passing the final state on, equals one call on T1 + T2 tokens."""
    x = make_inputs(2, T1 + T2, 2, 16, 8)
    kwargs = {"chunk_size": C} if op == "chunk" else {}
    o_full, S_full = call(fam, op, x, initial_state=x["h0"], output_final_state=True, **kwargs)
    first = {n: t if n == "h0" else t[:, :T1] for n, t in x.items()}
    second = {n: t if n == "h0" else t[:, T1:] for n, t in x.items()}
    o1, S1 = call(fam, op, first, initial_state=x["h0"], output_final_state=True, **kwargs)
    o2, S2 = call(fam, op, second, initial_state=S1, output_final_state=True, **kwargs)
    assert_close(torch.cat([o1, o2], dim=1), o_full, **TOL[torch.float64], name="o")
    assert_close(S2, S_full, **TOL[torch.float64], name="final_state")


@FAMILIES
def test_prefill_then_decode_matches_parallel(fam):
    """Chunked prefill followed by one-token fused_recurrent decode steps equals the parallel forward."""
    T1, T = 40, 46
    x = make_inputs(1, T, 2, 16, 8, torch.float32)
    o_full, _ = call(fam, "chunk", x, chunk_size=16)
    o, S = call(fam, "chunk", {n: t[:, :T1] for n, t in x.items()}, output_final_state=True, chunk_size=16)
    outs = [o]
    for t in range(T1, T):
        o_t, S = call(fam, "fused", {n: x[n][:, t : t + 1] for n in x}, initial_state=S, output_final_state=True)
        outs.append(o_t)
    assert_close(torch.cat(outs, dim=1), o_full, **TOL[torch.float32], name="o")


@FAMILIES
@OPS
def test_varlen_equals_separate_runs(op, fam):
    """Packed sequences of lengths [5, 0, 17, 40] with cu_seqlens == one call per sequence (the empty one keeps h0)."""
    lengths, H, K, V = [5, 0, 17, 40], 2, 16, 8
    offsets = torch.tensor([0, 5, 5, 22, 62])
    x = make_inputs(1, sum(lengths), H, K, V)
    h0 = make_inputs(len(lengths), 1, H, K, V, seed=3)["h0"]
    kwargs = {"chunk_size": 16} if op == "chunk" else {}
    o, S = call(fam, op, x, initial_state=h0, output_final_state=True, cu_seqlens=offsets, **kwargs)
    assert o.shape == (1, 62, H, V) and S.shape == (4, H, K, V)
    for i, (a, b) in enumerate(zip(offsets[:-1].tolist(), offsets[1:].tolist(), strict=True)):
        if a == b:
            assert_close(S[i], h0[i], name=f"final_state[{i}] (empty)")
            continue
        seq = {n: t[:, a:b] for n, t in x.items()}
        o_i, S_i = call(fam, op, seq, initial_state=h0[i : i + 1], output_final_state=True, **kwargs)
        assert_close(o[:, a:b], o_i, **TOL[torch.float64], name=f"o[{i}]")
        assert_close(S[i : i + 1], S_i, **TOL[torch.float64], name=f"final_state[{i}]")


# ----------------------------------------------------------------------------- low precision


@FAMILIES
@OPS
def test_bf16_close_to_fp32(op, fam):
    x = make_inputs(2, 50, 2, 16, 16, torch.bfloat16, requires_grad=True)
    o, S, grads = run_with_grads(fam, op, x)
    assert o.dtype == torch.bfloat16 and S.dtype == torch.float32
    ref = {n: t.detach().float() for n, t in x.items()}  # same rounded values, fp32 oracle
    o_ref, S_ref = call(fam, "naive", ref, initial_state=ref["h0"], output_final_state=True)
    assert_close(o, o_ref, rtol=2e-2, atol=2e-2, name="o")
    assert_close(S, S_ref, rtol=1e-4, atol=1e-4, name="final_state")
    for name, grad in grads.items():
        assert grad.dtype == torch.bfloat16 and bool(grad.isfinite().all()), f"d{name}"


# ----------------------------------------------------------------------------- input validation


def _shapes(**over):
    base = {"q": (2, 10, 3, 8), "k": (2, 10, 3, 8), "v": (2, 10, 3, 4), "g": (2, 10, 3), "beta": (2, 10, 3)}
    return base | over


BAD_INPUTS = {
    "q-3d": (_shapes(q=(2, 10, 8)), {}, r"q must be 4-D.*\(2, 10, 8\)"),
    "k-other-K": (_shapes(k=(2, 10, 3, 6)), {}, r"k\.shape=\(2, 10, 3, 6\) must equal q\.shape=\(2, 10, 3, 8\)"),
    "beta-with-V": (_shapes(beta=(2, 10, 3, 4)), {}, r"beta\.shape=\(2, 10, 3, 4\) must be \[B, T, H\]=\[2, 10, 3\]"),
    "beta-other-T": (_shapes(beta=(2, 9, 3)), {}, r"beta\.shape=\(2, 9, 3\) must be \[B, T, H\]=\[2, 10, 3\]"),
    "h0-wrong": ({}, {"initial_state": (2, 3, 4, 8)}, r"initial_state\.shape=\(2, 3, 4, 8\) must be .*\[2, 3, 8, 4\]"),
    "varlen-B2": ({}, {"cu_seqlens": [0, 4, 10]}, r"B must be 1, got B=2"),
    "T-0": (_shapes(q=(2, 0, 3, 8), k=(2, 0, 3, 8), v=(2, 0, 3, 4), g=(2, 0, 3), beta=(2, 0, 3)), {}, r"T=0"),
}


@FAMILIES
@OPS
@pytest.mark.parametrize(("shapes", "extra", "match"), BAD_INPUTS.values(), ids=BAD_INPUTS.keys())
def test_bad_inputs_raise(shapes, extra, match, op, fam):
    x = {n: torch.zeros(s) for n, s in _shapes(**shapes).items()}
    kwargs = {"initial_state": torch.zeros(extra["initial_state"])} if "initial_state" in extra else {}
    if "cu_seqlens" in extra:
        kwargs["cu_seqlens"] = torch.tensor(extra["cu_seqlens"])
    with pytest.raises(ValueError, match=match):
        call(fam, op, x, **kwargs)


@pytest.mark.parametrize("fam", [GATED], ids=lambda f: f.name)
def test_gated_g_shape_and_presence(fam):
    x = {n: torch.zeros(s) for n, s in _shapes(g=(2, 10, 3, 8)).items()}
    with pytest.raises(ValueError, match=r"g\.shape=\(2, 10, 3, 8\) must be \[B, T, H\]=\[2, 10, 3\]"):
        call(fam, "chunk", x)
    x["g"] = None
    for op in ("chunk", "fused"):
        with pytest.raises(ValueError, match="needs g"):
            call(fam, op, x)


@FAMILIES
@pytest.mark.parametrize("chunk_size", [0, -4, 2.5])
def test_bad_chunk_size_raises(chunk_size, fam):
    with pytest.raises(ValueError, match="chunk_size must be a positive int"):
        call(fam, "chunk", make_inputs(1, 4, 1, 4, 4), chunk_size=chunk_size)


# ----------------------------------------------------------------------------- backend resolution


@FAMILIES
@OPS
def test_triton_backend_on_cpu_raises_with_the_fix(op, fam, monkeypatch):
    """The Triton kernels run on CPU tensors only under TRITON_INTERPRET=1 (tests/kernels/test_triton_delta_rule.py)."""
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    with pytest.raises(
        RuntimeError, match=r"backend='triton' (runs on CUDA tensors|needs the triton package).*'torch'"
    ):
        call(fam, op, make_inputs(1, 4, 1, 4, 4, torch.float32), backend="triton")


class _FakeCuda:
    is_cuda = True


@FAMILIES
def test_auto_picks_triton_on_cuda(monkeypatch, fam):
    """Both families declare Triton kernels: ``auto`` runs them on CUDA tensors and the torch form elsewhere."""
    assert "triton" in kbackend.available_backends(fam.name)
    monkeypatch.setattr(kbackend, "check_triton", lambda *tensors: None)  # as if on a GPU with triton installed
    assert kernels.resolve_backend("auto", _FakeCuda(), family=fam.name) == "triton"
    assert kernels.resolve_backend("auto", torch.zeros(1), family=fam.name) == "torch"


def test_public_names_resolve_through_kernels():
    assert kernels.chunk_delta_rule is chunk_delta_rule
    assert kernels.fused_recurrent_delta_rule is fused_recurrent_delta_rule
    assert kernels.chunk_gated_delta_rule is chunk_gated_delta_rule
    assert kernels.fused_recurrent_gated_delta_rule is fused_recurrent_gated_delta_rule


# ----------------------------------------------------------------------------- negative eigenvalues


@FAMILIES
@pytest.mark.parametrize("op", ["chunk", "fused"])
def test_beta_up_to_two_matches_naive_with_gradients(op, fam):
    """beta in (0, 2) (allow_neg_eigval: I - beta k k^T has eigenvalues in (-1, 1), Grazzi et al. 2024): every
    backend against the oracle, gradients included."""
    x = make_inputs(2, 45, 2, 16, 8, requires_grad=True)
    with torch.no_grad():
        x["beta"].mul_(2)
    kwargs = {"chunk_size": 16} if op == "chunk" else {}
    expected = run_with_grads(fam, "naive", {n: t.detach().clone().requires_grad_() for n, t in x.items()})
    check_all(run_with_grads(fam, op, x, **kwargs), expected, TOL[torch.float64])


@FAMILIES
def test_beta_up_to_two_stays_stable_over_long_sequences(fam):
    """fp32 chunked form against the fp64 oracle at T = 1024 with beta in (0, 2): the WY solve stays well
    conditioned (a unit lower-triangular system) and the state bounded."""
    x64 = make_inputs(1, 1024, 2, 16, 16, seed=7)
    x64["beta"] = 2 * x64["beta"]
    x32 = {n: t.float() for n, t in x64.items()}
    o, S = call(fam, "chunk", x32, initial_state=x32["h0"], output_final_state=True)
    o_ref, S_ref = call(fam, "naive", x64, initial_state=x64["h0"], output_final_state=True)
    assert_close(o.double(), o_ref, rtol=1e-3, atol=1e-4, name="o")
    assert_close(S.double(), S_ref, rtol=1e-3, atol=1e-4, name="final_state")
