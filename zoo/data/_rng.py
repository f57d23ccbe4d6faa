"""Seeded random streams shared by the data builders: one integer seed, independent named sub-streams."""

from __future__ import annotations

import numpy as np

from zoo.errors import ConfigError


def make_rng(seed: int, *stream: int) -> np.random.Generator:
    """A numpy Generator for `seed`, optionally on an independent sub-stream.

    `make_rng(s)` is exactly `np.random.default_rng(s)`; `make_rng(s, i, ...)` uses numpy's
    spawn keys, so it never coincides with `make_rng(t)` for any integer `t`.
    """
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise ConfigError(f"seed must be a non-negative integer, got {seed!r}")
    return np.random.default_rng(np.random.SeedSequence(int(seed), spawn_key=tuple(int(s) for s in stream)))
