"""Sliding-window attention as its own mixer name: causal softmax attention over the last
`window_size` tokens (Beltagy et al. 2020, "Longformer"; the local attention of Based, Samba and
Griffin). It is the attention mixer with a mandatory window, so its cache keeps only the window and
its `state_bytes` stops growing at `window_size` tokens. Defaults in `conf/mixer/swa.yaml`.
"""

from __future__ import annotations

from zoo.errors import ConfigError
from zoo.model.mixers import register
from zoo.model.mixers.attention import Attention


@register("swa")
class SlidingWindowAttention(Attention):
    added_options = Attention.added_options

    def __init__(
        self,
        d_model: int,
        layer_idx: int,
        *,
        n_layers: int,
        head_dim: int,
        window_size: int,
        num_kv_heads: int | None,
        rope_theta: float,
        qkv_bias: bool,
        num_heads: int | None,
        head_size: int | None,
        qk_norm: str | None,
        norm_eps: float,
        rope_dim: int | None,
        rope_scaling: dict | None,
        out_bias: bool,
        output_gate: bool,
    ):
        # the options are listed, not passed as **options: build_mixer reads the valid ones off this signature
        if window_size is None:
            raise ConfigError(f"layer {layer_idx}: mixer 'swa' needs a window_size (mixer 'attn' is full attention)")
        options = {k: v for k, v in locals().items() if k not in ("self", "__class__", "d_model", "layer_idx")}
        super().__init__(d_model, layer_idx, **options)
