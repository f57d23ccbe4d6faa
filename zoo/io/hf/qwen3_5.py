"""`qwen3_5` / `qwen3_5_text`: Qwen3.5's language model (transformers' `Qwen3_5ForCausalLM`; the multimodal
`Qwen3_5ForConditionalGeneration` checkpoints hold the same model under `model.language_model.`, with a vision
tower that the zoo does not import: only text runs, and the tower's tensors are skipped). Pre-norm blocks of Gated
DeltaNet (grouped values: more value heads than key heads) or gated attention, each with a SwiGLU MLP:

- gated attention: `q_proj` gives each head [q, gate]; the output is multiplied by `sigmoid(gate)` before
  `o_proj` (the zoo attention's `output_gate`); per-head QK norm; RoPE on the first quarter of each head (its
  multimodal RoPE reduces to plain RoPE for text, whose three position ids are equal);
- Gated DeltaNet: q / k / v come from one projection and one short conv over [q, k, v], which the zoo's separate
  projections and convs take row slices of; beta in (0, 1); gated output norm with the model's eps;
- every RMSNorm but the DeltaNet output norm is zero-centred, `x * (1 + w)`: imported as `1 + w`.
"""

from __future__ import annotations

from zoo.io.hf.base import HFArch, HFConfig, Rule, same
from zoo.io.hf.llama import attention_options, check_dense, llama_like_model, model_head_dim, swiglu_rules
from zoo.io.hf.olmo_hybrid import gated_deltanet_options, linear_layer_kinds
from zoo.model.config import ATTENTION_MIXER, ModelConfig

GDN = "gated_deltanet"


def centred(zoo: str, hf: str) -> Rule:
    """A zero-centred norm's weight: the zoo's RMSNorm scales by `w`, Qwen3.5's by `1 + w`."""
    return Rule(zoo, (hf,), shift=1.0)


class Qwen3_5Family(HFArch):
    model_types = ("qwen3_5", "qwen3_5_text")
    aliases = ((r"^model\.language_model\.", "model."),)

    def zoo_config(self, cfg: HFConfig) -> ModelConfig:
        if cfg.model_type == "qwen3_5":  # the multimodal config: its language model is text_config
            cfg = HFConfig({**cfg.require("text_config"), "model_type": "qwen3_5_text"}, cfg.path)
        check_dense(cfg)
        d = cfg.require("hidden_size")
        kinds = linear_layer_kinds(cfg)
        attn = attention_options(cfg, partial=0.25, qk_norm="head") | {"output_gate": True, "window_size": None}
        attn["layers"] = [i for i, kind in enumerate(kinds) if kind == "full_attention"]
        # Qwen3.5's beta is in (0, 1); its gated output norm takes the model's eps; the inits are transformers'
        gdn = gated_deltanet_options(
            cfg,
            allow_neg_eigval=False,
            A_init_range=[0.01, 16.0],
            dt_min=1e-3,
            dt_max=0.1,
            dt_init_floor=1e-4,
            norm_eps=cfg.get("rms_norm_eps", 1e-6),
        )
        return llama_like_model(
            cfg,
            mixer=GDN,
            head_dim=model_head_dim(d, cfg.require("linear_key_head_dim")),
            attn=attn,
            mixers={GDN: gdn},
        )

    def rules(self, config: ModelConfig) -> list[Rule]:
        rules = [same("embed.weight", "model.embed_tokens.weight"), centred("norm.weight", "model.norm.weight")]
        if not config.tie_embeddings:
            rules.append(same("lm_head.weight", "lm_head.weight"))
        for i, name in enumerate(config.layer_names()):
            zoo, hf = f"blocks.{i}.", f"model.layers.{i}."
            rules += [
                centred(zoo + "mixer_norm.weight", hf + "input_layernorm.weight"),
                centred(zoo + "mlp_norm.weight", hf + "post_attention_layernorm.weight"),
                *swiglu_rules(zoo + "mlp.", hf + "mlp."),
            ]
            if name == ATTENTION_MIXER:
                rules += self.attention_rules(zoo + "mixer.", hf + "self_attn.", config.mixer_kwargs(name))
            else:
                rules += self.gdn_rules(zoo + "mixer.", hf + "linear_attn.", config)
        return rules

    @staticmethod
    def attention_rules(zoo: str, hf: str, options: dict) -> list[Rule]:
        rules = [same(f"{zoo}{p}_proj.weight", f"{hf}{p}_proj.weight") for p in "qkvo"]
        if options["qkv_bias"]:
            rules += [same(f"{zoo}{p}_proj.bias", f"{hf}{p}_proj.bias") for p in "qkv"]
        if options["out_bias"]:
            rules.append(same(zoo + "o_proj.bias", hf + "o_proj.bias"))
        return rules + [centred(f"{zoo}{n}_norm.weight", f"{hf}{n}_norm.weight") for n in "qk"]

    @staticmethod
    def gdn_rules(zoo: str, hf: str, config: ModelConfig) -> list[Rule]:
        """The fused q / k / v projection and conv as row slices; the rest one to one."""
        options = config.mixer_kwargs(GDN)
        key_dim = round(options["expand_k"] * config.d_model)
        value_dim = round(options["expand_v"] * config.d_model)
        bounds = {"q": (0, key_dim), "k": (key_dim, 2 * key_dim), "v": (2 * key_dim, 2 * key_dim + value_dim)}
        rules = [Rule(f"{zoo}{c}_proj.weight", (hf + "in_proj_qkv.weight",), rows) for c, rows in bounds.items()]
        rules += [Rule(f"{zoo}{c}_conv.weight", (hf + "conv1d.weight",), rows) for c, rows in bounds.items()]
        names = {"g_proj.weight": "in_proj_z.weight", "b_proj.weight": "in_proj_b.weight"}
        names |= {"a_proj.weight": "in_proj_a.weight", "o_proj.weight": "out_proj.weight"}
        names |= {"o_norm.weight": "norm.weight", "A_log": "A_log", "dt_bias": "dt_bias"}
        return rules + [same(zoo + ours, hf + theirs) for ours, theirs in names.items()]

    def ignored(self, config: ModelConfig) -> tuple[str, ...]:
        # the multimodal checkpoints' vision tower, and multi-token-prediction layers: not part of the language model
        return (r"model\.visual\..*", r"mtp\..*", *(("lm_head.weight",) * config.tie_embeddings))
