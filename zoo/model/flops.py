"""Forward FLOPs per token of the model's parts, for the trainer's MFU (`train/mfu`).

The convention (Kaplan et al. 2020, PaLM's appendix B): count the matrix products only, 2 FLOPs per
multiply-add. A weight matrix that multiplies every token's activations costs 2 FLOPs per element per token:
every `nn.Linear` (the LM head included), raw matrix parameters used the same way (RWKV's low-rank mixes, each
mixer lists its own) and the depthwise short convolutions (`kernel_size` taps per channel). Embedding lookups,
norms, gates, activations, decays, feature maps and biases are not counted. Token mixing adds what its
algorithm multiplies across positions, causally: attention's `q.k` and `p.v` over the keys a query sees,
`2 * 2 * d_attn` per key, averaged over the positions (`mean_causal_keys`: (T + 1) / 2 without a window);
the chunked linear mixers their state reads and writes plus the products inside a chunk, again over the keys
each token sees there (`chunk_mixing_flops`). A training step costs 3x the forward (the backward twice it).

For a transformer this is `6 N + 6 L d_attn (T + 1)` per trained token with N the matrix weights (the head's
`d x vocab` included, the embedding table not): PaLM's `6 N + 12 L d_attn T` with the attention term halved
for the causal mask.
"""

from __future__ import annotations

import torch
from torch import nn

from zoo.model.layers import ShortConvolution

CHUNK_FORMS = ("linear", "delta", "dplr")


def matmul_flops(module: nn.Module) -> float:
    """Forward FLOPs per token of `module`'s linear layers and short convolutions: 2 per weight element."""
    kinds = (nn.Linear, ShortConvolution)
    return 2.0 * sum(m.weight.numel() for m in module.modules() if isinstance(m, kinds))


def matrix_flops(*weights: torch.Tensor) -> float:
    """Forward FLOPs per token of raw matrix parameters that every token's activations multiply."""
    return 2.0 * sum(w.numel() for w in weights)


class MatmulFlops:
    """`flops_per_token` of a module whose only products are its linear layers (the MLPs)."""

    def flops_per_token(self, seq_len: int) -> float:
        return matmul_flops(self)


def mean_causal_keys(seq_len: int, window: int | None = None) -> float:
    """The keys a query sees, averaged over the positions 1..T of a sequence: `min(t, window)` at position t."""
    if seq_len < 1:
        raise ValueError(f"seq_len must be >= 1, got {seq_len}")
    w = seq_len if window is None else min(window, seq_len)
    # positions 1..w see t keys, the remaining T - w see w
    return (w * (w + 1) / 2 + (seq_len - w) * w) / seq_len


def _chunks(seq_len: int, chunk_size: int) -> list[int]:
    full, tail = divmod(seq_len, chunk_size)
    return [chunk_size] * full + ([tail] if tail else [])


def mean_chunk_keys(seq_len: int, chunk_size: int) -> float:
    """The positions of its own chunk a token sees (itself and those before it), averaged over the sequence."""
    return sum(c * (c + 1) / 2 for c in _chunks(seq_len, chunk_size)) / seq_len


def chunk_mixing_flops(form: str, seq_len: int, chunk_size: int, key_dim: int, value_dim: int) -> float:
    """Forward FLOPs per token and head of a chunked linear recurrence with a `[K, V]` state, as the `kernels`
    chunked forms compute it; a product over the positions of a chunk counts the keys each token sees there
    (`c = mean_chunk_keys`), so `2 c D` per token for a `[C, C] x [C, D]` product.

    - `linear` (simple GLA, GLA, RWKV-6): the state read `q S` and write `k^T v` (4 K V), the scores `q k^T`
      and their values (2 c (K + V)).
    - `delta` (the delta rule, gated, KDA; Gated DeltaProduct per step): the state read, write and the
      pseudo-values `u - W S` (6 K V); `k k^T`, `W = T k` and the scores (2 c 3K), `U = T v` and the scores'
      values (2 c 2V); and the triangular inverse `T` of each chunk's `[C, C]` system, `C^3 / 3`.
    - `dplr` (RWKV-7's diagonal-plus-low-rank rule): `u = U + W S`, `q S`, `k^T v`, `b^T u` (8 K V); four
      score matrices and `W` (2 c 5K), `A_ak v`, `T (A_ak v)`, the scores' `v` and `u` (2 c 4V); the inverse."""
    if form not in CHUNK_FORMS:
        raise ValueError(f"unknown chunk form {form!r}; valid: {', '.join(CHUNK_FORMS)}")
    c = mean_chunk_keys(seq_len, chunk_size)
    K, V = key_dim, value_dim
    if form == "linear":
        return 4 * K * V + 2 * c * (K + V)
    inverse = sum(n**3 / 3 for n in _chunks(seq_len, chunk_size)) / seq_len
    if form == "delta":
        return 6 * K * V + 2 * c * (3 * K + 2 * V) + inverse
    return 8 * K * V + 2 * c * (5 * K + 4 * V) + inverse
