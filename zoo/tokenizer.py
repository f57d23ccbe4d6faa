"""Tokenizers a checkpoint carries: bytes for text, integers for synthetic tasks.

Both follow one small contract (`Tokenizer`): `encode(str) -> list[int]` adds no special tokens,
`decode(list[int]) -> str`, `vocab_size`, `eos_token_id` (or None), and `save(directory)`, which writes a
plain-JSON `tokenizer.json` that `load_tokenizer(directory)` reads back. Nothing is ever unpickled.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, Protocol, runtime_checkable

TOKENIZER_FILE = "tokenizer.json"


@runtime_checkable
class Tokenizer(Protocol):
    """What training, evaluation and generation rely on."""

    vocab_size: int
    eos_token_id: int | None

    def encode(self, text: str) -> list[int]: ...

    def decode(self, ids: Iterable[int]) -> str: ...

    def save(self, directory: str | os.PathLike) -> Path: ...


def _as_int_list(ids: Any) -> list[int]:
    """Accept a list/tuple of ints, a numpy array or a torch tensor (any shape that is 1-D)."""
    if hasattr(ids, "tolist"):
        ids = ids.tolist()
    if isinstance(ids, int):
        ids = [ids]
    return [int(i) for i in ids]


@dataclass(frozen=True)
class ByteTokenizer:
    """UTF-8 bytes: ids 0..255 are the bytes, 256 is end-of-sequence; `vocab_size = 257`.

    `encode` never adds eos (the data pipeline puts it between documents). `decode` skips ids >= 256 (eos,
    and any padding ids of a model whose vocabulary was rounded up) and replaces invalid UTF-8.
    """

    type: ClassVar[str] = "byte"
    vocab_size: ClassVar[int] = 257
    eos_token_id: ClassVar[int] = 256

    def encode(self, text: str) -> list[int]:
        return list(text.encode("utf-8"))

    def decode(self, ids: Iterable[int]) -> str:
        ids = _as_int_list(ids)
        bad = [i for i in ids if i < 0]
        if bad:
            raise ValueError(f"ByteTokenizer.decode got negative ids {bad[:5]}")
        return bytes(i for i in ids if i < 256).decode("utf-8", errors="replace")

    def to_dict(self) -> dict[str, Any]:
        return {"type": self.type, "vocab_size": self.vocab_size, "eos_token_id": self.eos_token_id}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> ByteTokenizer:
        _check_keys(d, {"type", "vocab_size", "eos_token_id"}, cls.type)
        if d.get("vocab_size", cls.vocab_size) != cls.vocab_size or d.get("eos_token_id", 256) != 256:
            raise ValueError(f"byte tokenizer must have vocab_size=257 and eos_token_id=256, got {dict(d)}")
        return cls()

    def save(self, directory: str | os.PathLike) -> Path:
        return _write_json(directory, self.to_dict())


@dataclass(frozen=True)
class IntTokenizer:
    """Whitespace-separated integers, for synthetic tasks: `encode("3 17 5") -> [3, 17, 5]`, and back.

    Ids must lie in `[0, vocab_size)`; there is no eos token.
    """

    vocab_size: int
    type: ClassVar[str] = "int"
    eos_token_id: ClassVar[None] = None

    def __post_init__(self):
        if isinstance(self.vocab_size, bool) or not isinstance(self.vocab_size, int) or self.vocab_size < 1:
            raise ValueError(f"IntTokenizer needs an integer vocab_size >= 1, got {self.vocab_size!r}")

    def encode(self, text: str) -> list[int]:
        ids = []
        for word in text.split():
            try:
                ids.append(int(word))
            except ValueError:
                raise ValueError(f"IntTokenizer.encode expects whitespace-separated integers, got {word!r}") from None
        self._check(ids)
        return ids

    def decode(self, ids: Iterable[int]) -> str:
        return " ".join(str(i) for i in _as_int_list(ids))

    def _check(self, ids: list[int]) -> None:
        bad = [i for i in ids if not 0 <= i < self.vocab_size]
        if bad:
            raise ValueError(f"ids must lie in [0, {self.vocab_size}), got {bad[:5]}")

    def to_dict(self) -> dict[str, Any]:
        return {"type": self.type, "vocab_size": self.vocab_size}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> IntTokenizer:
        _check_keys(d, {"type", "vocab_size", "eos_token_id"}, cls.type, required={"vocab_size"})
        if d.get("eos_token_id") is not None:
            raise ValueError(f"int tokenizer has no eos token, got eos_token_id={d['eos_token_id']!r}")
        return cls(vocab_size=d["vocab_size"])

    def save(self, directory: str | os.PathLike) -> Path:
        return _write_json(directory, self.to_dict())


TOKENIZERS: dict[str, type] = {"byte": ByteTokenizer, "int": IntTokenizer}


def build_tokenizer(name: str, **kwargs: Any) -> Tokenizer:
    """`build_tokenizer("byte")`, `build_tokenizer("int", vocab_size=8192)`."""
    if name not in TOKENIZERS:
        raise ValueError(f"unknown tokenizer {name!r}; choose one of {sorted(TOKENIZERS)}")
    return TOKENIZERS[name](**kwargs)


def load_tokenizer(directory: str | os.PathLike) -> Tokenizer:
    """Read `directory/tokenizer.json` (written by `save`) back into a tokenizer. JSON only."""
    path = Path(directory) / TOKENIZER_FILE
    if not path.is_file():
        raise FileNotFoundError(f"no {TOKENIZER_FILE} in {str(directory)!r}: not a saved tokenizer or checkpoint")
    try:
        d = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise ValueError(f"{path} is not valid JSON: {e}") from None
    if not isinstance(d, dict) or "type" not in d:
        raise ValueError(f"{path} must hold a JSON object with a 'type' field, got {d!r}")
    if d["type"] not in TOKENIZERS:
        raise ValueError(f"{path}: unknown tokenizer type {d['type']!r}; known types are {sorted(TOKENIZERS)}")
    return TOKENIZERS[d["type"]].from_dict(d)


def _check_keys(d: Mapping[str, Any], allowed: set[str], kind: str, required: set[str] = frozenset()) -> None:
    unknown, missing = sorted(set(d) - allowed), sorted(required - set(d))
    if unknown or missing:
        raise ValueError(f"{kind} tokenizer config: unknown keys {unknown}, missing keys {missing}")


def _write_json(directory: str | os.PathLike, obj: dict[str, Any]) -> Path:
    """Write `directory/tokenizer.json` atomically (temporary file in the same folder, then rename)."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / TOKENIZER_FILE
    fd, tmp = tempfile.mkstemp(dir=directory, prefix=f".{TOKENIZER_FILE}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            json.dump(obj, f, indent=2, sort_keys=True)
            f.write("\n")
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path
