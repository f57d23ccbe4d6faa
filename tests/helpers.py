"""Shared test helpers (import as ``from tests.helpers import assert_close``)."""

from __future__ import annotations

import importlib.util
from pathlib import Path
from types import ModuleType

import torch

SCRIPTS = Path(__file__).resolve().parent.parent / "scripts"


def load_script(name: str) -> ModuleType:
    """`scripts/<name>.py` as a module (the scripts are not a package)."""
    spec = importlib.util.spec_from_file_location(name, SCRIPTS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


TINY_HYBRID_MQAR = [
    "model=hybrid_gla",
    "model.d_model=32",
    "model.head_dim=8",
    "model.n_layers=2",
    "model.attn.layers=[1]",
    "data.vocab_size=64",
    "data.seq_len=32",
    "data.num_kv_pairs=4",
]
"""The smallest hybrid (GLA + one attention layer) on MQAR: the model and data overrides the trainer tests share."""


def experiment_overrides(name: str, corpus) -> list[str]:
    """`+experiment=NAME`, and the corpus (`conftest.token_corpus`) when the experiment trains on `data=tokens`, whose
    `data.path` a user must give."""
    from omegaconf import OmegaConf

    from zoo.config import conf_dir

    defaults = OmegaConf.to_container(OmegaConf.load(conf_dir() / "experiment" / f"{name}.yaml")).get("defaults", [])
    on_tokens = any(isinstance(d, dict) and d.get("override /data") == "tokens" for d in defaults)
    return [f"+experiment={name}", *([f"data.path={corpus}"] if on_tokens else [])]


def assert_close(
    actual: torch.Tensor,
    expected: torch.Tensor,
    rtol: float = 1e-5,
    atol: float = 1e-6,
    name: str = "tensor",
) -> None:
    """Assert ``|actual - expected| <= atol + rtol * |expected|`` elementwise, with a readable report.

    The relative error uses ``atol`` as an absolute floor, so entries near zero are judged by ``atol``.
    The message gives shapes/dtypes, max abs and max rel error, the number of failing entries and
    whether either side contains NaN or inf (NaN anywhere always fails).
    """
    if actual.shape != expected.shape:
        raise AssertionError(f"{name}: shape {tuple(actual.shape)} != expected {tuple(expected.shape)}")
    a = actual.detach().to(torch.float64)
    e = expected.detach().to(torch.float64)
    nan_a, nan_e = bool(a.isnan().any()), bool(e.isnan().any())
    inf_a, inf_e = bool(a.isinf().any()), bool(e.isinf().any())
    err = (a - e).abs()
    rel = err / e.abs().clamp_min(atol if atol > 0 else torch.finfo(torch.float64).tiny)
    bad = ~(err <= atol + rtol * e.abs())  # NaN compares False, so NaN counts as bad
    if nan_a or nan_e or bool(bad.any()):
        finite = err[err.isfinite()]
        max_abs = finite.max().item() if finite.numel() else float("nan")
        finite_rel = rel[rel.isfinite()]
        max_rel = finite_rel.max().item() if finite_rel.numel() else float("nan")
        raise AssertionError(
            f"{name}: {int(bad.sum())}/{bad.numel()} entries outside rtol={rtol:g}, atol={atol:g}; "
            f"max abs err {max_abs:.3e}, max rel err {max_rel:.3e}; "
            f"NaN in actual={nan_a} expected={nan_e}; inf in actual={inf_a} expected={inf_e}; "
            f"shape {tuple(a.shape)}, dtypes {actual.dtype} vs {expected.dtype}"
        )


class Interrupt(Exception):
    """Raised by `interrupted_run` to kill a training run mid-way (a crash, as far as the run folder can tell)."""


def interrupted_run(cfg, run_dir, step: int) -> None:
    """`zoo.train.loop.run_training(cfg, run_dir)`, killed after optimizer step `step` (the resume tests' crash)."""
    import pytest

    from zoo.train.loop import run_training

    def crash(done, loss):
        if done == step:
            raise Interrupt

    with pytest.raises(Interrupt):
        run_training(cfg, run_dir, on_step=crash)
