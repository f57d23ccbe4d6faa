"""The mixer contract shared by every token mixer, and the config error type."""

from __future__ import annotations

import abc
import dataclasses

import torch
from torch import nn

import kernels
from zoo.errors import ConfigError


class Mixer(nn.Module, abc.ABC):
    """Base class of token mixers.

    - `forward(x, cache=None) -> (y, cache)`: `x` is `[B, T, d_model]`. Without a cache the layer runs
      its parallel (training / prefill) form and returns `None` as cache; with a cache (from
      `init_cache()` or an earlier call) it continues the sequence from it and returns the updated cache.
    - `init_cache()`: an empty cache for a new sequence.
    - `state_bytes(seq_len, batch_size=1)`: bytes the cache holds after `seq_len` tokens.

    A cache is a dataclass whose tensors are batch-first, so that `stack_caches` can batch the caches of
    sequences prefilled one by one; a cache that cannot be batched by concatenation has a `stack` classmethod.
    """

    name: str = ""
    kernel_family: str | None = None
    """The `kernels` op family a linear mixer runs on (`chunk_<family>` / `fused_recurrent_<family>`); such a
    mixer also has `backend` and `chunk_size` attributes and a cache with a `state` field."""

    @abc.abstractmethod
    def init_cache(self):
        """An empty cache for a new sequence."""

    @abc.abstractmethod
    def state_bytes(self, seq_len: int, batch_size: int = 1) -> int:
        """Bytes of cache after `seq_len` tokens."""

    def kernel_backends(self) -> dict[str, str]:
        """Which implementation this layer runs on its parameters' device (recorded in results.json)."""
        if self.kernel_family is None:
            return {}
        probe = torch.empty(0, device=next(self.parameters()).device)
        return {self.kernel_family: kernels.resolve_backend(self.backend, probe, family=self.kernel_family)}

    def recurrence(self, *args: torch.Tensor | None, cache, **kwargs) -> torch.Tensor:
        """Run the layer's recurrence (`kernel_family`) on `args` (the op's tensors, in its order) and return
        `o`. Without a cache: the chunked parallel form. With one: continue from `cache.state` (None = a new
        sequence) and store the new state; one new token takes the step-by-step decode op, more the chunked op."""
        chunk = getattr(kernels, f"chunk_{self.kernel_family}")
        if cache is None:
            return chunk(*args, backend=self.backend, chunk_size=self.chunk_size, **kwargs)[0]
        carry = {"initial_state": cache.state, "output_final_state": True, "backend": self.backend, **kwargs}
        if args[0].shape[1] == 1:
            o, cache.state = getattr(kernels, f"fused_recurrent_{self.kernel_family}")(*args, **carry)
        else:
            o, cache.state = chunk(*args, chunk_size=self.chunk_size, **carry)
        return o

    @property
    def param_dtype(self) -> torch.dtype:
        return next(self.parameters()).dtype


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
