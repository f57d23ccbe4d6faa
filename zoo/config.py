"""The Hydra config tree and the settings every command shares: `compose`, `conf_dir`, `pick_device`, `DTYPES`.

Defaults live only in `conf/`; the typed schema of every config group is in `zoo.schemas`."""

from __future__ import annotations

from importlib import resources
from pathlib import Path

import torch
from omegaconf import DictConfig

from zoo.errors import ConfigError

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def pick_device(name: str, what: str = "train.device") -> torch.device:
    """`auto` -> CUDA when available, else the CPU; a CUDA device (`cuda`, `cuda:N`) without CUDA is a
    ConfigError naming the setting `what`."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(f"{what}={name} but CUDA is not available; use {what}=cpu or auto")
    return torch.device(name)


def conf_dir() -> Path:
    """The Hydra config tree: `conf/` in a checkout, `zoo/conf` inside an installed wheel."""
    source = Path(__file__).resolve().parent.parent / "conf"
    if (source / "config.yaml").exists():
        return source
    return Path(str(resources.files("zoo.conf")))


def compose(overrides: list[str] | None = None, config_name: str = "config") -> DictConfig:
    """The config `zoo-train` would see with these command-line overrides (no run folder is made).

    `compose(["model=gla", "model.d_model=128"]).model` is a model config for `zoo.build_model`."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir

    with initialize_config_dir(config_dir=str(conf_dir()), version_base=None):
        return hydra_compose(config_name=config_name, overrides=list(overrides or []))
