"""Checkpoints: safetensors weights + plain-JSON config + tokenizer, written atomically.

Loading never unpickles (safetensors and JSON only) and never instantiates anything named by the
file: the config names mixers by registry key and is validated like any other config.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from zoo.config import ModelConfig

WEIGHTS = "model.safetensors"
CONFIG = "config.json"
FORMAT_VERSION = 1


class CheckpointError(ValueError):
    """A checkpoint that is missing, corrupt, or does not match the model it is loaded into."""


def write_dir_atomically(directory, write: Callable[[Path], None]) -> Path:
    """Run `write(tmp_dir)` then swap `tmp_dir` into `directory`, so a crash never leaves a half-written
    checkpoint: readers see the old folder, or `<directory>.old` during the swap (see `readable_dir`)."""
    directory = Path(directory)
    directory.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{directory.name}.tmp-", dir=directory.parent))
    try:
        write(tmp)
        old = directory.with_name(directory.name + ".old")
        if directory.exists():
            if old.exists():
                shutil.rmtree(old)
            os.replace(directory, old)
        os.replace(tmp, directory)
        if old.exists():
            shutil.rmtree(old)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp)
    return directory


def readable_dir(directory) -> Path:
    """`directory`, or its `.old` twin when a crash hit between the two renames of an atomic write."""
    directory = Path(directory)
    old = directory.with_name(directory.name + ".old")
    if not directory.exists() and old.exists():
        return old
    return directory


def model_tensors(model) -> dict[str, torch.Tensor]:
    """The state dict to store: tied LM-head weights are stored once (as the embedding)."""
    state = {k: v.detach().contiguous() for k, v in model.state_dict().items()}
    if model.config.tie_embeddings:
        state.pop("lm_head.weight", None)
    return state


def write_model_files(model, directory: Path) -> None:
    save_file(model_tensors(model), str(directory / WEIGHTS), metadata={"format": "pt"})
    config = {"model_type": "hybrid_zoo", "format_version": FORMAT_VERSION, "model": model.config.to_dict()}
    (directory / CONFIG).write_text(json.dumps(config, indent=2) + "\n")
    if getattr(model, "tokenizer", None) is not None:
        model.tokenizer.save(directory)


def save_pretrained(model, directory) -> Path:
    """Write `model.safetensors`, `config.json` and the tokenizer files into `directory` atomically."""
    return write_dir_atomically(directory, lambda tmp: write_model_files(model, tmp))


def load_config(directory) -> ModelConfig:
    path = Path(directory) / CONFIG
    if not path.exists():
        raise CheckpointError(f"{path} not found: not a hybrid-zoo checkpoint folder")
    try:
        data = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise CheckpointError(f"{path} is not valid JSON: {e}") from e
    if data.get("model_type") != "hybrid_zoo" or "model" not in data:
        raise CheckpointError(f"{path} is not a hybrid-zoo config (model_type={data.get('model_type')!r})")
    return ModelConfig.from_any(data["model"])


def load_weights(model, directory) -> None:
    """Load `model.safetensors` into `model`; the first missing, unexpected or mis-shaped tensor is named."""
    path = Path(directory) / WEIGHTS
    if not path.exists():
        raise CheckpointError(f"{path} not found")
    try:
        stored = load_file(str(path))
    except (SafetensorError, OSError) as e:
        raise CheckpointError(f"{path} is corrupt or unreadable: {e}") from e
    expected = model_tensors(model)
    for name, tensor in expected.items():
        if name not in stored:
            raise CheckpointError(f"{path}: missing tensor {name!r} (shape {tuple(tensor.shape)})")
        if stored[name].shape != tensor.shape:
            raise CheckpointError(
                f"{path}: tensor {name!r} has shape {tuple(stored[name].shape)}, model expects {tuple(tensor.shape)}"
            )
    for name in stored:
        if name not in expected:
            raise CheckpointError(f"{path}: unexpected tensor {name!r} not in the model")
    model.load_state_dict(stored, strict=False)  # strict=False only for the tied head, checked above


def resolve_pretrained(name_or_path) -> Path:
    """A local checkpoint folder as is; otherwise a Hugging Face Hub repo id, downloaded or taken from
    the local cache by `huggingface_hub.snapshot_download` (which honours HF_HUB_OFFLINE)."""
    path = Path(name_or_path)
    if path.exists():
        return readable_dir(path)
    if readable_dir(path).exists():
        return readable_dir(path)
    if str(name_or_path).count("/") != 1 or str(name_or_path).startswith((".", "/")):
        raise CheckpointError(f"{name_or_path}: no such checkpoint folder (and not a hub id of the form owner/name)")
    try:
        from huggingface_hub import snapshot_download
    except ImportError as e:
        raise ImportError("loading from the Hub needs huggingface_hub: pip install huggingface_hub") from e
    try:
        return Path(snapshot_download(str(name_or_path), allow_patterns=["*.json", "*.safetensors", "*.md"]))
    except Exception as e:  # network, auth and missing-repo errors all end here
        raise CheckpointError(f"{name_or_path}: not a local folder, and the Hub download failed: {e}") from e


def from_pretrained(name_or_path, device: str | torch.device = "cpu"):
    """Build the model described by `config.json` and load its weights and tokenizer."""
    from zoo.model import HybridLM
    from zoo.tokenizer import load_tokenizer

    directory = resolve_pretrained(name_or_path)
    model = HybridLM(load_config(directory))
    load_weights(model, directory)
    if (directory / "tokenizer.json").exists():
        model.tokenizer = load_tokenizer(directory)
    return model.to(device).eval()
