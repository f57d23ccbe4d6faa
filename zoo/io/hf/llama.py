"""Dense transformers of the Llama family: `llama`, `mistral` (sliding window), `qwen2` (qkv bias) and `qwen3`
(per-head QK norm, heads wider than hidden_size / heads, per-layer sliding windows). All are the zoo's
`transformer`: pre-norm blocks of attention and a SwiGLU MLP with RMSNorm, RoPE in rotate-half layout (the layout
transformers stores q/k projections in), an optionally tied head.

Export writes a zoo transformer as `llama` (or `mistral` when every layer has the same window, `qwen3` with QK
norm); anything without a Llama-family equivalent (learned positions, an MLP that is not SwiGLU, non-attention
layers) is an error that says what.
"""

from __future__ import annotations

import math
from typing import Any

from zoo.errors import CheckpointError
from zoo.io.hf.base import HFArch, HFConfig, Rule, same
from zoo.model.config import ATTENTION_MIXER, ModelConfig

SLIDING = "swa"  # the zoo mixer of a transformers "sliding_attention" layer


def rope_options(cfg: HFConfig, head_dim: int, partial: float = 1.0) -> dict[str, Any]:
    """`rope_theta`, `rope_scaling` and `rope_dim` of the attention mixer, from transformers 5's `rope_parameters`
    or the older top-level `rope_theta` / `rope_scaling` / `partial_rotary_factor` (default `partial`: the share of
    each head that a family rotates when its config does not say)."""
    params = dict(cfg.get("rope_parameters", {}))
    theta = params.pop("rope_theta", cfg.get("rope_theta", 10000.0))
    factor = params.pop("partial_rotary_factor", cfg.get("partial_rotary_factor", partial))
    scaling = cfg.get("rope_scaling") or params
    kind = scaling.get("rope_type", scaling.get("type", "default"))
    if kind not in ("default", "linear", "llama3"):
        cfg.refuse("rope_scaling", scaling, "supported rope types: default, linear, llama3")
    if kind != "default" and scaling.get("attention_factor") not in (None, 1.0):
        cfg.refuse("rope_scaling.attention_factor", scaling["attention_factor"], "only 1.0 scales nothing")
    rope_dim = int(head_dim * factor)
    return {
        "rope_theta": float(theta),
        "rope_scaling": None if kind == "default" else {"rope_type": kind, **scaling},
        "rope_dim": None if rope_dim == head_dim else rope_dim,
    }


def layer_kinds(cfg: HFConfig, n_layers: int) -> list[str]:
    """ "full_attention" or "sliding_attention" per layer: `layer_types` when the config has it, else Qwen's
    `use_sliding_window` with `max_window_layers` (the first that many layers are full), else Mistral's
    `sliding_window` on every layer."""
    if cfg.get("layer_types") is not None:
        kinds = list(cfg.get("layer_types"))
        if len(kinds) != n_layers:
            cfg.refuse("layer_types", kinds, f"expected {n_layers} entries, one per layer")
        for kind in set(kinds) - {"full_attention", "sliding_attention"}:
            cfg.refuse("layer_types", kind, "supported: full_attention, sliding_attention")
        if "sliding_attention" in kinds and cfg.model_type in ("qwen2", "qwen3") and not cfg.get("use_sliding_window"):
            return ["full_attention"] * n_layers  # Qwen builds its windows only when use_sliding_window is set
        return kinds
    if cfg.model_type in ("qwen2", "qwen3"):
        if not cfg.get("use_sliding_window", False):
            return ["full_attention"] * n_layers
        first = cfg.get("max_window_layers", n_layers)
        return ["full_attention" if i < first else "sliding_attention" for i in range(n_layers)]
    return ["sliding_attention" if cfg.get("sliding_window") else "full_attention"] * n_layers


def check_dense(cfg: HFConfig) -> None:
    """What every Llama-like config must say for the zoo's SwiGLU blocks to compute it exactly."""
    cfg.expect("hidden_act", ("silu",), "silu")
    cfg.expect("mlp_bias", (False,), False)
    if cfg.get("quantization_config") is not None:
        cfg.refuse("quantization_config", cfg.get("quantization_config"), "quantized weights load as floats only")


def attention_options(cfg: HFConfig, partial: float = 1.0, qk_norm: str | None = None) -> dict[str, Any]:
    """The zoo attention mixer's options of a Llama-like config (`attention_bias` on q, k, v and o)."""
    d, heads = cfg.require("hidden_size"), cfg.require("num_attention_heads")
    head_dim = cfg.get("head_dim", d // heads)
    bias = cfg.get("attention_bias", False)
    return {
        "num_heads": heads,
        "num_kv_heads": cfg.get("num_key_value_heads", heads),
        "head_size": head_dim,
        "qkv_bias": bias,
        "out_bias": bias,
        "qk_norm": qk_norm,
        "norm_eps": cfg.get("rms_norm_eps", 1e-6),
        **rope_options(cfg, head_dim, partial),
    }


def model_head_dim(d_model: int, head_dim: int) -> int:
    """model.head_dim sizes linear mixers only, and must divide d_model: the imported head size when it does."""
    return head_dim if d_model % head_dim == 0 else math.gcd(d_model, head_dim)


def llama_like_model(cfg: HFConfig, **fields) -> ModelConfig:
    """A `ModelConfig` with the fields every Llama-like config spells the same way (vocabulary, width, depth, a SwiGLU
    MLP of `intermediate_size`, tied head, RMSNorm eps, init std); `fields` set the rest or override these."""
    common = {
        "vocab_size": cfg.require("vocab_size"),
        "d_model": cfg.require("hidden_size"),
        "n_layers": cfg.require("num_hidden_layers"),
        "mlp": "swiglu",
        "mlp_ratio": 4.0,  # unused: mlp_hidden is the checkpoint's intermediate_size
        "mlp_hidden": cfg.require("intermediate_size"),
        "tie_embeddings": bool(cfg.get("tie_word_embeddings", False)),
        "norm_eps": cfg.get("rms_norm_eps", 1e-6),
        "init_std": cfg.get("initializer_range", 0.02),
    }
    return ModelConfig(**(common | fields))


def attention_rules(zoo: str, hf: str, options: dict) -> list[Rule]:
    """One attention layer's tensors: zoo prefix `zoo` (`blocks.i.mixer.`), checkpoint prefix `hf` (`...self_attn.`)."""
    rules = []
    for proj in ("q", "k", "v", "o"):
        rules.append(same(f"{zoo}{proj}_proj.weight", f"{hf}{proj}_proj.weight"))
        if options["qkv_bias"] if proj != "o" else options["out_bias"]:
            rules.append(same(f"{zoo}{proj}_proj.bias", f"{hf}{proj}_proj.bias"))
    if options["qk_norm"]:
        rules += [same(f"{zoo}{n}_norm.weight", f"{hf}{n}_norm.weight") for n in ("q", "k")]
    return rules


def swiglu_rules(zoo: str, hf: str) -> list[Rule]:
    """A SwiGLU MLP's tensors (`gate_proj`, `up_proj`, `down_proj` under `hf`) onto the zoo's fused `gate_up`."""
    return [
        Rule(zoo + "gate_up.weight", (hf + "gate_proj.weight", hf + "up_proj.weight")),
        same(zoo + "down.weight", hf + "down_proj.weight"),
    ]


class LlamaFamily(HFArch):
    model_types = ("llama", "mistral", "qwen2", "qwen3")

    def zoo_config(self, cfg: HFConfig) -> ModelConfig:
        check_dense(cfg)
        d, n_layers = cfg.require("hidden_size"), cfg.require("num_hidden_layers")
        options = attention_options(cfg, qk_norm="head" if cfg.model_type == "qwen3" else None)
        if cfg.model_type == "qwen2":  # Qwen2 has q/k/v biases, no output bias, and no flag for either
            options |= {"qkv_bias": True, "out_bias": False}
        kinds = layer_kinds(cfg, n_layers)
        window = cfg.get("sliding_window") if "sliding_attention" in kinds else None
        if "sliding_attention" in kinds and not window:
            cfg.refuse("sliding_window", window, "sliding_attention layers need a window size")
        uniform = len(set(kinds)) == 1
        attn = {**options, "window_size": window if uniform else None, "layers": []}
        return llama_like_model(
            cfg,
            mixer=ATTENTION_MIXER,
            head_dim=model_head_dim(d, options["head_size"]),
            attn=attn,
            layers=None if uniform else [ATTENTION_MIXER if k == "full_attention" else SLIDING for k in kinds],
            mixers={} if uniform else {SLIDING: {**options, "window_size": window}},
        )

    def rules(self, config: ModelConfig) -> list[Rule]:
        rules = [same("embed.weight", "model.embed_tokens.weight"), same("norm.weight", "model.norm.weight")]
        if not config.tie_embeddings:
            rules.append(same("lm_head.weight", "lm_head.weight"))
        for i, name in enumerate(config.layer_names()):
            zoo, hf = f"blocks.{i}.", f"model.layers.{i}."
            rules += [
                same(zoo + "mixer_norm.weight", hf + "input_layernorm.weight"),
                same(zoo + "mlp_norm.weight", hf + "post_attention_layernorm.weight"),
                *swiglu_rules(zoo + "mlp.", hf + "mlp."),
                *attention_rules(zoo + "mixer.", hf + "self_attn.", config.mixer_kwargs(name)),
            ]
        return rules

    def ignored(self, config: ModelConfig) -> tuple[str, ...]:
        # a tied head stored anyway is not read by transformers either (it ties the embedding over it)
        return (r"model\.layers\.\d+\.self_attn\.rotary_emb\.inv_freq", *(("lm_head.weight",) * config.tie_embeddings))

    # -- export ----------------------------------------------------------------------------------------------
    def hf_config(self, config: ModelConfig) -> dict[str, Any]:
        names = config.layer_names()
        if set(names) - {ATTENTION_MIXER, SLIDING}:
            raise CheckpointError(
                f"only attention layers have a Llama-family equivalent; this model has {sorted(set(names))}"
            )
        if config.mlp != "swiglu":
            raise CheckpointError(f"model.mlp={config.mlp!r} has no Llama-family equivalent (SwiGLU only)")
        if config.learned_positions is not None:
            raise CheckpointError("model.learned_positions has no Llama-family equivalent (RoPE only)")
        options = [config.mixer_kwargs(n) for n in dict.fromkeys(names)]
        windows = {o["window_size"] for o in options}
        shared = {k: v for k, v in options[0].items() if k != "window_size"}
        if any({k: v for k, v in o.items() if k != "window_size"} != shared for o in options[1:]):
            raise CheckpointError("attention layers with different options have no Llama-family equivalent")
        if shared["rope_theta"] is None:
            raise CheckpointError("attention without RoPE (rope_theta null) has no Llama-family equivalent")
        if shared["qkv_bias"] != shared["out_bias"]:
            raise CheckpointError("qkv_bias without out_bias (or the reverse) has no Llama-family equivalent")
        if shared["qk_norm"] == "full":
            raise CheckpointError("qk_norm=full (over the whole projection) has no Llama-family equivalent")
        model_type = "qwen3" if shared["qk_norm"] == "head" else "mistral" if windows != {None} else "llama"
        if len(windows) > 1 and model_type != "qwen3":
            raise CheckpointError("layers with different windows are exported only with QK norm (as qwen3)")
        mixer = self._probe(config)
        hf = {
            "model_type": model_type,
            "architectures": [{"llama": "Llama", "mistral": "Mistral", "qwen3": "Qwen3"}[model_type] + "ForCausalLM"],
            "vocab_size": config.vocab_size,
            "hidden_size": config.d_model,
            "intermediate_size": self._mlp_hidden(config),
            "num_hidden_layers": config.n_layers,
            "num_attention_heads": mixer.num_heads,
            "num_key_value_heads": mixer.num_kv_heads,
            "head_dim": mixer.head_dim,
            "hidden_act": "silu",
            "rms_norm_eps": config.norm_eps,
            "tie_word_embeddings": config.tie_embeddings,
            "attention_bias": shared["qkv_bias"],
            "initializer_range": config.init_std,
            "rope_parameters": {
                "rope_type": "default",
                "rope_theta": shared["rope_theta"],
                **(shared["rope_scaling"] or {}),
            },
        }
        if shared["rope_dim"] not in (None, mixer.head_dim):
            raise CheckpointError("partial RoPE (rope_dim) has no Llama-family equivalent")
        if model_type == "mistral":
            hf["sliding_window"] = windows.pop()
        if model_type == "qwen3":
            window = {w for w in windows if w is not None}
            if len(window) > 1:
                raise CheckpointError(f"Qwen3 has one sliding window size; this model has {sorted(window)}")
            kinds = ["sliding_attention" if config.mixer_kwargs(n)["window_size"] else "full_attention" for n in names]
            hf |= {
                "layer_types": kinds,
                "use_sliding_window": bool(window),
                "sliding_window": min(window, default=None),
            }
            if shared["norm_eps"] != config.norm_eps:
                raise CheckpointError("Qwen3's QK norm uses the model's rms_norm_eps; this model's differ")
        return hf

    @staticmethod
    def _probe(config: ModelConfig):
        """Layer 0's attention, built without memory (head counts and sizes resolved from its options)."""
        import torch

        from zoo.model.lm import build_mixer

        name = config.layer_names()[0]
        with torch.device("meta"):
            return build_mixer(name, config.d_model, 0, config.n_layers, config.head_dim, config.mixer_kwargs(name))

    @staticmethod
    def _mlp_hidden(config: ModelConfig) -> int:
        from zoo.model.layers import swiglu_hidden

        return config.mlp_hidden or swiglu_hidden(config.d_model, config.mlp_ratio)
