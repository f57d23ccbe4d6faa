"""Input checks and variable-length (packed) batching shared by every kernel family."""

from __future__ import annotations

import functools
import math
import statistics
import time
from collections.abc import Callable

import torch

__all__ = [
    "check_chunk_arg",
    "check_inputs",
    "decayed_pairs",
    "sub_chunked",
    "run_torch_backends",
    "run_varlen",
    "without_autocast",
]


def check_inputs(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    *,
    initial_state: torch.Tensor | None = None,
    cu_seqlens: torch.Tensor | None = None,
    query_name: str = "q",
    **extra: tuple[torch.Tensor | None, str],
) -> tuple[int, int, int, int, int, int]:
    """Validate fla-layout inputs; ValueError quoting the shapes otherwise. Returns `(B, T, H, K, V, N)`,
    N = number of sequences (`B`, or `len(cu_seqlens) - 1` for packed input).

    q, k `[B, T, H, K]`, v `[B, T, H, V]`, initial_state `[N, H, K, V]`. `extra` maps an argument name to
    `(tensor or None, layout)` where layout is spelt with the letters B T H K V (e.g. `g=(g, "BTHK")`,
    `beta=(beta, "BTH")`, `u=(u, "HK")`, `g_gamma=(g_gamma, "H")`); extra tensors must be floating point.
    `query_name` is what messages call the first argument (RWKV calls it `r`).
    """
    qn = query_name
    for name, x in ((qn, q), ("k", k), ("v", v)):
        if x.ndim != 4:
            raise ValueError(f"{name} must be 4-D [B, T, H, D], got {name}.shape={tuple(x.shape)}")
        if not x.is_floating_point():
            raise ValueError(f"{name} must be a floating-point tensor, got dtype {x.dtype}")
    B, T, H, K = q.shape
    V = v.shape[-1]
    if tuple(k.shape) != (B, T, H, K):
        raise ValueError(f"k.shape={tuple(k.shape)} must equal {qn}.shape={(B, T, H, K)} ([B, T, H, K])")
    if tuple(v.shape[:3]) != (B, T, H):
        raise ValueError(f"v.shape={tuple(v.shape)} must start with [B, T, H]={[B, T, H]} of {qn}.shape={(B, T, H, K)}")
    if T < 1:
        raise ValueError(f"sequence length must be >= 1, got T={T} ({qn}.shape={(B, T, H, K)})")
    sizes = {"B": B, "T": T, "H": H, "K": K, "V": V}
    for name, (x, layout) in extra.items():
        if x is None:
            continue
        want = tuple(sizes[c] for c in layout)
        if tuple(x.shape) != want:
            dims = ", ".join(layout)
            raise ValueError(
                f"{name}.shape={tuple(x.shape)} must be [{dims}]={list(want)} for {qn}.shape={(B, T, H, K)}"
            )
        if not x.is_floating_point():
            raise ValueError(f"{name} must be a floating-point tensor, got dtype {x.dtype}")
    N = B
    if cu_seqlens is not None:
        N = _check_cu_seqlens(cu_seqlens, B, T)
    if initial_state is not None and tuple(initial_state.shape) != (N, H, K, V):
        raise ValueError(
            f"initial_state.shape={tuple(initial_state.shape)} must be [N, H, K, V]={[N, H, K, V]} "
            f"(N = {'len(cu_seqlens) - 1' if cu_seqlens is not None else 'B'}) for {qn}.shape={(B, T, H, K)}"
        )
    return B, T, H, K, V, N


def _check_cu_seqlens(cu_seqlens: torch.Tensor, B: int, T: int) -> int:
    if B != 1:
        raise ValueError(f"with cu_seqlens the sequences are packed along T, so B must be 1, got B={B}")
    if cu_seqlens.ndim != 1 or cu_seqlens.numel() < 2 or cu_seqlens.is_floating_point():
        raise ValueError(f"cu_seqlens must be a 1-D integer tensor [N + 1], got {cu_seqlens!r}")
    offsets = cu_seqlens.tolist()
    if offsets[0] != 0 or offsets[-1] != T or any(b < a for a, b in zip(offsets, offsets[1:], strict=False)):
        raise ValueError(f"cu_seqlens must rise from 0 to T={T} without decreasing, got {offsets}")
    return len(offsets) - 1


def run_varlen(
    fn: Callable[..., tuple[torch.Tensor, torch.Tensor | None]],
    cu_seqlens: torch.Tensor,
    per_token: dict[str, torch.Tensor | None],
    initial_state: torch.Tensor | None,
    output_final_state: bool,
    **shared,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Run `fn` on each packed sequence separately (exact by construction: no state crosses a boundary).

    `per_token` tensors are `[1, T, ...]` and are sliced along T; `shared` arguments (u, g_gamma, scale,
    chunk_size, ...) pass through. Returns `o [1, T, H, V]` and final states `[N, H, K, V]` (or None).
    An empty sequence leaves its state as it came in.
    """
    offsets = cu_seqlens.tolist()
    ref = per_token["v"]
    outs, finals = [], []
    for i, (a, b) in enumerate(zip(offsets, offsets[1:], strict=False)):
        h0 = None if initial_state is None else initial_state[i : i + 1]
        if b == a:
            H, K, V = ref.shape[2], per_token["k"].shape[-1], ref.shape[-1]
            acc = torch.promote_types(per_token["k"].dtype, torch.float32)  # the implementations' state dtype
            zero = torch.zeros(1, H, K, V, dtype=acc, device=ref.device)
            finals.append(zero if h0 is None else h0.to(zero.dtype))
            continue
        sliced = {name: None if x is None else x[:, a:b] for name, x in per_token.items()}
        o, s = fn(**sliced, initial_state=h0, output_final_state=output_final_state, **shared)
        outs.append(o)
        finals.append(s)
    o = torch.cat(outs, dim=1) if outs else ref.new_zeros(ref.shape)
    return o, (torch.cat(finals, dim=0) if output_final_state else None)


def sub_chunked(
    tensors: tuple[torch.Tensor, ...], chunk_size: int, sub_chunk: int | None, dtype: torch.dtype
) -> tuple[list[torch.Tensor], int, int]:
    """`[B, T, H, *D]` tensors as `[B, H, N, C, *D]` chunks in `dtype` for the sub-chunked forms (KDA, the DPLR rule):
    C is `chunk_size` rounded up to a multiple of the sub-chunk `min(sub_chunk, chunk_size)`, and T is padded with
    zeros to N * C (zero inputs and zero log decays leave the state as it is). Returns `(chunks, sub, C)`.

    `sub_chunk=None` takes the largest power of two <= sqrt(chunk_size) (8 for 64, 4 for 16 or 32): the elementwise
    work goes as C K (sub + C / sub), least at sub = sqrt(C), and 4 beat 8 at C = 32 when measured."""
    B, T, H = tensors[0].shape[:3]
    if sub_chunk is None:
        sub_chunk = 1 << (math.isqrt(chunk_size).bit_length() - 1)
    sub = min(sub_chunk, chunk_size)
    C = -(-chunk_size // sub) * sub
    N = -(-T // C)
    out = []
    for x in tensors:
        x = x.to(dtype).transpose(1, 2)
        if N * C > T:
            x = torch.nn.functional.pad(x, (0, 0) * (x.ndim - 3) + (0, N * C - T))
        out.append(x.reshape(B, H, N, C, *x.shape[3:]))
    return out, sub, C


def decayed_pairs(
    a: torch.Tensor, bs: tuple[torch.Tensor, ...], G_row: torch.Tensor, G_col: torch.Tensor, sub: int, strict: bool
) -> list[torch.Tensor]:
    """For each b of `bs`: `M[i, j] = sum_c a[i, c] b[j, c] exp(G_row[i, c] - G_col[j, c])` for `j < i` (`strict`)
    or `j <= i`, 0 above: the pair terms of a chunk under a decay per key channel (KDA, the DPLR delta rule). The
    decay factors are computed once for all of `bs` (the DPLR rule needs two b's per a).

    a, b, G_row, G_col: `(..., C, K)`; G_col non-increasing along C (a cumulative log decay) and G_row either G_col
    or G_col one token earlier (`G_row[i] = G_col[i - 1]`, the exclusive sum), so that every used exponent is
    <= 0. Splitting `exp(G_row_i - G_col_j)` as `exp(G_row_i) exp(-G_col_j)` overflows under strong decay, so the
    chunk is cut into sub-chunks of `sub` tokens (C a multiple of it): inside one, the exact `(sub, sub, K)`
    exponents (masked to -inf above the diagonal before `exp`); between a sub-chunk I and the tokens before it,
    the product through the last token r before I, `exp(G_row_i - G_col_r) exp(G_col_r - G_col_j)`, both of
    exponent <= 0 (i > r >= j), one matmul per sub-chunk."""
    *lead, C, K = a.shape
    S = C // sub
    a_s, Gr_s, Gc_s = (x.reshape(*lead, S, sub, K) for x in (a, G_row, G_col))
    keep = torch.ones(sub, sub, dtype=torch.bool, device=a.device).tril(-1 if strict else 0)  # j (<)= i
    inside = (Gr_s[..., :, None, :] - Gc_s[..., None, :, :]).masked_fill(~keep[..., None], float("-inf")).exp()
    a_inside = a_s[..., :, None, :] * inside  # (..., S, sub, sub, K): a_i exp(G_row_i - G_col_j)
    if S > 1:
        G_r = Gc_s[..., :-1, -1, :]  # (..., S-1, K): the last token before each sub-chunk I = 1..S-1
        left = a_s[..., 1:, :, :] * (Gr_s[..., 1:, :, :] - G_r[..., None, :]).exp()  # (..., S-1, sub, K)
        before = torch.arange(C, device=a.device) < torch.arange(1, S, device=a.device)[:, None] * sub  # j <= r
        to_r = (G_r[..., :, None, :] - G_col[..., None, :, :]).masked_fill(~before[..., None], float("-inf")).exp()
    out = []
    for b in bs:
        diag = (a_inside * b.reshape(*lead, S, 1, sub, K)).sum(-1)  # (..., S, sub, sub)
        M = torch.zeros(*lead, S, sub, S, sub, dtype=diag.dtype, device=diag.device)
        M.diagonal(dim1=-4, dim2=-2).copy_(diag.movedim(-3, -1))  # block I at the columns of I
        M = M.reshape(*lead, S, sub, C)
        if S > 1:
            earlier = left @ (b[..., None, :, :] * to_r).transpose(-1, -2)  # (..., S-1, sub, C): through token r
            M = M + torch.cat([torch.zeros_like(earlier[..., :1, :, :]), earlier], dim=-3)
        out.append(M.reshape(*lead, C, C))
    return out


def check_chunk_arg(chunk_size: int | None) -> None:
    """A chunk op's `chunk_size` (None for a fused_recurrent op), checked once before any backend runs."""
    if chunk_size is not None and (isinstance(chunk_size, bool) or not isinstance(chunk_size, int) or chunk_size < 1):
        raise ValueError(f"chunk_size must be a positive int, got {chunk_size!r}")


def run_torch_backends(
    resolved: str,
    naive: Callable,
    chunk: Callable,
    step: Callable,
    chunk_size: int | None,
    per_token: dict[str, torch.Tensor | None],
    initial_state: torch.Tensor | None,
    output_final_state: bool,
    scale: float | None,
    cu_seqlens: torch.Tensor | None,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """The torch-side dispatch the sub-chunked families (kda, dplr) share once their op has handled `triton`:
    `naive` for the naive backend, else `chunk` (with `chunk_size`) or the step loop `step` (`chunk_size` None: a
    fused_recurrent op), sequence by sequence when `cu_seqlens` packs several. `per_token` are the op's
    `[B, T, ...]` tensors by keyword; `chunk_size` was checked by the op (`check_chunk_arg`)."""
    fn, extra = (
        (naive, {})
        if resolved == "naive"
        else (step, {})
        if chunk_size is None
        else (chunk, {"chunk_size": chunk_size})
    )
    if cu_seqlens is not None:
        return run_varlen(fn, cu_seqlens, per_token, initial_state, output_final_state, scale=scale, **extra)
    return fn(**per_token, scale=scale, initial_state=initial_state, output_final_state=output_final_state, **extra)


def without_autocast(fn: Callable) -> Callable:
    """Run an op with autocast off: every backend sets its own precision (fp32 accumulation, output in the
    dtype of v), and autocast would silently recast the torch backend's matmuls to bf16, or break its
    in-place ops on mixed dtypes."""

    @functools.wraps(fn)
    def wrapped(*args, **kwargs):
        with torch.autocast("cpu", enabled=False), torch.autocast("cuda", enabled=False):
            return fn(*args, **kwargs)

    return wrapped


def sync(device) -> None:
    """Wait for queued GPU work, so that a wall-clock timer measures it (no-op on CPU)."""
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize(device)


def median_seconds(fn: Callable[[], object], repeats: int, device) -> float:
    """Median wall time of `fn()` over `repeats` timed calls after one warm-up (allocator, first-call set-up);
    the benchmarks' shared timer."""
    fn()
    sync(device)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        sync(device)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def decayed_outer_update(S: torch.Tensor, decay: torch.Tensor | None, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """One recurrent step's state, `decay * S + k v^T`, as a new tensor (the caller's state and autograd's saved
    one stay intact): S `(B, H, K, V)`, decay broadcastable to it (or None), k `(B, H, K)`, v `(B, H, V)`. The
    outer product is added into the new state in place as a batched matmul, so no `(B, H, K, V)` temporary is
    written and read: in decode, where the state is the largest tensor a step touches, that is one pass less."""
    B, H, K, V = S.shape
    S = (S.clone() if decay is None else S * decay).contiguous()
    S.view(B * H, K, V).baddbmm_(k.reshape(B * H, K, 1), v.reshape(B * H, 1, V))
    return S
