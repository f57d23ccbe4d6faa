"""Token-mixer registry: config names -> mixer classes.

A new mixer is one file in this folder (imported automatically), one `conf/mixer/<name>.yaml` and one
`@register("<name>")` line. Configs name mixers only through this registry (never `_target_`), so a checkpoint can never
make us import or instantiate arbitrary code.

Every mixer follows one contract (see `base.Mixer`):

- `Mixer(d_model, layer_idx, *, n_layers, head_dim, **options)`: the model passes the first four; the options are
  keyword-only WITHOUT Python defaults, every one set by `conf/mixer/<name>.yaml` (tests/zoo/test_defaults.py
  checks that the signature and the yaml list the same options), so a default lives in one place;
- `forward(x, cache=None) -> (y, cache)`, `init_cache()`, and `cache_tensors(seq_len)` (shape and dtype of each
  cache tensor), from which the base computes `state_bytes(seq_len, batch_size=1)`;
- the declared `state_grows` (the cache grows with the sequence: full attention) and `preallocates` (the cache
  takes a `reserve`, the KV cache);
- `composes`: for a composite (`parallel`), the option naming the mixers it is made of, which the model builds.

The base `Mixer.__init__(layer_idx)` keeps `layer_idx`. A linear / recurrent mixer subclasses `base.LinearMixer`:
it names its `kernel_family`, passes `backend` and `chunk_size` to `LinearMixer.__init__`, runs its recurrence with
`self.recurrence(...)`, and its cache is a `base.StateCache` (or a subclass of it, `cache_class`) whose `state` has
`state_shape` in fp32; `init_heads` / `project_qkv` are the q/k/v head set-up most of them share.
"""

from __future__ import annotations

from zoo.io.safety import Registry
from zoo.model.mixers.base import Mixer

MIXERS: Registry = Registry("mixer")
register = MIXERS.register  # class decorator: `@register("<name>")` adds the class and sets its `name`
get_mixer = MIXERS.lookup  # the class registered under a name; a ConfigError naming the valid choices otherwise


def _import_all() -> None:
    """Import every module of this package: each registers its mixer(s), so adding a mixer never
    means editing a shared list."""
    import importlib
    import pkgutil

    for info in sorted(pkgutil.iter_modules(__path__), key=lambda m: m.name):
        if info.name != "base":
            importlib.import_module(f"{__name__}.{info.name}")


_import_all()

__all__ = ["MIXERS", "Mixer", "get_mixer", "register"]
