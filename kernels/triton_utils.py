"""Helpers shared by the Triton backends: sequence/chunk bookkeeping, the chunk-local gate cumsum, small in-kernel
helpers (chunk spans, triangular loads, causal decays), tile sizes, dot precision, and input checks / preparation.

Imported only from the Triton backends (``kernels/<family>/triton/``), never by ``import kernels``:
this module imports Triton at the top.

Every chunked kernel sees its input as ``N`` sequences packed along time. A padded batch ``[B, T]`` is
the packed case with ``cu_seqlens = [0, T, 2T, ..., BT]`` (the tensors are contiguous, so token ``t`` of
batch row ``b`` is token ``b * T + t`` of the flattened ``[B * T, H, D]`` view); real ``cu_seqlens`` are
used as given. Chunks are cut per sequence, so no chunk crosses a sequence boundary.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import triton
import triton.language as tl

__all__ = [
    "Chunks",
    "prepare_chunks",
    "seq_offsets",
    "chunk_span",
    "chunk_cumsum",
    "load_tril",
    "causal_decay",
    "block_size",
    "state_tiles",
    "recurrent_tiles",
    "num_warps",
    "dot_dtype",
    "dot_precision",
    "check_chunk_size",
    "check_dtypes",
    "prepare_inputs",
    "needs_autograd",
]

CHUNK_SIZES = (16, 32, 64)
"""Chunk lengths the Triton kernels are compiled for (powers of two, multiples of the 16-row sub-block)."""

MAX_K = 256
"""Largest key dimension of the kernels that hold all of K (a ``[K, BV]`` slice of the state in registers): the
state and fused recurrent kernels of the delta rule, KDA and the DPLR delta rule."""


@dataclass(frozen=True)
class Chunks:
    """Where the sequences and their chunks lie in the flattened token axis.

    cu: int64 ``[N + 1]`` token offsets of the sequences; chunk_indices: int32 ``[NT, 2]``, for each
    chunk (in order) its sequence index and its index inside that sequence; chunk_offsets: int32
    ``[N + 1]`` index of each sequence's first chunk; N sequences, NT chunks in all; BT the chunk size.
    """

    cu: torch.Tensor
    chunk_indices: torch.Tensor
    chunk_offsets: torch.Tensor
    N: int
    NT: int
    BT: int


def prepare_chunks(cu_seqlens: torch.Tensor | None, B: int, T: int, BT: int, device: torch.device) -> Chunks:
    """Sequence offsets and the chunk table for ``B`` rows of ``T`` tokens, or for packed ``cu_seqlens``."""
    cu = seq_offsets(cu_seqlens, B, T, device)
    if cu_seqlens is None:
        nt = triton.cdiv(T, BT)
        seq = torch.arange(B, dtype=torch.int32, device=device).repeat_interleave(nt)
        idx = torch.arange(nt, dtype=torch.int32, device=device).repeat(B)
        offsets = torch.arange(0, B * nt + 1, nt, dtype=torch.int32, device=device)
        return Chunks(cu, torch.stack([seq, idx], 1).contiguous(), offsets, B, B * nt, BT)
    offsets_t = cu_seqlens.tolist()
    lengths = [b - a for a, b in zip(offsets_t[:-1], offsets_t[1:], strict=True)]
    counts = [triton.cdiv(n, BT) for n in lengths]
    table = [(n, i) for n, c in enumerate(counts) for i in range(c)]
    offsets = [0]
    for c in counts:
        offsets.append(offsets[-1] + c)
    chunk_indices = torch.tensor(table, dtype=torch.int32).reshape(-1, 2)
    return Chunks(
        cu,
        chunk_indices.to(device).contiguous(),
        torch.tensor(offsets, dtype=torch.int32, device=device),
        len(lengths),
        len(table),
        BT,
    )


def seq_offsets(cu_seqlens: torch.Tensor | None, B: int, T: int, device: torch.device) -> torch.Tensor:
    """int64 ``[N + 1]`` token offsets of the sequences: ``cu_seqlens`` as given, else ``B`` rows of ``T`` tokens."""
    if cu_seqlens is None:
        return torch.arange(0, B * T + 1, T, dtype=torch.int64, device=device)
    return cu_seqlens.to(device=device, dtype=torch.int64).contiguous()


@triton.jit
def chunk_span(cu, chunk_indices, i_c, BT: tl.constexpr):
    """In a kernel: chunk ``i_c`` -> (its sequence index, its first token, the number of valid tokens in it)."""
    i_n = tl.load(chunk_indices + 2 * i_c).to(tl.int64)
    i_t = tl.load(chunk_indices + 2 * i_c + 1).to(tl.int64)
    bos = tl.load(cu + i_n)
    eos = tl.load(cu + i_n + 1)
    t0 = bos + i_t * BT
    return i_n, t0, tl.minimum(eos - t0, BT)


@triton.jit
def _cumsum_scalar(g, G, cu, chunk_indices, H: tl.constexpr, BT: tl.constexpr):
    i_c, i_h = tl.program_id(0), tl.program_id(1)
    _, t0, n = chunk_span(cu, chunk_indices, i_c, BT)
    o_t = tl.arange(0, BT)
    off = (t0 + o_t) * H + i_h
    b_g = tl.load(g + off, mask=o_t < n, other=0).to(tl.float32)
    tl.store(G + off, tl.cumsum(b_g, axis=0), mask=o_t < n)


@triton.jit
def _cumsum_channels(g, G, cu, chunk_indices, H: tl.constexpr, K: tl.constexpr, BT: tl.constexpr, BK: tl.constexpr):
    i_c, i_k, i_h = tl.program_id(0), tl.program_id(1), tl.program_id(2)
    _, t0, n = chunk_span(cu, chunk_indices, i_c, BT)
    o_t = tl.arange(0, BT)
    o_k = i_k * BK + tl.arange(0, BK)
    m = (o_t[:, None] < n) & (o_k[None, :] < K)
    off = ((t0 + o_t[:, None]) * H + i_h) * K + o_k[None, :]
    b_g = tl.load(g + off, mask=m, other=0).to(tl.float32)
    tl.store(G + off, tl.cumsum(b_g, axis=0), mask=m)


def chunk_cumsum(g: torch.Tensor | None, ch: Chunks, max_tile: int = 64) -> torch.Tensor | None:
    """``G``: the fp32 cumsum of a log decay inside each chunk, for a scalar gate ``g [B, T, H]`` (grid
    ``[NT, H]``) or a per-channel one ``g [B, T, H, K]`` (grid ``[NT, NK, H]``, K tiles of at most
    ``max_tile``); None for ``g=None``."""
    if g is None:
        return None
    G = torch.empty(g.shape, dtype=torch.float32, device=g.device)
    if g.ndim == 3:
        H = g.shape[-1]
        _cumsum_scalar[(ch.NT, H)](g, G, ch.cu, ch.chunk_indices, H=H, BT=ch.BT)
    else:
        H, K = g.shape[-2:]
        BK = block_size(K, max_tile)
        _cumsum_channels[(ch.NT, triton.cdiv(K, BK), H)](g, G, ch.cu, ch.chunk_indices, H=H, K=K, BT=ch.BT, BK=BK)
    return G


@triton.jit
def load_tril(A, rows, n, BT: tl.constexpr, STRICT: tl.constexpr, TRANSPOSE: tl.constexpr):
    """In a kernel: a chunk's ``[BT, BT]`` matrix from an fp32 ``[B*T, H, BT]`` buffer (``A^T`` if TRANSPOSE),
    kept on its lower triangle (strict if STRICT) and zero on rows past the chunk's end."""
    o_t = tl.arange(0, BT)
    if TRANSPOSE:  # [j, i] = A[i, j]
        o_i, o_j = o_t[None, :], o_t[:, None]
        ptr = A + rows[None, :] * BT + o_t[:, None]
    else:
        o_i, o_j = o_t[:, None], o_t[None, :]
        ptr = A + rows[:, None] * BT + o_t[None, :]
    mask = (o_i < n) & ((o_i > o_j) if STRICT else (o_i >= o_j))
    return tl.load(ptr, mask=mask, other=0)


@triton.jit
def causal_decay(b_G, n, BT: tl.constexpr, STRICT: tl.constexpr, TRANSPOSE: tl.constexpr):
    """In a kernel, from a chunk's cumulative log decays ``b_G [BT]``: ``Gamma_ij = exp(G_i - G_j)`` on the causal
    triangle (``j < i`` if STRICT, else ``j <= i``) of valid rows, 0 elsewhere; ``Gamma^T`` if TRANSPOSE. The
    exponent is ``-inf`` before ``exp`` off the triangle (on it, ``G_i - G_j <= 0`` for log decays <= 0)."""
    o_t = tl.arange(0, BT)
    if TRANSPOSE:  # [j, i]
        o_i, o_j = o_t[None, :], o_t[:, None]
        b_Gi, b_Gj = b_G[None, :], b_G[:, None]
    else:
        o_i, o_j = o_t[:, None], o_t[None, :]
        b_Gi, b_Gj = b_G[:, None], b_G[None, :]
    keep = (o_i < n) & ((o_i > o_j) if STRICT else (o_i >= o_j))
    return tl.exp(tl.where(keep, b_Gi - b_Gj, float("-inf")))


def block_size(d: int, cap: int = 64) -> int:
    """Tile size for a head dimension ``d``: a power of two in ``[16, cap]`` (``tl.dot`` needs >= 16)."""
    return max(16, min(cap, triton.next_power_of_2(d)))


def state_tiles(K: int, max_tile: int = 64) -> tuple[int, int]:
    """``(BK, BV)`` of a chunked state kernel that holds all of K (``K <= MAX_K``) by a V tile: 32-column V tiles
    up to K = 64, 16 beyond (the fewest register spills when compiled for sm_90, ``compile_check.py``), at most
    ``max_tile``."""
    BK = block_size(K, MAX_K)
    return BK, min(max_tile, 32 if BK <= 64 else 16)


def recurrent_tiles(K: int, V: int) -> tuple[int, int]:
    """``(BK, BV)`` of a fused recurrent kernel that holds all of K (``K <= MAX_K``): V tiles of 16 to 64 columns,
    at most 4096 fp32 state values per program."""
    BK = block_size(K, MAX_K)
    return BK, block_size(V, max(16, min(64, 4096 // BK)))


def num_warps(*tile: int) -> int:
    """Warps for a program whose largest 2-D tiles have sides ``tile`` (e.g. ``BT, BK, BV``): 8 once two of
    them reach 64 x 64 (checked with ptxas for sm_90: 4 warps spill registers there), else 4."""
    a, b = sorted(tile)[-2:]
    return 8 if a * b >= 64 * 64 else 4


def dot_dtype(dtype: torch.dtype) -> tl.dtype:
    """Operand dtype of ``tl.dot`` for inputs of ``dtype`` (passed to the kernels as the constexpr ``DT``).

    The input dtype itself: bf16 / fp16 run on tensor cores, fp32 stays fp32. One exception: Triton's
    interpreter (``TRITON_INTERPRET=1``, checked with triton 3.9) computes a bf16 ``tl.dot`` on the raw
    uint16 bit patterns, so under the interpreter bf16 operands are widened to fp32 instead. Compiled
    kernels never take that branch; the bf16 dots themselves are only exercised on a GPU.
    """
    if dtype == torch.bfloat16:
        return tl.float32 if os.environ.get("TRITON_INTERPRET") == "1" else tl.bfloat16
    return {torch.float16: tl.float16, torch.float32: tl.float32}[dtype]


def dot_precision(dtype: torch.dtype) -> str:
    """``input_precision`` for ``tl.dot``: exact fp32 products for fp32 inputs unless torch allows TF32
    (``torch.set_float32_matmul_precision("high")``), as ``torch.matmul`` does; 16-bit operands ignore it."""
    if dtype == torch.float32 and torch.get_float32_matmul_precision() == "highest":
        return "ieee"
    return "tf32"


def check_chunk_size(chunk_size: int) -> int:
    """The Triton kernels tile chunks into 16-row sub-blocks; ValueError for any other chunk size."""
    if chunk_size not in CHUNK_SIZES:
        raise ValueError(
            f"backend='triton' needs chunk_size in {CHUNK_SIZES}, got chunk_size={chunk_size!r} "
            "(backend='torch' accepts any positive chunk size)"
        )
    return chunk_size


def check_dtypes(*tensors: torch.Tensor | None) -> None:
    """The Triton kernels take fp32 / bf16 / fp16 inputs; ValueError naming the fix otherwise."""
    for x in tensors:
        if x is not None and x.dtype not in (torch.float32, torch.bfloat16, torch.float16):
            raise ValueError(
                f"backend='triton' supports float32, bfloat16 and float16 inputs, got {x.dtype}; "
                "use backend='torch' (or 'naive') for other dtypes"
            )


def prepare_inputs(
    main: tuple[torch.Tensor, ...], rest: tuple[torch.Tensor | None, ...] = (), max_k: int | None = None
) -> tuple[torch.Tensor | None, ...]:
    """A Triton op's inputs, checked and made contiguous: ``main`` (q, k, v, ...) brought to their promoted dtype,
    ``rest`` (gates, the state; None allowed) kept in theirs. ``max_k``: ValueError for a key dim
    ``K = main[0].shape[-1]`` above it."""
    check_dtypes(*main, *rest)
    if max_k is not None and main[0].shape[-1] > max_k:
        raise ValueError(
            f"backend='triton' supports key dims K <= {max_k} (the state kernels hold all of K), got "
            f"q.shape={tuple(main[0].shape)}; use backend='torch'"
        )
    dtype = main[0].dtype
    for x in main[1:]:
        dtype = torch.promote_types(dtype, x.dtype)
    return (*(x.to(dtype).contiguous() for x in main), *(None if x is None else x.contiguous() for x in rest))


def needs_autograd(*tensors: torch.Tensor | None) -> bool:
    """Autograd is recording and one of ``tensors`` requires grad: the forward-only fused kernels cannot serve."""
    return torch.is_grad_enabled() and any(x is not None and x.requires_grad for x in tensors)


@triton.jit
def bwd_dA(
    do,
    v,
    dA,
    cu,
    chunk_indices,
    scale,
    H: tl.constexpr,
    V: tl.constexpr,
    BT: tl.constexpr,
    BV: tl.constexpr,
    PREC: tl.constexpr,
    DT: tl.constexpr,
):
    """dA = scale * tril(do v^T) per chunk: the gradient of the intra-chunk scores (shared by gla and rwkv6)."""
    i_c, i_h = tl.program_id(0), tl.program_id(1)
    _, t0, n = chunk_span(cu, chunk_indices, i_c, BT)
    o_t = tl.arange(0, BT)
    m_t = o_t < n
    rows = (t0 + o_t) * H + i_h
    b_dA = tl.zeros([BT, BT], dtype=tl.float32)
    for i_v in range(0, tl.cdiv(V, BV)):
        o_v = i_v * BV + tl.arange(0, BV)
        m_v = o_v < V
        b_do = tl.load(do + rows[:, None] * V + o_v[None, :], mask=m_t[:, None] & m_v[None, :], other=0)
        b_vT = tl.load(v + rows[None, :] * V + o_v[:, None], mask=m_v[:, None] & m_t[None, :], other=0)
        b_dA += tl.dot(b_do.to(DT), b_vT.to(DT), input_precision=PREC)
    b_dA = tl.where(o_t[:, None] >= o_t[None, :], b_dA * scale, 0)
    tl.store(dA + rows[:, None] * BT + o_t[None, :], b_dA, mask=m_t[:, None])
