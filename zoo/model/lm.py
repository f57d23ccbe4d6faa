"""The hybrid language model: embedding, a stack of `x + mixer(norm(x))`, `x + mlp(norm(x))` blocks
whose mixers come from the registry per layer, a final norm and an LM head (optionally tied).

    model = build_model(cfg)                       # cfg: conf/model/*.yaml, a dict or a ModelConfig
    out = model(ids, use_cache=True)               # parallel prefill; out.logits (B, T, vocab), out.cache
    out = model(next_ids, cache=out.cache)         # continue the same sequences from the cache
    ids = model.generate(prompts, 32, attention_mask=mask, prefill_chunk=4096)   # left-padded prompts
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass, field
from functools import partial

import torch
import torch.nn.functional as F
from torch import nn

from zoo.errors import ConfigError
from zoo.model.config import NO_MIXER, ModelConfig, branch_names
from zoo.model.layers import RMSNorm, positions_after
from zoo.model.loss import IGNORE_INDEX, linear_cross_entropy
from zoo.model.mixers import Mixer, get_mixer
from zoo.model.mixers.base import stack_caches
from zoo.model.mlps import build_mlp
from zoo.model.quant import QuantizedLinear
from zoo.model.shared import SharedContext, SharedUse, shared_modules


@dataclass
class Cache:
    """Per-layer caches (`LayerCache`) of one batch of sequences, plus how many tokens they have seen (an int,
    or LongTensor `[B]` per row in a stack of sequences of different lengths, see `HybridLM.prefill`)."""

    layers: list[LayerCache] = field(default_factory=list)
    seen_tokens: int | torch.Tensor = 0


@dataclass
class LayerCache:
    """What one block carries between calls: its mixer's cache, (for token-shifting MLPs) the MLP's and (at a layer
    that reads a shared block) its use's KV cache."""

    mixer: object = None
    mlp: object = None
    shared: object = None


@dataclass
class LMOutput:
    logits: torch.Tensor | None  # (B, T, vocab_size); None from the chunked loss (forward's loss_chunk_size)
    cache: Cache | None = None
    loss_sum: torch.Tensor | None = None  # with labels: the summed cross-entropy of the labelled positions (fp32)


class Block(nn.Module):
    """Residual block `x + f(norm(x))` for its mixer, then its MLP (pre-norm), or `x + norm(f(x))` with `post`
    (OLMo's post-norm); it never branches on the mixer type. Either half may be absent: `mlp` None is the mixer
    alone (`model.mlp: none`, Mamba's blocks), `mixer` None the MLP alone (a `none` layer, Nemotron-H's). With a
    `shared_use` (zoo/model/shared.py) the mixer reads `x + t`, t the shared block's output, and the residual
    stays x: `x + mixer(norm(x + t))` (Zamba2's hybrid layer)."""

    def __init__(
        self,
        mixer: Mixer | None,
        mlp: nn.Module | None,
        d_model: int,
        eps: float,
        post: bool = False,
        shared_use: SharedUse | None = None,
    ):
        super().__init__()
        self.shared_use = shared_use
        self.mixer_norm = None if mixer is None else RMSNorm(d_model, eps)
        self.mixer = mixer
        self.mlp_norm = None if mlp is None else RMSNorm(d_model, eps)
        self.mlp = mlp
        self.post = post

    def _residual(self, x, f, norm, cache, side=None):
        """`x + f(norm(x))`, or `x + norm(f(x))` post-norm; `f(x, cache) -> (y, cache)`. `side`, when given, is
        added to f's input only (`x + f(norm(x + side))`)."""
        u = x if side is None else x + side
        if self.post:
            y, cache = f(u, cache)
            return x + norm(y), cache
        y, cache = f(norm(u), cache)
        return x + y, cache

    def init_cache(self) -> LayerCache:
        halves = (self.mixer, self.mlp, self.shared_use)
        return LayerCache(*(None if half is None else half.init_cache() for half in halves))

    def forward(
        self,
        x: torch.Tensor,
        cache: LayerCache | None = None,
        context: SharedContext | None = None,
        carry: dict | None = None,
    ):
        """`x` `[B, T, d]` -> `[B, T, d]` and the layer's cache; `context` (embeddings and the model's shared blocks)
        only at a layer with a `shared_use`; `carry`, the forward call's cross-layer inputs (`Mixer.uses_carry`)."""
        mixer_cache = mlp_cache = shared_cache = side = None
        if self.shared_use is not None:
            side, shared_cache = self.shared_use(x, context, None if cache is None else cache.shared)
        if self.mixer is not None:
            mixer = None if cache is None else cache.mixer
            f = partial(self.mixer, carry=carry) if self.mixer.uses_carry else self.mixer
            x, mixer_cache = self._residual(x, f, self.mixer_norm, mixer, side)
        if self.mlp is not None:
            x, mlp_cache = self._residual(x, self.mlp, self.mlp_norm, None if cache is None else cache.mlp)
        return x, (None if cache is None else LayerCache(mixer_cache, mlp_cache, shared_cache))

    def flops_per_token(self, seq_len: int, shared_blocks: nn.ModuleList | None = None) -> float:
        """Forward FLOPs per token (`zoo.model.flops`): the mixer's, the MLP's and, at a layer that reads a shared
        block, that use's (`shared_blocks`: the model's)."""
        parts = [half.flops_per_token(seq_len) for half in (self.mixer, self.mlp) if half is not None]
        if self.shared_use is not None:
            parts.append(self.shared_use.flops_per_token(seq_len, shared_blocks))
        return float(sum(parts))

    def state_bytes(self, seq_len: int, batch_size: int = 1) -> int:
        mlp = 0 if self.mlp is None else self.mlp.state_bytes(batch_size)
        shared = 0 if self.shared_use is None else self.shared_use.state_bytes(seq_len, batch_size)
        return (0 if self.mixer is None else self.mixer.state_bytes(seq_len, batch_size)) + mlp + shared


def build_mixer(
    name: str, d_model: int, layer_idx: int, n_layers: int, head_dim: int, kwargs: dict, mixers: dict | None = None
) -> Mixer:
    """Mixer `name` of layer `layer_idx` with its options `kwargs`. A composite (`Mixer.composes`: the parallel
    block) gets the mixers that its option names built here, each with its own options from `mixers` (a resolved
    `ModelConfig.mixers`), in that option's place."""
    cls = get_mixer(name)
    params = inspect.signature(cls.__init__).parameters
    valid = sorted(p for p in params if p not in ("self", "d_model", "layer_idx", "n_layers", "head_dim"))
    unknown = sorted(set(kwargs) - set(valid))
    if unknown:
        raise ConfigError(f"layer {layer_idx}: mixer {name!r} got unknown option(s) {unknown}; valid: {valid}")
    kwargs = {**cls.added_options, **kwargs}  # a checkpoint from before an option gets its older behaviour
    missing = sorted(set(valid) - set(kwargs))
    if missing:  # constructors have no defaults: conf/mixer/<name>.yaml sets every option
        raise ConfigError(f"layer {layer_idx}: mixer {name!r} is missing option(s) {missing} (conf/mixer/{name}.yaml)")
    branches = branch_names(name, kwargs)
    if branches:
        if mixers is None or set(branches) - set(mixers):
            raise ConfigError(f"layer {layer_idx}: mixer {name!r} needs the options of its branches {branches}")
        built = [build_mixer(b, d_model, layer_idx, n_layers, head_dim, mixers[b]) for b in branches]
        kwargs = {**kwargs, cls.composes: built}
    return cls(d_model, layer_idx, n_layers=n_layers, head_dim=head_dim, **kwargs)


def build_block(config: ModelConfig, name: str, layer_idx: int, shared_use: SharedUse | None = None) -> Block:
    d, n = config.d_model, config.n_layers
    mixer = None
    if name != NO_MIXER:
        mixer = build_mixer(name, d, layer_idx, n, config.head_dim, config.mixers[name], config.mixers)
    elif shared_use is not None:
        raise ConfigError(f"layer {layer_idx} is in model.shared.layers but has no mixer to read the shared block")
    mlp_name = config.mlp_names()[layer_idx]
    mlp = build_mlp(mlp_name, d, layer_idx, n_layers=n, mlp_ratio=config.mlp_ratio, mlp_hidden=config.mlp_hidden)
    post = config.norm_positions()[layer_idx] == "post"
    return Block(mixer, mlp, d, config.norm_eps, post=post, shared_use=shared_use)


class HybridLM(nn.Module):
    def __init__(self, config: ModelConfig):
        super().__init__()
        self.config = config = config.resolved()
        names = config.layer_names()
        if config.d_model % config.head_dim != 0:
            raise ConfigError(f"model.head_dim={config.head_dim} does not divide model.d_model={config.d_model}")
        self.layer_mixers = names
        self.embed = nn.Embedding(config.vocab_size, config.d_model)
        if config.learned_positions is not None and config.learned_positions < 1:
            raise ConfigError(f"model.learned_positions must be null or >= 1, got {config.learned_positions}")
        # Learned absolute positions (Zoology's attention models, GPT-2's wpe), added to the token embeddings.
        self.pos_embed = (
            None if config.learned_positions is None else nn.Embedding(config.learned_positions, config.d_model)
        )
        # shared blocks (zoo/model/shared.py): owned here once; each layer that reads one owns its use
        self.shared_blocks, uses = shared_modules(
            config.shared, config.d_model, config.norm_eps, config.shared_layers()
        )
        self.blocks = nn.ModuleList(build_block(config, name, i, uses.get(i)) for i, name in enumerate(names))
        self.norm = RMSNorm(config.d_model, config.norm_eps)
        self.lm_head = nn.Linear(config.d_model, config.vocab_size, bias=False)
        self.apply(self._init_weights)
        if config.tie_embeddings:
            self.lm_head.weight = self.embed.weight
        self.tokenizer = None  # set by training / from_pretrained
        self.quantized: str | None = None  # the mode of quantize(), once called

    def _init_weights(self, module: nn.Module) -> None:
        if isinstance(module, (nn.Linear, nn.Embedding)):
            nn.init.normal_(module.weight, std=self.config.init_std)
        if isinstance(module, nn.Linear) and module.bias is not None:
            nn.init.zeros_(module.bias)

    # -- forward ---------------------------------------------------------------------------------
    def init_cache(self) -> Cache:
        return Cache(layers=[block.init_cache() for block in self.blocks])

    def forward(
        self,
        input_ids: torch.Tensor,
        cache: Cache | None = None,
        use_cache: bool = False,
        logits_to_keep: int = 0,
        logits_mask: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
        loss_chunk_size: int = 0,
    ) -> LMOutput:
        """`input_ids` `[B, T]` -> logits `[B, T, vocab]`. With `use_cache` (or a `cache`) the returned
        cache continues the sequences: prefill-then-decode gives the logits of one parallel forward.
        `logits_to_keep=N > 0` runs only the last N positions through the final norm and the LM head
        (logits `[B, N, vocab]`): a long prompt would otherwise materialize T x vocab logits.
        `logits_mask`, a BoolTensor `[B, T]`, computes logits only where it is True, returned as `[n, vocab]` in
        the order of `x[logits_mask]`: training on sparse labels (MQAR labels 4 of 64 positions) then skips the
        LM head everywhere else, which is most of a small model's cost at a large vocabulary.
        `labels` `[B, T]` (-100 = no loss there; the training forward) adds `loss_sum`, the summed cross-entropy
        over the labelled positions, with `logits` those positions' `[n, vocab]`; `loss_chunk_size=C > 0` computes
        the same loss and gradients `C` tokens at a time (`zoo.model.loss`) and returns no logits."""
        if logits_to_keep < 0:
            raise ValueError(f"logits_to_keep must be >= 0 (0 = every position), got {logits_to_keep}")
        if logits_mask is not None and logits_to_keep:
            raise ValueError("give logits_to_keep or logits_mask, not both")
        if labels is not None:
            if logits_mask is not None or logits_to_keep:
                raise ValueError("labels select the positions of the loss: give no logits_mask or logits_to_keep")
            logits_mask = labels != IGNORE_INDEX
        elif loss_chunk_size:
            raise ValueError("loss_chunk_size needs labels")
        x, cache = self.hidden_states(input_ids, cache, use_cache)
        if logits_mask is not None:
            x = x[logits_mask]
        elif logits_to_keep:
            x = x[:, -logits_to_keep:]
        if labels is None:
            return LMOutput(logits=self.head(x), cache=cache)
        loss_sum, logits = self.head_loss(x, labels[logits_mask], loss_chunk_size)
        return LMOutput(logits=logits, cache=cache, loss_sum=loss_sum)

    def hidden_states(
        self, input_ids: torch.Tensor, cache: Cache | None = None, use_cache: bool = False
    ) -> tuple[torch.Tensor, Cache | None]:
        """The last block's output `[B, T, d]` (before the final norm; `head` takes it on) and the cache, as in
        `forward`."""
        if cache is None and use_cache:
            cache = self.init_cache()
        x = self.embed(input_ids)  # (B, T, d)
        if self.pos_embed is not None:
            x = x + self.pos_embed(self._positions(input_ids, cache))
        context = None if self.shared_blocks is None else SharedContext(x, self.shared_blocks)
        carry = {}  # cross-layer inputs of this call (Mixer.uses_carry), e.g. RWKV-7's v_first
        for i, block in enumerate(self.blocks):
            x, layer_cache = block(x, cache.layers[i] if cache is not None else None, context, carry)
            if cache is not None:
                cache.layers[i] = layer_cache
        if cache is not None:
            cache.seen_tokens = cache.seen_tokens + input_ids.shape[1]  # not in place: may be a [B] tensor
        return x, cache

    def head(self, x: torch.Tensor) -> torch.Tensor:
        """Logits `[..., vocab]` of hidden states `x` `[..., d]` (`hidden_states`): the final norm, then the LM head."""
        return self.lm_head(self.norm(x))

    def head_loss(
        self, x: torch.Tensor, targets: torch.Tensor, chunk_size: int = 0
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """`(loss_sum, logits)`: the summed cross-entropy (fp32; targets -100 are ignored) of the head over hidden
        states `x` `[n, d]`, with the logits `[n, vocab]`; or, `chunk_size > 0`, the same sum and gradients
        `chunk_size` tokens at a time (`zoo.model.loss.linear_cross_entropy`) and no logits."""
        if chunk_size < 0:
            raise ValueError(f"loss chunk_size must be >= 0 (0 = the materialized logits), got {chunk_size}")
        if not chunk_size:
            logits = self.head(x)
            return F.cross_entropy(logits.float(), targets, ignore_index=IGNORE_INDEX, reduction="sum"), logits
        if not isinstance(self.lm_head, nn.Linear) or self.lm_head.bias is not None:
            raise ValueError(f"the chunked loss needs a bias-free nn.Linear LM head, got {type(self.lm_head).__name__}")
        return linear_cross_entropy(self.norm(x), self.lm_head.weight, targets, chunk_size), None

    def _positions(self, input_ids: torch.Tensor, cache: Cache | None) -> torch.Tensor:
        """Absolute positions of `input_ids` (continuing the cache's rows), checked against the learned table."""
        start = 0 if cache is None else cache.seen_tokens  # int, or [B] per row in a stacked cache
        positions = positions_after(start, input_ids.shape[1], input_ids.device)
        limit = self.max_positions
        if int(positions.max()) >= limit:
            raise ValueError(
                f"position {int(positions.max())} is past model.learned_positions={limit}: a model with learned "
                f"absolute positions reads at most {limit} tokens per sequence"
            )
        return positions

    # -- inference -------------------------------------------------------------------------------
    @torch.no_grad()  # not inference_mode: callers may continue the returned cache outside of it
    def prefill(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        prefill_chunk: int | None = None,
        max_length: int | None = None,
    ) -> LMOutput:
        """Read prompts `input_ids` `[B, T]` into a new cache. Returns the logits of each row's last real token
        (`[B, 1, vocab]`) and the batched cache to decode from.

        The prompt runs through the model in pieces of `prefill_chunk` tokens (None = one piece), carrying the
        cache and computing only the last position's logits, so activations are bounded by the piece and a
        linear model's memory stays flat however long the prompt. `attention_mask` `[B, T]` (1 = token,
        0 = padding; left padding only) marks prompts of different lengths: each row's real tokens are then
        prefilled on their own and the row caches stacked (`stack_caches`), so no padding token ever enters
        a state, and every position-dependent layer continues each row at its own length. `max_length` (the
        prompt plus the tokens to be generated) lets attention caches allocate their keys once, like HF's
        static cache, instead of growing while decoding."""
        if input_ids.dim() != 2 or input_ids.shape[1] == 0:
            raise ValueError(f"input_ids must be [B, T] with T >= 1, got shape {tuple(input_ids.shape)}")
        if prefill_chunk is not None and prefill_chunk < 1:
            raise ValueError(f"prefill_chunk must be >= 1 or None, got {prefill_chunk}")
        lengths = left_padded_lengths(attention_mask, input_ids)
        T = input_ids.shape[1]
        extra = 0 if max_length is None else max(max_length - T, 0)  # tokens to come after the prompt
        if lengths is None:  # no padding: the whole batch at once
            return self._prefill(input_ids, prefill_chunk, T + extra)
        rows = [self._prefill(input_ids[b : b + 1, T - n :], prefill_chunk, n + extra) for b, n in enumerate(lengths)]
        return LMOutput(torch.cat([r.logits for r in rows]), stack_caches([r.cache for r in rows]))

    def _prefill(self, input_ids: torch.Tensor, prefill_chunk: int | None, reserve: int) -> LMOutput:
        T = input_ids.shape[1]
        step = T if prefill_chunk is None else prefill_chunk
        cache = self.init_cache()
        for block, layer in zip(self.blocks, cache.layers, strict=True):
            if block.mixer is not None and block.mixer.preallocates:
                layer.mixer.reserve = reserve
            if block.shared_use is not None:  # a KV cache
                layer.shared.reserve = reserve
        for start in range(0, T, step):
            out = self(input_ids[:, start : start + step], cache=cache, logits_to_keep=1)
            cache = out.cache
        return out

    @torch.inference_mode()
    def generate(
        self,
        input_ids: torch.Tensor,
        max_new_tokens: int,
        temperature: float = 0.0,
        top_k: int | None = None,
        top_p: float | None = None,
        eos_token_id: int | None = None,
        attention_mask: torch.Tensor | None = None,
        prefill_chunk: int | None = None,
        generator: torch.Generator | None = None,
    ) -> torch.Tensor:
        """Prefill `input_ids` `[B, T]` (see `prefill`: `attention_mask` for left-padded prompts of different
        lengths, `prefill_chunk` to bound its memory), then decode one token at a time from the cache.
        Greedy when `temperature == 0`, else `sample_next` with `top_k` / `top_p`. A row that produced
        `eos_token_id` is done and filled with it; generation stops when every row is done.
        Returns `[B, T + n]` (the prompt as given, padding included, then the new tokens), `n <= max_new_tokens`."""
        if max_new_tokens < 0:
            raise ValueError(f"max_new_tokens must be >= 0, got {max_new_tokens}")
        out = self.prefill(input_ids, attention_mask, prefill_chunk, max_length=input_ids.shape[1] + max_new_tokens)
        tokens = [input_ids]
        done = torch.zeros(input_ids.shape[0], dtype=torch.bool, device=input_ids.device)
        for step in range(max_new_tokens):
            nxt = sample_next(out.logits[:, -1], temperature, top_k, top_p, generator)
            if eos_token_id is not None:
                nxt = torch.where(done, torch.full_like(nxt, eos_token_id), nxt)
                done |= nxt == eos_token_id
            tokens.append(nxt[:, None])
            if step == max_new_tokens - 1 or (eos_token_id is not None and bool(done.all())):
                break  # no forward for a token that will not be sampled from
            out = self(nxt[:, None], cache=out.cache, logits_to_keep=1)
        return torch.cat(tokens, dim=1)

    def optimize_for_decode(self) -> HybridLM:
        """Store every linear weight column-major (same values and shapes, transposed strides), in place.

        A decode step is one matrix-vector product per weight: with the usual row-major `[out, in]` layout
        each output is a dot product over a short row (768 floats at d_model 768), and on 2 CPU cores MKL
        streams that at about 17 GB/s; column-major it streams at 20-27 GB/s (`scripts/bench_matvec.py`), so
        decode gets that much faster while prefill matmuls take the same time. Then each mixer's input
        projections that read the same input (q/k/v) run as one wider product (`Mixer.fuse_projections`): one
        dispatch instead of three per layer and token, which int8 weights (`quantize`) feel most. Call it last,
        after `.to(...)` and `quantize(...)`. Checkpoints are saved contiguous and unchanged, as always. Training
        keeps the default layout: sharded data-parallel engines expect it."""
        for module in self.modules():
            if isinstance(module, nn.Linear) and module.weight.is_contiguous():  # a tied weight only once
                module.weight.data = module.weight.data.t().contiguous().t()
        for mixer in self.mixers():  # q/k/v (and similar groups) as one product each, same checkpoint
            mixer.fuse_projections()
        return self

    def quantize(self, mode: str | None = None, kv_cache: str | None = None) -> HybridLM:
        """Reduced precision for CPU inference, in place. `mode`, the linear weights: `"int8"` (int8 weights with
        a scale per output row, dynamically quantized int8 activations in decode, int32 accumulation), `"bf16"`
        or `"fp16"` (weights stored in that dtype); every other weight and every recurrent state keeps its dtype,
        so `state_bytes` does not change. `kv_cache="bf16"`: attention layers keep their KV cache in bf16 and
        attend over it in bf16 (a cache half the size, which long-context decode mostly reads); the parallel
        forward without a cache is unchanged. Inference only: a quantized model neither trains nor saves
        (`zoo/model/quant.py`)."""
        from zoo.model.mixers.attention import Attention  # noqa: PLC0415 - beside the one use
        from zoo.model.quant import KV_CACHE_DTYPES, quantize_linears  # noqa: PLC0415

        if self.training:
            raise ValueError("quantize() is for inference: call model.eval() first (a quantized model does not train)")
        if kv_cache is not None and kv_cache not in KV_CACHE_DTYPES:
            raise ValueError(f"unknown kv_cache {kv_cache!r}; valid: {', '.join(KV_CACHE_DTYPES)}")
        if mode is None and kv_cache is None:
            raise ValueError("quantize() needs a mode for the linear weights and/or a kv_cache dtype")
        if mode is not None:
            quantize_linears(self, mode)
        for module in self.modules():
            if kv_cache is not None and isinstance(module, Attention):
                module.kv_dtype = KV_CACHE_DTYPES[kv_cache]
        self.quantized = "+".join(filter(None, [self.quantized, mode, kv_cache and f"kv_{kv_cache}"]))
        return self

    def kernel_backends(self) -> dict[str, str]:
        """Kernel implementation per op family, as resolved for this model's device."""
        found: dict[str, str] = {}
        for mixer in self.mixers():
            found.update(mixer.kernel_backends())
        return found

    def mixers(self) -> list[Mixer]:
        """The token mixers of the blocks that have one, in depth order."""
        return [block.mixer for block in self.blocks if block.mixer is not None]

    # -- accounting ------------------------------------------------------------------------------
    def num_params(self) -> int:
        """Parameters, tied weights counted once; a quantized linear counts its weights, but for the LM head that
        quantization untied from the embedding: the model's count does not change."""
        quantized = sum(m.num_weights() for m in self.modules() if isinstance(m, QuantizedLinear))
        untied = isinstance(self.lm_head, QuantizedLinear) and self.config.tie_embeddings
        return sum(p.numel() for p in self.parameters()) + quantized - (self.embed.weight.numel() if untied else 0)

    def weight_bytes(self) -> int:
        """Bytes of every weight as stored (parameters and quantized linears): what a decode step streams, but for
        the embedding table of an untied LM head, of which it reads one row."""
        quantized = sum(m.weight_bytes() for m in self.modules() if isinstance(m, QuantizedLinear))
        params = sum(p.numel() * p.element_size() for p in self.parameters())
        if not isinstance(self.lm_head, nn.Linear) or self.lm_head.weight is not self.embed.weight:
            params -= self.embed.weight.numel() * self.embed.weight.element_size()
        return params + quantized

    def flops_per_token(self, seq_len: int) -> float:
        """Forward FLOPs per token over sequences of `seq_len`: every block's (`Block.flops_per_token`) and the LM
        head's (`head_flops_per_token`); the embedding lookup costs none (`zoo.model.flops` has the convention). A
        training step costs 3x as much."""
        blocks = sum(block.flops_per_token(seq_len, self.shared_blocks) for block in self.blocks)
        return blocks + self.head_flops_per_token()

    def head_flops_per_token(self) -> float:
        """Forward FLOPs of the LM head per position it runs at (training runs it at the labelled ones only)."""
        return 2.0 * self.config.d_model * self.config.vocab_size

    def state_bytes(self, seq_len: int, batch_size: int = 1) -> int:
        """Bytes of inference cache after `seq_len` tokens: the x-axis of recall vs memory."""
        return sum(block.state_bytes(seq_len, batch_size) for block in self.blocks)

    @property
    def max_positions(self) -> int | None:
        """The longest sequence the model reads: its learned position table's rows, or None (no table)."""
        return None if self.pos_embed is None else self.pos_embed.num_embeddings

    @property
    def state_grows(self) -> bool:
        """Whether the inference cache grows with the sequence: some layer is full attention (`Mixer.state_grows`), or
        reads a shared block (full attention too)."""
        return any(mixer.state_grows for mixer in self.mixers()) or self.shared_blocks is not None

    # -- checkpoints -----------------------------------------------------------------------------
    def save_pretrained(self, directory) -> None:
        from zoo.io.checkpoint import save_pretrained  # zoo.io builds models from checkpoints: imported here, not above

        if self.quantized is not None:
            raise ValueError(
                f"this model is quantized ({self.quantized}) for inference and is not saved: save the model before "
                "quantize(), and quantize it again after loading"
            )
        save_pretrained(self, directory)


def sample_next(logits: torch.Tensor, temperature: float, top_k: int | None, top_p: float | None, generator=None):
    """Next token ids `[B]` from last-position logits `[B, vocab]` (greedy when temperature == 0)."""
    if temperature == 0:
        return logits.argmax(-1)
    logits = logits.float() / temperature
    if top_k is not None:
        kth = logits.topk(min(top_k, logits.shape[-1]), dim=-1).values[:, -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if top_p is not None:
        sorted_logits, order = logits.sort(dim=-1, descending=True)
        probs = sorted_logits.softmax(-1)
        # drop a token when the tokens ranked above it already cover top_p of the mass
        drop = probs.cumsum(-1) - probs > top_p
        logits = logits.scatter(-1, order, sorted_logits.masked_fill(drop, float("-inf")))
    return torch.multinomial(logits.softmax(-1), 1, generator=generator).squeeze(-1)


def left_padded_lengths(attention_mask: torch.Tensor | None, input_ids: torch.Tensor) -> list[int] | None:
    """Each row's number of real tokens under a left-padded `attention_mask` `[B, T]` (HF convention: 1 = token,
    0 = padding), or None when nothing is padded. Right padding, holes or an empty row are a ValueError."""
    if attention_mask is None:
        return None
    if attention_mask.shape != input_ids.shape:
        raise ValueError(
            f"attention_mask {tuple(attention_mask.shape)} must have the shape of input_ids {tuple(input_ids.shape)}"
        )
    if not ((attention_mask == 0) | (attention_mask == 1)).all():
        raise ValueError("attention_mask must hold only 0 (padding) and 1 (token)")
    real = attention_mask.bool()
    # left padding: within a row, once a real token comes, every later position is real
    bad = (real[:, :-1] & ~real[:, 1:]).any(1) | ~real[:, -1]
    if bad.any():
        rows = bad.nonzero().flatten().tolist()
        raise ValueError(
            f"attention_mask rows {rows} are right-padded, have holes or are empty: generation requires left "
            "padding (zeros first, then the row's tokens, at least one token per row)"
        )
    lengths = real.sum(1).tolist()
    return None if min(lengths) == input_ids.shape[1] else lengths


def build_model(cfg) -> HybridLM:
    """A model from a model config: a `conf/model/*.yaml` node, a plain dict or a `ModelConfig`."""
    return HybridLM(ModelConfig.from_any(cfg))
