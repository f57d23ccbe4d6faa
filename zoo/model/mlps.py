"""Channel mixers (the second sublayer of every block): a registry `name -> class`, like the mixers.

Every MLP follows one contract: `MLP(d_model, layer_idx, *, n_layers, mlp_ratio, mlp_hidden)`,
`forward(x, cache=None) -> (y, cache)`, `init_cache()`, `state_bytes(batch_size=1)` and `flops_per_token(seq_len)`
(forward FLOPs per token, `zoo.model.flops`; `MatmulFlops` counts the linear layers). Most are
stateless (`init_cache()` is None); RWKV's channel mix shifts tokens and so keeps the previous one.
An MLP's only options, `mlp_ratio` and `mlp_hidden` (the hidden size exactly, when set: an imported checkpoint's
`intermediate_size`), are model fields (`conf/model/*.yaml`) that every MLP takes: there is no `conf/mlp/` group,
and so no per-MLP defaults to keep in one place. `model.mlp: none` builds blocks of their
mixer alone (Zoology's MQAR models, Mamba's blocks).
"""

from __future__ import annotations

import torch

from zoo.errors import ConfigError
from zoo.io.safety import Registry
from zoo.model.flops import MatmulFlops
from zoo.model.layers import SwiGLU, swiglu_hidden

MLPS: Registry = Registry("mlp")
register_mlp = MLPS.register  # class decorator: `@register_mlp("<name>")`


NO_MLP = "none"  # model.mlp for blocks without a channel mixer


def get_mlp(name: str) -> type:
    """The MLP class registered as `name`; a ConfigError naming the valid choices otherwise."""
    import zoo.model.mixers  # noqa: F401  (mixer modules register the MLPs that belong to them)

    return MLPS.lookup(name, also_valid=(NO_MLP,))


def build_mlp(
    name: str, d_model: int, layer_idx: int, *, n_layers: int, mlp_ratio: float, mlp_hidden: int | None
) -> torch.nn.Module | None:
    """Layer `layer_idx`'s MLP, or None for `none` (the block is then its mixer alone)."""
    if name == NO_MLP:
        return None
    if mlp_hidden is not None and mlp_hidden < 1:
        raise ConfigError(f"model.mlp_hidden must be null or >= 1, got {mlp_hidden}")
    return get_mlp(name)(d_model, layer_idx, n_layers=n_layers, mlp_ratio=mlp_ratio, mlp_hidden=mlp_hidden)


@register_mlp("swiglu")
class SwiGLUMLP(MatmulFlops, SwiGLU):
    """SwiGLU with hidden size `2/3 * mlp_ratio * d_model` (Llama's sizing), or `mlp_hidden`; stateless."""

    def __init__(self, d_model: int, layer_idx: int, *, n_layers: int, mlp_ratio: float, mlp_hidden: int | None):
        super().__init__(d_model, mlp_hidden or swiglu_hidden(d_model, mlp_ratio))

    def forward(self, x: torch.Tensor, cache=None):
        return super().forward(x), cache

    def init_cache(self):
        return None

    def state_bytes(self, batch_size: int = 1) -> int:
        return 0


@register_mlp("relu2")
class ReLU2MLP(MatmulFlops, torch.nn.Module):
    """`W_down relu(W_up x)^2` (So et al. 2021, "Primer": squared ReLU; Nemotron-H's MLP layers), hidden size
    `mlp_ratio * d_model` (rounded up to a multiple of 8) or `mlp_hidden`; stateless."""

    def __init__(self, d_model: int, layer_idx: int, *, n_layers: int, mlp_ratio: float, mlp_hidden: int | None):
        super().__init__()
        hidden = mlp_hidden or 8 * -(-int(mlp_ratio * d_model) // 8)
        self.up = torch.nn.Linear(d_model, hidden, bias=False)
        self.down = torch.nn.Linear(hidden, d_model, bias=False)

    def forward(self, x: torch.Tensor, cache=None):
        return self.down(torch.relu(self.up(x)).square()), cache

    def init_cache(self):
        return None

    def state_bytes(self, batch_size: int = 1) -> int:
        return 0
