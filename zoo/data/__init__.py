"""Datasets by config name: `build_dataset(typed data config)` or `build_data("mqar", **settings)` -> a
`DataBundle` (train/eval tensors, tokenizer, vocabulary size, metric, and for text the bytes behind the eval
tokens); `iterate_batches` for seeded, resumable batches.

`DATASETS` maps each `conf/data/<name>.yaml` name to a `DatasetSpec`: the builder of its bundle (splits,
tokenizer, metric), whose keyword-only arguments are the yaml's settings; their values live in the yaml only
(schema: `zoo.schemas.DATA_SCHEMAS`). Invalid settings are `ConfigError`s. The MQAR generator itself is
`zoo.data.mqar.mqar` (not re-exported here, so that `zoo.data.mqar` stays the module).
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

from zoo.config import load_option
from zoo.data.batching import iterate_batches
from zoo.data.copy import build_copy_splits
from zoo.data.hf import hf_documents, load_hf_documents
from zoo.data.mqar import IGNORE_INDEX, build_mqar_splits
from zoo.data.passkey import build_passkey_splits
from zoo.data.state_tracking import build_state_tracking_splits
from zoo.data.text import (
    build_lm_splits,
    build_text_splits,
    build_text_tokenizer,
    check_text_tokenizer,
    default_corpus_files,
    load_text_corpus,
    pack_documents,
    split_documents,
    take_documents,
)
from zoo.data.tokenizer import ByteTokenizer, IntTokenizer, Tokenizer
from zoo.errors import ConfigError
from zoo.schemas import DataConfig

Split = tuple[torch.Tensor, torch.Tensor]  # (inputs, labels), both LongTensor [N, seq_len]


@dataclass(frozen=True)
class DataBundle:
    """What training and evaluation need from a dataset.

    `eval` is MQAR's test split or the text corpus's validation split. `metric` is `"accuracy"` (mean over
    positions whose label is not `IGNORE_INDEX`) or `"ppl"` (exp of the mean next-token cross-entropy).
    `eval_bytes` (text data only, else None) is LongTensor `[N_eval]`: the UTF-8 bytes each eval block's labels
    encode (eos counts 1), for per-byte metrics that compare models with different tokenizers.
    """

    train: Split
    eval: Split
    tokenizer: Tokenizer
    vocab_size: int
    metric: str
    eval_bytes: torch.Tensor | None = None


@dataclass(frozen=True)
class DatasetSpec:
    """One registry entry: `build(**settings)` takes every setting of `conf/data/<name>.yaml` (all its keys but
    `name` and the `_`-prefixed interpolation helpers) and returns the bundle. Its keyword-only arguments (no
    defaults) are settings; a `**settings` catch-all passes the rest on to `forwards`, whose keyword-only arguments
    are the rest of the settings, so a signature is written once. The yaml is the only place the values are written
    down (tests/zoo/test_data_defaults.py)."""

    build: Callable[..., DataBundle]
    forwards: Callable | None = None

    @property
    def keys(self) -> tuple[str, ...]:
        """The settings `build` takes, from its signature and that of `forwards`."""
        params = list(inspect.signature(self.build).parameters.values())
        own = [p.name for p in params if p.kind is p.KEYWORD_ONLY]
        passed = list(inspect.signature(self.forwards).parameters) if self.forwards is not None else []
        return tuple(dict.fromkeys(own + passed))


def _mqar(**settings) -> DataBundle:
    """Every setting is one of `build_mqar_splits`."""
    tokenizer = IntTokenizer(settings["vocab_size"])
    splits = build_mqar_splits(**settings)
    return DataBundle(splits["train"], splits["test"], tokenizer, tokenizer.vocab_size, "accuracy")


def _passkey(*, vocab_size: int, seq_len: int, train_size: int, test_size: int, seed: int) -> DataBundle:
    tokenizer = ByteTokenizer()
    if vocab_size != tokenizer.vocab_size:  # the key is informational (configs state it); it cannot differ
        raise ConfigError(f"passkey data is byte-level: vocab_size must be {tokenizer.vocab_size}, got {vocab_size}")
    splits = build_passkey_splits(seq_len=seq_len, train_size=train_size, test_size=test_size, seed=seed)
    return DataBundle(splits["train"], splits["test"], tokenizer, tokenizer.vocab_size, "accuracy")


def _copy(*, vocab_size: int, seq_len: int, min_len: int, train_size: int, test_size: int, seed: int) -> DataBundle:
    tokenizer = IntTokenizer(vocab_size)
    splits = build_copy_splits(
        vocab_size=vocab_size, seq_len=seq_len, min_len=min_len, train_size=train_size, test_size=test_size, seed=seed
    )
    return DataBundle(splits["train"], splits["test"], tokenizer, tokenizer.vocab_size, "accuracy")


def _state_tracking(**settings) -> DataBundle:
    """Every setting is one of `build_state_tracking_splits`; accuracy over every position."""
    tokenizer = IntTokenizer(settings["vocab_size"])
    splits = build_state_tracking_splits(**settings)
    return DataBundle(splits["train"], splits["test"], tokenizer, tokenizer.vocab_size, "accuracy")


def _lm_bundle(train_docs, val_docs, *, tokenizer: str, vocab_size, bpe_vocab_size: int, seq_len: int) -> DataBundle:
    """Tokenize (the tokenizer learns from training documents only) and pack; per-token and per-byte ppl."""
    tok = build_text_tokenizer(tokenizer, vocab_size, bpe_vocab_size, train_docs)
    splits = build_lm_splits(train_docs, val_docs, tok, seq_len)
    return DataBundle(splits["train"], splits["val"], tok, tok.vocab_size, "ppl", splits["val_bytes"])


def _text(
    *,
    tokenizer: str,
    bpe_vocab_size: int,
    vocab_size: int | None,
    seq_len: int,
    val_fraction: float,
    seed: int,
    paths,
    glob: str | None,
    max_bytes: int | None,
) -> DataBundle:
    check_text_tokenizer(tokenizer, vocab_size, bpe_vocab_size)  # before any text is read
    docs = load_text_corpus(paths, glob=glob, max_bytes=max_bytes)
    train_docs, val_docs = split_documents(docs, val_fraction, seed)
    return _lm_bundle(
        train_docs, val_docs, tokenizer=tokenizer, vocab_size=vocab_size, bpe_vocab_size=bpe_vocab_size, seq_len=seq_len
    )


def _hf(*, tokenizer: str, bpe_vocab_size: int, vocab_size: int | None, seq_len: int, **source) -> DataBundle:
    """The tokenizer settings here; the dataset's (`source`) are those of `hf_documents`."""
    check_text_tokenizer(tokenizer, vocab_size, bpe_vocab_size)  # before the dataset is read (or downloaded)
    train_docs, val_docs = hf_documents(**source)
    return _lm_bundle(
        train_docs, val_docs, tokenizer=tokenizer, vocab_size=vocab_size, bpe_vocab_size=bpe_vocab_size, seq_len=seq_len
    )


DATASETS: dict[str, DatasetSpec] = {
    "mqar": DatasetSpec(_mqar, forwards=build_mqar_splits),
    "text": DatasetSpec(_text),
    "hf": DatasetSpec(_hf, forwards=hf_documents),
    "passkey": DatasetSpec(_passkey),
    "copy": DatasetSpec(_copy),
    "state_tracking": DatasetSpec(_state_tracking, forwards=build_state_tracking_splits),
}


def build_dataset(cfg: DataConfig) -> DataBundle:
    """The bundle of a typed data config (`zoo.config.typed(cfg.data)` of a composed config): `cfg.name` picks the
    builder, which gets every other setting."""
    if cfg.name not in DATASETS:
        raise ConfigError(f"unknown dataset {cfg.name!r}; choose one of {sorted(DATASETS)}")
    spec = DATASETS[cfg.name]
    return spec.build(**{key: getattr(cfg, key) for key in spec.keys})


def build_data(name: str, **settings: Any) -> DataBundle:
    """The dataset `conf/data/<name>.yaml` describes, with `settings` over that file's values (a key the file does
    not have is a ConfigError naming the valid ones).

    mqar: IntTokenizer(vocab_size); accuracy on the test split. passkey: ByteTokenizer; accuracy on the 5 digits.
    copy: IntTokenizer; accuracy on the copied tokens. state_tracking: IntTokenizer; accuracy of the running
    product at every position. text (the offline corpus) and hf (Hugging Face datasets):
    byte or BPE tokens (vocab_size is derived from the tokenizer; a stated value must agree); "ppl" on the
    validation split, with `eval_bytes`. Each setting is documented in its yaml."""
    if name not in DATASETS:
        raise ConfigError(f"unknown dataset {name!r}; choose one of {sorted(DATASETS)}")
    return build_dataset(load_option("data", name, settings))


__all__ = [
    "DATASETS",
    "IGNORE_INDEX",
    "DataBundle",
    "DatasetSpec",
    "build_data",
    "build_dataset",
    "build_lm_splits",
    "build_mqar_splits",
    "build_text_splits",
    "build_text_tokenizer",
    "check_text_tokenizer",
    "default_corpus_files",
    "hf_documents",
    "iterate_batches",
    "load_hf_documents",
    "load_text_corpus",
    "pack_documents",
    "split_documents",
    "take_documents",
]
