"""What keeps loading safe: configs and files name things by registry key, never code.

- `Registry`: the name -> class tables (mixers, MLPs, datasets, tokenizers). A lookup of an unknown name is a
  `ConfigError` that lists the valid names; nothing is ever imported from a name found in a file.
- `reject_code_keys`: a `_target_` key (Hydra's "import and call this") anywhere in a file we load is refused
  before anything is built. Hydra's `_target_` stays fine for optimizer or launcher leaves of our own `conf/`."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from zoo.errors import CheckpointConfigError, ConfigError

FORBIDDEN_KEY = "_target_"


class Registry(dict):
    """`name -> class` for one kind of component (`kind` names it in errors: "mixer", "mlp", ...)."""

    def __init__(self, kind: str):
        super().__init__()
        self.kind = kind

    def register(self, name: str) -> Callable[[type], type]:
        """Class decorator adding the class under `name` (and setting its `name` attribute)."""

        def wrap(cls: type) -> type:
            if name in self:
                raise ValueError(f"{self.kind} {name!r} registered twice ({self[name].__name__} and {cls.__name__})")
            self[name] = cls
            cls.name = name
            return cls

        return wrap

    def lookup(self, name: str, also_valid: tuple[str, ...] = ()) -> type:
        """The class registered as `name`; a ConfigError naming the valid choices otherwise (with `also_valid`, the
        names a caller handles before the registry, such as model.mlp `none`)."""
        if name not in self:
            valid = ", ".join(sorted([*self, *also_valid]))
            raise ConfigError(f"unknown {self.kind} {name!r}; valid {self.kind}s: {valid}")
        return self[name]


def reject_code_keys(data: Any, path: Path, what: str = "a checkpoint file", where: str = "") -> None:
    """Refuse a `_target_` key at any depth of `data` (read from `path`) with a `CheckpointConfigError`."""
    if isinstance(data, dict):
        for key, value in data.items():
            here = f"{where}.{key}" if where else str(key)
            if key == FORBIDDEN_KEY:
                raise CheckpointConfigError(
                    f"{path}: key {FORBIDDEN_KEY!r} (at {here}) is not allowed: {what} names components by "
                    "registry key only and is never instantiated"
                )
            reject_code_keys(value, path, what, here)
    elif isinstance(data, list):
        for i, value in enumerate(data):
            reject_code_keys(value, path, what, f"{where}[{i}]")
