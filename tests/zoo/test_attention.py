"""Attention against a plain masked-softmax reference, with and without a window, grouped-query heads."""

from __future__ import annotations

import pytest
import torch

from tests.helpers import assert_close
from zoo.errors import ConfigError
from zoo.model.config import mixer_defaults
from zoo.model.lm import build_mixer
from zoo.model.mixers.attention import Attention, attend, reference_attention
from zoo.model.mixers.swa import SlidingWindowAttention


def conf(name: str = "attn", **overrides) -> dict:
    """conf/mixer/<name>.yaml's options (the constructors have no defaults), `overrides` replacing some."""
    return {**mixer_defaults(name), **overrides}


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
    layer = Attention(32, 0, n_layers=1, head_dim=8, **conf(window_size=4)).eval()
    cache = layer.init_cache()
    with torch.no_grad():
        _, cache = layer(torch.randn(1, 10, 32), cache)
        assert cache.k.shape[2] == 4 and cache.offset == 10
        _, cache = layer(torch.randn(1, 1, 32), cache)
    assert cache.k.shape[2] == 4 and cache.offset == 11


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
@pytest.mark.parametrize("window", [None, 4], ids=lambda w: f"window{w}")
def test_state_grows_only_without_a_window_and_state_bytes_is_the_kv_cache(window, dtype):
    layer = Attention(32, 0, n_layers=1, head_dim=8, **conf(num_kv_heads=2, window_size=window)).to(dtype)
    assert layer.state_grows is (window is None) and layer.preallocates
    with torch.no_grad():
        _, cache = layer(torch.randn(3, 10, 32, dtype=dtype), layer.init_cache())
    assert cache.k.dtype == dtype
    assert layer.state_bytes(10, batch_size=3) == sum(t.numel() * t.element_size() for t in (cache.k, cache.v))
    swa = SlidingWindowAttention(32, 0, n_layers=1, head_dim=8, **conf("swa"))
    assert not swa.state_grows and swa.window_size == mixer_defaults("swa")["window_size"]


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


def _layer(window=None) -> Attention:
    torch.manual_seed(3)
    return Attention(32, 0, n_layers=1, head_dim=8, **conf(num_kv_heads=2, window_size=window)).double().eval()


def _keys(layer: Attention, x: torch.Tensor) -> torch.Tensor:
    """The keys (after RoPE) a layer caches for `x` from position 0, computed without any cache."""
    from zoo.model.layers import rotary

    B, T, _ = x.shape
    k = layer.k_proj(x).view(B, T, layer.num_kv_heads, layer.head_dim)
    return rotary(k, torch.arange(T), layer.rope_theta).transpose(1, 2)  # the cache is head-first


@pytest.mark.parametrize("window", [None, 5], ids=lambda w: f"window{w}")
@pytest.mark.parametrize("reserve", [0, 40], ids=lambda r: f"reserve{r}")
def test_decode_into_the_kv_buffer_equals_the_parallel_forward(window, reserve):
    """Prefill 7, then 33 one-token steps written in place into the buffer: the outputs are the parallel
    forward's and the cache holds exactly the last keys. Without a reserve the buffer grows by 1.5x (a few
    reallocations, never more than 1.5x the keys + 16 slots); a reserve covering the sequence is allocated
    once; a windowed cache never holds more than window + chunk + 16 slots."""
    layer, x = _layer(window), torch.randn(2, 40, 32, dtype=torch.float64)
    with torch.no_grad():
        full = layer(x)[0]
        cache = layer.init_cache()
        cache.reserve = reserve
        out, cache = layer(x[:, :7], cache)
        outs, buffers = [out], {id(cache._buf)}
        for t in range(7, 40):
            out, cache = layer(x[:, t : t + 1], cache)
            outs.append(out)
            buffers.add(id(cache._buf))
            capacity = cache._buf.k.shape[2]
            if window is not None:
                assert capacity <= window + 7 + 16
            elif reserve:
                assert capacity == reserve
            else:
                assert capacity <= (t + 1) * 3 // 2 + 16
        kept = 40 if window is None else window
        assert_close(cache.k, _keys(layer, x)[:, :, -kept:], rtol=1e-12, atol=1e-12, name="cached keys")
    assert_close(torch.cat(outs, 1), full, rtol=1e-10, atol=1e-12, name="buffered decode")
    assert cache.offset == 40
    assert len(buffers) == 1 if reserve and window is None else 2 <= len(buffers) <= 6


def test_a_shallow_copy_of_the_cache_does_not_overwrite_its_sibling():
    """Two continuations from copies sharing one buffer: the second must not write over the first's keys."""
    import copy

    layer, x = _layer(), torch.randn(1, 12, 32, dtype=torch.float64)
    alt = torch.cat([x[:, :10], torch.randn(1, 2, 32, dtype=torch.float64)], 1)
    with torch.no_grad():
        _, cache = layer(x[:, :10], layer.init_cache())
        branch = copy.copy(cache)
        a, cache = layer(x[:, 10:], cache)  # writes slots 10, 11 of the shared buffer
        b, branch = layer(alt[:, 10:], branch)  # the same slots from the branch: must go to a buffer of its own
        full_a, full_b = layer(x)[0][:, 10:], layer(alt)[0][:, 10:]
        assert_close(a, full_a, rtol=1e-10, atol=1e-12, name="first branch")
        assert_close(b, full_b, rtol=1e-10, atol=1e-12, name="second branch")
        assert_close(cache.k, _keys(layer, x), rtol=1e-12, atol=1e-12, name="first branch's keys")
    assert cache._buf is not branch._buf


def test_a_cache_continued_under_autograd_keeps_its_gradients():
    """With gradients the cache grows by concatenation: an in-place buffer would invalidate the keys saved for
    backward. Two chunks through one cache give the parallel forward's gradients."""
    layer = _layer()
    x = torch.randn(1, 9, 32, dtype=torch.float64, requires_grad=True)
    a, cache = layer(x[:, :5], layer.init_cache())
    b, cache = layer(x[:, 5:], cache)
    torch.cat([a, b], 1).square().sum().backward()
    g_chunks = x.grad.clone()
    x.grad = None
    layer(x)[0].square().sum().backward()
    assert cache._buf is None
    assert_close(g_chunks, x.grad, rtol=1e-10, atol=1e-12, name="grad through the cache")


def test_num_heads_sets_the_head_count_instead_of_head_dim():
    layer = Attention(32, 0, n_layers=1, head_dim=8, **conf(num_heads=2))
    assert (layer.num_heads, layer.head_dim, layer.q_proj.out_features) == (2, 16, 32)
    assert layer.cache_tensors(5)[0][0] == (2, 5, 16)
    with pytest.raises(ConfigError, match="num_heads must divide the attn key dim: 3 does not divide 32"):
        Attention(32, 0, n_layers=1, head_dim=8, **conf(num_heads=3))


def test_a_checkpoint_from_before_num_heads_builds_as_before():
    options = {k: v for k, v in conf().items() if k != "num_heads"}
    layer = build_mixer("attn", 32, 0, 1, 8, options)
    assert (layer.num_heads, layer.head_dim) == (4, 8)
    with pytest.raises(ConfigError, match=r"missing option\(s\) \['rope_theta'\]"):
        build_mixer("attn", 32, 0, 1, 8, {k: v for k, v in options.items() if k != "rope_theta"})
