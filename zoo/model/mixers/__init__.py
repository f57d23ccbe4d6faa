"""Token-mixer registry: config names -> mixer classes.

A new mixer is one file in this folder (imported automatically), one `conf/mixer/<name>.yaml` and one
`@register("<name>")` line. Configs name mixers only through this registry (never `_target_`), so a checkpoint can never
make us import or instantiate arbitrary code.

Every mixer follows one contract (see `base.Mixer`):
`Mixer(d_model, layer_idx, *, n_layers, head_dim, **kwargs)`, `forward(x, cache=None) -> (y, cache)`,
`init_cache()` and `state_bytes(seq_len, batch_size=1)`.
"""

from __future__ import annotations

from zoo.errors import ConfigError
from zoo.model.mixers.base import Mixer

MIXERS: dict[str, type[Mixer]] = {}


def register(name: str):
    """Class decorator adding a mixer to `MIXERS` under `name`."""

    def wrap(cls: type[Mixer]) -> type[Mixer]:
        if name in MIXERS:
            raise ValueError(f"mixer {name!r} registered twice ({MIXERS[name].__name__} and {cls.__name__})")
        MIXERS[name] = cls
        cls.name = name
        return cls

    return wrap


def get_mixer(name: str) -> type[Mixer]:
    """The class registered as `name`; a clear error names the valid choices."""
    try:
        return MIXERS[name]
    except KeyError:
        raise ConfigError(f"unknown mixer {name!r}; valid mixers: {', '.join(sorted(MIXERS))}") from None


def _import_all() -> None:
    """Import every module of this package: each registers its mixer(s), so adding a mixer never
    means editing a shared list."""
    import importlib
    import pkgutil

    for info in sorted(pkgutil.iter_modules(__path__), key=lambda m: m.name):
        if info.name != "base":
            importlib.import_module(f"{__name__}.{info.name}")


_import_all()

__all__ = ["MIXERS", "ConfigError", "Mixer", "get_mixer", "register"]
