"""`mamba2`: pure Mamba-2 language models (transformers' `Mamba2ForCausalLM`, e.g. Mamba-Codestral). Each block is
the SSD mixer alone after an RMSNorm (`model.mlp: none`); the zoo's `mamba2` mixer has the reference module's
layout (in_proj = [z, x, B, C, dt], a depthwise conv over [x, B, C], the gated RMSNorm per group), so the tensors
copy one to one.

`mamba2_options` is shared with the hybrids built on Mamba-2 (Bamba, Nemotron-H, Falcon-H1, Zamba2), which spell
the same fields with their own prefixes.
"""

from __future__ import annotations

import math
from typing import Any

from zoo.errors import CheckpointError
from zoo.io.hf.base import HFArch, HFConfig, Rule, as_float, same
from zoo.model.config import ModelConfig

MAMBA2 = "mamba2"
# the zoo's own init ranges (conf/mixer/mamba2.yaml); they only matter for training from scratch
INIT = {"dt_min": 1e-3, "dt_max": 0.1, "dt_init_floor": 1e-4, "A_init_range": [1, 16]}


def mamba2_options(
    cfg: HFConfig, d_model: int, field: dict[str, str], eps: float, dt_limit=None, expand=None
) -> dict[str, Any]:
    """The zoo `mamba2` mixer options of a config whose Mamba-2 fields are named by `field` (zoo name -> config
    key: heads, head_dim, d_state, ngroups, d_conv, expand, conv_bias, proj_bias). `dt_limit` is the clamp of dt the
    family applies (default: the config's `time_step_limit`); `expand` the width ratio when the family sizes the
    mixer itself (Falcon-H1's `mamba_d_ssm`; default: the config's expand field). Projection biases are refused:
    the zoo's mixer has none. The gated norm is mamba_ssm's (`norm: gated`); a family without it says so."""
    limit = dt_limit or [as_float(x) for x in cfg.get("time_step_limit", (0.0, math.inf))]
    if cfg.get(field["proj_bias"], False):
        cfg.refuse(field["proj_bias"], True, "the zoo's mamba2 projections have no bias")
    heads, headdim = cfg.require(field["heads"]), cfg.require(field["head_dim"])
    expand = cfg.require(field["expand"]) if expand is None else expand
    if heads * headdim != expand * d_model:
        cfg.refuse(field["heads"], heads, f"{field['heads']} * {field['head_dim']} must be {expand} * hidden_size")
    return {
        "d_state": cfg.require(field["d_state"]),
        "ngroups": cfg.get(field["ngroups"], 1),
        "d_conv": cfg.get(field["d_conv"], 4),
        "expand": expand,
        "headdim": headdim,
        "conv_bias": cfg.get(field["conv_bias"], True),
        "norm_eps": eps,
        "norm": "gated",
        # [0, inf) clamps nothing; an upper bound of inf is written as null (JSON has no infinity)
        "dt_limit": None if list(limit) == [0.0, math.inf] else [limit[0], None if limit[1] == math.inf else limit[1]],
        "chunk_size": 64,
        "backend": "auto",
        **INIT,
    }


def mamba2_rules(zoo: str, hf: str, options: dict) -> list[Rule]:
    """The tensors of one Mamba-2 mixer with the zoo `options`: zoo prefix `zoo` (`blocks.i.mixer.`), checkpoint
    prefix `hf`."""
    names = {"in_proj.weight": "in_proj.weight", "out_proj.weight": "out_proj.weight", "dt_bias": "dt_bias"}
    names |= {"A_log": "A_log", "D": "D", "conv.weight": "conv1d.weight"}
    if options["norm"] != "none":
        names["norm_weight"] = "norm.weight"
    if options["conv_bias"]:
        names["conv.bias"] = "conv1d.bias"
    return [same(zoo + ours, hf + theirs) for ours, theirs in names.items()]


FIELDS = {
    "heads": "num_heads",
    "head_dim": "head_dim",
    "d_state": "state_size",
    "ngroups": "n_groups",
    "d_conv": "conv_kernel",
    "expand": "expand",
    "conv_bias": "use_conv_bias",
    "proj_bias": "use_bias",
}


class Mamba2Family(HFArch):
    model_types = (MAMBA2,)

    def zoo_config(self, cfg: HFConfig) -> ModelConfig:
        cfg.expect("hidden_act", ("silu",), "silu")  # the short conv's activation
        d = cfg.require("hidden_size")
        eps = cfg.get("layer_norm_epsilon", 1e-5)
        options = mamba2_options(cfg, d, FIELDS, eps)
        return ModelConfig(
            vocab_size=cfg.require("vocab_size"),
            d_model=d,
            n_layers=cfg.require("num_hidden_layers"),
            mixer=MAMBA2,
            head_dim=options["headdim"] if d % options["headdim"] == 0 else math.gcd(d, options["headdim"]),
            attn={"layers": []},
            mixers={MAMBA2: options},
            mlp="none",  # Mamba-2 blocks are the mixer alone
            mlp_ratio=0.0,
            tie_embeddings=bool(cfg.get("tie_word_embeddings", False)),
            norm_eps=eps,
            init_std=cfg.get("initializer_range", 0.02),
        )

    def rules(self, config: ModelConfig) -> list[Rule]:
        rules = [same("embed.weight", "backbone.embeddings.weight"), same("norm.weight", "backbone.norm_f.weight")]
        if not config.tie_embeddings:
            rules.append(same("lm_head.weight", "lm_head.weight"))
        options = config.mixer_kwargs(MAMBA2)
        for i in range(config.n_layers):
            zoo, hf = f"blocks.{i}.", f"backbone.layers.{i}."
            rules.append(same(zoo + "mixer_norm.weight", hf + "norm.weight"))
            rules += mamba2_rules(zoo + "mixer.", hf + "mixer.", options)
        return rules

    def ignored(self, config: ModelConfig) -> tuple[str, ...]:
        return ("lm_head.weight",) * config.tie_embeddings

    def hf_config(self, config: ModelConfig) -> dict[str, Any]:
        if set(config.layer_names()) != {MAMBA2}:
            raise CheckpointError(f"Mamba2 has only mamba2 layers; this model has {sorted(set(config.layer_names()))}")
        if config.mlp != "none":
            raise CheckpointError(f"Mamba2 blocks have no MLP; this model has model.mlp={config.mlp!r} (set none)")
        if config.learned_positions is not None:
            raise CheckpointError("model.learned_positions has no Mamba2 equivalent")
        o = config.mixer_kwargs(MAMBA2)
        limit = o["dt_limit"]
        if o["norm"] != "gated":
            raise CheckpointError(f"Mamba2's norm is the gated one; this model's mamba2 has norm={o['norm']!r}")
        if o["norm_eps"] != config.norm_eps:
            raise CheckpointError("Mamba2 has one layer_norm_epsilon; this model's mixer and block norms differ")
        headdim = o["headdim"] or config.head_dim
        d_inner = int(o["expand"] * config.d_model)
        if o["expand"] != int(o["expand"]):
            raise CheckpointError(f"Mamba2's expand is an integer; this model has {o['expand']}")
        return {
            "model_type": MAMBA2,
            "architectures": ["Mamba2ForCausalLM"],
            "vocab_size": config.vocab_size,
            "hidden_size": config.d_model,
            "num_hidden_layers": config.n_layers,
            "num_heads": d_inner // headdim,
            "head_dim": headdim,
            "state_size": o["d_state"],
            "n_groups": o["ngroups"],
            "conv_kernel": o["d_conv"],
            "expand": int(o["expand"]),
            "use_conv_bias": o["conv_bias"],
            "time_step_limit": [0.0, math.inf] if limit is None else [limit[0], limit[1] or math.inf],
            "use_bias": False,
            "layer_norm_epsilon": config.norm_eps,
            "tie_word_embeddings": config.tie_embeddings,
            "initializer_range": config.init_std,
        }
