"""Helpers shared by the Triton kernels: sequence/chunk bookkeeping, block sizes, dot precision.

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
    "chunk_span",
    "block_size",
    "num_warps",
    "dot_dtype",
    "dot_precision",
    "check_chunk_size",
    "check_dtypes",
]

CHUNK_SIZES = (16, 32, 64)
"""Chunk lengths the Triton kernels are compiled for (powers of two, multiples of the 16-row sub-block)."""


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
    if cu_seqlens is None:
        nt = triton.cdiv(T, BT)
        cu = torch.arange(0, B * T + 1, T, dtype=torch.int64, device=device)
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
        cu_seqlens.to(device=device, dtype=torch.int64).contiguous(),
        chunk_indices.to(device).contiguous(),
        torch.tensor(offsets, dtype=torch.int32, device=device),
        len(lengths),
        len(table),
        BT,
    )


@triton.jit
def chunk_span(cu, chunk_indices, i_c, BT: tl.constexpr):
    """In a kernel: chunk ``i_c`` -> (its sequence index, its first token, the number of valid tokens in it)."""
    i_n = tl.load(chunk_indices + 2 * i_c).to(tl.int64)
    i_t = tl.load(chunk_indices + 2 * i_c + 1).to(tl.int64)
    bos = tl.load(cu + i_n)
    eos = tl.load(cu + i_n + 1)
    t0 = bos + i_t * BT
    return i_n, t0, tl.minimum(eos - t0, BT)


def block_size(d: int, cap: int = 64) -> int:
    """Tile size for a head dimension ``d``: a power of two in ``[16, cap]`` (``tl.dot`` needs >= 16)."""
    return max(16, min(cap, triton.next_power_of_2(d)))


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
