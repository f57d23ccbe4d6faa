"""Optimizer state as safetensors + JSON (no pickle), so a resumed run continues exactly."""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

TENSORS = "trainer_state.safetensors"
META = "trainer_state.json"
# How the optimizer runs, not what it holds: on loading, the running optimizer's values win over the checkpoint's
# (train.optimizer_impl may change between a run and its resumption).
IMPL_KEYS = ("foreach", "fused")


def save_trainer_state(directory: Path, optimizer: torch.optim.Optimizer, meta: dict) -> None:
    """Write the optimizer's tensors (`state.<param>.<key>`) and everything else as JSON."""
    sd = optimizer.state_dict()
    tensors, scalars = {}, {}
    for idx, state in sd["state"].items():
        for key, value in state.items():
            if torch.is_tensor(value):
                tensors[f"state.{idx}.{key}"] = value.detach().contiguous()
            else:
                scalars[f"{idx}.{key}"] = value
    groups = [{k: list(v) if isinstance(v, tuple) else v for k, v in g.items()} for g in sd["param_groups"]]
    save_file(tensors, str(directory / TENSORS))
    payload = {"meta": meta, "param_groups": groups, "scalar_state": scalars}
    (directory / META).write_text(json.dumps(payload, indent=2) + "\n")


def load_trainer_state(directory: Path, optimizer: torch.optim.Optimizer) -> dict:
    """Restore the optimizer from `save_trainer_state`'s files, keeping its own implementation (`IMPL_KEYS`: a
    checkpoint of a `for_loop` AdamW resumes `fused`, with its step counters moved where that one keeps them);
    returns the saved `meta`."""
    payload = json.loads((directory / META).read_text())
    state: dict[int, dict] = {}
    for name, value in load_file(str(directory / TENSORS)).items():
        _, idx, key = name.split(".", 2)
        state.setdefault(int(idx), {})[key] = value
    for name, value in payload["scalar_state"].items():
        idx, key = name.split(".", 1)
        state.setdefault(int(idx), {})[key] = value
    groups = [{k: tuple(v) if k == "betas" else v for k, v in g.items()} for g in payload["param_groups"]]
    for group, running in zip(groups, optimizer.param_groups, strict=False):  # a count mismatch: torch's error
        group.update({k: running[k] for k in IMPL_KEYS if k in running})
    optimizer.load_state_dict({"state": state, "param_groups": groups})
    return payload["meta"]
