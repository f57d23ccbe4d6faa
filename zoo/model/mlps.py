"""Channel mixers (the second sublayer of every block): a registry `name -> class`, like the mixers.

Every MLP follows one contract: `MLP(d_model, layer_idx, *, n_layers, mlp_ratio)`,
`forward(x, cache=None) -> (y, cache)`, `init_cache()` and `state_bytes(batch_size=1)`. Most are
stateless (`init_cache()` is None); RWKV's channel mix shifts tokens and so keeps the previous one.
"""

from __future__ import annotations

import torch
from torch import nn

from zoo.errors import ConfigError
from zoo.model.layers import SwiGLU, swiglu_hidden

MLPS: dict[str, type[nn.Module]] = {}


def register_mlp(name: str):
    def wrap(cls):
        if name in MLPS:
            raise ValueError(f"mlp {name!r} registered twice ({MLPS[name].__name__} and {cls.__name__})")
        MLPS[name] = cls
        cls.name = name
        return cls

    return wrap


def get_mlp(name: str) -> type[nn.Module]:
    import zoo.model.mixers  # noqa: F401  (mixer modules register the MLPs that belong to them)

    try:
        return MLPS[name]
    except KeyError:
        raise ConfigError(f"unknown mlp {name!r}; valid mlps: {', '.join(sorted(MLPS))}") from None


@register_mlp("swiglu")
class SwiGLUMLP(SwiGLU):
    """SwiGLU with hidden size `2/3 * mlp_ratio * d_model` (Llama's sizing); stateless."""

    def __init__(self, d_model: int, layer_idx: int, *, n_layers: int, mlp_ratio: float):
        super().__init__(d_model, swiglu_hidden(d_model, mlp_ratio))

    def forward(self, x: torch.Tensor, cache=None):
        return super().forward(x), cache

    def init_cache(self):
        return None

    def state_bytes(self, batch_size: int = 1) -> int:
        return 0
