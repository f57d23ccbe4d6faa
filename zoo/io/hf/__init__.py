"""transformers checkpoints as zoo models, and zoo models as transformers checkpoints.

    model = zoo.from_pretrained("path/or/owner-name")   # a transformers folder of a supported model_type
    export_transformers(model, "out/")                  # the inverse, for the architectures that have one

A checkpoint's `config.json` is read as data and mapped field by field onto a zoo `ModelConfig` by the family
that registered its `model_type` (`ARCHS`); its safetensors tensors (single file or shards) are renamed onto zoo
modules by that family's rules. No transformers code runs and no remote code is ever loaded: a config that asks
for `trust_remote_code` (an `auto_map`) is refused. Every tensor must be used and every zoo tensor found, with the
shapes the model expects; whatever cannot be mapped exactly is an error naming the field or tensor.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from zoo.errors import CheckpointConfigError, CheckpointError, ConfigError
from zoo.io.checkpoint import CONFIG, check_tensors, model_tensors, read_json, read_weights, write_weights
from zoo.io.hf.bamba import BambaFamily
from zoo.io.hf.base import HFArch, HFConfig
from zoo.io.hf.falcon_h1 import FalconH1Family
from zoo.io.hf.llama import LlamaFamily
from zoo.io.hf.mamba2 import Mamba2Family
from zoo.io.hf.nemotron_h import NemotronHFamily
from zoo.io.hf.olmo_hybrid import OlmoHybridFamily
from zoo.io.hf.qwen3_5 import Qwen3_5Family
from zoo.io.hf.zamba2 import Zamba2Family
from zoo.model.lm import HybridLM

FAMILIES: tuple[HFArch, ...] = (
    LlamaFamily(),
    Mamba2Family(),
    BambaFamily(),
    NemotronHFamily(),
    OlmoHybridFamily(),
    Qwen3_5Family(),
    FalconH1Family(),
    Zamba2Family(),
)
ARCHS: dict[str, HFArch] = {t: family for family in FAMILIES for t in family.model_types}
ZOO_MODEL_TYPE = "hybrid_zoo"


def is_transformers_checkpoint(directory: Path) -> bool:
    """Whether `directory/config.json` is a transformers config (a `model_type` that is not the zoo's own)."""
    path = Path(directory) / CONFIG
    if not path.is_file():
        return False
    data = read_json(path, "config")
    return isinstance(data, dict) and data.get("model_type") not in (None, ZOO_MODEL_TYPE)


def read_hf_config(directory: Path) -> tuple[HFArch, HFConfig]:
    """The family and config of a transformers checkpoint folder; errors name the file and what is wrong."""
    path = Path(directory) / CONFIG
    data = read_json(path, "config")
    if not isinstance(data, dict):
        raise CheckpointError(f"{path} is not a JSON object")
    if "auto_map" in data:
        raise CheckpointConfigError(
            f"{path} has an 'auto_map': this model's code lives in its repository (trust_remote_code), and the "
            "zoo never runs code from a checkpoint; only the model_types it maps itself load: "
            f"{', '.join(sorted(ARCHS))}"
        )
    model_type = data.get("model_type")
    if model_type not in ARCHS:
        raise CheckpointConfigError(
            f"{path}: model_type {model_type!r} is not supported; supported: {', '.join(sorted(ARCHS))}"
        )
    return ARCHS[model_type], HFConfig(data, path)


def load_transformers_checkpoint(directory: Path) -> HybridLM:
    """Build the zoo model of a transformers checkpoint folder and load its weights (fp32)."""
    arch, cfg = read_hf_config(directory)
    try:
        config = arch.zoo_config(cfg)
        model = HybridLM(config)
    except ConfigError as e:
        raise CheckpointConfigError(f"{cfg.path}: {e}") from e
    stored, sources, listing = read_weights(directory)
    tensors, from_file = to_zoo_tensors(arch, cfg, model, stored, sources, listing)
    check_tensors(model, tensors, from_file, listing)
    model.load_state_dict(tensors, strict=False)  # strict=False only for a tied head, checked above
    model.tokenizer = read_hf_tokenizer(Path(directory), cfg)
    return model


def to_zoo_tensors(arch: HFArch, cfg: HFConfig, model: HybridLM, stored: dict, sources: dict, listing: Path):
    """The zoo state dict made from the stored tensors by `arch`'s rules for the checkpoint's config `cfg`
    (`HFArch.import_rules`), and the file each came from. A tensor the rules need and the files lack, or one the
    files hold and nothing uses, is a `CheckpointError` naming it."""
    config = model.config
    by_name = {arch.canonical(name): name for name in stored}
    used: set[str] = set()

    def take(name: str, for_zoo: str) -> torch.Tensor:
        if name not in by_name:
            raise CheckpointError(f"{listing}: missing tensor {name!r} (the zoo's {for_zoo!r} is made from it)")
        used.add(name)
        return stored[by_name[name]]

    expected = model_tensors(model)
    tensors, from_file = {}, {}
    for rule in arch.import_rules(config, cfg):
        got = rule.to_zoo(take) if _concatenates(rule, stored, by_name) else None
        want = tuple(expected[rule.zoo].shape)
        if got is None or tuple(got.shape) != want:
            shapes = ", ".join(f"{n!r} {tuple(stored[by_name[n]].shape)}" for n in rule.hf)
            raise CheckpointError(
                f"{sources[by_name[rule.hf[0]]]}: tensor {shapes} cannot make the zoo's {rule.zoo!r} of shape {want} "
                "(from config.json)"
            )
        tensors[rule.zoo] = got
        from_file[rule.zoo] = sources[by_name[rule.hf[0]]]
    for canonical, name in by_name.items():
        if canonical not in used and not arch.is_ignored(canonical, config):
            raise CheckpointError(f"{sources[name]}: unexpected tensor {name!r}: nothing in the model uses it")
    return tensors, from_file


def _concatenates(rule, stored: dict, by_name: dict) -> bool:
    """Whether the rule's tensors exist (else `take` names the first missing one) and agree beyond dim 0."""
    for name in rule.hf:
        if name not in by_name:
            return True  # let `take` raise its "missing tensor" error
    shapes = {tuple(stored[by_name[n]].shape[1:]) for n in rule.hf}
    return len(shapes) == 1


def read_hf_tokenizer(directory: Path, cfg: HFConfig):
    """The folder's `tokenizer.json` (transformers' fast-tokenizer file) with the config's eos / bos ids, or None."""
    from zoo.data.tokenizer import HFTokenizer

    path = directory / "tokenizer.json"
    if not path.is_file():
        return None
    try:
        return HFTokenizer.from_file(
            path, eos_token_id=_first(cfg.get("eos_token_id")), bos_token_id=_first(cfg.get("bos_token_id"))
        )
    except ValueError as e:
        raise CheckpointError(f"{path}: {e}") from e


def _first(token_id):
    """transformers allows a list of eos ids; the zoo's tokenizers carry one (the first)."""
    return token_id[0] if isinstance(token_id, list) and token_id else token_id


# -- export ------------------------------------------------------------------------------------------------------


def export_transformers(model: HybridLM, directory, max_shard_bytes: int | None = None) -> Path:
    """Write `model` as a transformers checkpoint (config.json, safetensors, tokenizer.json when the model's
    tokenizer is a Hugging Face one) into `directory`, atomically. A model no family can express is a
    `CheckpointError` that gives each family's reason."""
    from zoo.io.runs import write_dir_atomically

    if model.config.shared_layers():
        raise CheckpointError("this model has no transformers equivalent: the zoo exports no model with model.shared")
    reasons = []
    for family in FAMILIES:
        try:
            hf = family.hf_config(model.config)
        except CheckpointError as e:
            reasons.append(f"{'/'.join(family.model_types)}: {e}")
            continue
        state = model_tensors(model)
        rules = family.export_rules(model.config)
        tensors = {name: t for rule in rules for name, t in rule.to_hf(state[rule.zoo]).items()}
        tokenizer = model.tokenizer
        hf |= _special_ids(tokenizer)
        hf["torch_dtype"] = str(next(model.parameters()).dtype).removeprefix("torch.")

        def write(tmp: Path, tensors=tensors, hf=hf, tokenizer=tokenizer) -> None:
            write_weights(tensors, tmp, max_shard_bytes)
            (tmp / CONFIG).write_text(json.dumps(hf, indent=2) + "\n")
            if tokenizer is not None and hasattr(tokenizer, "hf_json"):
                (tmp / "tokenizer.json").write_text(tokenizer.hf_json())

        return write_dir_atomically(directory, write)
    raise CheckpointError("this model has no transformers equivalent: " + "; ".join(reasons))


def _special_ids(tokenizer) -> dict:
    if tokenizer is None:
        return {}
    return {"eos_token_id": tokenizer.eos_token_id, "bos_token_id": getattr(tokenizer, "bos_token_id", None)}
