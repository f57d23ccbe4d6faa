"""Pre-tokenized corpora: tokenize once (`zoo-data prepare`), train from a memory-mapped token file (`data=tokens`).

A corpus folder holds, per split (`train`, `val`), the token stream `<split>.bin` (uint16 when the vocabulary fits,
else uint32, little-endian; every document followed by the tokenizer's end-of-text id, as `pack_documents` joins
them) and the start offset of each document, `<split>.docs.npy` (int64, read with `allow_pickle=False`), next to
the tokenizer (`tokenizer.json`) and a small JSON index, `index.json`: format and version, dtype, vocabulary size,
the tokenizer file's sha256, per split the token and document counts and the sha256 of its files, and the data
config that made it. This is the layout nanoGPT and flame train from: a window is a slice of the memmap, so the
corpus may be far larger than memory.

`open_corpus` checks what can be checked without reading the streams (the index, the files' sizes against their
token counts, the tokenizer file against its hash); `verify_corpus` reads everything and checks the hashes. A
prepare writes into a temporary sibling folder and renames it into place, so an interrupted one leaves nothing at
`--out`.
"""

from __future__ import annotations

import hashlib
import json
import multiprocessing
import os
from collections.abc import Iterator, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from zoo.data.tokenizer import TOKENIZER_FILE, Tokenizer, load_tokenizer
from zoo.errors import ConfigError
from zoo.io.runs import write_dir_atomically

FORMAT, VERSION = "zoo-tokens", 1
INDEX = "index.json"
SPLITS = ("train", "val")
_DOCS_PER_TASK = 256  # documents a worker encodes per task: big enough to amortize the pickling, small for order


@dataclass(frozen=True)
class TokenCorpus:
    """An opened corpus folder: `streams[split]` is the read-only memmap of the split's tokens."""

    path: Path
    index: dict
    tokenizer: Tokenizer
    streams: dict[str, np.memmap]

    @property
    def vocab_size(self) -> int:
        return int(self.index["vocab_size"])

    @property
    def fingerprint(self) -> dict:
        """What a run that trains on this corpus records, so that resuming on another corpus is an error."""
        return {
            "tokenizer_sha256": self.index["tokenizer"]["sha256"],
            "train_tokens": self.index["splits"]["train"]["tokens"],
        }


class TokenWindows:
    """Training windows of one split: window `i` is `x = stream[i*L : i*L+L]`, `y = stream[i*L+1 : i*L+L+1]` (the
    blocks `pack_documents` cuts from the same stream), read from the memmap only when a batch asks for them."""

    def __init__(self, stream: np.memmap, seq_len: int):
        if seq_len < 1:
            raise ConfigError(f"data.seq_len must be >= 1, got {seq_len}")
        self.stream, self.seq_len = stream, seq_len
        self.count = max(0, (len(stream) - 1) // seq_len)

    def __len__(self) -> int:
        return self.count

    def rows(self, idx: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """`(x, y)`, LongTensor `[len(idx), seq_len]`, of windows `idx`."""
        starts = idx.numpy().astype(np.int64)[:, None] * self.seq_len
        block = torch.from_numpy(self.stream[starts + np.arange(self.seq_len + 1)].astype(np.int64))
        return block[:, :-1], block[:, 1:]


def token_dtype(vocab_size: int) -> np.dtype:
    """uint16 when every id fits, else uint32."""
    return np.dtype("<u2") if vocab_size <= 2**16 else np.dtype("<u4")


# -- prepare ---------------------------------------------------------------------------------------------------


def prepare_corpus(
    train_docs: Sequence[str],
    val_docs: Sequence[str],
    tokenizer: Tokenizer,
    out,
    *,
    source: dict | None = None,
    workers: int = 1,
    overwrite: bool = False,
) -> Path:
    """Tokenize both document lists with `tokenizer` in `workers` processes into the corpus folder `out`, written
    atomically; `source` (the data config) is recorded in the index. An existing `out` is an error unless
    `overwrite`."""
    out = Path(out)
    if out.exists() and not overwrite:
        raise ConfigError(f"{out} exists; pass --overwrite to replace it")
    if workers < 1:
        raise ConfigError(f"workers must be >= 1, got {workers}")

    def write(tmp: Path) -> None:
        tokenizer.save(tmp)
        splits = {}
        for split, docs in (("train", train_docs), ("val", val_docs)):
            splits[split] = _write_split(tmp, split, docs, tmp / TOKENIZER_FILE, tokenizer, workers)
        index = {
            "format": FORMAT,
            "version": VERSION,
            "dtype": token_dtype(tokenizer.vocab_size).str,
            "vocab_size": tokenizer.vocab_size,
            "eos_token_id": tokenizer.eos_token_id,
            "tokenizer": {"file": TOKENIZER_FILE, "sha256": _sha256(tmp / TOKENIZER_FILE)},
            "splits": splits,
            "source": source or {},
        }
        (tmp / INDEX).write_text(json.dumps(index, indent=2) + "\n")

    return write_dir_atomically(out, write)


def _write_split(tmp: Path, split: str, docs: Sequence[str], tok_file: Path, tokenizer, workers: int) -> dict:
    dtype = token_dtype(tokenizer.vocab_size)
    bin_path, docs_path = tmp / f"{split}.bin", tmp / f"{split}.docs.npy"
    digest, offsets, n_tokens = hashlib.sha256(), [], 0
    chunks = [docs[i : i + _DOCS_PER_TASK] for i in range(0, len(docs), _DOCS_PER_TASK)]
    with open(bin_path, "wb") as f, tqdm(total=len(docs), desc=f"tokenize {split}", unit="doc", disable=None) as bar:
        for lengths, ids in _encode_chunks(chunks, tok_file, tokenizer, workers):
            data = ids.astype(dtype).tobytes()
            f.write(data)
            digest.update(data)
            offsets.append(n_tokens + np.concatenate([[0], np.cumsum(lengths[:-1])]).astype(np.int64))
            n_tokens += int(lengths.sum())
            bar.update(len(lengths))
        f.flush()
        os.fsync(f.fileno())
    if n_tokens < 2:
        raise ConfigError(f"the {split} split has {len(docs)} documents and {n_tokens} tokens: nothing to train on")
    np.save(docs_path, np.concatenate(offsets) if offsets else np.zeros(0, np.int64), allow_pickle=False)
    return {
        "file": bin_path.name,
        "tokens": n_tokens,
        "sha256": digest.hexdigest(),
        "documents": len(docs),
        "doc_offsets": docs_path.name,
        "doc_offsets_sha256": _sha256(docs_path),
    }


def _encode_chunks(chunks, tok_file: Path, tokenizer, workers: int) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """`(lengths, ids)` per chunk of documents, in order; each document's ids end with eos."""
    if workers == 1:
        yield from (_encode(chunk, tokenizer) for chunk in chunks)
        return
    # spawn, not fork: the parent may have run the Rust tokenizer's thread pool (training BPE), which a fork
    # cannot carry into the children safely; each worker loads the tokenizer from the folder being written.
    ctx = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(workers, mp_context=ctx, initializer=_worker_init, initargs=(str(tok_file),)) as pool:
        yield from pool.map(_worker_encode, chunks)


_WORKER_TOKENIZER = None


def _worker_init(tok_file: str) -> None:
    global _WORKER_TOKENIZER
    _WORKER_TOKENIZER = load_tokenizer(Path(tok_file).parent)


def _worker_encode(chunk: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
    return _encode(chunk, _WORKER_TOKENIZER)


def _encode(chunk: Sequence[str], tokenizer) -> tuple[np.ndarray, np.ndarray]:
    eos = [] if tokenizer.eos_token_id is None else [tokenizer.eos_token_id]
    encoded = tokenizer.encode_batch(chunk) if hasattr(tokenizer, "encode_batch") else map(tokenizer.encode, chunk)
    pieces = [ids + eos for ids in encoded]
    lengths = np.array([len(p) for p in pieces], dtype=np.int64)
    ids = np.fromiter((i for p in pieces for i in p), dtype=np.int64, count=int(lengths.sum()))
    return lengths, ids


# -- open and check ----------------------------------------------------------------------------------------------


def read_index(path) -> dict:
    """The corpus folder's `index.json`, checked for its format and version (nothing else is read)."""
    path = Path(path)
    index_path = path / INDEX
    if not index_path.is_file():
        raise ConfigError(
            f"data.path={str(path)!r} is not a token corpus (no {INDEX}); make one with "
            f"`zoo-data prepare data=text --out {path}`"
        )
    try:
        index = json.loads(index_path.read_text())
    except json.JSONDecodeError as e:
        raise ConfigError(f"{index_path} is not valid JSON: {e}") from None
    if not isinstance(index, dict) or index.get("format") != FORMAT:
        raise ConfigError(f"{index_path}: not a {FORMAT} index (format {index.get('format')!r})")
    if index.get("version") != VERSION:
        raise ConfigError(f"{index_path}: version {index.get('version')!r}; this zoo reads version {VERSION}")
    return index


def open_corpus(path) -> TokenCorpus:
    """Open a corpus folder for reading; every inconsistency a reader can see cheaply is a ConfigError naming the
    file and what does not match (run `zoo-data verify` to check the hashes of the streams as well)."""
    path = Path(path)
    index = read_index(path)
    index_path = path / INDEX
    tok = index["tokenizer"]
    if not (path / tok["file"]).is_file():
        raise ConfigError(f"{path / tok['file']} is missing: the corpus's tokenizer; prepare the corpus again")
    if _sha256(path / tok["file"]) != tok["sha256"]:
        raise ConfigError(
            f"{path / tok['file']} is not the tokenizer the corpus was tokenized with (its sha256 differs from "
            f"{INDEX}'s); prepare the corpus again"
        )
    tokenizer = load_tokenizer(path)
    if tokenizer.vocab_size != index["vocab_size"] or tokenizer.eos_token_id != index["eos_token_id"]:
        raise ConfigError(f"{path}: the tokenizer's vocabulary or eos id differs from {INDEX}'s")
    dtype = np.dtype(index["dtype"])
    if dtype != token_dtype(index["vocab_size"]):
        raise ConfigError(f"{index_path}: dtype {dtype} cannot hold a vocabulary of {index['vocab_size']}")
    streams = {}
    for split in SPLITS:
        info = index["splits"][split]
        file = path / info["file"]
        size = file.stat().st_size if file.is_file() else None
        expected = info["tokens"] * dtype.itemsize
        if size != expected:
            found = "missing" if size is None else f"{size} bytes"
            raise ConfigError(
                f"{file}: {found}, but {INDEX} says {info['tokens']} tokens of {dtype} ({expected} bytes): "
                "truncated or from another prepare; prepare the corpus again"
            )
        streams[split] = np.memmap(file, dtype=dtype, mode="r")
    return TokenCorpus(path, index, tokenizer, streams)


def verify_corpus(path) -> dict:
    """Open the corpus, then hash every stream and document-offset file against the index and check that the
    token ids fit the vocabulary; returns the index. A mismatch is a ConfigError naming the file."""
    corpus = open_corpus(path)
    for split in SPLITS:
        info = corpus.index["splits"][split]
        for key, name in (("sha256", info["file"]), ("doc_offsets_sha256", info["doc_offsets"])):
            if _sha256(corpus.path / name) != info[key]:
                raise ConfigError(f"{corpus.path / name}: sha256 differs from {INDEX}'s (corrupt file)")
        top = int(corpus.streams[split].max())
        if top >= corpus.vocab_size:
            raise ConfigError(f"{corpus.path / info['file']}: token id {top} >= vocab_size {corpus.vocab_size}")
        offsets = np.load(corpus.path / info["doc_offsets"], allow_pickle=False)
        if len(offsets) != info["documents"]:
            raise ConfigError(
                f"{corpus.path / info['doc_offsets']}: {len(offsets)} offsets, {INDEX} says {info['documents']}"
            )
    return corpus.index


def corpus_vocab_size(path) -> int | None:
    """`vocab_size` of the corpus at `path` from its index, for the config's interpolation (None when `path` is
    not set yet)."""
    # the index alone: the config resolves this on every access, and `data=tokens` opens the corpus itself
    return None if path in (None, "", "???") else int(read_index(path)["vocab_size"])


def _sha256(file: Path) -> str:
    digest = hashlib.sha256()
    with open(file, "rb") as f:
        while block := f.read(1 << 22):
            digest.update(block)
    return digest.hexdigest()
