"""The mixer contract shared by every token mixer (`Mixer`), what linear / recurrent mixers share on top of it
(`LinearMixer`, `StateCache`), and the helpers their constructors and caches use."""

from __future__ import annotations

import abc
import dataclasses
import math
from dataclasses import dataclass
from functools import partial

import torch
from torch import nn

import kernels
from zoo.errors import ConfigError
from zoo.model.flops import chunk_mixing_flops, matmul_flops
from zoo.model.quant import activation_device, activation_dtype, fuse_linears

QKV = ("q_proj", "k_proj", "v_proj")  # the input projections most mixers share, fused for decode

if not hasattr(kernels, "resolve_backend"):  # another distribution's `kernels` came first on the import path
    raise ImportError(
        f"`import kernels` found {getattr(kernels, '__file__', kernels)}, not hybrid zoo's kernel library: Hugging "
        "Face's `kernels` package (a dependency of transformers >= 5.25) has the same import name. "
        "pip install 'transformers<5.25' && pip uninstall -y kernels"
    )


class Mixer(nn.Module, abc.ABC):
    """Base class of token mixers.

    - `Mixer(d_model, layer_idx, *, n_layers, head_dim, **options)`: the model passes the first four; every
      option comes from `conf/mixer/<name>.yaml` (merged with `model.mixers.<name>`), so a constructor lists its
      options keyword-only and without Python defaults: the yaml is the one place a default lives.
    - `forward(x, cache=None) -> (y, cache)`: `x` is `[B, T, d_model]`. Without a cache the layer runs
      its parallel (training / prefill) form and returns `None` as cache; with a cache (from
      `init_cache()` or an earlier call) it continues the sequence from it and returns the updated cache.
    - `init_cache()`: an empty cache for a new sequence.
    - `cache_tensors(seq_len)`: shape and dtype of every tensor the cache holds after `seq_len` tokens, from
      which `state_bytes(seq_len, batch_size=1)` counts the cache's bytes.
    - `state_grows`: whether the cache grows with the sequence (full attention's keys and values) or keeps a
      fixed size (a recurrent state, a sliding window); `preallocates`: whether the cache takes a `reserve`.
    - `composes`: the option of a composite mixer (`parallel`) that names other mixers; None for every other one.
    - `flops_per_token(seq_len)`: forward FLOPs per token of the training forward (`zoo.model.flops`).
    - `compilable` (and `compile_note`, why not): whether `train.compile` may hand the layer to `torch.compile`.

    A cache is a dataclass whose tensors are batch-first, so that `stack_caches` can batch the caches of
    sequences prefilled one by one; a cache that cannot be batched by concatenation has a `stack` classmethod.
    """

    name: str = ""  # the registry name, set by `register`
    state_grows: bool = False
    """True when the cache grows with the sequence: what memory budgets (`zoo.evals.recall`), streaming evaluation
    and model cards read, instead of guessing from the class or from `state_bytes` at two lengths."""
    preallocates: bool = False
    """True when `init_cache()` returns a cache with a `reserve` field: the tokens to make room for at its first
    allocation (`HybridLM.prefill(max_length=...)`)."""
    composes: str | None = None
    """For a composite mixer (`parallel`): the option that lists the mixers it is made of, by registry name. The model
    builds each of them with its own resolved options (`model.mixers.<name>`, `model.attn` for attention; a
    checkpoint's config keeps them, `ModelConfig.resolved`) and passes the built mixers to the constructor in that
    option's place (`zoo.model.lm.build_mixer`)."""
    added_options: dict = {}
    """Options added after checkpoints were published, with the value that gives the older behaviour: a config.json
    written before an option existed builds as it did (`build_mixer` fills it in). The constructor still has no
    default, and conf/mixer/<name>.yaml sets every option for new configs."""

    uses_carry: bool = False
    """The mixer reads or writes the forward call's carry (`forward(x, cache, carry=dict)`): a dict the model makes
    anew for every call and hands to each such layer in order, for inputs that cross layers (RWKV-7's `v_first`).
    It holds the current tokens' tensors only, so no cache keeps it."""

    fusable: tuple[tuple[str, ...], ...] = ()
    """Groups of linear layers (module paths) that read the same input and are applied through `project`:
    `HybridLM.optimize_for_decode()` runs each group as one wider product (`fuse_projections`)."""

    compilable: bool = True
    """Whether the training forward of a block holding this mixer may run under `torch.compile` (`train.compile`).
    A mixer whose forward fails under compile, or breaks into graphs that grow with the sequence or recompile from
    step to step, says False and why in `compile_note`; the trainer then leaves its blocks eager and logs the note.
    A fixed number of graph breaks is no reason (GLA's torch kernel, at its data-dependent branch)."""
    compile_note: str = ""
    """Why the mixer is not `compilable` (logged by the trainer)."""

    def __init__(self, layer_idx: int):
        super().__init__()
        self.layer_idx = layer_idx
        self._fused: dict = {}  # group -> (fused linear, output widths); a plain dict: no checkpoint tensors

    def project(self, x: torch.Tensor, names: tuple[str, ...]) -> tuple[torch.Tensor, ...]:
        """The linear layers `names` applied to `x`, one product per group once `fuse_projections` has run."""
        fused = self._fused.get(names)
        if fused is None:
            return tuple(self.get_submodule(name)(x) for name in names)
        module, widths = fused
        return module(x).split(widths, dim=-1)

    def fuse_projections(self) -> None:
        """Each `fusable` group as one linear layer computing its outputs side by side: a decode step then runs
        one matrix-vector product per group instead of one per layer (each a dispatch, and a short weight row).
        The members stay, with their weights as views into the fused one (`zoo.model.quant.fuse_linears`), so
        the checkpoint's tensors, names and bytes do not change."""
        for names in self.fusable:
            members = [self.get_submodule(name) for name in names]
            self._fused[names] = (fuse_linears(members), [m.out_features for m in members])

    @abc.abstractmethod
    def init_cache(self):
        """An empty cache for a new sequence."""

    @abc.abstractmethod
    def cache_tensors(self, seq_len: int) -> list[tuple[tuple[int, ...], torch.dtype]]:
        """`(shape, dtype)` of every tensor the cache of ONE sequence holds after `seq_len` tokens (shapes without
        the batch dim): the dtypes the forward really stores, so that `state_bytes` is the real cache size."""

    def state_bytes(self, seq_len: int, batch_size: int = 1) -> int:
        """Bytes of cache after `seq_len` tokens."""
        return batch_size * sum(math.prod(shape) * dtype.itemsize for shape, dtype in self.cache_tensors(seq_len))

    def kernel_backends(self) -> dict[str, str]:
        """Which implementation this layer runs on its parameters' device (recorded in results.json)."""
        return {}

    def flops_per_token(self, seq_len: int) -> float:
        """Forward FLOPs per token over sequences of `seq_len` (`zoo.model.flops`). This default counts the
        projections (every linear layer and short convolution); a mixer whose token mixing multiplies across
        positions, or that keeps raw matrix parameters, adds them."""
        return matmul_flops(self)

    @property
    def param_dtype(self) -> torch.dtype:
        """The parameters' dtype, which is also the activations' (and so the caches' conv tails, KV, ...)."""
        return activation_dtype(self)


@dataclass
class StateCache:
    """The cache of a `LinearMixer`: the recurrent state after the tokens seen (None = a new sequence). Mixers
    that carry more between calls (conv tails, the previous token, a RoPE offset) subclass it."""

    state: torch.Tensor | None = None  # (B, *state_shape) in state_dtype: (B, H, K, V) for most


class LinearMixer(Mixer):
    """A linear / recurrent mixer: its recurrence runs on a `kernels` op family (`kernel_family`:
    `chunk_<family>` for the parallel form and prefill, `fused_recurrent_<family>` for one-token decode) with the
    options `backend` and `chunk_size`, and its cache (`cache_class`, a `StateCache`) holds a fixed-size state
    `state_shape` per sequence in `state_dtype`. The state does not grow with the sequence."""

    kernel_family: str
    cache_class: type[StateCache] = StateCache
    chunk_form: str = "linear"
    """The products of the chunked form of `kernel_family` (`zoo.model.flops.chunk_mixing_flops`): `linear`,
    `delta` (the delta rule's WY form) or `dplr` (RWKV-7)."""
    steps_per_token: int = 1
    """Recurrence steps per token (Gated DeltaProduct: its Householder steps, each a step of the kernel)."""
    steps_for_inference: bool = False
    """Run every call without autograd on CPU through the step op (`fused_recurrent_<family>`), even of many tokens:
    for families whose chunked torch form pays for its backward with a slower forward (the per-channel decays of
    KDA and the DPLR rule: see their kernel READMEs). Both forms compute the same recurrence."""

    def __init__(self, layer_idx: int, *, backend: str, chunk_size: int, torch_chunk_size: int | None = None):
        super().__init__(layer_idx)
        self.backend = backend
        self.chunk_size = chunk_size
        # the chunk of the chunked op where the torch backend (CPU) runs it, for mixers whose torch form is fastest
        # at another chunk than the Triton kernels' `chunk_size` (an option of the DeltaNet family and RWKV-7); the
        # same recurrence either way; None = `chunk_size` everywhere
        self.torch_chunk_size = torch_chunk_size

    def init_cache(self) -> StateCache:
        return self.cache_class()

    @property
    def state_shape(self) -> tuple[int, ...]:
        """The recurrent state of one sequence; `(H, K, V)` unless the mixer says otherwise."""
        return (self.num_heads, self.head_k, self.head_v)

    @property
    def state_dtype(self) -> torch.dtype:
        # the kernels accumulate and return the state in fp32 whatever the activations (fp64 for fp64 inputs)
        return torch.promote_types(self.param_dtype, torch.float32)

    def cache_tensors(self, seq_len: int) -> list[tuple[tuple[int, ...], torch.dtype]]:
        return [(self.state_shape, self.state_dtype)]

    def flops_per_token(self, seq_len: int) -> float:
        """The projections, plus the chunked recurrence over the `state_shape` `(H, K, V)` of every head (the
        kernel's heads and widths: grouped values, Based's feature dim, the normalizer's column), one per step."""
        heads, key_dim, value_dim = self.state_shape
        n = self.steps_per_token
        chunk = self.op_chunk_size(torch.empty(0, device=activation_device(self)))  # the chunk that runs
        mixing = chunk_mixing_flops(self.chunk_form, seq_len * n, chunk, key_dim, value_dim)
        return super().flops_per_token(seq_len) + heads * n * mixing

    def kernel_backends(self) -> dict[str, str]:
        probe = torch.empty(0, device=activation_device(self))
        return {self.kernel_family: kernels.resolve_backend(self.backend, probe, family=self.kernel_family)}

    def op_chunk_size(self, x: torch.Tensor) -> int:
        """The chunk for the chunked op on `x`: `torch_chunk_size` where the torch backend runs it, if set."""
        if self.torch_chunk_size is None:
            return self.chunk_size
        on_triton = kernels.resolve_backend(self.backend, x, family=self.kernel_family) == "triton"
        return self.chunk_size if on_triton else self.torch_chunk_size

    def init_heads(
        self,
        d_model: int,
        key_dim: int,
        value_dim: int,
        num_heads: int | None,
        head_dim: int,
        by: str = "key",
        value_heads: int | None = None,
    ) -> None:
        """Heads of a mixer with total `key_dim` / `value_dim` (`num_heads`, `head_k`, `head_v`, see `split_heads`;
        kept as `key_dim`, `value_dim`) and its bias-free input projections `q_proj`, `k_proj` (d_model -> key dim)
        and `v_proj` (d_model -> value dim), the set-up that every q/k/v mixer starts with. `value_heads` (grouped
        values) splits the value dim into heads of its own, so only the key dim need divide into `num_heads`."""
        self.key_dim, self.value_dim = key_dim, value_dim
        self.num_heads, self.head_k, self.head_v = split_heads(
            self.name, self.layer_idx, key_dim, key_dim if value_heads else value_dim, num_heads, head_dim, by
        )
        if value_heads:
            what = "num_v_heads must divide the value dim"
            self.head_v = check_divides(what, value_dim, value_heads, self.layer_idx)
        self.q_proj = nn.Linear(d_model, key_dim, bias=False)
        self.k_proj = nn.Linear(d_model, key_dim, bias=False)
        self.v_proj = nn.Linear(d_model, value_dim, bias=False)
        self.fusable = (QKV,)

    def project_qkv(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """`q, k` `[B, T, H, K]` and `v` `[B, T, H, V]`: the projections of `init_heads`, split into heads."""
        B, T, _ = x.shape
        H, K, V = self.num_heads, self.head_k, self.head_v
        q, k, v = self.project(x, QKV)
        return q.view(B, T, H, K), k.view(B, T, H, K), v.view(B, T, H, V)

    def recurrence(self, *args: torch.Tensor | None, cache: StateCache | None, **kwargs) -> torch.Tensor:
        """Run the layer's recurrence (`kernel_family`) on `args` (the op's tensors, in its order) and return
        `o`. Without a cache: the parallel form. With one: continue from `cache.state` (None = a new sequence) and
        store the new state. One new token of a cached sequence takes the step op (`fused_recurrent_<family>`),
        and so does every call without autograd on CPU when `steps_for_inference`; the rest the chunked op."""
        cpu_inference = not torch.is_grad_enabled() and args[0].device.type == "cpu"
        if (cache is not None and args[0].shape[1] == 1) or (self.steps_for_inference and cpu_inference):
            op = getattr(kernels, f"fused_recurrent_{self.kernel_family}")
        else:
            op = partial(getattr(kernels, f"chunk_{self.kernel_family}"), chunk_size=self.op_chunk_size(args[0]))
        if cache is None:
            return op(*args, backend=self.backend, **kwargs)[0]
        o, cache.state = op(*args, initial_state=cache.state, output_final_state=True, backend=self.backend, **kwargs)
        return o


def whole(width: float) -> int:
    """A layer width from `d_model * expand`: the nearest integer when the product is one up to float error (an
    imported checkpoint's 0.75 * d), else rounded down as `int` always did."""
    return round(width) if abs(width - round(width)) < 1e-6 else int(width)


def at_least_fp32(x: torch.Tensor) -> torch.Tensor:
    """`x` in fp32, or kept in fp64 (so that fp64 checks stay exact): the precision of gates, decays and norms."""
    return x.to(torch.promote_types(x.dtype, torch.float32))


def inverse_softplus_dt(
    mixer: str, layer_idx: int, num_heads: int, dt_min: float, dt_max: float, dt_init_floor: float
) -> torch.Tensor:
    """Mamba's `dt_bias` init `[H]`: `dt ~ logU(dt_min, dt_max)` floored at `dt_init_floor`, returned as
    `softplus^-1(dt) = dt + log(1 - exp(-dt))`, so that `softplus(dt_bias) = dt` (Mamba-2, Gated DeltaNet)."""
    if not 0 < dt_min <= dt_max:
        raise ConfigError(f"layer {layer_idx}: {mixer} needs 0 < dt_min <= dt_max, got {dt_min=}, {dt_max=}")
    dt = torch.exp(torch.rand(num_heads) * (math.log(dt_max) - math.log(dt_min)) + math.log(dt_min))
    dt = dt.clamp(min=dt_init_floor)
    return dt + torch.log(-torch.expm1(-dt))


def check_divides(what: str, total: int, part: int, layer_idx: int) -> int:
    """`total // part`, or a ConfigError naming the sizes when `part` does not divide `total`."""
    if part <= 0 or total % part != 0:
        raise ConfigError(f"layer {layer_idx}: {what}: {part} does not divide {total}")
    return total // part


def split_heads(
    mixer: str, layer_idx: int, key_dim: int, value_dim: int, num_heads: int | None, head_dim: int, by: str = "key"
) -> tuple[int, int, int]:
    """`(num_heads, head_k, head_v)` of a linear mixer with total key / value dims. `num_heads` None takes heads
    of the model's `head_dim` on the `by` ("key" or "value") side; a size that does not divide is a ConfigError."""
    dims = {"key": key_dim, "value": value_dim}
    heads = num_heads or check_divides(f"head_dim must divide the {mixer} {by} dim", dims[by], head_dim, layer_idx)
    head_k = check_divides(f"num_heads must divide the {mixer} key dim", key_dim, heads, layer_idx)
    head_v = check_divides(f"num_heads must divide the {mixer} value dim", value_dim, heads, layer_idx)
    return heads, head_k, head_v


def stack_caches(caches: list):
    """One batched cache from the caches of different sequences (same layer, or same model), in their order.

    Every tensor in a cache is batch-first and is concatenated along the batch; an int is a per-sequence
    counter (a token offset, `seen_tokens`) and becomes a LongTensor `[B]`; None stays None; dataclasses and
    lists are stacked field by field, and a type with a `stack` classmethod (`KVCache`: keys of different
    lengths) stacks itself."""
    kinds = {type(c) for c in caches}
    if len(kinds) != 1:
        raise TypeError(f"cannot stack caches of different types {sorted(k.__name__ for k in kinds)}")
    kind = kinds.pop()
    first = caches[0]
    if first is None:
        return None
    if torch.is_tensor(first):
        return torch.cat(caches, dim=0)
    if hasattr(kind, "stack"):
        return kind.stack(caches)
    if kind is int:
        raise TypeError("per-sequence counters are stacked with their cache (the batch size comes from its tensors)")
    if kind is list:
        if len({len(c) for c in caches}) != 1:
            raise ValueError("cannot stack cache lists of different lengths")
        return [stack_caches(list(parts)) for parts in zip(*caches, strict=True)]
    if not dataclasses.is_dataclass(kind):
        raise TypeError(f"cannot stack a cache of type {kind.__name__}: not a tensor, list or dataclass")
    fields = {}
    for f in dataclasses.fields(kind):
        values = [getattr(c, f.name) for c in caches]
        if any(isinstance(v, int) for v in values):  # a counter: an int, or [B] in an already stacked cache
            values = [per_sequence(v, c) for v, c in zip(values, caches, strict=True)]
        fields[f.name] = stack_caches(values)
    return kind(**fields)


def per_sequence(counter: int | torch.Tensor, cache) -> torch.Tensor:
    """`counter` (an int shared by every sequence of `cache`, or already `[B]`) as a LongTensor `[B]` on the
    device of `cache`'s tensors, `B` being their batch size."""
    ref = _first_tensor(cache)
    if ref is None:
        raise ValueError(f"cannot tell the batch size of an empty {type(cache).__name__}")
    return torch.as_tensor(counter, dtype=torch.long, device=ref.device).reshape(-1).expand(ref.shape[0])


def _first_tensor(obj) -> torch.Tensor | None:
    """The first tensor found in a cache (depth first), or None: every cache tensor is batch-first."""
    if torch.is_tensor(obj):
        return obj
    parts = obj if isinstance(obj, list) else [getattr(obj, f.name) for f in dataclasses.fields(obj)]
    for part in parts:
        if torch.is_tensor(part) or isinstance(part, list) or dataclasses.is_dataclass(part):
            found = _first_tensor(part)
            if found is not None:
                return found
    return None
