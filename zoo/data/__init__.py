"""Datasets by config name: `build_dataset(typed data config)` or `build_data("mqar", **settings)` -> a
`DataBundle` (train/eval tensors, tokenizer, vocabulary size, metric, and for text the bytes behind the eval
tokens); `BatchStream` (and `iterate_batches`) for seeded, resumable batches; `zoo.data.tokens` for
pre-tokenized corpora (`zoo-data prepare`, `data=tokens`).

`DATASETS` maps each `conf/data/<name>.yaml` name to a `DatasetSpec`: the builder of its bundle (splits,
tokenizer, metric), whose keyword-only arguments are the yaml's settings; their values live in the yaml only
(schema: `zoo.schemas.DATA_SCHEMAS`). Invalid settings are `ConfigError`s. The MQAR generator itself is
`zoo.data.mqar.mqar` (not re-exported here, so that `zoo.data.mqar` stays the module).
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from dataclasses import dataclass
from types import SimpleNamespace
from typing import Any

import torch

from zoo.config import load_option
from zoo.data.batching import BatchStream, TensorRows, iterate_batches, prefetch
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
    label_bytes,
    load_text_corpus,
    pack_documents,
    split_documents,
    take_documents,
)
from zoo.data.tokenizer import ByteTokenizer, IntTokenizer, Tokenizer
from zoo.data.tokens import TokenCorpus, TokenWindows, open_corpus, prepare_corpus, verify_corpus
from zoo.errors import ConfigError
from zoo.schemas import DataConfig

Split = tuple[torch.Tensor, torch.Tensor]  # (inputs, labels), both LongTensor [N, seq_len]


@dataclass(frozen=True)
class DataBundle:
    """What training and evaluation need from a dataset.

    `train` is a Split, or for `data=tokens` the corpus's `TokenWindows` (read per batch: `zoo.data.BatchStream`
    takes either); `shuffle` says whether each epoch visits it in a seeded permutation or in order, and
    `fingerprint` (tokens only) is what a run records so that resuming on another corpus is an error.
    `eval` is MQAR's test split or the text corpus's validation split. `metric` is `"accuracy"` (mean over
    positions whose label is not `IGNORE_INDEX`) or `"ppl"` (exp of the mean next-token cross-entropy).
    `eval_bytes` (text data only, else None) is LongTensor `[N_eval]`: the UTF-8 bytes each eval block's labels
    encode (eos counts 1), for per-byte metrics that compare models with different tokenizers.
    """

    train: Split | TokenWindows
    eval: Split
    tokenizer: Tokenizer
    vocab_size: int
    metric: str
    eval_bytes: torch.Tensor | None = None
    shuffle: bool = True
    fingerprint: dict | None = None


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


def lm_documents(cfg) -> tuple[list[str], list[str], Tokenizer]:
    """A `data=text` / `data=hf` config's training and validation documents and its tokenizer (BPE learns from the
    training documents only), as training builds them; `zoo-data prepare` tokenizes these into a corpus folder.
    The tokenizer settings are checked before any text is read (or downloaded)."""
    if cfg.name not in LM_SOURCES:
        raise ConfigError(f"data={cfg.name} is not text; choose one of {sorted(LM_SOURCES)}")
    check_text_tokenizer(cfg.tokenizer, cfg.vocab_size, cfg.bpe_vocab_size)
    train_docs, val_docs = LM_SOURCES[cfg.name](cfg)
    return train_docs, val_docs, build_text_tokenizer(cfg.tokenizer, cfg.vocab_size, cfg.bpe_vocab_size, train_docs)


LM_SOURCES = {  # data config name -> (train_docs, val_docs) of its typed config
    "text": lambda c: split_documents(
        load_text_corpus(c.paths, glob=c.glob, max_bytes=c.max_bytes), c.val_fraction, c.seed
    ),
    "hf": lambda c: hf_documents(**{k: getattr(c, k) for k in inspect.signature(hf_documents).parameters}),
}


def _lm_bundle(name: str, settings: dict) -> DataBundle:
    """Tokenize and pack; per-token and per-byte ppl."""
    train_docs, val_docs, tok = lm_documents(SimpleNamespace(name=name, **settings))
    splits = build_lm_splits(train_docs, val_docs, tok, settings["seq_len"])
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
    return _lm_bundle("text", locals())


def _hf(*, tokenizer: str, bpe_vocab_size: int, vocab_size: int | None, seq_len: int, **source) -> DataBundle:
    """The tokenizer settings here; the dataset's (`source`) are those of `hf_documents`."""
    return _lm_bundle(
        "hf",
        {
            "tokenizer": tokenizer,
            "bpe_vocab_size": bpe_vocab_size,
            "vocab_size": vocab_size,
            "seq_len": seq_len,
            **source,
        },
    )


def _tokens(*, path: str, vocab_size: int, seq_len: int, order: str, val_blocks: int | None, seed: int) -> DataBundle:
    """Windows of a pre-tokenized corpus (`zoo.data.tokens`): training windows read from the memmap per batch,
    the validation windows (at most `val_blocks`) in memory."""
    if order not in WINDOW_ORDERS:
        raise ConfigError(f"data.order={order!r}; choose one of {list(WINDOW_ORDERS)}")
    if val_blocks is not None and val_blocks < 1:
        raise ConfigError(f"data.val_blocks must be >= 1 or null, got {val_blocks}")
    corpus = open_corpus(path)
    if vocab_size != corpus.vocab_size:
        raise ConfigError(f"data.vocab_size={vocab_size}, but the corpus at {path} has {corpus.vocab_size} tokens")
    train, val = TokenWindows(corpus.streams["train"], seq_len), TokenWindows(corpus.streams["val"], seq_len)
    for name, windows in (("train", train), ("val", val)):
        if len(windows) == 0:
            raise ConfigError(
                f"{path}: the {name} split has {len(windows.stream)} tokens, fewer than one window of {seq_len + 1}"
            )
    n_val = len(val) if val_blocks is None else min(val_blocks, len(val))
    val_x, val_y = val.rows(torch.arange(n_val))
    return DataBundle(
        train,
        (val_x, val_y),
        corpus.tokenizer,
        corpus.vocab_size,
        "ppl",
        label_bytes(corpus.tokenizer, val_y),
        shuffle=WINDOW_ORDERS[order],
        fingerprint=corpus.fingerprint,
    )


WINDOW_ORDERS = {"random": True, "sequential": False}  # data.order -> whether each epoch is shuffled


DATASETS: dict[str, DatasetSpec] = {
    "mqar": DatasetSpec(_mqar, forwards=build_mqar_splits),
    "text": DatasetSpec(_text),
    "hf": DatasetSpec(_hf, forwards=hf_documents),
    "passkey": DatasetSpec(_passkey),
    "copy": DatasetSpec(_copy),
    "state_tracking": DatasetSpec(_state_tracking, forwards=build_state_tracking_splits),
    "tokens": DatasetSpec(_tokens),
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
    "BatchStream",
    "TensorRows",
    "TokenCorpus",
    "TokenWindows",
    "open_corpus",
    "prefetch",
    "prepare_corpus",
    "verify_corpus",
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
    "lm_documents",
    "load_hf_documents",
    "load_text_corpus",
    "pack_documents",
    "split_documents",
    "take_documents",
]
