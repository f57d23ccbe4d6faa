"""`zamba2`: Zyphra's Zamba2 (transformers' `Zamba2ForCausalLM`), a Mamba-2 backbone with a shared transformer block
(arXiv:2411.15242). Every layer is a zoo `mamba2` block without MLP (`x + mamba(RMSNorm(x))`); at its hybrid layers
(`layers_block_type` "hybrid") the shared block runs first, on `RMSNorm([x, embeddings])`, with that use's LoRA
adapters (q / k / v with `use_shared_attention_adapter`, always on the MLP's gate_up), and its output, projected by
the layer's `linear`, is added to the Mamba-2's input only: `x + mamba(RMSNorm(x + linear(shared(x, e))))`. That is
the zoo's `model.shared` (zoo/model/shared.py): `num_mem_blocks` blocks used in turn, one KV cache per use.

transformers ties the shared blocks' modules, so a checkpoint stores block j once, under the first hybrid layer that
runs it, together with the adapters of every use of block j (`linear_q_adapter_list.<u>`: u counts the hybrid
layers); a later hybrid layer's copy, if a file holds one, is ignored as transformers ignores it. transformers ties
them only with `tie_word_embeddings` (5.x ties every `_tied_weights_keys` entry under that one flag): untied, every
hybrid layer keeps a block of its own, which is imported as `num_blocks` = the number of hybrid layers, each use
reading its own layer's block and adapters (the other adapter slots stored there are unused, as in transformers).

Zamba2's attention scales scores by `(head_dim / 2) ** -0.5`, not `head_dim ** -0.5`: the factor sqrt(2) is folded
into q's projection and q's adapter on import (`Rule.scale`). The Mamba-2's gated norm has a fixed eps of 1e-5, and dt
is clamped below at `time_step_min`.
"""

from __future__ import annotations

import math

from zoo.io.hf.base import HFArch, HFConfig, Rule, same
from zoo.io.hf.llama import model_head_dim
from zoo.io.hf.mamba2 import MAMBA2, mamba2_options, mamba2_rules
from zoo.model.config import ModelConfig

HYBRID, MAMBA_KINDS = "hybrid", ("linear_attention", "mamba")
FIELDS = {
    "heads": "n_mamba_heads",
    "head_dim": "mamba_headdim",
    "d_state": "mamba_d_state",
    "ngroups": "mamba_ngroups",
    "d_conv": "mamba_d_conv",
    "expand": "mamba_expand",
    "conv_bias": "use_conv_bias",
    "proj_bias": "add_bias_linear",  # also the shared MLP's biases: refused with it
}
MAMBA_NORM_EPS = 1e-5  # Zamba2RMSNormGated(eps=1e-5), whatever rms_norm_eps says


class Zamba2Family(HFArch):
    model_types = ("zamba2",)

    def zoo_config(self, cfg: HFConfig) -> ModelConfig:
        d, n_layers = cfg.require("hidden_size"), cfg.require("num_hidden_layers")
        kinds = list(cfg.require("layers_block_type"))
        if len(kinds) != n_layers or set(kinds) - {HYBRID, *MAMBA_KINDS}:
            cfg.refuse("layers_block_type", kinds, f"{n_layers} entries of hybrid, linear_attention or mamba")
        act = cfg.expect("hidden_act", ("gelu", "silu"), "gelu")
        if cfg.get("quantization_config") is not None:
            cfg.refuse("quantization_config", cfg.get("quantization_config"), "quantized weights load as floats only")
        heads = cfg.require("num_attention_heads")
        adapters = bool(cfg.get("use_shared_attention_adapter", False))
        if cfg.get("num_key_value_heads", heads) != heads and adapters:
            # transformers' k / v adapters are 2 * hidden_size wide, which only full-width keys can take
            cfg.refuse("num_key_value_heads", cfg.get("num_key_value_heads"), "with adapters, num_attention_heads")
        rope = bool(cfg.get("use_mem_rope", False))
        theta = None
        if rope:
            params = dict(cfg.get("rope_parameters", {}))
            if params.get("rope_type", "default") != "default":
                cfg.refuse("rope_parameters", params, "only the default RoPE")
            if cfg.get("use_long_context", False):
                cfg.refuse("use_long_context", True, "its rescaled RoPE is not mapped")
            theta = float(params.get("rope_theta", cfg.get("rope_theta", 10000.0)))
        if "mamba_headdim" not in cfg.data:  # transformers writes it; a hand-written config may not
            cfg.data["mamba_headdim"] = int(cfg.require("mamba_expand") * d) // cfg.require("n_mamba_heads")
        hybrid = [i for i, kind in enumerate(kinds) if kind == HYBRID]
        tied = bool(cfg.get("tie_word_embeddings", True))
        mamba = mamba2_options(cfg, d, FIELDS, MAMBA_NORM_EPS, dt_limit=[cfg.get("time_step_min", 0.001), math.inf])
        return ModelConfig(
            vocab_size=cfg.require("vocab_size"),
            d_model=d,
            n_layers=n_layers,
            mixer=MAMBA2,
            head_dim=model_head_dim(d, mamba["headdim"]),
            attn={"layers": []},
            mixers={MAMBA2: mamba},
            mlp="none",
            mlp_ratio=0.0,
            tie_embeddings=tied,
            norm_eps=cfg.get("rms_norm_eps", 1e-5),
            init_std=cfg.get("initializer_range", 0.02),
            shared={
                "layers": hybrid,
                # untied, transformers gives every hybrid layer its own block (see the module docstring)
                "num_blocks": cfg.get("num_mem_blocks", 1) if tied else len(hybrid),
                "num_heads": heads,
                "num_kv_heads": cfg.get("num_key_value_heads", heads),
                "rope_theta": theta,
                "mlp_hidden": cfg.get("intermediate_size", 4 * d),
                "act": act,
                "adapter_rank": cfg.get("adapter_rank", 128),
                "qkv_adapters": adapters,
                "mlp_adapter": True,  # transformers builds the MLP's adapters whatever the config says
            },
        )

    def rules(self, config: ModelConfig, fold: float | None = None) -> list[Rule]:
        """The tensors; `fold` multiplies q's projection and adapter (the score scale, on import only)."""
        rules = [same("embed.weight", "model.embed_tokens.weight"), same("norm.weight", "model.final_layernorm.weight")]
        if not config.tie_embeddings:
            rules.append(same("lm_head.weight", "lm_head.weight"))
        options, shared = config.mixer_kwargs(MAMBA2), config.shared
        uses = config.shared_layers()
        first = {}  # block j -> the checkpoint prefix of the first layer that runs it (its own layer's, untied)
        for u, layer in enumerate(uses):
            first.setdefault(u % shared["num_blocks"], f"model.layers.{layer}.shared_transformer.")
        for j, hf in first.items():
            zoo = f"shared_blocks.{j}."
            rules += [
                same(zoo + "in_norm.weight", hf + "input_layernorm.weight"),
                Rule(zoo + "q_proj.weight", (hf + "self_attn.q_proj.weight",), scale=fold),
                same(zoo + "k_proj.weight", hf + "self_attn.k_proj.weight"),
                same(zoo + "v_proj.weight", hf + "self_attn.v_proj.weight"),
                same(zoo + "o_proj.weight", hf + "self_attn.o_proj.weight"),
                same(zoo + "mlp_norm.weight", hf + "pre_ff_layernorm.weight"),
                same(zoo + "gate_up.weight", hf + "feed_forward.gate_up_proj.weight"),
                same(zoo + "down.weight", hf + "feed_forward.down_proj.weight"),
            ]
        for i in range(config.n_layers):
            zoo, hf = f"blocks.{i}.", f"model.layers.{i}."
            if i in uses:
                u = uses.index(i)
                block = first[u % shared["num_blocks"]]
                rules.append(same(zoo + "shared_use.proj.weight", hf + "linear.weight"))
                adapters = {"gate_up": f"feed_forward.gate_up_proj_adapter_list.{u}."}
                if shared["qkv_adapters"]:
                    adapters |= {x: f"self_attn.linear_{x}_adapter_list.{u}." for x in "qkv"}
                for name, theirs in adapters.items():
                    ours = f"{zoo}shared_use.adapters.{name}."
                    rules.append(same(ours + "0.weight", block + theirs + "0.weight"))
                    rules.append(
                        Rule(ours + "1.weight", (block + theirs + "1.weight",), scale=fold if name == "q" else None)
                    )
                hf += "mamba_decoder."
            rules.append(same(zoo + "mixer_norm.weight", hf + "input_layernorm.weight"))
            rules += mamba2_rules(zoo + "mixer.", hf + "mamba.", options)
        return rules

    def import_rules(self, config: ModelConfig, cfg: HFConfig) -> list[Rule]:
        return self.rules(config, fold=math.sqrt(2.0))  # scores * (head_dim / 2) ** -0.5 = (sqrt(2) q) . k / sqrt(D)

    def ignored(self, config: ModelConfig) -> tuple[str, ...]:
        if not config.tie_embeddings:  # a block per hybrid layer: the adapter slots of other uses go unused
            slots = r"model\.layers\.\d+\.shared_transformer\..*_adapter_list\.\d+\..*"
            return (slots,)  # the used ones are taken by the rules, and only unused tensors are checked here
        later = config.shared_layers()[config.shared["num_blocks"] :]  # tied copies of an earlier block, if stored
        return ("lm_head.weight", *(rf"model\.layers\.{i}\.shared_transformer\..*" for i in later))
