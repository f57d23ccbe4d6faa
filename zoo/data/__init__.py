"""Datasets by config name: `build_data("mqar", **cfg)` -> a `DataBundle` (train/eval tensors, tokenizer,
vocabulary size, metric, and for text the bytes behind the eval tokens); `iterate_batches` for seeded,
resumable batches.

`DATASETS` maps each `conf/data/<name>.yaml` name to a `DatasetSpec`: which config keys it takes and how it
builds its bundle (splits, tokenizer, metric). The MQAR generator itself is
`zoo.data.mqar.mqar` (not re-exported here, so that `zoo.data.mqar` stays the module).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import torch

from zoo.data.batching import iterate_batches
from zoo.data.copy import build_copy_splits
from zoo.data.hf import hf_documents, load_hf_documents
from zoo.data.mqar import IGNORE_INDEX, build_mqar_splits
from zoo.data.passkey import build_passkey_splits
from zoo.data.text import (
    DEFAULT_MAX_BYTES,
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
    """One registry entry. `build(cfg)` gets the complete config (defaults filled in) and returns the bundle."""

    build: Callable[[dict[str, Any]], DataBundle]
    required: tuple[str, ...]
    defaults: Mapping[str, Any] = field(default_factory=dict)


def _generated(build_splits, build_tokenizer, eval_split: str, metric: str) -> Callable[[dict], DataBundle]:
    """`build` for a synthetic task, whose tokenizer is fixed by config alone."""

    def build(cfg: dict[str, Any]) -> DataBundle:
        tokenizer = build_tokenizer(cfg)  # first: it validates cheaply before the splits are built
        splits = build_splits(cfg)
        return DataBundle(splits["train"], splits[eval_split], tokenizer, tokenizer.vocab_size, metric)

    return build


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


def _lm_bundle(cfg: dict[str, Any], train_docs: list[str], val_docs: list[str]) -> DataBundle:
    """Tokenize (the tokenizer learns from training documents only) and pack; per-token and per-byte ppl."""
    tokenizer = build_text_tokenizer(cfg["tokenizer"], cfg["vocab_size"], cfg["bpe_vocab_size"], train_docs)
    splits = build_lm_splits(train_docs, val_docs, tokenizer, int(cfg["seq_len"]))
    return DataBundle(splits["train"], splits["val"], tokenizer, tokenizer.vocab_size, "ppl", splits["val_bytes"])


def _check_tokenizer_choice(cfg: dict[str, Any]) -> None:
    """Fail on a bad tokenizer setting before any text is read (reading a dataset can take a while)."""
    check_text_tokenizer(cfg["tokenizer"], cfg["vocab_size"], cfg["bpe_vocab_size"])


def _text_bundle(cfg: dict[str, Any]) -> DataBundle:
    _check_tokenizer_choice(cfg)
    paths = cfg["paths"]
    if paths is not None and not isinstance(paths, str):
        paths = [str(p) for p in paths]  # also turns an OmegaConf ListConfig into a list
    docs = load_text_corpus(paths, glob=cfg["glob"], max_bytes=cfg["max_bytes"])
    return _lm_bundle(cfg, *split_documents(docs, float(cfg["val_fraction"]), int(cfg["seed"])))


def _hf_bundle(cfg: dict[str, Any]) -> DataBundle:
    _check_tokenizer_choice(cfg)
    if cfg["data_files"] is not None and not isinstance(cfg["data_files"], (str, dict)):
        cfg = {**cfg, "data_files": [str(f) for f in cfg["data_files"]]}  # an OmegaConf ListConfig
    return _lm_bundle(cfg, *hf_documents(cfg))


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


def _byte_tokenizer(cfg: dict[str, Any]) -> Tokenizer:  # passkey
    tok = ByteTokenizer()
    if cfg["vocab_size"] != tok.vocab_size:  # the key is informational (configs state it); it cannot differ
        raise ValueError(f"passkey data is byte-level: vocab_size must be {tok.vocab_size}, got {cfg['vocab_size']}")
    return tok


DATASETS: dict[str, DatasetSpec] = {
    "mqar": DatasetSpec(
        build=_generated(_mqar_splits, lambda cfg: IntTokenizer(int(cfg["vocab_size"])), "test", "accuracy"),
        required=("vocab_size", "seq_len", "num_kv_pairs", "train_size", "test_size", "seed"),
        defaults={"power_a": 0.01, "random_non_queries": True},
    ),
    "text": DatasetSpec(
        build=_text_bundle,
        required=("seq_len",),
        defaults={
            "tokenizer": "byte",
            "bpe_vocab_size": 4096,
            "vocab_size": None,  # derived from the tokenizer; a stated value must agree with it
            "val_fraction": 0.05,
            "seed": 0,
            "paths": None,
            "glob": None,
            "max_bytes": DEFAULT_MAX_BYTES,
        },
    ),
    "hf": DatasetSpec(
        build=_hf_bundle,
        required=("path", "seq_len"),
        defaults={
            "split": "train",
            "val_split": None,
            "text_field": "text",
            "data_files": None,
            "config_name": None,
            "streaming": False,
            "max_bytes": DEFAULT_MAX_BYTES,
            "max_docs": None,
            "cache_dir": None,
            "tokenizer": "byte",
            "bpe_vocab_size": 4096,
            "vocab_size": None,
            "val_fraction": 0.05,
            "seed": 0,
        },
    ),
    "passkey": DatasetSpec(
        build=_generated(_passkey_splits, _byte_tokenizer, "test", "accuracy"),
        required=("seq_len", "train_size", "test_size", "seed"),
        defaults={"vocab_size": 257},
    ),
    "copy": DatasetSpec(
        build=_generated(_copy_splits, lambda cfg: IntTokenizer(int(cfg["vocab_size"])), "test", "accuracy"),
        required=("vocab_size", "seq_len", "min_len", "train_size", "test_size", "seed"),
    ),
}


def build_data(name: str, **cfg: Any) -> DataBundle:
    """Build the dataset registered as `name` from its config keys (see `DATASETS[name]`).

    mqar: vocab_size, seq_len, num_kv_pairs, train_size, test_size, seed, [power_a=0.01,
    random_non_queries=True]; IntTokenizer(vocab_size); metric "accuracy" on the test split.
    text: seq_len (block size), [tokenizer="byte" | "bpe", bpe_vocab_size=4096, vocab_size=None (derived: 257 for
    bytes, bpe_vocab_size for BPE; a stated value must agree), val_fraction=0.05, seed=0, paths=None (stdlib
    sources), glob=None, max_bytes=8 MiB]; metric "ppl" on the validation split, with `eval_bytes`.
    hf: path (Hub id, builder name or local file/folder), seq_len, [split="train", val_split=None (hold out
    val_fraction instead), text_field="text", data_files=None, config_name=None, streaming=False, max_bytes=8 MiB,
    max_docs=None, cache_dir=None, and the tokenizer keys of text]; packed and scored like text.
    passkey: seq_len, train_size, test_size, seed, [vocab_size=257]; ByteTokenizer; accuracy on the 5 digits.
    copy: vocab_size, seq_len (= 2 * longest copy), min_len, train_size, test_size, seed; IntTokenizer;
    accuracy on the copied tokens.
    """
    if name not in DATASETS:
        raise ValueError(f"unknown dataset {name!r}; choose one of {sorted(DATASETS)}")
    spec = DATASETS[name]
    # Keys starting with "_" are interpolation helpers of conf/data (e.g. text.yaml's `_vocab` table), not settings.
    cfg = {k: v for k, v in cfg.items() if not k.startswith("_")}
    unknown = sorted(set(cfg) - set(spec.required) - set(spec.defaults))
    missing = sorted(set(spec.required) - set(cfg))
    if unknown or missing:
        allowed = sorted([*spec.required, *spec.defaults])
        raise ValueError(f"data config {name!r}: unknown keys {unknown}, missing keys {missing}; it takes {allowed}")
    return spec.build({**spec.defaults, **cfg})


__all__ = [
    "DATASETS",
    "DEFAULT_MAX_BYTES",
    "IGNORE_INDEX",
    "DataBundle",
    "DatasetSpec",
    "build_data",
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
