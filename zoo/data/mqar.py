"""Multi-query associative recall (MQAR), in Zoology's token layout exactly.

Arora, Eyuboglu et al., "Zoology: Measuring and improving recall in efficient language models" (2023);
layout of `zoology/data/associative_recall.py::_mqar` (HazyResearch/zoology), re-implemented vectorized
on a seeded numpy Generator so that a set is a pure function of its arguments.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import torch

from zoo.data._rng import make_rng
from zoo.errors import ConfigError

IGNORE_INDEX = -100  # label of every position that is not scored (PyTorch cross-entropy's default)

_CHUNK_ELEMENTS = 1 << 24  # rows are processed in chunks of at most this many scratch elements


def mqar(
    vocab_size: int,
    seq_len: int,
    num_kv_pairs: int,
    num_examples: int,
    seed: int,
    power_a: float = 0.01,
    random_non_queries: bool = True,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Generate `num_examples` MQAR sequences; returns `(inputs, labels)`, both LongTensor `[N, seq_len]`.

    Layout (Zoology's `_mqar`), with `n = num_kv_pairs`, `V = vocab_size`, `T = seq_len`:
    - keys: `n` distinct tokens from `[1, V // 2)`; values: `n` distinct tokens from `[V // 2, V)`;
      key `i` is paired with value `i`;
    - positions `0 .. 2n-1` hold `k1 v1 k2 v2 ... kn vn`;
    - every key is queried exactly once after that prefix: with `space = (T - 2n) // 2`, key `i` gets a
      distinct gap `g_i` in `[0, space)`, drawn without replacement with `P(g) ∝ power_a * (g + 1) **
      (power_a - 1)` (a power law: short gaps are likelier; `power_a = 1` is uniform), and is placed at
      position `2n + 2 * g_i` (always an even offset after the prefix);
    - `labels` is `-100` everywhere except at each query key's position, where it is that key's value: the
      model reads the key and must emit the value as the next token (the value itself never follows the
      query in `inputs`; Zoology builds a length `T + 1` stream and shifts it, which lands here);
    - every other position is 0, and with `random_non_queries=True` each of those 0s (only those: keys and
      values are never 0) is replaced by a token drawn uniformly from the whole vocabulary `[0, V)`, as
      Zoology does, so filler may repeat keys and values as distractors.

    Constraints. Rejected, because such a set cannot be generated: `num_kv_pairs < 1`;
    `4 * num_kv_pairs > seq_len` (Zoology's own `num_kv_pairs * 4 <= input_seq_len`, exactly the condition
    for `space >= n` distinct gaps); `num_kv_pairs > V // 2 - 1` (not enough distinct keys); `power_a <= 0`
    (no distribution); `num_examples < 0`. Accepted although Zoology asserts against them, because the
    layout is well defined: an odd `seq_len` (the last position is then always filler) and
    `vocab_size <= seq_len` (Zoology's own docstring example, V=12 and T=16, breaks that assert).

    Randomness comes only from `np.random.default_rng(seed)`; the same arguments give the same tensors.
    The distributions are Zoology's, not its token stream: Zoology seeds numpy's global generator but draws
    the filler from torch's global one, which its generator never seeds, so no set matches it token for token.

    Example (`V = 16`, `T = 16`, two pairs; keys in [1, 8), values in [8, 16); `space = 6`):

    >>> x, y = mqar(vocab_size=16, seq_len=16, num_kv_pairs=2, num_examples=1, seed=1, random_non_queries=False)
    >>> x[0].tolist()  # k1 v1 k2 v2, then key 3 queried at 4 + 2*1 and key 4 at 4 + 2*3
    [4, 13, 3, 15, 0, 0, 3, 0, 0, 0, 4, 0, 0, 0, 0, 0]
    >>> y[0].tolist()  # the value that follows each query key
    [-100, -100, -100, -100, -100, -100, 15, -100, -100, -100, 13, -100, -100, -100, -100, -100]
    >>> x, y = mqar(vocab_size=16, seq_len=16, num_kv_pairs=2, num_examples=1, seed=1)
    >>> x[0].tolist()  # the same draw, 0s replaced by uniform tokens from [0, 16)
    [4, 13, 3, 15, 1, 4, 3, 7, 15, 2, 4, 6, 14, 3, 8, 4]
    """
    _check_mqar_args(vocab_size, seq_len, num_kv_pairs, num_examples, power_a)
    return _mqar(make_rng(seed), vocab_size, seq_len, num_kv_pairs, num_examples, power_a, random_non_queries)


def build_mqar_splits(
    *,
    vocab_size: int,
    seq_len: int,
    num_kv_pairs: int,
    train_size: int,
    test_size: int,
    seed: int,
    power_a: float,
    random_non_queries: bool,
    mix_kv_pairs: Sequence[int],
) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """Train and test MQAR sets: `{"train": (x, y), "test": (x, y)}`, each `[size, seq_len]`.

    `train` is exactly `mqar(..., seed=seed)`; `test` comes from an independent stream of the same seed
    (numpy spawn key 1), which no integer seed reproduces, so a test set is never some other run's train set.

    `mix_kv_pairs` adds kv counts: each set is then split as evenly as rows allow over `num_kv_pairs` and
    these (in that order, each part from its own sub-stream), and its rows are shuffled. Zoology trains on
    several settings at once in the same way; a model trained on one kv count learns a lookup for that many
    pairs and little about more.
    """
    counts = [num_kv_pairs, *mix_kv_pairs]
    if len(set(counts)) != len(counts):
        raise ConfigError(
            f"MQAR kv counts must be distinct: num_kv_pairs={num_kv_pairs}, mix_kv_pairs={list(mix_kv_pairs)}"
        )
    for size, what in ((train_size, "train_size"), (test_size, "test_size")):
        if mix_kv_pairs and size < len(counts):
            raise ConfigError(f"MQAR {what}={size} cannot hold one sequence of each of the kv counts {counts}")
        for n in counts:
            _check_mqar_args(vocab_size, seq_len, n, size, power_a, what=what)
    if not mix_kv_pairs:
        args = (vocab_size, seq_len, num_kv_pairs)
        return {
            "train": _mqar(make_rng(seed), *args, train_size, power_a, random_non_queries),
            "test": _mqar(make_rng(seed, 1), *args, test_size, power_a, random_non_queries),
        }
    return {
        name: _mqar_mix(make_rng(seed, split), vocab_size, seq_len, counts, size, power_a, random_non_queries)
        for split, (name, size) in enumerate((("train", train_size), ("test", test_size)))
    }


def _mqar_mix(
    rng: np.random.Generator,
    vocab_size: int,
    seq_len: int,
    counts: list[int],
    num_examples: int,
    power_a: float,
    random_non_queries: bool,
) -> tuple[torch.Tensor, torch.Tensor]:
    """`num_examples` rows split over the kv `counts` (the first parts one row larger when it does not divide)."""
    base, extra = divmod(num_examples, len(counts))
    streams = rng.spawn(len(counts) + 1)  # one per part, and one for the shuffle
    parts = [
        _mqar(streams[i], vocab_size, seq_len, n, base + (i < extra), power_a, random_non_queries)
        for i, n in enumerate(counts)
    ]
    order = torch.from_numpy(streams[-1].permutation(num_examples))
    return torch.cat([x for x, _ in parts])[order], torch.cat([y for _, y in parts])[order]


def _check_mqar_args(
    vocab_size: int, seq_len: int, num_kv_pairs: int, num_examples: int, power_a: float, what: str = "num_examples"
) -> None:
    if num_kv_pairs < 1:
        raise ConfigError(f"MQAR needs num_kv_pairs >= 1, got num_kv_pairs={num_kv_pairs}")
    if 4 * num_kv_pairs > seq_len:
        raise ConfigError(
            f"MQAR needs 4 * num_kv_pairs <= seq_len (2n prefix tokens + n distinct query gaps of 2), "
            f"got 4 * {num_kv_pairs} > {seq_len}"
        )
    if num_kv_pairs > vocab_size // 2 - 1:
        raise ConfigError(
            f"MQAR needs num_kv_pairs <= vocab_size // 2 - 1 distinct keys in [1, vocab_size // 2), "
            f"got num_kv_pairs={num_kv_pairs} > {vocab_size // 2 - 1} (vocab_size={vocab_size})"
        )
    if not (power_a > 0 and math.isfinite(power_a)):
        raise ConfigError(f"MQAR needs a finite power_a > 0, got power_a={power_a}")
    if num_examples < 0:
        raise ConfigError(f"MQAR needs {what} >= 0, got {what}={num_examples}")


def _mqar(
    rng: np.random.Generator,
    vocab_size: int,
    seq_len: int,
    num_kv_pairs: int,
    num_examples: int,
    power_a: float,
    random_non_queries: bool,
) -> tuple[torch.Tensor, torch.Tensor]:
    n, N, half = num_kv_pairs, num_examples, vocab_size // 2
    context = 2 * n
    keys = _distinct_uniform(rng, 1, half, n, N)  # (N, n)
    values = _distinct_uniform(rng, half, vocab_size, n, N)  # (N, n)

    space = (seq_len - context) // 2
    weights = power_a * np.arange(1, space + 1, dtype=np.float64) ** (power_a - 1)
    gaps = _distinct_weighted(rng, weights, n, N)  # (N, n) in [0, space)
    query_pos = context + 2 * gaps  # (N, n)

    inputs = np.zeros((N, seq_len), dtype=np.int64)
    inputs[:, 0:context:2] = keys
    inputs[:, 1:context:2] = values
    np.put_along_axis(inputs, query_pos, keys, axis=1)
    labels = np.full((N, seq_len), IGNORE_INDEX, dtype=np.int64)
    np.put_along_axis(labels, query_pos, values, axis=1)

    if random_non_queries:
        filler = rng.integers(0, vocab_size, size=inputs.shape, dtype=np.int64)
        np.copyto(inputs, filler, where=inputs == 0)
    return torch.from_numpy(inputs), torch.from_numpy(labels)


def _row_chunks(num_rows: int, row_width: int) -> list[slice]:
    step = max(1, _CHUNK_ELEMENTS // max(row_width, 1))
    return [slice(i, min(i + step, num_rows)) for i in range(0, num_rows, step)]


def _distinct_uniform(rng: np.random.Generator, low: int, high: int, k: int, num_rows: int) -> np.ndarray:
    """`[num_rows, k]` int64: each row k distinct integers from `[low, high)`, a uniform ordered sample.

    Floyd's algorithm run on all rows at once (one step per drawn element, a boolean bitmap per row for the
    membership test), then a random order per row, since Floyd's subset is uniform but its order is not.
    """
    pool = high - low
    out = np.empty((num_rows, k), dtype=np.int64)
    for rows in _row_chunks(num_rows, pool):
        m = rows.stop - rows.start
        taken = np.zeros((m, pool), dtype=bool)
        r = np.arange(m)
        for i, j in enumerate(range(pool - k, pool)):
            t = rng.integers(0, j + 1, size=m)
            pick = np.where(taken[r, t], j, t)  # j itself is never taken yet: earlier picks are all < j
            taken[r, pick] = True
            out[rows, i] = pick
    order = np.argsort(rng.random((num_rows, k)), axis=1)
    return np.take_along_axis(out, order, axis=1) + low


def _distinct_weighted(rng: np.random.Generator, weights: np.ndarray, k: int, num_rows: int) -> np.ndarray:
    """`[num_rows, k]` int64: each row k distinct indices into `weights`, drawn one after another without
    replacement with probability ∝ weight among those left (what `np.random.choice(..., replace=False, p=p)`
    samples). Exponential race: index i's arrival time is Exp(1) / w_i; the first k arrivals, in order."""
    out = np.empty((num_rows, k), dtype=np.int64)
    for rows in _row_chunks(num_rows, len(weights)):
        times = rng.standard_exponential((rows.stop - rows.start, len(weights))) / weights
        first = np.argpartition(times, k - 1, axis=1)[:, :k]
        order = np.argsort(np.take_along_axis(times, first, axis=1), axis=1)
        out[rows] = np.take_along_axis(first, order, axis=1)
    return out
