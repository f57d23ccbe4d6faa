"""Attention against a plain masked-softmax reference, with and without a window, grouped-query heads."""

from __future__ import annotations

import pytest
import torch

from tests.helpers import assert_close
from zoo.mixers.attention import Attention, attend, reference_attention


def naive_softmax_attention(q, k, v, window):
    """Per-query loop: softmax over the keys each query may see (the most literal definition)."""
    B, T, H, D = q.shape
    group = H // k.shape[2]
    out = torch.zeros_like(q)
    for t in range(T):
        lo = 0 if window is None else max(0, t - window + 1)
        for h in range(H):
            scores = (k[:, lo : t + 1, h // group] @ q[:, t, h, :, None]).squeeze(-1) * D**-0.5  # (B, n)
            out[:, t, h] = (scores.softmax(-1)[:, :, None] * v[:, lo : t + 1, h // group]).sum(1)
    return out


@pytest.mark.parametrize("window", [None, 1, 4, 50], ids=lambda w: f"window{w}")
@pytest.mark.parametrize("kv_heads", [4, 2, 1], ids=lambda h: f"kv{h}")
def test_attend_matches_per_query_reference(window, kv_heads):
    g = torch.Generator().manual_seed(0)
    q = torch.randn(2, 13, 4, 8, generator=g, dtype=torch.float64)
    k = torch.randn(2, 13, kv_heads, 8, generator=g, dtype=torch.float64)
    v = torch.randn(2, 13, kv_heads, 8, generator=g, dtype=torch.float64)
    expected = naive_softmax_attention(q, k, v, window)
    assert_close(attend(q, k, v, 0, window), expected, rtol=1e-10, atol=1e-12, name="attend")
    assert_close(reference_attention(q, k, v, 0, window), expected, rtol=1e-5, atol=1e-6, name="reference")


@pytest.mark.parametrize("window", [None, 3], ids=lambda w: f"window{w}")
def test_attend_over_cached_keys(window):
    """Queries for positions 9..12 over keys 0..12 equal the last rows of the full computation."""
    g = torch.Generator().manual_seed(1)
    q, k, v = (torch.randn(1, 13, 2, 8, generator=g, dtype=torch.float64) for _ in range(3))
    full = naive_softmax_attention(q, k, v, window)
    assert_close(attend(q[:, 9:], k, v, 9, window), full[:, 9:], rtol=1e-10, atol=1e-12, name="cached")


def test_sliding_window_cache_keeps_only_the_window():
    layer = Attention(32, 0, n_layers=1, head_dim=8, window_size=4).eval()
    cache = layer.init_cache()
    with torch.no_grad():
        _, cache = layer(torch.randn(1, 10, 32), cache)
        assert cache.k.shape[1] == 4 and cache.offset == 10
        _, cache = layer(torch.randn(1, 1, 32), cache)
    assert cache.k.shape[1] == 4 and cache.offset == 11


@pytest.mark.parametrize("window", [None, 3], ids=lambda w: f"window{w}")
def test_key_mask_hides_left_padding(window):
    """Rows of 13 and 8 keys, the short one left-padded to 13 and masked: each row equals its own unpadded
    attention, in `attend` and in the reference; the padding's values never leak into the output."""
    g = torch.Generator().manual_seed(2)
    q, k, v = (torch.randn(2, 13, 2, 8, generator=g, dtype=torch.float64) for _ in range(3))
    k[1, :5], v[1, :5] = 1e3, 1e3  # garbage in the padding slots
    key_mask = torch.ones(2, 13, dtype=torch.bool)
    key_mask[1, :5] = False
    full_row = naive_softmax_attention(q[:1], k[:1], v[:1], window)
    short_row = naive_softmax_attention(q[1:, 5:], k[1:, 5:], v[1:, 5:], window)
    for name, fn in (("attend", attend), ("reference", reference_attention)):
        tol = {"rtol": 1e-10, "atol": 1e-12} if fn is attend else {"rtol": 1e-5, "atol": 1e-6}
        o = fn(q, k, v, 0, window, key_mask)
        assert_close(o[:1], full_row, **tol, name=f"{name} full row")
        assert_close(o[1:, 5:], short_row, **tol, name=f"{name} padded row")
        # decode: the last query alone over the cached keys
        assert_close(fn(q[:, -1:], k, v, 12, window, key_mask)[1:], short_row[:, -1:], **tol, name=f"{name} step")
