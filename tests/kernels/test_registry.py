"""The kernel family registry: declarations, derived backend table, lazy op resolution, the input factory."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import kernels
from kernels import backend as kbackend
from kernels import registry
from tests.helpers import assert_close

FAMILIES = list(registry.families())


def test_expected_families_are_registered():
    assert set(FAMILIES) >= {"gla", "simple_gla", "rwkv6", "delta_rule", "gated_delta_rule"}


@pytest.mark.parametrize("family", FAMILIES)
def test_backends_match_available_backends(family):
    fam = registry.family(family)
    assert {"naive", "torch"} <= fam.backends <= {"naive", "torch", "triton"}
    assert kbackend.available_backends(family) == sorted(fam.backends)
    assert kbackend.AVAILABLE[family] == set(fam.backends)


def test_available_is_derived_from_the_registry():
    assert set(kbackend.AVAILABLE) == set(FAMILIES)
    assert kbackend.BACKENDS == ("auto", "triton", "torch", "naive")
    with pytest.raises(ValueError, match=r"unknown kernel family 'nope'; known families: \['delta_rule'"):
        kbackend.available_backends("nope")
    with pytest.raises(ValueError, match="unknown kernel family 'nope'"):
        registry.family("nope")


@pytest.mark.parametrize("name", sorted(registry.ops()))
def test_every_op_resolves(name):
    fn = registry.op(name)
    assert callable(fn) and fn.__name__ == name
    assert getattr(kernels, name) is fn
    package = sys.modules[fn.__module__.rpartition(".")[0]]  # kernels.<folder>: `from kernels.<folder> import op`
    assert getattr(package, name) is fn and name in dir(package)


def test_dir_and_all_list_every_registered_op():
    public = {"BACKENDS", "resolve_backend"}
    assert set(kernels.__dir__()) - public == set(registry.ops())
    assert sorted(kernels.__all__) == kernels.__dir__() == dir(kernels)
    with pytest.raises(AttributeError, match="module 'kernels' has no attribute 'chunk_nope'"):
        kernels.chunk_nope  # noqa: B018


def test_family_rejects_unknown_or_missing_backends():
    def make(*args):
        return "chunk_x", {}

    with pytest.raises(ValueError, match=r"must be among \['triton', 'torch', 'naive'\] and include"):
        registry.Family(name="x", ops={}, backends={"naive", "torch", "cuda"}, make_inputs=make)
    with pytest.raises(ValueError, match="include 'naive' and 'torch'"):
        registry.Family(name="x", ops={}, backends={"torch"}, make_inputs=make)


@pytest.mark.parametrize("family", FAMILIES)
def test_factory_inputs_agree_on_torch_and_naive(family):
    B, T, H, K, V = 1, 20, 2, 8, 8
    fam = registry.family(family)
    op, x = fam.inputs(B, T, H, K, V, initial_state=fam.stateful)
    assert op in {registry.op(name) for name in fam.ops}
    if not fam.stateful:  # o alone (forgetting attention)
        o, o_ref = op(**x, backend="torch"), op(**x, backend="naive")
        assert o.shape == (B, T, H, V)
        assert_close(o, o_ref, rtol=1e-4, atol=1e-5, name=f"{family} o")
        return
    outs = {be: op(**x, output_final_state=True, backend=be) for be in ("torch", "naive")}
    (o, s), (o_ref, s_ref) = outs["torch"], outs["naive"]
    assert o.shape == (B, T, H, V) and s.shape == (B, H, K, V)
    assert_close(o, o_ref, rtol=1e-4, atol=1e-5, name=f"{family} o")
    assert_close(s, s_ref, rtol=1e-4, atol=1e-5, name=f"{family} final_state")


@pytest.mark.parametrize("family", FAMILIES)
def test_factory_is_seeded_and_keeps_gates_fp32(family):
    fam = registry.family(family)
    _, x = fam.inputs(1, 6, 2, 4, 4, dtype=torch.bfloat16, initial_state=fam.stateful)
    _, again = fam.inputs(1, 6, 2, 4, 4, dtype=torch.bfloat16, initial_state=fam.stateful)
    assert x.keys() == again.keys() and all(torch.equal(x[n], again[n]) for n in x)
    fp32 = {"g", "w", "gk", "beta", "initial_state"}  # as the mixers pass them
    for name, t in x.items():
        assert t.dtype == (torch.float32 if name in fp32 else torch.bfloat16), name
        if name in {"g", "w", "gk"}:
            assert (t <= 0).all(), name
    if "beta" in x:  # the delta rules take unit keys
        norms = x["k"].float().norm(dim=-1)  # [1, 6, 2], or [1, 6 * n, 2] for n steps per token (DeltaProduct)
        assert_close(norms, torch.ones_like(norms), rtol=1e-2, atol=1e-2, name="|k|")


def test_import_kernels_is_lazy_and_never_imports_triton():
    code = (
        "import sys, kernels\n"
        "loaded = sorted(m for m in sys.modules if m.startswith('kernels.'))\n"
        "assert not [m for m in loaded if m.endswith(('.ops', '.torch', '.naive'))], loaded\n"
        "kernels.chunk_gla\n"
        "assert 'triton' not in sys.modules, 'triton was imported'\n"
        "assert 'kernels.gla.torch' in sys.modules and 'kernels.rwkv6.torch' not in sys.modules\n"
    )
    env = {key: val for key, val in os.environ.items() if key != "TRITON_INTERPRET"}
    env["CUDA_VISIBLE_DEVICES"] = ""
    subprocess.run([sys.executable, "-c", code], check=True, env=env, cwd=Path(__file__).resolve().parents[2])


def test_every_triton_family_names_the_fla_op_it_is_cross_checked_against():
    """test_against_fla compares the families that declare `fla`: a Triton family without one would drop out of
    that check unseen."""
    missing = [n for n, fam in registry.families().items() if "triton" in fam.backends and fam.fla is None]
    assert not missing, missing
