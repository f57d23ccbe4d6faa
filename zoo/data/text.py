"""Text for language modelling: read local files, split by document, tokenize (bytes or BPE), pack blocks.

The default corpus is the Python standard library's own `.py` sources: present on every machine with
Python, needs no network, and is plenty for smoke runs and small perplexity comparisons. `zoo.data.hf`
feeds Hugging Face datasets through the same split/tokenize/pack steps (`build_lm_splits`).
"""

from __future__ import annotations

import json
import os
import sysconfig
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path

import numpy as np
import torch

from zoo.data._rng import make_rng
from zoo.data.tokenizer import BPETokenizer, ByteTokenizer
from zoo.errors import ConfigError

TEXT_SUFFIXES = (".txt", ".md", ".rst", ".py", ".jsonl")  # what a directory contributes when no glob is given
_SKIP_DIRS = {"site-packages", "dist-packages", "__pycache__"}  # not the standard library proper


def default_corpus_files() -> list[Path]:
    """The standard library's `.py` files (`sysconfig.get_paths()["stdlib"]`), sorted by relative path.

    Installed third-party packages (`site-packages`, `dist-packages`) are excluded, so the list depends only
    on the Python version.
    """
    root = Path(sysconfig.get_paths()["stdlib"])
    files = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = [d for d in dirnames if d not in _SKIP_DIRS]  # prune: never walk installed packages
        files.extend(Path(dirpath, f) for f in filenames if f.endswith(".py"))
    return sorted(files, key=lambda p: p.relative_to(root).as_posix())


def load_text_corpus(
    paths: str | os.PathLike | Sequence[str | os.PathLike] | None = None,
    glob: str | None = None,
    max_bytes: int | None = None,
) -> list[str]:
    """Read local text into a list of documents, at most `max_bytes` UTF-8 bytes in all.

    `paths`: files and/or directories (None: `default_corpus_files()`). A directory contributes its files
    matching `glob` (e.g. `"**/*.md"`; default: every file below it with a suffix in `TEXT_SUFFIXES`), sorted.
    A `.jsonl` file contributes one document per line (its `"text"` field); any other file is one document,
    decoded as UTF-8 with invalid bytes replaced. Empty documents are dropped. Reading stops once `max_bytes`
    (None: no cap; `data=text` caps it in conf/data/text.yaml) is reached; the last document is cut to fit.
    """
    if paths is None and glob is not None:
        raise ConfigError("glob applies to directories given in paths; it cannot be used with the default corpus")
    files = default_corpus_files() if paths is None else _expand(paths, glob)
    return take_documents((doc for f in files for doc in _read_documents(f)), max_bytes=max_bytes)


def take_documents(docs: Iterable[str], max_bytes: int | None = None, max_docs: int | None = None) -> list[str]:
    """The first documents of `docs` (which may be an endless stream) up to `max_bytes` UTF-8 bytes and
    `max_docs` documents in all (None: no cap). Empty documents are dropped and not counted; the document
    that reaches `max_bytes` is cut to fit, never inside a character. Stops reading as soon as a cap is hit."""
    if max_bytes is not None and max_bytes < 1 or max_docs is not None and max_docs < 1:
        raise ConfigError(f"max_bytes and max_docs must be >= 1 (or None), got {max_bytes} and {max_docs}")
    out: list[str] = []
    budget = max_bytes
    for doc in docs:
        raw = doc.encode("utf-8")
        if not raw:
            continue
        if budget is not None and len(raw) >= budget:
            cut = raw[:budget].decode("utf-8", errors="ignore")  # never split a character
            return out + [cut] if cut else out
        out.append(doc)
        if budget is not None:
            budget -= len(raw)
        if max_docs is not None and len(out) >= max_docs:
            break
    return out


def split_documents(docs: Sequence[str], val_fraction: float, seed: int) -> tuple[list[str], list[str]]:
    """Deterministic split by document: `round(len(docs) * val_fraction)` documents (at least one, and at
    least one left for training) chosen by a permutation seeded with `seed` go to validation. Both lists keep
    the corpus order. Returns `(train_docs, val_docs)`."""
    if not 0 < val_fraction < 1:
        raise ConfigError(f"val_fraction must be in (0, 1), got {val_fraction}")
    if len(docs) < 2:
        raise ConfigError(f"need at least 2 documents to split into train and validation, got {len(docs)}")
    n_val = min(max(1, round(len(docs) * val_fraction)), len(docs) - 1)
    is_val = np.zeros(len(docs), dtype=bool)
    is_val[make_rng(seed).permutation(len(docs))[:n_val]] = True
    train = [d for d, v in zip(docs, is_val, strict=True) if not v]
    return train, [d for d, v in zip(docs, is_val, strict=True) if v]


def pack_documents(docs: Sequence[str], tokenizer, block_size: int) -> torch.Tensor:
    """Encode, join and cut documents into LongTensor `[N, block_size + 1]` training blocks.

    Each document's tokens are followed by `tokenizer.eos_token_id` (when the tokenizer has one), all are
    concatenated into one stream, and block `i` is `stream[i * block_size : (i + 1) * block_size + 1]`:
    consecutive blocks share one token, so every token after the first is a label exactly once; the tail
    that does not fill a block is dropped. Inputs are `blocks[:, :-1]`, labels `blocks[:, 1:]`.
    """
    if block_size < 1:
        raise ConfigError(f"block_size must be >= 1 (data.seq_len), got {block_size}")
    eos = [] if tokenizer.eos_token_id is None else [tokenizer.eos_token_id]
    # BPE encodes a batch in parallel (Rust threads); the result is the same as one document at a time.
    encoded = tokenizer.encode_batch(docs) if hasattr(tokenizer, "encode_batch") else map(tokenizer.encode, docs)
    pieces = [np.asarray(ids + eos, dtype=np.int64) for ids in encoded]
    stream = np.concatenate(pieces) if pieces else np.zeros(0, dtype=np.int64)
    n_blocks = max(0, (len(stream) - 1) // block_size)
    index = np.arange(n_blocks)[:, None] * block_size + np.arange(block_size + 1)  # (N, block_size + 1)
    return torch.from_numpy(stream[index])


def build_text_splits(
    tokenizer,
    *,
    block_size: int,
    val_fraction: float,
    seed: int,
    paths: str | os.PathLike | Sequence[str | os.PathLike] | None,
    glob: str | None,
    max_bytes: int | None,
) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """`{"train": (x, y), "val": (x, y)}`, each LongTensor `[N, block_size]`, from `load_text_corpus`
    (plus `"val_bytes"`, see `build_lm_splits`).

    The split is by document (`split_documents`), so no validation text leaks into training blocks.
    Raises a ConfigError when either side has too little text for one block.
    """
    docs = load_text_corpus(paths, glob=glob, max_bytes=max_bytes)
    train_docs, val_docs = split_documents(docs, val_fraction, seed)
    return build_lm_splits(train_docs, val_docs, tokenizer, block_size)


def check_text_tokenizer(kind: str, vocab_size: int | None, bpe_vocab_size: int) -> None:
    """Validate the tokenizer settings of `data=text` / `data=hf` cheaply, before any text is read.

    `vocab_size` is what the config states (conf/data derives it from the tokenizer, and `model.vocab_size`
    follows it); None means "derive". A stated value that disagrees is a config error naming the right one."""
    if kind == "byte":
        if vocab_size is not None and vocab_size != ByteTokenizer.vocab_size:
            raise ConfigError(
                f"tokenizer=byte: vocab_size must be {ByteTokenizer.vocab_size}, got {vocab_size} "
                "(for another vocabulary size use tokenizer=bpe with bpe_vocab_size)"
            )
    elif kind == "bpe":
        if isinstance(bpe_vocab_size, bool) or not isinstance(bpe_vocab_size, int) or bpe_vocab_size <= 257:
            raise ConfigError(f"tokenizer=bpe: bpe_vocab_size must be an integer above 257, got {bpe_vocab_size!r}")
        if vocab_size is not None and vocab_size != bpe_vocab_size:
            raise ConfigError(
                f"tokenizer=bpe: vocab_size must be {bpe_vocab_size} (bpe_vocab_size), got {vocab_size}; "
                "set bpe_vocab_size to change it (conf/data derives vocab_size from it)"
            )
    else:
        raise ConfigError(f"unknown tokenizer {kind!r}; choose one of ['bpe', 'byte']")


def build_text_tokenizer(kind: str, vocab_size: int | None, bpe_vocab_size: int, train_docs: Sequence[str]):
    """The tokenizer `data.tokenizer` names (settings checked by `check_text_tokenizer`): `"byte"` (fixed,
    257 ids) or `"bpe"` (learnt from `train_docs` only, so validation text stays unseen)."""
    check_text_tokenizer(kind, vocab_size, bpe_vocab_size)
    return ByteTokenizer() if kind == "byte" else BPETokenizer.train(train_docs, bpe_vocab_size)


def build_lm_splits(train_docs: Sequence[str], val_docs: Sequence[str], tokenizer, block_size: int) -> dict:
    """Pack both document lists into blocks: `{"train": (x, y), "val": (x, y), "val_bytes": n}`.

    `x`, `y` are LongTensor `[N, block_size]` (`y` is `x` shifted by one token, see `pack_documents`).
    `val_bytes` is LongTensor `[N_val]`: how many UTF-8 bytes of text each validation block's labels encode
    (an eos counts 1), so the validation loss can be reported per byte as well as per token, which compares
    byte- and BPE-tokenized models. Raises a ConfigError when either side has too little text for one block.
    """
    out: dict = {}
    for name, part in (("train", train_docs), ("val", val_docs)):
        blocks = pack_documents(part, tokenizer, block_size)
        if len(blocks) == 0:
            n_bytes = sum(len(d.encode("utf-8")) for d in part)
            raise ConfigError(
                f"text corpus too small: the {name} split has {len(part)} documents, {n_bytes} bytes, not enough "
                f"for one block of {block_size + 1} tokens; add text (paths=..., max_bytes=...) or lower seq_len"
            )
        out[name] = (blocks[:, :-1].contiguous(), blocks[:, 1:].contiguous())
    out["val_bytes"] = label_bytes(tokenizer, out["val"][1])
    return out


def label_bytes(tokenizer, labels: torch.Tensor) -> torch.Tensor:
    """LongTensor `[N]`: the UTF-8 bytes each row of `labels` `[N, T]` encodes (an eos counts 1), for the
    per-byte validation metrics."""
    return torch.tensor(tokenizer.byte_lengths(), dtype=torch.long)[labels].sum(dim=1)


def _expand(paths: str | os.PathLike | Sequence[str | os.PathLike], glob: str | None) -> list[Path]:
    if isinstance(paths, (str, os.PathLike)):
        paths = [paths]
    files: list[Path] = []
    for p in map(Path, paths):
        if p.is_dir():
            found = p.glob(glob) if glob else (q for q in p.rglob("*") if q.suffix in TEXT_SUFFIXES)
            files.extend(sorted((q for q in found if q.is_file()), key=lambda q: q.relative_to(p).as_posix()))
        elif p.is_file():
            files.append(p)
        else:
            raise FileNotFoundError(f"text corpus path {str(p)!r} does not exist")
    if not files:
        raise ConfigError(f"no text files found in {[str(p) for p in paths]} (glob={glob!r})")
    return files


def _read_documents(path: Path) -> Iterator[str]:
    if path.suffix != ".jsonl":
        yield path.read_bytes().decode("utf-8", errors="replace")
        return
    with path.open(encoding="utf-8", errors="replace") as f:
        for n, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as e:
                raise ConfigError(f"{path}:{n}: not valid JSON ({e})") from None
            if not isinstance(record, dict) or not isinstance(record.get("text"), str):
                raise ConfigError(f"{path}:{n}: each .jsonl line needs a string field 'text'")
            yield record["text"]
