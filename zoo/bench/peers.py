"""Hugging Face peers of zoo-bench: transformers models at our shapes (random init), timed through the same calls
as our models (needs `transformers`: pip install 'hybrid-zoo[bench]')."""

from __future__ import annotations

import math

import torch

from zoo.config import compose
from zoo.schemas import BenchConfig, BenchSize


class HFRunner:
    """A Hugging Face causal LM at the same shapes (random init), timed through the same three calls."""

    def __init__(self, model, kind: str, prefill_chunk: int, kv_layers: int, kv_width: int):
        self.model, self.kind, self.prefill_chunk, self.note = model, kind, prefill_chunk, ""
        self.kv_layers, self.kv_width = kv_layers, kv_width  # full-attention layers and their K+V width
        self.params = sum(p.numel() for p in model.parameters())
        embed = model.get_input_embeddings().weight
        self.weight_bytes = self.params * embed.element_size()
        self.flop_params = self.params - embed.numel()
        self.elem = embed.element_size()

    def state_bytes(self, seq_len: int, batch_size: int = 1) -> int:
        # only the growing part matters for the budget: the attention layers' KV cache
        return batch_size * seq_len * self.kv_layers * self.kv_width * self.elem

    def prefill(self, ids: torch.Tensor, total_len: int):
        if self.kind == "static":
            from transformers import StaticCache

            cache = StaticCache(config=self.model.config, max_cache_len=total_len)
            for start in range(0, ids.shape[1], self.prefill_chunk):
                chunk = ids[:, start : start + self.prefill_chunk]
                pos = torch.arange(start, start + chunk.shape[1], device=ids.device)
                out = self.model(chunk, past_key_values=cache, cache_position=pos, use_cache=True, logits_to_keep=1)
            return cache, out.logits[:, -1]
        # HF's recurrent models take the prompt in one call (their documented use); memory grows with it
        out = self.model(ids, use_cache=True, logits_to_keep=1)
        cache = out.cache_params if self.kind == "mamba" else out.past_key_values
        return cache, out.logits[:, -1]

    def step(self, cache, ids: torch.Tensor, position: int):
        pos = torch.tensor([position], device=ids.device)
        if self.kind == "mamba":
            out = self.model(ids, cache_params=cache, use_cache=True, cache_position=pos)
            return out.cache_params, out.logits[:, -1]
        out = self.model(ids, past_key_values=cache, use_cache=True, cache_position=pos)
        return out.past_key_values, out.logits[:, -1]


HF_CHECKPOINT = "transformers:"  # a job name: transformers' own implementation of a checkpoint folder


def checkpoint_runner(folder: str, cfg: BenchConfig, device, dtype) -> HFRunner:
    """transformers' own model of the checkpoint folder that `zoo-bench path=` imports: the same weights through
    the other implementation. The budget's cache size comes from the zoo's model of the same config (built without
    memory): the elements its cache grows by per token (every attention layer's K and V, shared blocks' too)."""
    import transformers as tf

    from zoo.io.hf import read_hf_config
    from zoo.model.lm import HybridLM

    arch, hf_cfg = read_hf_config(folder)
    with torch.device("meta"):
        ours = HybridLM(arch.zoo_config(hf_cfg))
    per_token = (ours.state_bytes(2) - ours.state_bytes(1)) // torch.float32.itemsize  # elements, as one "layer"
    model = tf.AutoModelForCausalLM.from_pretrained(folder, dtype=dtype)
    if hf_cfg.model_type == "mamba2":
        kind = "mamba"
    elif set(ours.layer_mixers) <= {"attn", "swa"}:
        kind = "static"  # a dense transformer: HF's static KV cache, as the hf_llama_static peer
    else:
        kind = "dynamic"
    return HFRunner(model.to(device).eval(), kind, cfg.prefill_chunk, 1, per_token)


def peer_runner(peer: str, size: BenchSize, cfg: BenchConfig, device, dtype, attn_layers=None) -> HFRunner:
    """HF models shaped like ours: width, depth, heads (the size's head_dim, else conf/model/transformer.yaml's),
    vocab, tied embeddings; MLP width of our transformer (SwiGLU hidden 2/3 * 4 * d)."""
    import transformers as tf

    hd = size.head_dim if size.head_dim is not None else compose(["model=transformer"]).model.head_dim
    d, n, vocab = size.d_model, size.n_layers, cfg.vocab_size
    heads, hidden = d // hd, 8 * math.ceil(2 / 3 * 4 * d / 8)
    common = {"vocab_size": vocab, "hidden_size": d, "num_hidden_layers": n, "tie_word_embeddings": True}
    if peer == "hf_llama_static":
        longest = max(cfg.prompt_lens) + cfg.gen_tokens
        config = tf.LlamaConfig(
            **common,
            intermediate_size=hidden,
            num_attention_heads=heads,
            num_key_value_heads=heads,
            max_position_embeddings=longest,
        )
        model, kind, kv = tf.LlamaForCausalLM(config), "static", (n, 2 * d)
    elif peer == "hf_mamba2":
        # HF's Mamba2 blocks have no MLP: twice the blocks of our mamba2 (mixer + MLP) at the same width, as the
        # paper's pure Mamba-2 LMs do, lands at about the same parameter count
        config = tf.Mamba2Config(
            **common | {"num_hidden_layers": 2 * n},
            num_heads=2 * d // hd,
            head_dim=hd,
            state_size=128,
            n_groups=1,
            expand=2,
            chunk_size=64,
        )
        model, kind, kv = tf.Mamba2ForCausalLM(config), "mamba", (0, 0)
    elif peer == "hf_olmo_hybrid":
        # gated DeltaNet with full attention at layer 1 (OLMo-hybrid needs one): compared with our
        # gated_deltanet+attn[1], which plan() adds to the run
        layer_types = ["full_attention" if i == 1 else "linear_attention" for i in range(n)]
        hidden = 8 * math.ceil(2 / 3 * 2 * d / 8)  # our gated_deltanet's SwiGLU (mlp_ratio 2, conf/model)
        config = tf.OlmoHybridConfig(
            **common,
            intermediate_size=hidden,
            num_attention_heads=heads,
            layer_types=layer_types,
            linear_num_key_heads=heads,
            linear_num_value_heads=heads,
            linear_key_head_dim=hd,
            linear_value_head_dim=2 * hd,
            pad_token_id=None,
            eos_token_id=None,
        )
        model, kind, kv = tf.OlmoHybridForCausalLM(config), "dynamic", (1, 2 * d)
    else:
        raise ValueError(f"unknown peer {peer!r}; valid: hf_llama_static, hf_mamba2, hf_olmo_hybrid")
    return HFRunner(model.to(device=device, dtype=dtype).eval(), kind, cfg.prefill_chunk, *kv)
