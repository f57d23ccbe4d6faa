"""Hugging Face `datasets` as language-modelling text: a Hub dataset or local parquet/json/jsonl/csv/txt files.

Documents are read (optionally streamed, so a web-scale dataset is never downloaded whole), capped by
`max_bytes` / `max_docs`, then split, tokenized and packed exactly like `data=text` (`zoo.data.text`).
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from zoo.data.text import split_documents, take_documents
from zoo.errors import ConfigError

# File suffix -> the `datasets` builder that reads it, for `path` given as a local file.
_BUILDERS = {".parquet": "parquet", ".json": "json", ".jsonl": "json", ".csv": "csv", ".txt": "text"}
_PACKAGED = set(_BUILDERS.values())  # `path: json` etc. with `data_files`


def load_hf_documents(
    path: str,
    split: str = "train",
    text_field: str = "text",
    data_files: str | Sequence[str] | dict | None = None,
    name: str | None = None,
    streaming: bool = False,
    max_bytes: int | None = None,
    max_docs: int | None = None,
    cache_dir: str | None = None,
) -> list[str]:
    """The `text_field` strings of one split, in dataset order, capped like `take_documents`.

    `path`: a Hub dataset id (e.g. `roneneldan/TinyStories`), a packaged builder (`json`, `parquet`, `csv`,
    `text`) with `data_files`, a local data file (its builder follows the suffix) or a local folder.
    A Hub dataset that cannot be reached (no network, or no such dataset) is a one-line ConfigError that
    points at the offline alternatives.
    """
    import datasets  # imported here: only data=hf pays for it

    kwargs: dict[str, Any] = {"split": split, "streaming": bool(streaming), "cache_dir": cache_dir}
    local = Path(os.path.expanduser(path))
    if local.is_file():
        if local.suffix not in _BUILDERS:
            raise ConfigError(f"data.path={path!r}: unknown file type; use one of {sorted(_BUILDERS)}")
        builder, kwargs["data_files"] = _BUILDERS[local.suffix], str(local)
    else:
        builder = str(local) if local.is_dir() else path
        if data_files is not None:
            kwargs["data_files"] = data_files
    if name is not None:
        kwargs["name"] = name
    is_hub = not local.exists() and path not in _PACKAGED
    try:
        ds = datasets.load_dataset(builder, **kwargs)
    except Exception as e:  # the Hub's many failure types (connection, offline mode, not found, auth)
        if not is_hub:
            raise ConfigError(f"data.path={path!r}: could not read it with `datasets`: {_first_line(e)}") from e
        raise ConfigError(
            f"data.path={path!r}: could not load this dataset from the Hugging Face Hub (no network, or no such "
            f"dataset: {_first_line(e)}); offline, use data=text (the offline corpus) or local files, e.g. "
            "data.path=/path/to/train.jsonl or data.path=parquet data.data_files=/path/to/*.parquet"
        ) from e
    return take_documents(_texts(ds, text_field, path), max_bytes=max_bytes, max_docs=max_docs)


def hf_documents(
    *,
    path: str,
    config_name: str | None,
    data_files,
    split: str,
    val_split: str | None,
    text_field: str,
    streaming: bool,
    max_bytes: int | None,
    max_docs: int | None,
    cache_dir: str | None,
    val_fraction: float,
    seed: int,
) -> tuple[list[str], list[str]]:
    """`(train_docs, val_docs)` for `data=hf` (settings: conf/data/hf.yaml): the validation documents are
    `val_split` when it is set, else a `val_fraction` of the loaded documents held out by `split_documents`
    (seeded, by document)."""
    common = dict(
        path=str(path),
        text_field=text_field,
        data_files=data_files,
        name=config_name,
        streaming=streaming,
        cache_dir=cache_dir,
    )
    docs = load_hf_documents(split=split, max_bytes=max_bytes, max_docs=max_docs, **common)
    if val_split is None:
        return split_documents(docs, val_fraction, seed)

    # A named validation split gets the caps scaled by val_fraction: it is a sample, not a second corpus.
    def scaled(cap):
        return None if cap is None else max(1, int(cap * val_fraction))

    val = load_hf_documents(split=val_split, max_bytes=scaled(max_bytes), max_docs=scaled(max_docs), **common)
    return docs, val


def _texts(ds, text_field: str, path: str) -> Iterator[str]:
    columns = getattr(ds, "column_names", None)  # None for some streamed datasets until the first row
    if columns is not None and text_field not in columns:
        raise ConfigError(f"data.path={path!r} has no column {text_field!r} (data.text_field); columns: {columns}")
    for row in ds:
        value = row[text_field]
        if not isinstance(value, str):
            raise ConfigError(f"data.path={path!r}: column {text_field!r} holds {type(value).__name__}, not text")
        yield value


def _first_line(e: BaseException) -> str:
    text = str(e).strip().splitlines()
    return f"{type(e).__name__}: {text[0][:300]}" if text else type(e).__name__
