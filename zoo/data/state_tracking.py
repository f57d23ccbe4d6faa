"""State tracking: the word problem of a finite group (Merrill et al. 2024, "The Illusion of State in State-Space
Models", arXiv:2404.08819; Grazzi et al. 2024, "Unlocking State-Tracking in Linear RNNs Through Negative
Eigenvalues", arXiv:2411.12537). Recall asks what a state remembers; state tracking asks what it can compute.

A sequence is `x_1 ... x_T` of group elements drawn uniformly; the label at position t is the running product
`x_1 x_2 ... x_t`, so every position is scored. Groups (`GROUPS`):
- `parity`: Z_2 (the running XOR of bits);
- `mod_add`: Z_m, addition modulo `modulus` (the running sum mod m);
- `s3`, `s5`: the symmetric groups on 3 and 5 points (composing permutations; S5 is not solvable, the case
  Merrill et al. prove beyond constant-depth parallel models of log precision, and DeltaProduct targets).

Token ids are the element ids: `0 .. |G| - 1` (the identity is 0; permutations are numbered in lexicographic
order of their one-line notation, `(0, 1, 2)` first). `vocab_size` may be larger than the group (the extra ids
never occur). A product `a b` means "a, then b": for permutations `(a b)(i) = b(a(i))`.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass
from functools import cache

import numpy as np
import torch

from zoo.data._rng import make_rng
from zoo.errors import ConfigError


@dataclass(frozen=True)
class Group:
    """A finite group by its multiplication table: `table[a, b]` is the id of `a b` (a, then b)."""

    name: str
    table: np.ndarray  # int64 [n, n]

    @property
    def order(self) -> int:
        return len(self.table)


def cyclic(m: int, name: str) -> Group:
    a = np.arange(m)
    return Group(name, (a[:, None] + a[None, :]) % m)


def symmetric(n: int) -> Group:
    perms = list(itertools.permutations(range(n)))  # lexicographic: the identity first
    index = {p: i for i, p in enumerate(perms)}
    table = np.array([[index[tuple(b[a[i]] for i in range(n))] for b in perms] for a in perms], dtype=np.int64)
    return Group(f"s{n}", table)


TASKS = ("parity", "mod_add", "s3", "s5")


@cache
def group(task: str, modulus: int | None = None) -> Group:
    """The group of `task` (one of `TASKS`); `modulus` only for `mod_add`."""
    if task not in TASKS:
        raise ConfigError(f"unknown state-tracking task {task!r}; valid: {', '.join(TASKS)}")
    if task == "mod_add":
        if modulus is None or isinstance(modulus, bool) or not isinstance(modulus, int) or modulus < 2:
            raise ConfigError(f"state_tracking task mod_add needs an integer modulus >= 2, got {modulus!r}")
        return cyclic(modulus, f"z{modulus}")
    return cyclic(2, "parity") if task == "parity" else symmetric(int(task[1:]))


def check(task: str, modulus: int | None, vocab_size: int, seq_len: int) -> Group:
    """The task's group, or a ConfigError that says which setting cannot work."""
    g = group(task, modulus if task == "mod_add" else None)
    if vocab_size is None or vocab_size < g.order:
        raise ConfigError(
            f"state_tracking task {task} has {g.order} elements, one token each: vocab_size must be >= {g.order}, "
            f"got {vocab_size}"
        )
    if seq_len < 1:
        raise ConfigError(f"state_tracking seq_len must be >= 1, got {seq_len}")
    return g


def word_problems(g: Group, num_examples: int, seq_len: int, rng: np.random.Generator):
    """`(inputs, labels)`, LongTensor `[N, seq_len]`: uniform elements and their running products."""
    x = rng.integers(0, g.order, size=(num_examples, seq_len), dtype=np.int64)
    y = np.empty_like(x)
    state = np.zeros(num_examples, dtype=np.int64)  # the identity
    for t in range(seq_len):
        state = g.table[state, x[:, t]]
        y[:, t] = state
    return torch.from_numpy(x), torch.from_numpy(y)


def state_tracking_examples(
    task: str, num_examples: int, seq_len: int, vocab_size: int, seed: int, modulus: int | None = None
):
    """`num_examples` word problems of length `seq_len` (the evaluation's: one length per call)."""
    g = check(task, modulus, vocab_size, seq_len)
    return word_problems(g, num_examples, seq_len, make_rng(seed, 5, seq_len))


def build_state_tracking_splits(
    *, task: str, modulus: int | None, vocab_size: int, seq_len: int, train_size: int, test_size: int, seed: int
) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """`data=state_tracking`: train and test word problems of length `seq_len` (independent streams)."""
    g = check(task, modulus, vocab_size, seq_len)
    return {
        name: word_problems(g, size, seq_len, make_rng(seed, 5, stream))
        for name, size, stream in (("train", train_size, 0), ("test", test_size, 1))
    }
