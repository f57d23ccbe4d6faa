"""Every op runs unchanged under autocast: the backends choose their own precision (fp32 accumulation), so
a bf16 autocast region around a model must neither break the torch backend nor change its result."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

import kernels
from tests.helpers import assert_close


def _args(family: str):
    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(1, 10, 2, 8, generator=g) for _ in range(3))
    gate_h = F.logsigmoid(torch.randn(1, 10, 2, generator=g))
    gate_k = F.logsigmoid(torch.randn(1, 10, 2, 8, generator=g))
    beta = torch.rand(1, 10, 2, generator=g)
    kn = F.normalize(k, dim=-1)
    return {
        "simple_gla": ({"q": q, "k": k, "v": v, "g": gate_h}, "simple_gla"),
        "gla": ({"q": q, "k": k, "v": v, "g": gate_k}, "gla"),
        "rwkv6": ({"r": q, "k": k, "v": v, "w": gate_k, "u": torch.randn(2, 8, generator=g)}, "rwkv6"),
        "delta_rule": ({"q": q, "k": kn, "v": v, "beta": beta}, "delta_rule"),
        "gated_delta_rule": ({"q": q, "k": kn, "v": v, "g": gate_h, "beta": beta}, "gated_delta_rule"),
    }[family]


@pytest.mark.parametrize("kind", ["chunk", "fused_recurrent"])
@pytest.mark.parametrize("family", ["simple_gla", "gla", "rwkv6", "delta_rule", "gated_delta_rule"])
def test_ops_ignore_autocast(family, kind):
    kwargs, name = _args(family)
    op = getattr(kernels, f"{kind}_{name}")
    expected, _ = op(**kwargs, backend="torch")
    with torch.autocast("cpu", dtype=torch.bfloat16):
        got, _ = op(**kwargs, backend="torch")
    assert got.dtype == torch.float32
    assert_close(got, expected, rtol=1e-6, atol=1e-6, name=f"{kind}_{family} under autocast")
