"""Copying / perfect token recall (Jelassi et al. 2024, "Repeat After Me: Transformers are Better than State
Space Models at Copying", arXiv:2402.01032): the model reads `L` random tokens and a separator and must
repeat the `L` tokens.

Token ids (an `IntTokenizer` vocabulary): 0 pads, 1 separates, content tokens are drawn uniformly from
`[2, vocab_size)`. A training example with copy length `L` is

    x_1 ... x_L  SEP  x_1 ... x_L  PAD ...

and only the predictions of the copied tokens are scored (the token after SEP, ..., the last copy).
"""

from __future__ import annotations

import numpy as np
import torch

from zoo.data._rng import make_rng
from zoo.data.mqar import IGNORE_INDEX
from zoo.errors import ConfigError

PAD, SEP, FIRST_CONTENT = 0, 1, 2


def _check(vocab_size: int, length: int) -> None:
    if vocab_size < FIRST_CONTENT + 2:
        raise ConfigError(f"copy needs vocab_size >= {FIRST_CONTENT + 2} (pad, separator, >= 2 content tokens)")
    if length < 1:
        raise ConfigError(f"copy length must be >= 1, got {length}")


def copy_batch(num_examples: int, lengths, max_len: int, vocab_size: int, rng: np.random.Generator):
    """Inputs and labels `[N, 2 * max_len]` for per-example copy lengths `lengths` (each <= max_len)."""
    lengths = np.asarray(lengths, dtype=np.int64)[:, None]  # (N, 1)
    if (lengths > max_len).any() or (lengths < 1).any():
        raise ValueError(f"copy lengths must be in [1, {max_len}], got {lengths.min()}..{lengths.max()}")
    content = rng.integers(FIRST_CONTENT, vocab_size, size=(num_examples, max_len), dtype=np.int64)
    pos = np.arange(2 * max_len + 1)[None, :]  # positions of the full sequence (inputs + last target)
    copy_idx = np.clip(pos - lengths - 1, 0, max_len - 1)  # which content token a copy position repeats
    seq = np.where(pos < lengths, np.take_along_axis(content, np.minimum(pos, max_len - 1), 1), PAD)
    seq = np.where(pos == lengths, SEP, seq)
    is_copy = (pos > lengths) & (pos <= 2 * lengths)
    seq = np.where(is_copy, np.take_along_axis(content, copy_idx, 1), seq)
    labels = np.where(is_copy, seq, IGNORE_INDEX)[:, 1:]  # position j predicts token j + 1
    return torch.from_numpy(seq[:, :-1].copy()), torch.from_numpy(labels.copy())


def copy_examples(num_examples: int, length: int, vocab_size: int, seed: int):
    """`num_examples` sequences that all copy exactly `length` tokens: `(inputs, labels)`, `[N, 2 * length]`."""
    _check(vocab_size, length)
    return copy_batch(num_examples, [length] * num_examples, length, vocab_size, make_rng(seed))


def build_copy_splits(
    *, vocab_size: int, seq_len: int, min_len: int, train_size: int, test_size: int, seed: int
) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """`data=copy`: copy lengths uniform in `[min_len, seq_len // 2]`, padded to `seq_len` tokens."""
    max_len = seq_len // 2
    _check(vocab_size, max_len)
    if seq_len % 2:
        raise ConfigError(f"copy seq_len must be even (reading L tokens, then writing them back), got {seq_len}")
    if not 1 <= min_len <= max_len:
        raise ConfigError(f"copy min_len must be in [1, seq_len // 2 = {max_len}], got {min_len}")
    splits = {}
    for name, size, stream in (("train", train_size, 0), ("test", test_size, 1)):
        rng = make_rng(seed, 4, stream)
        lengths = rng.integers(min_len, max_len + 1, size=size)
        splits[name] = copy_batch(size, lengths, max_len, vocab_size, rng)
    return splits
