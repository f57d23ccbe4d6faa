"""`olmo_hybrid`: AI2's OLMo-Hybrid (transformers' `OlmoHybridForCausalLM`): Gated DeltaNet layers with negative
eigenvalues (beta in (0, 2)) and, every few layers, OLMo-3 attention. The two kinds of layer differ in more than
their mixer:

- Gated DeltaNet layers are pre-norm (`x + f(norm(x))`), with separate q / k / v short convs as the zoo's; the
  output norm's eps is 1e-5 (transformers fixes it, as fla does).
- attention layers are post-norm (`x + norm(f(x))`, OLMo-2/3) with RMSNorm over the whole q and k projections
  (`qk_norm: full`), RoPE when the config has a `rope_theta` and none otherwise (NoPE).

So the zoo model is the `gated_deltanet` architecture with `model.attn.layers` at the full-attention layers and
`model.norm_position` post there. Tensor names are those of the checkpoints (and of transformers' `save_pretrained`):
`attention_layer_norm` / `feedforward_layer_norm` (in memory transformers calls them `input_layernorm` /
`post_attention_layernorm`, which load too) and `q_conv1d` / `k_conv1d` / `v_conv1d`.
"""

from __future__ import annotations

from typing import Any

from zoo.errors import CheckpointError
from zoo.io.hf.base import HFArch, HFConfig, Rule, same
from zoo.io.hf.llama import attention_rules, check_dense, llama_like_model, model_head_dim, rope_options, swiglu_rules
from zoo.model.config import ATTENTION_MIXER, ModelConfig
from zoo.model.layers import swiglu_hidden

GDN = "gated_deltanet"
GDN_TENSORS = ("q_proj", "k_proj", "v_proj", "a_proj", "b_proj", "g_proj", "o_proj", "o_norm")


def linear_layer_kinds(cfg: HFConfig) -> list[str]:
    """`layer_types`, checked: one entry per layer, each linear_attention (Gated DeltaNet) or full_attention."""
    kinds = list(cfg.require("layer_types"))
    for kind in set(kinds) - {"linear_attention", "full_attention"}:
        cfg.refuse("layer_types", kind, "supported: linear_attention, full_attention")
    if len(kinds) != cfg.require("num_hidden_layers"):
        cfg.refuse("layer_types", kinds, f"expected {cfg.require('num_hidden_layers')} entries, one per layer")
    return kinds


def gated_deltanet_options(cfg: HFConfig, **fields) -> dict:
    """The zoo `gated_deltanet` options of a config's `linear_*` fields (OLMo-Hybrid's and Qwen3.5's spelling):
    heads and widths (grouped values when there are more value heads than key heads), the short conv; `fields` add
    what the family fixes (beta's range, the output norm's eps, the init ranges)."""
    d = cfg.require("hidden_size")
    k_heads, v_heads = cfg.require("linear_num_key_heads"), cfg.require("linear_num_value_heads")
    return {
        "num_heads": k_heads,
        "num_v_heads": None if v_heads == k_heads else v_heads,
        "expand_k": k_heads * cfg.require("linear_key_head_dim") / d,
        "expand_v": v_heads * cfg.require("linear_value_head_dim") / d,
        "use_short_conv": True,
        "conv_size": cfg.get("linear_conv_kernel_dim", 4),
        "conv_bias": False,
        "chunk_size": 64,
        "backend": "auto",
        **fields,
    }


class OlmoHybridFamily(HFArch):
    model_types = ("olmo_hybrid",)
    aliases = (
        (r"\.input_layernorm\.", ".attention_layer_norm."),
        (r"\.post_attention_layernorm\.", ".feedforward_layer_norm."),
    )

    def zoo_config(self, cfg: HFConfig) -> ModelConfig:
        check_dense(cfg)
        d, kinds = cfg.require("hidden_size"), linear_layer_kinds(cfg)
        heads = cfg.require("num_attention_heads")
        head_dim = cfg.get("head_dim", d // heads)
        bias = cfg.get("attention_bias", False)
        rope = rope_options(cfg, head_dim)
        if not (cfg.get("rope_parameters") or {}).get("rope_theta") and cfg.get("rope_theta") is None:
            rope = {"rope_theta": None, "rope_scaling": None, "rope_dim": None}  # NoPE
        attn = {
            "num_heads": heads,
            "num_kv_heads": cfg.get("num_key_value_heads", heads),
            "head_size": head_dim,
            "qkv_bias": bias,
            "out_bias": bias,
            "qk_norm": "full",
            "norm_eps": cfg.get("rms_norm_eps", 1e-6),
            "window_size": None,
            **rope,
            "layers": [i for i, kind in enumerate(kinds) if kind == "full_attention"],
        }
        gdn = gated_deltanet_options(
            cfg,
            allow_neg_eigval=bool(cfg.get("linear_allow_neg_eigval", True)),
            A_init_range=[cfg.get("linear_a_log_min", 0.0), cfg.get("linear_a_log_max", 16.0)],
            dt_min=cfg.get("linear_dt_min", 1e-3),
            dt_max=cfg.get("linear_dt_max", 0.1),
            dt_init_floor=cfg.get("linear_dt_init_floor", 1e-4),
            norm_eps=1e-5,  # fixed in transformers' (and fla's) gated output norm
        )
        return llama_like_model(
            cfg,
            mixer=GDN,
            head_dim=model_head_dim(d, cfg.require("linear_key_head_dim")),
            attn=attn,
            mixers={GDN: gdn},
            norm_position=["post" if kind == "full_attention" else "pre" for kind in kinds],
        )

    def rules(self, config: ModelConfig) -> list[Rule]:
        return self._rules(config, export=False)

    def _rules(self, config: ModelConfig, export: bool) -> list[Rule]:
        rules = [same("embed.weight", "model.embed_tokens.weight"), same("norm.weight", "model.norm.weight")]
        if not config.tie_embeddings:
            rules.append(same("lm_head.weight", "lm_head.weight"))
        for i, name in enumerate(config.layer_names()):
            zoo, hf = f"blocks.{i}.", f"model.layers.{i}."
            options = config.mixer_kwargs(name)
            rules += swiglu_rules(zoo + "mlp.", hf + "mlp.")
            if name == ATTENTION_MIXER:  # post-norm: the norms after attention and after the MLP
                rules += [
                    same(zoo + "mixer_norm.weight", hf + "feedforward_layer_norm.weight"),
                    same(zoo + "mlp_norm.weight", hf + "post_feedforward_layernorm.weight"),
                    *attention_rules(zoo + "mixer.", hf + "self_attn.", options),
                ]
                continue
            rules += [
                same(zoo + "mixer_norm.weight", hf + "attention_layer_norm.weight"),
                same(zoo + "mlp_norm.weight", hf + "feedforward_layer_norm.weight"),
                *[same(f"{zoo}mixer.{t}.weight", f"{hf}linear_attn.{t}.weight") for t in GDN_TENSORS],
                *self.conv_rules(zoo + "mixer.", hf + "linear_attn.", config, export),
                same(zoo + "mixer.A_log", hf + "linear_attn.A_log"),
                same(zoo + "mixer.dt_bias", hf + "linear_attn.dt_bias"),
            ]
        return rules

    @staticmethod
    def conv_rules(zoo: str, hf: str, config: ModelConfig, export: bool) -> list[Rule]:
        """The zoo's q / k / v convs as rows of the stored three concatenated. They are read together because
        transformers' `save_pretrained` writes [q, k, v] split into three equal parts, which are the q / k / v convs
        only when the value width is the key width; checkpoints converted by OLMo hold the true q / k / v convs,
        which is what export writes."""
        if export:
            return [same(f"{zoo}{c}_conv.weight", f"{hf}{c}_conv1d.weight") for c in "qkv"]
        options = config.mixer_kwargs(GDN)
        key_dim = round(options["expand_k"] * config.d_model)
        value_dim = round(options["expand_v"] * config.d_model)
        stored = tuple(f"{hf}{c}_conv1d.weight" for c in "qkv")
        bounds = {"q": (0, key_dim), "k": (key_dim, 2 * key_dim), "v": (2 * key_dim, 2 * key_dim + value_dim)}
        return [Rule(f"{zoo}{c}_conv.weight", stored, rows) for c, rows in bounds.items()]

    def ignored(self, config: ModelConfig) -> tuple[str, ...]:
        return ("lm_head.weight",) * config.tie_embeddings

    # -- export ----------------------------------------------------------------------------------------------
    def export_rules(self, config: ModelConfig) -> list[Rule]:
        """The true q / k / v convs, each under its own name (transformers concatenates them on load)."""
        return self._rules(config, export=True)

    def hf_config(self, config: ModelConfig) -> dict[str, Any]:
        names = config.layer_names()
        if set(names) != {GDN, ATTENTION_MIXER}:
            raise CheckpointError(
                f"OLMo-Hybrid has gated_deltanet and attn layers; this model has {sorted(set(names))}"
            )
        if config.mlp != "swiglu" or config.learned_positions is not None:
            raise CheckpointError("OLMo-Hybrid has SwiGLU MLPs in every layer and no learned positions")
        kinds = ["full_attention" if n == ATTENTION_MIXER else "linear_attention" for n in names]
        want = ["post" if k == "full_attention" else "pre" for k in kinds]
        if config.norm_positions() != want:
            raise CheckpointError("OLMo-Hybrid's attention layers are post-norm and its Gated DeltaNet layers pre-norm")
        a, g = config.mixer_kwargs(ATTENTION_MIXER), config.mixer_kwargs(GDN)
        heads = a["num_heads"] or config.d_model // config.head_dim
        head_dim = a["head_size"] or config.d_model // heads
        problems = {
            "attention qk_norm must be full": a["qk_norm"] != "full",
            "attention heads must be hidden / num_heads wide": head_dim * heads != config.d_model,
            "attention has no output gate, window or partial / scaled RoPE": bool(a["output_gate"])
            or a["window_size"] is not None
            or a["rope_dim"] not in (None, head_dim)
            or a["rope_scaling"] is not None,
            "qkv_bias and out_bias must agree": a["qkv_bias"] != a["out_bias"],
            "the QK norm's eps must be the model's norm_eps": a["norm_eps"] != config.norm_eps,
            "Gated DeltaNet needs short convs without bias and an output norm eps of 1e-5": not g["use_short_conv"]
            or g["conv_bias"]
            or g["norm_eps"] != 1e-5,
        }
        wrong = [why for why, bad in problems.items() if bad]
        if wrong:
            raise CheckpointError("not an OLMo-Hybrid layout: " + "; ".join(wrong))
        probe, rope = self._gdn(config), a["rope_theta"]
        return {
            "model_type": "olmo_hybrid",
            "architectures": ["OlmoHybridForCausalLM"],
            "vocab_size": config.vocab_size,
            "hidden_size": config.d_model,
            "intermediate_size": config.mlp_hidden or swiglu_hidden(config.d_model, config.mlp_ratio),
            "num_hidden_layers": config.n_layers,
            "num_attention_heads": heads,
            "num_key_value_heads": a["num_kv_heads"] or heads,
            "hidden_act": "silu",
            "rms_norm_eps": config.norm_eps,
            "tie_word_embeddings": config.tie_embeddings,
            "attention_bias": a["qkv_bias"],
            "rope_parameters": None if rope is None else {"rope_type": "default", "rope_theta": rope},
            "layer_types": kinds,
            "linear_num_key_heads": probe.num_heads,
            "linear_num_value_heads": probe.num_v_heads,
            "linear_key_head_dim": probe.head_k,
            "linear_value_head_dim": probe.head_v,
            "linear_conv_kernel_dim": g["conv_size"],
            "linear_allow_neg_eigval": g["allow_neg_eigval"],
            "pad_token_id": None,
            "initializer_range": config.init_std,
        }

    @staticmethod
    def _gdn(config: ModelConfig):
        """A Gated DeltaNet layer built without memory: its head counts and sizes as resolved from its options."""
        import torch

        from zoo.model.lm import build_mixer

        with torch.device("meta"):
            return build_mixer(GDN, config.d_model, 0, config.n_layers, config.head_dim, config.mixer_kwargs(GDN))
