"""`nemotron_h`: NVIDIA's Nemotron-H (transformers' `NemotronHForCausalLM`), a per-layer pattern of Mamba-2 layers,
attention layers without positions (no RoPE) and squared-ReLU MLP layers, each one residual `x + f(norm(x))`.

In the zoo each is a block with one half absent: a Mamba-2 or attention layer is a block of its mixer alone
(`model.mlp` `none` there), an MLP layer is a block of its MLP alone (mixer `none`, `model.mlp` `relu2`), so
`model.layers` and a per-layer `model.mlp` list carry the pattern. Older configs spell the pattern
`hybrid_override_pattern` ("M-M*-...", M = Mamba-2, * = attention, - = MLP, E = mixture of experts) and the
layer names `mamba` / `attention`, and store the weights under `backbone.`; both load. Its Mamba-2 layers keep dt
at or above `time_step_min` (transformers clamps it so in its parallel form), which the zoo mixer's `dt_limit`
does in every form.
"""

from __future__ import annotations

from zoo.io.hf.base import HFArch, HFConfig, Rule, same
from zoo.io.hf.llama import attention_rules, model_head_dim
from zoo.io.hf.mamba2 import MAMBA2, mamba2_options, mamba2_rules
from zoo.model.config import ATTENTION_MIXER, NO_MIXER, ModelConfig
from zoo.model.mlps import NO_MLP

PATTERN = {"M": "linear_attention", "*": "full_attention", "-": "mlp", "E": "moe"}
LEGACY = {"mamba": "linear_attention", "attention": "full_attention"}
ZOO_LAYER = {
    "linear_attention": (MAMBA2, NO_MLP),
    "full_attention": (ATTENTION_MIXER, NO_MLP),
    "mlp": (NO_MIXER, "relu2"),
}
FIELDS = {
    "heads": "mamba_num_heads",
    "head_dim": "mamba_head_dim",
    "d_state": "ssm_state_size",
    "ngroups": "n_groups",
    "d_conv": "conv_kernel",
    "expand": "expand",
    "conv_bias": "use_conv_bias",
    "proj_bias": "use_bias",
}
# older spellings transformers still reads (the new name, then the old)
RENAMED = {
    "n_groups": "mamba_n_groups",
    "conv_kernel": "mamba_d_conv",
    "expand": "mamba_expand",
    "use_conv_bias": "mamba_conv_bias",
    "time_step_min": "mamba_dt_min",
}


def layer_types(cfg: HFConfig) -> list[str]:
    if cfg.get("layers_block_type") is not None:
        types = [LEGACY.get(t, t) for t in cfg.get("layers_block_type")]
    elif cfg.get("hybrid_override_pattern") is not None:
        pattern = cfg.get("hybrid_override_pattern")
        if set(pattern) - set(PATTERN):
            cfg.refuse("hybrid_override_pattern", pattern, f"its letters are {''.join(PATTERN)}")
        types = [PATTERN[c] for c in pattern]
    else:
        cfg.require("layers_block_type")
    for kind in dict.fromkeys(types):
        if kind not in ZOO_LAYER:
            why = "mixture-of-experts layers are not built by the zoo yet" if kind == "moe" else "unknown layer type"
            cfg.refuse("layers_block_type", kind, why)
    return types


class NemotronHFamily(HFArch):
    model_types = ("nemotron_h",)
    aliases = ((r"^backbone\.", "model."),)

    def zoo_config(self, cfg: HFConfig) -> ModelConfig:
        for new, old in RENAMED.items():
            if cfg.get(new) is None and cfg.get(old) is not None:
                cfg.data[new] = cfg.data[old]
        cfg.expect("mlp_hidden_act", ("relu2",), "relu2")
        cfg.expect("mamba_hidden_act", ("silu",), "silu")
        cfg.expect("mlp_bias", (False,), False)
        if cfg.get("sliding_window") is not None:
            cfg.refuse("sliding_window", cfg.get("sliding_window"), "Nemotron-H attention is full here")
        types = layer_types(cfg)
        d, eps = cfg.require("hidden_size"), cfg.get("layer_norm_epsilon", 1e-5)
        mamba = mamba2_options(cfg, d, FIELDS, eps, dt_limit=[float(cfg.get("time_step_min", 1e-3)), float("inf")])
        heads = cfg.require("num_attention_heads")
        head_dim = cfg.get("head_dim", d // heads)
        attn = {
            "num_heads": heads,
            "num_kv_heads": cfg.get("num_key_value_heads", heads),
            "head_size": head_dim,
            "rope_theta": None,  # no positions in attention: the Mamba-2 layers carry order
            "window_size": None,
            "layers": [],
        }
        return ModelConfig(
            vocab_size=cfg.require("vocab_size"),
            d_model=d,
            n_layers=len(types),
            mixer=MAMBA2,
            head_dim=model_head_dim(d, mamba["headdim"]),
            attn=attn,
            layers=[ZOO_LAYER[t][0] for t in types],
            mixers={MAMBA2: mamba},
            mlp=[ZOO_LAYER[t][1] for t in types],
            mlp_ratio=4.0,  # unused: mlp_hidden is the checkpoint's intermediate_size
            mlp_hidden=cfg.require("intermediate_size"),
            # transformers' NemotronHForCausalLM ties nothing (`_tied_weights_keys` is empty), whatever
            # tie_word_embeddings says: its lm_head is always its own weight
            tie_embeddings=False,
            norm_eps=eps,
            init_std=cfg.get("initializer_range", 0.02),
        )

    def rules(self, config: ModelConfig) -> list[Rule]:
        rules = [same("embed.weight", "model.embeddings.weight"), same("norm.weight", "model.norm_f.weight")]
        if not config.tie_embeddings:
            rules.append(same("lm_head.weight", "lm_head.weight"))
        for i, name in enumerate(config.layer_names()):
            zoo, hf = f"blocks.{i}.", f"model.layers.{i}."
            if name == NO_MIXER:
                rules += [
                    same(zoo + "mlp_norm.weight", hf + "norm.weight"),
                    same(zoo + "mlp.up.weight", hf + "mixer.up_proj.weight"),
                    same(zoo + "mlp.down.weight", hf + "mixer.down_proj.weight"),
                ]
                continue
            rules.append(same(zoo + "mixer_norm.weight", hf + "norm.weight"))
            options = config.mixer_kwargs(name)
            if name == ATTENTION_MIXER:
                rules += attention_rules(zoo + "mixer.", hf + "mixer.", options)
            else:
                rules += mamba2_rules(zoo + "mixer.", hf + "mixer.", options)
        return rules

    def ignored(self, config: ModelConfig) -> tuple[str, ...]:
        return ("lm_head.weight",) * config.tie_embeddings
