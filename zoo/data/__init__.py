"""Datasets by config name: `build_data("mqar", **cfg)` -> a `DataBundle` (train/eval tensors, tokenizer,
vocabulary size, metric); `iterate_batches` for seeded, resumable batches.

`DATASETS` maps each `conf/data/<name>.yaml` name to a `DatasetSpec`: which config keys it takes, how it
builds its splits and its tokenizer, and how it is scored. The MQAR generator itself is
`zoo.data.mqar.mqar` (not re-exported here, so that `zoo.data.mqar` stays the module).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import torch

from zoo.data.batching import iterate_batches
from zoo.data.copy import build_copy_splits
from zoo.data.mqar import IGNORE_INDEX, build_mqar_splits
from zoo.data.passkey import build_passkey_splits
from zoo.data.text import (
    DEFAULT_MAX_BYTES,
    build_text_splits,
    default_corpus_files,
    load_text_corpus,
    pack_documents,
    split_documents,
)
from zoo.tokenizer import ByteTokenizer, IntTokenizer, Tokenizer

Split = tuple[torch.Tensor, torch.Tensor]  # (inputs, labels), both LongTensor [N, seq_len]


@dataclass(frozen=True)
class DataBundle:
    """What training and evaluation need from a dataset.

    `eval` is MQAR's test split or the text corpus's validation split. `metric` is `"accuracy"` (mean over
    positions whose label is not `IGNORE_INDEX`) or `"ppl"` (exp of the mean next-token cross-entropy).
    """

    train: Split
    eval: Split
    tokenizer: Tokenizer
    vocab_size: int
    metric: str


@dataclass(frozen=True)
class DatasetSpec:
    """One registry entry. `build_splits(cfg)` gets the complete config (defaults filled in)."""

    build_splits: Callable[[dict[str, Any]], dict[str, Split]]
    build_tokenizer: Callable[[dict[str, Any]], Tokenizer]
    eval_split: str
    metric: str
    required: tuple[str, ...]
    defaults: Mapping[str, Any] = field(default_factory=dict)


def _mqar_splits(cfg: dict[str, Any]) -> dict[str, Split]:
    return build_mqar_splits(
        vocab_size=int(cfg["vocab_size"]),
        seq_len=int(cfg["seq_len"]),
        num_kv_pairs=int(cfg["num_kv_pairs"]),
        train_size=int(cfg["train_size"]),
        test_size=int(cfg["test_size"]),
        seed=int(cfg["seed"]),
        power_a=float(cfg["power_a"]),
        random_non_queries=bool(cfg["random_non_queries"]),
    )


def _text_splits(cfg: dict[str, Any]) -> dict[str, Split]:
    paths = cfg["paths"]
    if paths is not None and not isinstance(paths, str):
        paths = [str(p) for p in paths]  # also turns an OmegaConf ListConfig into a list
    return build_text_splits(
        ByteTokenizer(),
        block_size=int(cfg["seq_len"]),
        val_fraction=float(cfg["val_fraction"]),
        seed=int(cfg["seed"]),
        paths=paths,
        glob=cfg["glob"],
        max_bytes=cfg["max_bytes"],
    )


def _passkey_splits(cfg: dict[str, Any]) -> dict[str, Split]:
    return build_passkey_splits(
        seq_len=int(cfg["seq_len"]), train_size=int(cfg["train_size"]), test_size=int(cfg["test_size"]),
        seed=int(cfg["seed"]),
    )  # fmt: skip


def _copy_splits(cfg: dict[str, Any]) -> dict[str, Split]:
    return build_copy_splits(
        vocab_size=int(cfg["vocab_size"]), seq_len=int(cfg["seq_len"]), min_len=int(cfg["min_len"]),
        train_size=int(cfg["train_size"]), test_size=int(cfg["test_size"]), seed=int(cfg["seed"]),
    )  # fmt: skip


def _byte_tokenizer(cfg: dict[str, Any]) -> Tokenizer:
    tok = ByteTokenizer()
    if cfg["vocab_size"] != tok.vocab_size:  # the key is informational (configs state it); it cannot differ
        raise ValueError(f"text data is byte-level: vocab_size must be {tok.vocab_size}, got {cfg['vocab_size']}")
    return tok


DATASETS: dict[str, DatasetSpec] = {
    "mqar": DatasetSpec(
        build_splits=_mqar_splits,
        build_tokenizer=lambda cfg: IntTokenizer(int(cfg["vocab_size"])),
        eval_split="test",
        metric="accuracy",
        required=("vocab_size", "seq_len", "num_kv_pairs", "train_size", "test_size", "seed"),
        defaults={"power_a": 0.01, "random_non_queries": True},
    ),
    "text": DatasetSpec(
        build_splits=_text_splits,
        build_tokenizer=_byte_tokenizer,
        eval_split="val",
        metric="ppl",
        required=("seq_len",),
        defaults={
            "vocab_size": 257,
            "val_fraction": 0.05,
            "seed": 0,
            "paths": None,
            "glob": None,
            "max_bytes": DEFAULT_MAX_BYTES,
        },
    ),
    "passkey": DatasetSpec(
        build_splits=_passkey_splits,
        build_tokenizer=_byte_tokenizer,
        eval_split="test",
        metric="accuracy",
        required=("seq_len", "train_size", "test_size", "seed"),
        defaults={"vocab_size": 257},
    ),
    "copy": DatasetSpec(
        build_splits=_copy_splits,
        build_tokenizer=lambda cfg: IntTokenizer(int(cfg["vocab_size"])),
        eval_split="test",
        metric="accuracy",
        required=("vocab_size", "seq_len", "min_len", "train_size", "test_size", "seed"),
    ),
}


def build_data(name: str, **cfg: Any) -> DataBundle:
    """Build the dataset registered as `name` from its config keys (see `DATASETS[name]`).

    mqar: vocab_size, seq_len, num_kv_pairs, train_size, test_size, seed, [power_a=0.01,
    random_non_queries=True]; IntTokenizer(vocab_size); metric "accuracy" on the test split.
    text: seq_len (block size), [vocab_size=257 (informational, must be 257), val_fraction=0.05, seed=0,
    paths=None (stdlib sources), glob=None, max_bytes=8 MiB]; ByteTokenizer; metric "ppl" on the validation split.
    passkey: seq_len, train_size, test_size, seed, [vocab_size=257]; ByteTokenizer; accuracy on the 5 digits.
    copy: vocab_size, seq_len (= 2 * longest copy), min_len, train_size, test_size, seed; IntTokenizer;
    accuracy on the copied tokens.
    """
    if name not in DATASETS:
        raise ValueError(f"unknown dataset {name!r}; choose one of {sorted(DATASETS)}")
    spec = DATASETS[name]
    unknown = sorted(set(cfg) - set(spec.required) - set(spec.defaults))
    missing = sorted(set(spec.required) - set(cfg))
    if unknown or missing:
        allowed = sorted([*spec.required, *spec.defaults])
        raise ValueError(f"data config {name!r}: unknown keys {unknown}, missing keys {missing}; it takes {allowed}")
    full = {**spec.defaults, **cfg}
    tokenizer = spec.build_tokenizer(full)  # first: it validates cheaply before the splits are built
    splits = spec.build_splits(full)
    return DataBundle(
        train=splits["train"],
        eval=splits[spec.eval_split],
        tokenizer=tokenizer,
        vocab_size=tokenizer.vocab_size,
        metric=spec.metric,
    )


__all__ = [
    "DATASETS",
    "DEFAULT_MAX_BYTES",
    "IGNORE_INDEX",
    "DataBundle",
    "DatasetSpec",
    "build_data",
    "build_mqar_splits",
    "build_text_splits",
    "default_corpus_files",
    "iterate_batches",
    "load_text_corpus",
    "pack_documents",
    "split_documents",
]
