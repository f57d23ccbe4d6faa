"""The parallel mixer against its branches run alone: its output is their sum on the same input, with and without
a carried cache (chunked prefill, then one-token decode); its cache holds theirs, its state is theirs together, and
a KV cache's reserve reaches the attention branch."""

from __future__ import annotations

import pytest
import torch

from tests.helpers import assert_close
from zoo.errors import ConfigError
from zoo.model.config import mixer_defaults
from zoo.model.lm import build_mixer

D_MODEL, HEAD_DIM = 32, 8
OPTIONS = {"attn": mixer_defaults("attn"), "mamba2": {**mixer_defaults("mamba2"), "d_state": 8, "chunk_size": 4}}


def make_layer():
    torch.manual_seed(0)
    layer = build_mixer("parallel", D_MODEL, 0, 2, HEAD_DIM, {"branches": ["attn", "mamba2"]}, OPTIONS).double()
    with torch.no_grad():
        for p in layer.parameters():
            p.add_(torch.randn_like(p) * 0.1)
    return layer


def test_the_output_is_the_sum_of_the_branches():
    layer = make_layer()
    attn, mamba2 = layer.branches.values()
    x = torch.randn(2, 11, D_MODEL, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    expected = attn(x)[0] + mamba2(x)[0]
    y, cache = layer(x)
    assert cache is None
    assert_close(y, expected, rtol=1e-12, atol=1e-12, name="parallel vs its branches")
    cache, pieces = layer.init_cache(), []
    for a, b in [(0, 5), (5, 9), (9, 10), (10, 11)]:
        y, cache = layer(x[:, a:b], cache)
        pieces.append(y)
    assert_close(torch.cat(pieces, 1), expected, rtol=1e-10, atol=1e-12, name="cached vs its branches")
    assert [type(c).__name__ for c in cache.branches] == ["KVCache", "Mamba2Cache"]
    assert layer.state_bytes(11, batch_size=2) == attn.state_bytes(11, 2) + mamba2.state_bytes(11, 2)
    assert layer.state_grows and layer.preallocates
    assert layer.kernel_backends() == {**attn.kernel_backends(), **mamba2.kernel_backends()}


def test_a_reserve_reaches_the_kv_cache():
    cache = make_layer().init_cache()
    cache.reserve = 40
    assert cache.branches[0].reserve == 40 and cache.reserve == 40


def test_the_branches_options_must_be_given():
    with pytest.raises(ConfigError, match=r"layer 0: mixer 'parallel' needs the options of its branches"):
        build_mixer("parallel", D_MODEL, 0, 2, HEAD_DIM, {"branches": ["attn", "mamba2"]}, {"attn": OPTIONS["attn"]})
