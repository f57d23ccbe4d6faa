"""`bamba`: IBM's Mamba-2 + attention hybrid (transformers' `BambaForCausalLM`). Every layer is one zoo block:
an RMSNorm, a Mamba-2 mixer or (at `attn_layer_indices`) Llama-style attention that rotates half of each head
(`partial_rotary_factor` 0.5, which older configs leave implicit), then an RMSNorm and a SwiGLU MLP. That is the
zoo's `mamba2` architecture with `model.attn.layers` set and the checkpoint's MLP width.
"""

from __future__ import annotations

from zoo.io.hf.base import HFArch, HFConfig, Rule, same
from zoo.io.hf.llama import (
    attention_options,
    attention_rules,
    check_dense,
    llama_like_model,
    model_head_dim,
    swiglu_rules,
)
from zoo.io.hf.mamba2 import MAMBA2, mamba2_options, mamba2_rules
from zoo.model.config import ATTENTION_MIXER, ModelConfig

FIELDS = {
    "heads": "mamba_n_heads",
    "head_dim": "mamba_d_head",
    "d_state": "mamba_d_state",
    "ngroups": "mamba_n_groups",
    "d_conv": "mamba_d_conv",
    "expand": "mamba_expand",
    "conv_bias": "mamba_conv_bias",
    "proj_bias": "mamba_proj_bias",
}


class BambaFamily(HFArch):
    model_types = ("bamba",)

    def zoo_config(self, cfg: HFConfig) -> ModelConfig:
        check_dense(cfg)
        d = cfg.require("hidden_size")
        eps = cfg.get("rms_norm_eps", 1e-5)
        if cfg.get("mamba_d_head", "auto") == "auto":  # transformers fills it in; a raw config may not
            cfg.data["mamba_d_head"] = cfg.require("mamba_expand") * d // cfg.require("mamba_n_heads")
        mamba = mamba2_options(cfg, d, FIELDS, eps)
        attn = attention_options(cfg, partial=0.5)
        return llama_like_model(
            cfg,
            mixer=MAMBA2,
            head_dim=model_head_dim(d, mamba["headdim"]),
            attn={**attn, "window_size": None, "layers": list(cfg.get("attn_layer_indices", []))},
            mixers={MAMBA2: mamba},
            norm_eps=eps,
        )

    def rules(self, config: ModelConfig) -> list[Rule]:
        rules = [same("embed.weight", "model.embed_tokens.weight"), same("norm.weight", "model.final_layernorm.weight")]
        if not config.tie_embeddings:
            rules.append(same("lm_head.weight", "lm_head.weight"))
        for i, name in enumerate(config.layer_names()):
            zoo, hf = f"blocks.{i}.", f"model.layers.{i}."
            options = config.mixer_kwargs(name)
            rules += [
                same(zoo + "mixer_norm.weight", hf + "input_layernorm.weight"),
                same(zoo + "mlp_norm.weight", hf + "pre_ff_layernorm.weight"),
                *swiglu_rules(zoo + "mlp.", hf + "feed_forward."),
            ]
            if name == ATTENTION_MIXER:
                rules += attention_rules(zoo + "mixer.", hf + "self_attn.", options)
            else:
                rules += mamba2_rules(zoo + "mixer.", hf + "mamba.", options)
        return rules

    def ignored(self, config: ModelConfig) -> tuple[str, ...]:
        return ("lm_head.weight",) * config.tie_embeddings
