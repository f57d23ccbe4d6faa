"""Seeded, resumable batching: a `BatchStream` walks the rows of a dataset epoch by epoch (each epoch in a
permutation drawn from `(seed, epoch)`, or in order) and its position, `{"epoch", "position"}`, is part of the
trainer state, so a resumed run continues on exactly the next row. `prefetch` draws batches in a background
thread (into pinned memory for CUDA) so the accelerator does not wait on Python."""

from __future__ import annotations

import queue
import threading
from collections.abc import Iterator
from typing import Protocol

import torch

from zoo.data._rng import make_rng

_BATCH_STREAM = 2  # sub-stream tag, apart from the data builders' streams (MQAR's test set uses 1)


class Rows(Protocol):
    """What a stream draws from: `len` rows, `rows(idx) -> (x, y)` (`zoo.data.tokens.TokenWindows` is one)."""

    def __len__(self) -> int: ...

    def rows(self, idx: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]: ...


class TensorRows:
    """In-memory `(inputs, labels)` as `Rows`."""

    def __init__(self, inputs: torch.Tensor, labels: torch.Tensor):
        if len(inputs) != len(labels):
            raise ValueError(f"inputs and labels differ in length: {len(inputs)} != {len(labels)}")
        self.inputs, self.labels = inputs, labels

    def __len__(self) -> int:
        return len(self.inputs)

    def rows(self, idx: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.inputs[idx], self.labels[idx]


class BatchStream:
    """Batches of `batch_size` rows of `source` (`Rows`, or an `(inputs, labels)` pair), forever.

    Epoch `e` visits the rows in the order of a permutation drawn from `(seed, e)` (`shuffle`), or in order, in
    full batches: when fewer than `batch_size` rows of an epoch are left they are skipped, so every batch has the
    same shape. `state()` is the position of the next batch, `{"epoch": e, "position": rows of epoch e already
    drawn}`; a stream built with that state yields exactly what this one yields next, also with another
    `batch_size` (it continues at the next row). Iterating yields `(x, y, state after this batch)`.
    """

    def __init__(self, source, batch_size: int, seed: int, shuffle: bool = True, state: dict | None = None):
        self.source = TensorRows(*source) if isinstance(source, tuple) else source
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        if len(self.source) < batch_size:
            raise ValueError(f"batch_size={batch_size} is larger than the dataset ({len(self.source)} examples)")
        self.batch_size, self.seed, self.shuffle = batch_size, seed, shuffle
        state = state or {"epoch": 0, "position": 0}
        self.epoch, self.position = int(state["epoch"]), int(state["position"])
        if self.epoch < 0 or not 0 <= self.position <= len(self.source):
            raise ValueError(f"invalid stream state {state} for {len(self.source)} rows")

    @classmethod
    def at_step(cls, source, batch_size: int, seed: int, step: int, shuffle: bool = True) -> BatchStream:
        """The stream after `step` batches of `batch_size` from the start."""
        if step < 0:
            raise ValueError(f"start_step must be >= 0, got {step}")
        stream = cls(source, batch_size, seed, shuffle)
        epoch, batch = divmod(step, len(stream.source) // batch_size)
        stream.epoch, stream.position = epoch, batch * batch_size
        return stream

    def state(self) -> dict:
        return {"epoch": self.epoch, "position": self.position}

    def _order(self, epoch: int) -> torch.Tensor:
        n = len(self.source)
        if not self.shuffle:
            return torch.arange(n)
        return torch.from_numpy(make_rng(self.seed, _BATCH_STREAM, epoch).permutation(n))

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor, dict]]:
        order, ordered_epoch = None, None
        while True:
            if self.position + self.batch_size > len(self.source):  # the epoch's remainder is skipped
                self.epoch, self.position = self.epoch + 1, 0
            if ordered_epoch != self.epoch:
                order, ordered_epoch = self._order(self.epoch), self.epoch
            idx = order[self.position : self.position + self.batch_size]
            self.position += self.batch_size
            x, y = self.source.rows(idx)
            yield x, y, self.state()


def iterate_batches(
    inputs: torch.Tensor, labels: torch.Tensor, batch_size: int, seed: int, start_step: int = 0
) -> Iterator[tuple[int, torch.Tensor, torch.Tensor]]:
    """Yield `(step, x, y)` forever, from `step = start_step`; `x`, `y` are `[batch_size, ...]` rows.

    Epoch `e` visits the examples in the order of a permutation drawn from `(seed, e)`, in
    `len(inputs) // batch_size` full batches (the remainder of each epoch's order is skipped, so every batch has
    the same shape). Step `k` is batch `k % steps_per_epoch` of epoch `k // steps_per_epoch`, hence
    `iterate_batches(..., start_step=k)` yields exactly what a fresh iterator yields from its k-th step on.
    """
    stream = BatchStream.at_step(TensorRows(inputs, labels), batch_size, seed, start_step)
    for step, (x, y, _) in enumerate(stream, start_step):
        yield step, x, y


def prefetch(batches: Iterator, depth: int = 2, pin_memory: bool = False) -> Iterator:
    """Yield the items of `batches` (tuples whose tensors are the batch), drawn `depth` ahead in a background
    thread, their tensors pinned when `pin_memory` (so a `.to("cuda", non_blocking=True)` overlaps the step). An
    error in the thread is raised here, at the item where it happened. Closing the generator stops the thread."""
    if depth < 1:
        yield from batches
        return
    items: queue.Queue = queue.Queue(depth)
    stop = threading.Event()
    done = object()

    def offer(item) -> bool:  # False once the consumer has gone
        while not stop.is_set():
            try:
                items.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def fill() -> None:
        try:
            for item in batches:
                if pin_memory:
                    item = tuple(t.pin_memory() if torch.is_tensor(t) else t for t in item)
                if not offer(item):
                    return
        except BaseException as e:  # handed to the consumer, raised there
            offer(e)
            return
        offer(done)

    thread = threading.Thread(target=fill, name="zoo-prefetch", daemon=True)
    thread.start()
    try:
        while (item := items.get()) is not done:
            if isinstance(item, BaseException):
                raise item
            yield item
    finally:
        stop.set()
        thread.join(timeout=5)
