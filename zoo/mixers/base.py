"""The mixer contract shared by every token mixer, and the config error type."""

from __future__ import annotations

import abc

import torch
from torch import nn


class ConfigError(ValueError):
    """A configuration that cannot be built. The message is one line naming the valid choices."""


class Mixer(nn.Module, abc.ABC):
    """Base class of token mixers.

    - `forward(x, cache=None) -> (y, cache)`: `x` is `[B, T, d_model]`. Without a cache the layer runs
      its parallel (training / prefill) form and returns `None` as cache; with a cache (from
      `init_cache()` or an earlier call) it continues the sequence from it and returns the updated cache.
    - `init_cache()`: an empty cache for a new sequence.
    - `state_bytes(seq_len, batch_size=1)`: bytes the cache holds after `seq_len` tokens.
    """

    name: str = ""

    @abc.abstractmethod
    def init_cache(self):
        """An empty cache for a new sequence."""

    @abc.abstractmethod
    def state_bytes(self, seq_len: int, batch_size: int = 1) -> int:
        """Bytes of cache after `seq_len` tokens."""

    def kernel_backends(self) -> dict[str, str]:
        """Which implementation this layer runs on its parameters' device (recorded in results.json)."""
        return {}

    @property
    def param_dtype(self) -> torch.dtype:
        return next(self.parameters()).dtype


def check_divides(what: str, total: int, part: int, layer_idx: int) -> int:
    """`total // part`, or a ConfigError naming the sizes when `part` does not divide `total`."""
    if part <= 0 or total % part != 0:
        raise ConfigError(f"layer {layer_idx}: {what}: {part} does not divide {total}")
    return total // part
