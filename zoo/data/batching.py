"""Seeded, resumable batching: step k's batch is a pure function of (seed, k), so a resumed run sees exactly
the batches an uninterrupted one would have."""

from __future__ import annotations

from collections.abc import Iterator

import torch

from zoo.data._rng import make_rng

_BATCH_STREAM = 2  # sub-stream tag, apart from the data builders' streams (MQAR's test set uses 1)


def iterate_batches(
    inputs: torch.Tensor, labels: torch.Tensor, batch_size: int, seed: int, start_step: int = 0
) -> Iterator[tuple[int, torch.Tensor, torch.Tensor]]:
    """Yield `(step, x, y)` forever, from `step = start_step`; `x`, `y` are `[batch_size, ...]` rows.

    Epoch `e` visits the examples in the order of a permutation drawn from `(seed, e)`, in
    `len(inputs) // batch_size` full batches (the remainder of each epoch's order is skipped, so every batch
    has the same shape). Step `k` is batch `k % steps_per_epoch` of epoch `k // steps_per_epoch`, hence
    `iterate_batches(..., start_step=k)` yields exactly what a fresh iterator yields from its k-th step on.
    """
    if len(inputs) != len(labels):
        raise ValueError(f"inputs and labels differ in length: {len(inputs)} != {len(labels)}")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    if len(inputs) < batch_size:
        raise ValueError(f"batch_size={batch_size} is larger than the dataset ({len(inputs)} examples)")
    if start_step < 0:
        raise ValueError(f"start_step must be >= 0, got {start_step}")
    steps_per_epoch = len(inputs) // batch_size
    step = start_step
    while True:
        epoch, first = divmod(step, steps_per_epoch)
        order = torch.from_numpy(make_rng(seed, _BATCH_STREAM, epoch).permutation(len(inputs)))
        for b in range(first, steps_per_epoch):
            idx = order[b * batch_size : (b + 1) * batch_size]
            yield step, inputs[idx], labels[idx]
            step += 1
