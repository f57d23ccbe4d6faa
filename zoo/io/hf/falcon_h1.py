"""`falcon_h1`: TII's Falcon-H1 (transformers' `FalconH1ForCausalLM`). Every layer runs Llama-style attention and a
Mamba-2 mixer side by side on the same normed input and adds both outputs to the residual, then a SwiGLU MLP:

    h = x + a_out * Attn(a_in * n(x)) + s_out * Mamba2(s_in * n(x))      (keys times k_mult, in_proj out times mup)
    y = h + d_mult * W_down(W_up n(h) * silu(g_mult * W_gate n(h)))
    logits = lm_mult * W_head norm(h_L),   h_0 = e_mult * W_embed[ids]

In the zoo that is the `parallel` mixer with branches `[attn, mamba2]` in every layer (`model.mixer: parallel`).
Falcon-H1's multipliers (muP) are fixed scales on the inputs or outputs of linear maps, so the import folds each
into the weights (`Rule.scale`): attention_in into q/k/v, key_multiplier into k, attention_out into o,
ssm_in and the five ssm_multipliers (the "mup vector" over in_proj's z, x, B, C, dt rows) into in_proj, ssm_out
into out_proj, the gate multiplier into the gate rows of SwiGLU's gate_up, the down multiplier into down,
embedding_multiplier into the embedding and lm_head_multiplier into the final norm's scale (divided by the
embedding multiplier when the head is tied to the embedding). The zoo model has no multiplier options.

The Mamba-2 branch is `mamba_d_ssm` wide when set (`expand` = mamba_d_ssm / hidden_size); without
`mamba_rms_norm` it has no norm (`norm: none`, y * silu(z)), with it the norm before or after the gate
(`mamba_norm_before_gate`). No export: the zoo writes no model as falcon_h1.
"""

from __future__ import annotations

import dataclasses

from zoo.io.hf.bamba import FIELDS  # Falcon-H1 spells its Mamba-2 fields as Bamba does
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

PARALLEL = "parallel"
MULTIPLIERS = (
    "embedding_multiplier",
    "lm_head_multiplier",
    "key_multiplier",
    "attention_in_multiplier",
    "attention_out_multiplier",
    "ssm_in_multiplier",
    "ssm_out_multiplier",
)


def multipliers(cfg: HFConfig) -> dict[str, float | list[float]]:
    """Falcon-H1's multipliers (1.0, or [1.0] * n, where the config leaves them out), checked."""
    found: dict[str, float | list[float]] = {key: float(cfg.get(key, 1.0)) for key in MULTIPLIERS}
    for key, n in (("mlp_multipliers", 2), ("ssm_multipliers", 5)):
        values = cfg.get(key, [1.0] * n)
        if not isinstance(values, list) or len(values) != n:
            cfg.refuse(key, values, f"a list of {n} numbers")
        found[key] = [float(v) for v in values]
    if found["embedding_multiplier"] == 0 and cfg.get("tie_word_embeddings", False):
        cfg.refuse("embedding_multiplier", 0.0, "a tied head is scaled back by it")
    return found


class FalconH1Family(HFArch):
    model_types = ("falcon_h1",)

    def zoo_config(self, cfg: HFConfig) -> ModelConfig:
        check_dense(cfg)  # hidden_act is also the Mamba conv's activation
        if cfg.get("projectors_bias", False):
            cfg.refuse("projectors_bias", True, "the zoo's mamba2 out_proj has no bias")
        multipliers(cfg)  # checked here, before the model is built; import_rules folds them
        d, eps = cfg.require("hidden_size"), cfg.get("rms_norm_eps", 1e-5)
        width = cfg.get("mamba_d_ssm") or cfg.require("mamba_expand") * d
        if cfg.get("mamba_d_head", "auto") == "auto":  # transformers fills it in; a raw config may not
            cfg.data["mamba_d_head"] = width // cfg.require("mamba_n_heads")
        expand = width / d
        if expand * d != width:
            cfg.refuse("mamba_d_ssm", width, f"mamba_d_ssm / hidden_size={d} is not exact in floating point")
        mamba = mamba2_options(cfg, d, FIELDS, eps, expand=int(expand) if expand == int(expand) else expand)
        if cfg.get("mamba_rms_norm", False):
            mamba["norm"] = "before_gate" if cfg.get("mamba_norm_before_gate", True) else "gated"
        else:
            mamba["norm"] = "none"
        attn = attention_options(cfg)
        return llama_like_model(
            cfg,
            mixer=PARALLEL,
            head_dim=model_head_dim(d, mamba["headdim"]),
            attn={**attn, "window_size": None, "layers": []},
            mixers={PARALLEL: {"branches": [ATTENTION_MIXER, MAMBA2]}, MAMBA2: mamba},
            norm_eps=eps,
        )

    def rules(self, config: ModelConfig) -> list[Rule]:
        """The tensor names, without the multipliers (`import_rules` folds them in)."""
        rules = [same("embed.weight", "model.embed_tokens.weight"), same("norm.weight", "model.final_layernorm.weight")]
        if not config.tie_embeddings:
            rules.append(same("lm_head.weight", "lm_head.weight"))
        attn, mamba = config.mixer_kwargs(ATTENTION_MIXER), config.mixer_kwargs(MAMBA2)
        for i in range(config.n_layers):
            zoo, hf = f"blocks.{i}.", f"model.layers.{i}."
            rules += [
                same(zoo + "mixer_norm.weight", hf + "input_layernorm.weight"),
                same(zoo + "mlp_norm.weight", hf + "pre_ff_layernorm.weight"),
                *swiglu_rules(zoo + "mlp.", hf + "feed_forward."),
                *attention_rules(f"{zoo}mixer.branches.{ATTENTION_MIXER}.", hf + "self_attn.", attn),
                *mamba2_rules(f"{zoo}mixer.branches.{MAMBA2}.", hf + "mamba.", mamba),
            ]
        return rules

    def import_rules(self, config: ModelConfig, cfg: HFConfig) -> list[Rule]:
        m = multipliers(cfg)
        a_in, key = m["attention_in_multiplier"], m["key_multiplier"]
        gate, down = m["mlp_multipliers"]
        tied = m["embedding_multiplier"] if config.tie_embeddings else 1.0
        factors = {  # zoo tensor name (after `blocks.i.`) -> its factor
            "embed.weight": m["embedding_multiplier"],
            "norm.weight": m["lm_head_multiplier"] / tied,  # logits = lm_mult * head(norm(h)); a tied head is scaled
            "mlp.gate_up.weight": (gate,) * config.mlp_hidden + (1.0,) * config.mlp_hidden,
            "mlp.down.weight": down,
        }
        attn = f"mixer.branches.{ATTENTION_MIXER}."
        factors |= {f"{attn}{p}_proj.weight": a_in for p in ("q", "v")}
        factors |= {f"{attn}k_proj.weight": a_in * key, f"{attn}k_proj.bias": key}
        factors |= {f"{attn}o_proj.{p}": m["attention_out_multiplier"] for p in ("weight", "bias")}
        mamba = f"mixer.branches.{MAMBA2}."
        factors[f"{mamba}in_proj.weight"] = tuple(m["ssm_in_multiplier"] * f for f in self.mup_rows(config, m))
        factors[f"{mamba}out_proj.weight"] = m["ssm_out_multiplier"]
        folded = []
        for rule in self.rules(config):
            name = rule.zoo.split(".", 2)[2] if rule.zoo.startswith("blocks.") else rule.zoo
            scale = factors.get(name)
            folded.append(rule if scale in (None, 1.0) else dataclasses.replace(rule, scale=scale))
        return folded

    @staticmethod
    def mup_rows(config: ModelConfig, m: dict) -> list[float]:
        """transformers' `mup_vector`: one factor per row of the Mamba in_proj, ssm_multipliers over z, x, B, C, dt."""
        o = config.mixer_kwargs(MAMBA2)
        width, state = int(o["expand"] * config.d_model), o["ngroups"] * o["d_state"]
        sizes = (width, width, state, state, width // o["headdim"])
        return [f for f, n in zip(m["ssm_multipliers"], sizes, strict=True) for _ in range(n)]

    def ignored(self, config: ModelConfig) -> tuple[str, ...]:
        return ("lm_head.weight",) * config.tie_embeddings
