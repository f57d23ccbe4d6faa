"""Shared blocks: one set of parameters run at several depths, each run ("use") with its own KV cache and its own
small parameters: Zamba's shared attention block (Glorioso et al. 2024, "Zamba", arXiv:2405.16712; Zamba2,
arXiv:2411.15242). `model.shared` (conf/model/transformer.yaml) sets it up as data:

    layers        the layers that read a shared block, in depth order: use u = 0, 1, ... (Zamba2's hybrid layers)
    num_blocks    distinct blocks, used in turn: use u runs block j = u % num_blocks (Zamba2's num_mem_blocks)
    num_heads, num_kv_heads, rope_theta, mlp_hidden, act, adapter_rank, qkv_adapters, mlp_adapter: below

For the residual stream x `[B, T, d]` entering layer i (use u, block j) and the token embeddings e `[B, T, d]`:

    h = RMSNorm_2d([x, e])                           the concatenation, 2d wide
    q = W_q^j h + U_q^u D_q^u h   (k, v alike)       LoRA adapters of rank r, one set per use (qkv_adapters)
    a = W_o^j attn(q, k, v)                          causal; heads 2d / num_heads wide; RoPE if rope_theta
    m = RMSNorm_d(a);  [g; v] = W_gu^j m + U^u D^u m;  s = W_down^j (act(g) * v)     (mlp_adapter)
    t = P^u s                                        a per-use projection, d -> d

and layer i's block runs `x + mixer(norm(x + t))` (then its MLP): t enters the input of the layer's mixer, not the
residual stream (Zamba2's hybrid layer, whose Mamba-2 reads `x + t`). The shared block has no residual of its own.

Where the parameters live: the model owns the blocks once (`HybridLM.shared_blocks`, tensors
`shared_blocks.<j>.*`), and each layer that reads one owns its use (`Block.shared_use`, a `SharedUse`: the adapters
and P, tensors `blocks.<i>.shared_use.*`). A use reaches its block through the call (`SharedContext`), never as a
submodule, so the module tree holds every parameter once: checkpoints store the shared weights once with no
aliasing (safetensors refuses shared storage), `num_params` counts them once, and the optimizer sums their
gradients over the uses. Each use's KV cache is `LayerCache.shared` of its layer, so `state_bytes`, cache stacking
and the KV `reserve` treat it like any attention layer's.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from zoo.errors import ConfigError
from zoo.model.flops import matmul_flops, mean_causal_keys
from zoo.model.layers import RMSNorm, positions_after, rope_frequencies, rotary
from zoo.model.mixers.attention import KVCache, attend
from zoo.model.mixers.base import check_divides
from zoo.model.quant import activation_dtype

ACTS = {"gelu": F.gelu, "silu": F.silu}  # act(gate) * up in the shared MLP (Zamba2's hidden_act: gelu)
SHARED_OPTIONS = (
    "layers",
    "num_blocks",
    "num_heads",
    "num_kv_heads",
    "rope_theta",
    "mlp_hidden",
    "act",
    "adapter_rank",
    "qkv_adapters",
    "mlp_adapter",
)


@dataclass
class SharedContext:
    """What a layer's shared use reads besides the residual stream: the token embeddings `[B, T, d]` and the
    model's shared blocks."""

    embeddings: torch.Tensor
    blocks: nn.ModuleList


class SharedBlock(nn.Module):
    """The parameters of one shared block (see the module docstring): attention over the 2d-wide `[x, e]` with
    `num_heads` heads of 2d / num_heads (`num_kv_heads` grouped keys), output d wide, then an RMSNorm and a gated
    MLP `W_down (act(g) * v)` of hidden size `mlp_hidden`."""

    def __init__(
        self,
        d_model: int,
        *,
        num_heads: int,
        num_kv_heads: int | None,
        rope_theta: float | None,
        mlp_hidden: int,
        act: str,
        norm_eps: float,
    ):
        super().__init__()
        width = 2 * d_model
        self.num_heads = num_heads
        self.head_dim = check_divides("model.shared.num_heads must divide 2 * d_model", width, num_heads, -1)
        self.num_kv_heads = num_kv_heads or num_heads
        check_divides("model.shared.num_kv_heads must divide num_heads", num_heads, self.num_kv_heads, -1)
        if act not in ACTS:
            raise ConfigError(f"model.shared.act={act!r}; valid: {', '.join(ACTS)}")
        if mlp_hidden < 1:
            raise ConfigError(f"model.shared.mlp_hidden must be >= 1, got {mlp_hidden}")
        self.act = ACTS[act]
        self.rope_theta = rope_theta
        # fp32 and not a buffer, as attention's: model.to(bf16) cannot round it
        self.inv_freq = None if rope_theta is None else rope_frequencies(self.head_dim, rope_theta)
        self.in_norm = RMSNorm(width, norm_eps)
        self.q_proj = nn.Linear(width, num_heads * self.head_dim, bias=False)
        self.k_proj = nn.Linear(width, self.num_kv_heads * self.head_dim, bias=False)
        self.v_proj = nn.Linear(width, self.num_kv_heads * self.head_dim, bias=False)
        self.o_proj = nn.Linear(num_heads * self.head_dim, d_model, bias=False)
        self.mlp_norm = RMSNorm(d_model, norm_eps)
        self.gate_up = nn.Linear(d_model, 2 * mlp_hidden, bias=False)  # [gate; up]
        self.down = nn.Linear(mlp_hidden, d_model, bias=False)

    def forward(self, x: torch.Tensor, emb: torch.Tensor, use: SharedUse, cache: KVCache | None):
        """`x`, `emb` `[B, T, d]` -> the block's output `s` `[B, T, d]` (before the use's projection) and the
        use's KV cache, continued (None without a cache)."""
        B, T, _ = x.shape
        h = self.in_norm(torch.cat([x, emb], dim=-1))  # (B, T, 2d)
        q = use.adapt("q", self.q_proj, h).view(B, T, self.num_heads, self.head_dim)
        k = use.adapt("k", self.k_proj, h).view(B, T, self.num_kv_heads, self.head_dim)
        v = use.adapt("v", self.v_proj, h).view(B, T, self.num_kv_heads, self.head_dim)
        start = 0 if cache is None else cache.offset  # int, or [B] per row in a stacked cache
        if self.rope_theta is not None:
            positions = positions_after(start, T, x.device)
            q, k = (
                rotary(q, positions, self.rope_theta, self.inv_freq),
                rotary(k, positions, self.rope_theta, self.inv_freq),
            )
        q, k, v = (t.transpose(1, 2) for t in (q, k, v))  # (B, H, T, D): the KV cache's layout
        key_mask = None
        if cache is not None:
            k, v, key_mask = cache.extend(k, v, None)
            cache.offset = start + T
        a = attend(q, k, v, 0, None, key_mask, heads_first=True).transpose(1, 2).reshape(B, T, -1)
        m = self.mlp_norm(self.o_proj(a))
        gate, up = use.adapt("gate_up", self.gate_up, m).chunk(2, dim=-1)
        return self.down(self.act(gate) * up), cache

    def flops_per_token(self, seq_len: int) -> float:
        """Forward FLOPs per token of one run (`zoo.model.flops`): the projections and causal attention."""
        return matmul_flops(self) + 4 * self.num_heads * self.head_dim * mean_causal_keys(seq_len)


class SharedUse(nn.Module):
    """One use of a shared block at one layer: which block (`block_id`), the use's LoRA adapters (`adapters.q`,
    `.k`, `.v` on the attention's input projections with `qkv_adapters`, `.gate_up` on the MLP's with
    `mlp_adapter`; each `Linear(in, r)` then `Linear(r, out)`) and its projection `proj` back into the stream."""

    def __init__(
        self,
        d_model: int,
        *,
        block_id: int,
        block: SharedBlock,
        adapter_rank: int,
        qkv_adapters: bool,
        mlp_adapter: bool,
    ):
        super().__init__()
        self.block_id = block_id
        self.num_kv_heads, self.head_dim = block.num_kv_heads, block.head_dim  # the KV cache's shape
        if adapter_rank < 0 or (adapter_rank == 0 and (qkv_adapters or mlp_adapter)):
            raise ConfigError(f"model.shared.adapter_rank must be >= 1 when adapters are on, got {adapter_rank}")
        wanted = ["q", "k", "v"] * qkv_adapters + ["gate_up"] * mlp_adapter
        targets = {"q": block.q_proj, "k": block.k_proj, "v": block.v_proj, "gate_up": block.gate_up}
        self.adapters = nn.ModuleDict({name: _lora(targets[name], adapter_rank) for name in wanted})
        self.proj = nn.Linear(d_model, d_model, bias=False)

    def adapt(self, name: str, linear: nn.Linear, h: torch.Tensor) -> torch.Tensor:
        """`linear(h)`, plus this use's adapter `name` when it has one."""
        y = linear(h)
        return y + self.adapters[name](h) if name in self.adapters else y

    def forward(self, x: torch.Tensor, context: SharedContext, cache: KVCache | None):
        """The shared block's contribution `t` `[B, T, d]` to the layer's mixer input, and the use's KV cache."""
        s, cache = context.blocks[self.block_id](x, context.embeddings, self, cache)
        return self.proj(s), cache

    def init_cache(self) -> KVCache:
        return KVCache()

    def flops_per_token(self, seq_len: int, blocks: nn.ModuleList) -> float:
        """Forward FLOPs per token of this use: its shared block's run, its adapters and its projection."""
        return blocks[self.block_id].flops_per_token(seq_len) + matmul_flops(self)

    def state_bytes(self, seq_len: int, batch_size: int = 1) -> int:
        """Keys and values of every token seen, in the parameters' dtype (the activations')."""
        itemsize = activation_dtype(self).itemsize
        return batch_size * 2 * math.prod((self.num_kv_heads, seq_len, self.head_dim)) * itemsize


def _lora(linear: nn.Linear, rank: int) -> nn.Sequential:
    """A low-rank adapter beside `linear`: `Linear(in, rank)` then `Linear(rank, out)`, no biases."""
    return nn.Sequential(
        nn.Linear(linear.in_features, rank, bias=False), nn.Linear(rank, linear.out_features, bias=False)
    )


def shared_modules(spec: dict | None, d_model: int, norm_eps: float, uses: list[int]):
    """The model's shared blocks (`nn.ModuleList`, None without shared blocks) and a `SharedUse` per layer index in
    `uses` (`ModelConfig.shared_layers()`), from the validated `model.shared` `spec`."""
    if not uses:
        return None, {}
    block_options = ("num_heads", "num_kv_heads", "rope_theta", "mlp_hidden", "act")
    blocks = nn.ModuleList(
        SharedBlock(d_model, **{k: spec[k] for k in block_options}, norm_eps=norm_eps)
        for _ in range(spec["num_blocks"])
    )
    use_options = {k: spec[k] for k in ("adapter_rank", "qkv_adapters", "mlp_adapter")}
    per_layer = {}
    for u, layer in enumerate(uses):
        j = u % spec["num_blocks"]
        per_layer[layer] = SharedUse(d_model, block_id=j, block=blocks[j], **use_options)
    return blocks, per_layer
