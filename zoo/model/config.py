"""Typed model config and the resolution of per-layer mixer specs.

A model config is plain data: sizes plus mixer *names* (registry keys) and their kwargs, never
`_target_` paths, so a checkpoint's `config.json` can be loaded without trusting its contents.
Defaults live in `conf/`; this module only validates and resolves them.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

from omegaconf import DictConfig, OmegaConf

from zoo.config import conf_dir
from zoo.errors import ConfigError
from zoo.model.mixers import MIXERS
from zoo.model.mlps import NO_MLP
from zoo.model.shared import SHARED_OPTIONS

ATTENTION_MIXER = "attn"
NO_MIXER = "none"  # a layer name for blocks of their MLP alone (Nemotron-H's MLP layers)
NORM_POSITIONS = ("pre", "post")


def mixer_defaults(name: str) -> dict[str, Any]:
    """Kwargs of `conf/mixer/<name>.yaml` (without its `name` key)."""
    if name not in MIXERS:
        raise ConfigError(f"unknown mixer {name!r}; valid mixers: {', '.join(sorted(MIXERS))}")
    path = conf_dir() / "mixer" / f"{name}.yaml"
    if not path.exists():
        raise ConfigError(f"mixer {name!r} is registered but {path} is missing")
    spec = OmegaConf.to_container(OmegaConf.load(path), resolve=True)
    spec.pop("name", None)
    return spec


def branch_names(name: str, kwargs: dict[str, Any]) -> list[str]:
    """The mixers that mixer `name` is made of when it is a composite (`Mixer.composes`: the parallel block), named in
    its options `kwargs`, validated: a non-empty list of registered mixers that are not composites themselves.
    [] for every other mixer."""
    option = MIXERS[name].composes
    if option is None:
        return []
    names = kwargs.get(option)
    where = f"model.mixers.{name}.{option}"
    if not isinstance(names, (list, tuple)) or not names or not all(isinstance(n, str) for n in names):
        raise ConfigError(f"{where} must be a non-empty list of mixer names, got {names!r}")
    for branch in names:
        if branch not in MIXERS:
            raise ConfigError(f"{where}: unknown mixer {branch!r}; valid mixers: {', '.join(sorted(MIXERS))}")
        if MIXERS[branch].composes is not None:
            raise ConfigError(f"{where}: {branch!r} is itself made of other mixers; a branch is a plain mixer")
    if len(set(names)) != len(names):
        raise ConfigError(f"{where} lists a mixer twice: {list(names)}")
    return list(names)


@dataclass
class ModelConfig:
    """Architecture of a hybrid LM. Field docs are in `conf/model/transformer.yaml`."""

    vocab_size: int
    d_model: int
    n_layers: int
    mixer: str | list[str]
    head_dim: int
    attn: dict[str, Any]
    mlp_ratio: float
    tie_embeddings: bool
    norm_eps: float
    init_std: float
    layers: list[str] | None = None
    mixers: dict[str, dict[str, Any]] = field(default_factory=dict)
    mlp: str | list[str] = "swiglu"  # conf/ always sets it; the default keeps older checkpoints' config.json loading
    learned_positions: int | None = None  # as mlp: older checkpoints have none
    mlp_hidden: int | None = None  # as mlp; set, it overrides the mlp_ratio sizing (an imported intermediate_size)
    norm_position: str | list[str] = "pre"  # as mlp: older checkpoints are pre-norm
    shared: dict[str, Any] | None = None  # as mlp: older checkpoints have no shared blocks (zoo/model/shared.py)

    @classmethod
    def from_any(cls, cfg) -> ModelConfig:
        """From a ModelConfig, a dict or an OmegaConf node; unknown or missing keys fail with their names."""
        if isinstance(cfg, ModelConfig):
            return cfg
        if isinstance(cfg, DictConfig):
            cfg = OmegaConf.to_container(cfg, resolve=True)
        cfg = dict(cfg)
        cfg.pop("name", None)  # the architecture's name in conf/model, informative only
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(cfg) - names)
        if unknown:
            raise ConfigError(f"unknown model config keys {unknown}; valid keys: {sorted(names)}")
        required = {
            f.name
            for f in dataclasses.fields(cls)
            if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
        }
        missing = sorted(required - set(cfg))
        if missing:
            raise ConfigError(f"model config is missing {missing}")
        return cls(**cfg)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def layer_names(self) -> list[str]:
        """The mixer name of every layer, validated once: the hybrid layout as data."""
        if self.n_layers < 1:
            raise ConfigError(f"model.n_layers must be >= 1, got {self.n_layers}")
        attn_layers = list(self.attn.get("layers") or [])
        if self.layers is not None:
            if attn_layers:
                raise ConfigError("set either model.layers (explicit per-layer list) or model.attn.layers, not both")
            if len(self.layers) != self.n_layers:
                raise ConfigError(f"model.layers has {len(self.layers)} entries but model.n_layers={self.n_layers}")
            names = list(self.layers)
        else:
            for i in attn_layers:
                if not isinstance(i, int) or not -self.n_layers <= i < self.n_layers:
                    raise ConfigError(
                        f"model.attn.layers entry {i!r} is out of range for n_layers={self.n_layers} "
                        f"(valid: 0..{self.n_layers - 1})"
                    )
            normalized = [i % self.n_layers for i in attn_layers]
            dupes = sorted({i for i in normalized if normalized.count(i) > 1})
            if dupes:
                raise ConfigError(f"model.attn.layers lists layer(s) {dupes} more than once: {attn_layers}")
            pattern = [self.mixer] if isinstance(self.mixer, str) else list(self.mixer)
            if not pattern:
                raise ConfigError("model.mixer is an empty list; give a mixer name or a non-empty pattern")
            names = [ATTENTION_MIXER if i in normalized else pattern[i % len(pattern)] for i in range(self.n_layers)]
        mlps = self.mlp_names()
        for i, name in enumerate(names):
            if name not in MIXERS and name != NO_MIXER:
                valid = ", ".join(sorted([*MIXERS, NO_MIXER]))
                raise ConfigError(f"layer {i}: unknown mixer {name!r}; valid mixers: {valid}")
            if name == NO_MIXER and mlps[i] == NO_MLP:
                raise ConfigError(f"layer {i} has neither a mixer nor an MLP (both are 'none')")
        return names

    def shared_layers(self) -> list[int]:
        """The layers that read a shared block (`model.shared.layers`, zoo/model/shared.py), validated once: every
        option of `model.shared` present and no other, indices in range, once each, at layers that have a mixer,
        and at least as many uses as `num_blocks`. [] without shared blocks."""
        if self.shared is None:
            return []
        unknown = sorted(set(self.shared) - set(SHARED_OPTIONS))
        if unknown:
            raise ConfigError(f"unknown model.shared option(s) {unknown}; valid: {', '.join(SHARED_OPTIONS)}")
        missing = [k for k in SHARED_OPTIONS if k not in self.shared]
        if missing:
            raise ConfigError(f"model.shared is missing {missing} (conf/model/transformer.yaml sets every option)")
        layers = list(self.shared["layers"] or [])
        for i in layers:
            if not isinstance(i, int) or not 0 <= i < self.n_layers:
                raise ConfigError(f"model.shared.layers entry {i!r} is out of range (valid: 0..{self.n_layers - 1})")
        if len(set(layers)) != len(layers) or layers != sorted(layers):
            raise ConfigError(f"model.shared.layers must be increasing layer indices, each once: {layers}")
        blocks = self.shared["num_blocks"]
        if layers and not (isinstance(blocks, int) and 1 <= blocks <= len(layers)):
            raise ConfigError(
                f"model.shared.num_blocks={blocks!r} must be 1..{len(layers)} (the uses in model.shared.layers)"
            )
        return layers

    def norm_positions(self) -> list[str]:
        """`pre` or `post` per layer: where each block's norms sit (`model.norm_position`, one or a pattern)."""
        pattern = [self.norm_position] if isinstance(self.norm_position, str) else list(self.norm_position)
        bad = sorted({str(p) for p in pattern} - set(NORM_POSITIONS))
        if not pattern or bad:
            raise ConfigError(f"model.norm_position must be {' or '.join(NORM_POSITIONS)} (or a list), got {bad}")
        return [pattern[i % len(pattern)] for i in range(self.n_layers)]

    def mlp_names(self) -> list[str]:
        """The MLP of every layer: `model.mlp`, one name for all, or a list repeated through the depth (`none` =
        the block is its mixer alone)."""
        pattern = [self.mlp] if isinstance(self.mlp, str) else list(self.mlp)
        if not pattern:
            raise ConfigError("model.mlp is an empty list; give an MLP name or a non-empty pattern")
        return [pattern[i % len(pattern)] for i in range(self.n_layers)]

    def mixer_kwargs(self, name: str) -> dict[str, Any]:
        """conf/mixer defaults < `model.mixers.<name>` < (attention only) `model.attn` minus `layers`."""
        kwargs = mixer_defaults(name)
        kwargs.update({k: v for k, v in self.mixers.get(name, {}).items() if k != "name"})
        if name == ATTENTION_MIXER:
            kwargs.update({k: v for k, v in self.attn.items() if k not in ("layers", "name")})
        return kwargs

    def resolved(self) -> ModelConfig:
        """A copy whose `mixers` holds the full kwargs of every mixer used (the layers' and the branches of a
        composite's, `branch_names`), so the config alone (e.g. a checkpoint's config.json) rebuilds the model
        without reading conf/."""
        layers = dict.fromkeys(n for n in self.layer_names() if n != NO_MIXER)
        mixers = {name: self.mixer_kwargs(name) for name in layers}
        for name in layers:
            for branch in branch_names(name, mixers[name]):
                mixers.setdefault(branch, self.mixer_kwargs(branch))
        return dataclasses.replace(self, mixers=mixers)
