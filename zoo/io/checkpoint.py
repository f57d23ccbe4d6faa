"""Checkpoints: safetensors weights + plain-JSON config + tokenizer, written atomically.

Loading never unpickles (safetensors and JSON only) and never instantiates anything named by the
file: the config names mixers by registry key and is validated like any other config, and a
`_target_` key anywhere in it is refused before anything is built.

Weights are one `model.safetensors`, or (for large models, see `zoo-publish --max-shard-size`) shards
`model-00001-of-0000N.safetensors` with a `model.safetensors.index.json` in Hugging Face's format:
`{"metadata": {"total_size": bytes}, "weight_map": {tensor name: shard file}}`.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from zoo.data.tokenizer import load_tokenizer
from zoo.errors import CheckpointConfigError, CheckpointError, ConfigError
from zoo.io.runs import CONFIG, readable_dir, write_dir_atomically
from zoo.io.safety import reject_code_keys
from zoo.model.config import ModelConfig
from zoo.model.lm import HybridLM
from zoo.model.mixers import MIXERS

WEIGHTS = "model.safetensors"
WEIGHTS_INDEX = "model.safetensors.index.json"
SHARD_NAME = "model-{index:05d}-of-{count:05d}.safetensors"
TOKENIZER = "tokenizer.json"
FORMAT_VERSION = 1
# What `from_pretrained(hub_id)` downloads: config, tokenizer and index (*.json), the single weights file or
# its shards (*.safetensors), and the model card. Nothing else in a repo (e.g. pickles) is ever fetched.
HUB_PATTERNS = ["*.json", "*.safetensors", "*.md"]


def model_tensors(model) -> dict[str, torch.Tensor]:
    """The state dict to store: tied LM-head weights are stored once (as the embedding)."""
    state = {k: v.detach().contiguous() for k, v in model.state_dict().items()}
    if model.config.tie_embeddings:
        state.pop("lm_head.weight", None)
    return state


UNITS = {
    "": 1,
    "b": 1,
    "kb": 10**3,
    "mb": 10**6,
    "gb": 10**9,
    "tb": 10**12,
    "kib": 2**10,
    "mib": 2**20,
    "gib": 2**30,
    "tib": 2**40,
}


def parse_size(text: str) -> int:
    """`"5GB"` -> 5e9 bytes (decimal units as on the Hub; `GiB` etc. are binary); a bare number is bytes."""
    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([a-zA-Z]*)\s*", str(text))
    unit = match and match.group(2).lower()
    if not match or unit not in UNITS:
        raise ValueError(f"invalid size {text!r}: use e.g. 5GB, 500MB, 2GiB or a number of bytes")
    size = int(float(match.group(1)) * UNITS[unit])
    if size <= 0:
        raise ValueError(f"invalid size {text!r}: must be more than 0 bytes")
    return size


# -- writing -------------------------------------------------------------------------------------------------


def tensor_bytes(tensor: torch.Tensor) -> int:
    return tensor.numel() * tensor.element_size()


def plan_shards(tensors: dict[str, torch.Tensor], max_shard_bytes: int) -> list[list[str]]:
    """Tensor names per shard, in state-dict order: a shard is closed before it would exceed `max_shard_bytes`
    (tensor data only; each file adds a small JSON header). A tensor larger than the limit gets a shard alone."""
    if max_shard_bytes <= 0:
        raise ValueError(f"max shard size must be positive, got {max_shard_bytes} bytes")
    shards: list[list[str]] = [[]]
    size = 0
    for name, tensor in tensors.items():
        nbytes = tensor_bytes(tensor)
        if shards[-1] and size + nbytes > max_shard_bytes:
            shards.append([])
            size = 0
        shards[-1].append(name)
        size += nbytes
    return shards


def write_weights(tensors: dict[str, torch.Tensor], directory, max_shard_bytes: int | None = None) -> list[str]:
    """Write `model.safetensors`, or shards plus the index when the tensors exceed `max_shard_bytes`.
    Returns the file names written."""
    directory = Path(directory)
    shards = [list(tensors)] if max_shard_bytes is None else plan_shards(tensors, max_shard_bytes)
    if len(shards) == 1:
        save_file(tensors, str(directory / WEIGHTS), metadata={"format": "pt"})
        return [WEIGHTS]
    weight_map = {}
    files = []
    for i, names in enumerate(shards, start=1):
        file = SHARD_NAME.format(index=i, count=len(shards))
        save_file({n: tensors[n] for n in names}, str(directory / file), metadata={"format": "pt"})
        weight_map.update(dict.fromkeys(names, file))
        files.append(file)
    index = {"metadata": {"total_size": sum(tensor_bytes(t) for t in tensors.values())}, "weight_map": weight_map}
    (directory / WEIGHTS_INDEX).write_text(json.dumps(index, indent=2) + "\n")
    return [*files, WEIGHTS_INDEX]


def write_config(config: ModelConfig, directory) -> None:
    data = {"model_type": "hybrid_zoo", "format_version": FORMAT_VERSION, "model": config.to_dict()}
    (Path(directory) / CONFIG).write_text(json.dumps(data, indent=2) + "\n")


def write_model_files(model, directory: Path, max_shard_bytes: int | None = None) -> None:
    """Weights (sharded above `max_shard_bytes`, one file when None), `config.json` and the tokenizer."""
    write_weights(model_tensors(model), directory, max_shard_bytes)
    write_config(model.config, directory)
    if getattr(model, "tokenizer", None) is not None:
        model.tokenizer.save(directory)


def save_pretrained(model, directory, max_shard_bytes: int | None = None) -> Path:
    """Write the weights, `config.json` and the tokenizer files into `directory` atomically."""
    return write_dir_atomically(directory, lambda tmp: write_model_files(model, tmp, max_shard_bytes))


# -- reading -------------------------------------------------------------------------------------------------


def read_json(path: Path, what: str):
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise CheckpointError(f"{path} is not valid JSON ({what} truncated or corrupt?): {e}") from e


def load_config(directory) -> ModelConfig:
    """Read and validate `config.json`: plain data only, known keys, registered mixer names."""
    path = Path(directory) / CONFIG
    if not path.exists():
        raise CheckpointError(f"{path} not found: not a hybrid-zoo checkpoint folder")
    data = read_json(path, "config")
    reject_code_keys(data, path, "a checkpoint config")
    if not isinstance(data, dict) or data.get("model_type") != "hybrid_zoo" or not isinstance(data.get("model"), dict):
        found = data.get("model_type") if isinstance(data, dict) else type(data).__name__
        raise CheckpointError(f"{path} is not a hybrid-zoo config (model_type={found!r})")
    try:
        config = ModelConfig.from_any(data["model"])
        config.layer_names()  # unknown mixer names and bad layer indices fail here, naming the valid ones
        unknown = sorted(str(name) for name in config.mixers if name not in MIXERS)
        if unknown:
            raise ConfigError(f"model.mixers has unknown mixer(s) {unknown}; valid mixers: {', '.join(sorted(MIXERS))}")
    except (ConfigError, TypeError, AttributeError) as e:  # a value of the wrong type, e.g. a list for a name
        raise CheckpointConfigError(f"{path}: {e}") from e
    return config


def load_safetensors(path: Path) -> dict[str, torch.Tensor]:
    """One safetensors file; a truncated or corrupt file is a `CheckpointError` naming it."""
    try:
        return load_file(str(path))
    except (SafetensorError, OSError, ValueError, RuntimeError) as e:
        raise CheckpointError(f"{path} is corrupt or unreadable: {e}") from e


def read_index(path: Path) -> dict[str, str]:
    """The `weight_map` of a sharded checkpoint, checked: tensor name -> shard file name in the same folder."""
    index = read_json(path, "index")
    weight_map = index.get("weight_map") if isinstance(index, dict) else None
    if not isinstance(weight_map, dict) or not weight_map:
        raise CheckpointError(f"{path} is corrupt: expected {{'weight_map': {{tensor name: shard file}}}}")
    for name, file in weight_map.items():
        # Shards must sit beside the index: a path could point the loader at any file on the machine.
        if not isinstance(file, str) or Path(file).name != file or not file.endswith(".safetensors"):
            raise CheckpointError(f"{path} is corrupt: tensor {name!r} maps to {file!r}, not a .safetensors file name")
    return weight_map


def read_weights(directory) -> tuple[dict[str, torch.Tensor], dict[str, Path], Path]:
    """The stored tensors as they are in the files (dtype untouched), the file each came from, and the file
    that lists them all (`model.safetensors` or the index). Every shard is checked against the index."""
    directory = Path(directory)
    single, index_path = directory / WEIGHTS, directory / WEIGHTS_INDEX
    if single.exists():  # a single file wins over an index, as in transformers
        stored = load_safetensors(single)
        return stored, dict.fromkeys(stored, single), single
    if not index_path.exists():
        raise CheckpointError(f"{single} not found (and no sharded {WEIGHTS_INDEX})")
    weight_map = read_index(index_path)
    by_shard: dict[str, list[str]] = {}
    for name, file in weight_map.items():
        by_shard.setdefault(file, []).append(name)
    stored, sources = {}, {}
    for file, names in by_shard.items():
        path = directory / file
        if not path.is_file():
            raise CheckpointError(
                f"{path} is missing: {index_path.name} maps {len(names)} tensor(s) to it, e.g. {names[0]!r}"
            )
        tensors = load_safetensors(path)
        absent = sorted(set(names) - set(tensors))
        if absent:
            raise CheckpointError(
                f"{path}: tensor {absent[0]!r} is mapped to this shard by {index_path.name} but is not in it"
            )
        stray = sorted(set(tensors) - set(names))
        if stray:
            raise CheckpointError(f"{path}: holds tensor {stray[0]!r} that {index_path.name} does not map to it")
        stored.update(tensors)
        sources.update(dict.fromkeys(tensors, path))
    return stored, sources, index_path


def load_weights(model, directory) -> None:
    """Load the weights (single file or shards) into `model`; the first missing, unexpected or mismatched
    tensor is named with the file it is in (or should be in)."""
    stored, sources, listing = read_weights(directory)
    check_tensors(model, stored, sources, listing)
    model.load_state_dict(stored, strict=False)  # strict=False only for the tied head, checked above


def check_tensors(model, stored: dict[str, torch.Tensor], sources: dict[str, Path], listing: Path) -> None:
    """Every tensor `model` stores is in `stored` with its shape and kind of dtype, and nothing else is; the first
    that is not is a `CheckpointError` naming the file it came from (`sources`) or should be in (`listing`)."""
    expected = model_tensors(model)
    for name, tensor in expected.items():
        if name not in stored:
            raise CheckpointError(f"{listing}: missing tensor {name!r} (shape {tuple(tensor.shape)})")
        got = stored[name]
        if got.shape != tensor.shape:
            raise CheckpointError(
                f"{sources[name]}: tensor {name!r} has shape {tuple(got.shape)}, model expects {tuple(tensor.shape)}"
            )
        if got.dtype.is_floating_point != tensor.dtype.is_floating_point:  # load_state_dict would cast silently
            raise CheckpointError(
                f"{sources[name]}: tensor {name!r} has dtype {got.dtype}, model expects {tensor.dtype}"
            )
    for name in stored:
        if name not in expected:
            raise CheckpointError(f"{sources[name]}: unexpected tensor {name!r} not in the model")


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
        return Path(snapshot_download(str(name_or_path), allow_patterns=HUB_PATTERNS))
    except Exception as e:  # network, auth and missing-repo errors all end here
        raise CheckpointError(f"{name_or_path}: not a local folder, and the Hub download failed: {e}") from e


def load_checkpoint_tokenizer(directory: Path):
    """The checkpoint's tokenizer, or None when it has none; a bad file is a `CheckpointError`."""
    path = directory / TOKENIZER
    if not path.exists():
        return None
    try:
        return load_tokenizer(directory)  # refuses `_target_` keys itself
    except ValueError as e:  # its messages already name the file
        raise CheckpointError(str(e)) from e


def from_pretrained(name_or_path, device: str | torch.device = "cpu"):
    """Build the model described by `config.json` and load its weights and tokenizer: a zoo checkpoint, or a
    transformers checkpoint of a supported `model_type` (`zoo.io.hf`), mapped onto zoo modules."""
    from zoo.io import hf  # it builds on this module

    directory = resolve_pretrained(name_or_path)
    if hf.is_transformers_checkpoint(directory):
        return hf.load_transformers_checkpoint(directory).to(device).eval()
    config = load_config(directory)
    try:
        model = HybridLM(config)
    except ConfigError as e:  # e.g. an unknown mixer option or a head size that does not divide
        raise CheckpointConfigError(f"{directory / CONFIG}: {e}") from e
    load_weights(model, directory)
    model.tokenizer = load_checkpoint_tokenizer(directory)
    return model.to(device).eval()
