"""Tokenizers a checkpoint carries: bytes or byte-level BPE for text, integers for synthetic tasks.

All follow one small contract (`Tokenizer`): `encode(str) -> list[int]` adds no special tokens,
`decode(list[int]) -> str`, `vocab_size`, `eos_token_id` (or None), and `save(directory)`, which writes a
plain-JSON `tokenizer.json` that `load_tokenizer(directory)` reads back. Nothing is ever unpickled, and no
key of the file names code: a `_target_` key anywhere is refused.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, Protocol, runtime_checkable

from zoo.errors import ConfigError
from zoo.io.runs import write_text_atomically
from zoo.io.safety import reject_code_keys

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

    def byte_lengths(self) -> list[int]:
        """UTF-8 bytes each id stands for: 1 for every byte, and 1 for eos (the separator between documents)."""
        return [1] * self.vocab_size

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
            raise ConfigError(f"IntTokenizer needs an integer vocab_size >= 1, got {self.vocab_size!r}")

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


class _RustBacked:
    """What the tokenizers backed by a Hugging Face `tokenizers.Tokenizer` (`self._hf`) share: encoding without
    special tokens, saving as the zoo's `tokenizer.json` (`to_dict`), and Hugging Face's own JSON for export."""

    def encode(self, text: str) -> list[int]:
        return self._hf.encode(text, add_special_tokens=False).ids

    def encode_batch(self, texts: Sequence[str]) -> list[list[int]]:
        """`[encode(t) for t in texts]`, computed in parallel."""
        return [e.ids for e in self._hf.encode_batch(list(texts), add_special_tokens=False)]

    def save(self, directory: str | os.PathLike) -> Path:
        return _write_json(directory, self.to_dict())

    def hf_json(self) -> str:
        """Hugging Face's own `tokenizer.json` text (what a transformers export carries)."""
        return self._hf.to_str()


class BPETokenizer(_RustBacked):
    """Byte-level BPE (GPT-2 style) trained with Hugging Face `tokenizers`: 256 byte tokens, one eos token
    (`EOS`, id 0) and learnt merges, `vocab_size` in all. Any text round-trips exactly.

    `BPETokenizer.train(documents, vocab_size)` learns it; the learnt tokenizer is stored inside our
    `tokenizer.json` under `"hf"` (Hugging Face's own JSON form), so a checkpoint stays one plain-JSON file.
    `encode` adds no special tokens, and a literal `EOS` string in the text is encoded as ordinary text (only
    the data pipeline puts eos between documents). `decode` skips eos and ids >= `vocab_size` (padding ids of
    a model whose vocabulary is larger than the tokenizer's).
    """

    type: ClassVar[str] = "bpe"
    EOS: ClassVar[str] = "<|endoftext|>"

    def __init__(self, hf_tokenizer):
        self._hf = hf_tokenizer
        self._hf.encode_special_tokens = True  # "<|endoftext|>" inside a document is text, not a boundary
        self.vocab_size: int = hf_tokenizer.get_vocab_size()
        self.eos_token_id: int = hf_tokenizer.token_to_id(self.EOS)
        if self.eos_token_id is None:
            raise ValueError(f"bpe tokenizer has no {self.EOS!r} token")

    @classmethod
    def train(cls, documents: Iterable[str], vocab_size: int, min_frequency: int = 2) -> BPETokenizer:
        """Learn up to `vocab_size` tokens (256 bytes + eos + merges) from `documents`; deterministic: the
        same documents give the same merges. Fewer tokens result when the text has no more pairs seen
        `min_frequency` times."""
        from tokenizers import Tokenizer as HFTokenizer
        from tokenizers import decoders, models, pre_tokenizers, trainers

        n_base = 256 + 1
        if isinstance(vocab_size, bool) or not isinstance(vocab_size, int) or vocab_size <= n_base:
            raise ValueError(
                f"bpe vocab_size must be an integer above {n_base} (256 bytes + eos + merges), got {vocab_size!r}"
            )
        hf = HFTokenizer(models.BPE())
        # GPT-2's byte-level scheme: every byte is a symbol, so nothing is ever unknown and decoding is exact.
        # Its regex split keeps letters apart from "_", so no learnt token (a key of the saved vocabulary) can
        # be `_target_`, which checkpoint loading refuses anywhere in a file.
        hf.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
        hf.decoder = decoders.ByteLevel()
        trainer = trainers.BpeTrainer(
            vocab_size=vocab_size,
            min_frequency=min_frequency,
            special_tokens=[cls.EOS],
            initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
            show_progress=False,
        )
        hf.train_from_iterator(documents, trainer=trainer)
        return cls(hf)

    def decode(self, ids: Iterable[int]) -> str:
        ids = _as_int_list(ids)
        bad = [i for i in ids if i < 0]
        if bad:
            raise ValueError(f"BPETokenizer.decode got negative ids {bad[:5]}")
        return self._hf.decode([i for i in ids if i < self.vocab_size and i != self.eos_token_id])

    def byte_lengths(self) -> list[int]:
        """UTF-8 bytes each id stands for; eos counts 1 (the separator between documents), as for bytes.

        A byte-level token's string has one character per byte (GPT-2's byte-to-unicode table)."""
        lengths = [0] * self.vocab_size
        for token, i in self._hf.get_vocab().items():
            lengths[i] = 1 if i == self.eos_token_id else len(token)
        return lengths

    def __eq__(self, other) -> bool:
        return isinstance(other, BPETokenizer) and self._hf.to_str() == other._hf.to_str()

    __hash__ = None  # mutable wrapper of a Rust object: equal by content, not hashable

    def __repr__(self) -> str:
        return f"BPETokenizer(vocab_size={self.vocab_size})"

    def to_dict(self) -> dict[str, Any]:
        return {
            "type": self.type,
            "vocab_size": self.vocab_size,
            "eos_token_id": self.eos_token_id,
            "hf": json.loads(self._hf.to_str()),
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> BPETokenizer:
        """Rebuild from `to_dict()` output. Hugging Face parses the `"hf"` part as data (Rust, serde): it can
        describe only built-in models, pre-tokenizers and decoders, never Python code."""

        _check_keys(d, {"type", "vocab_size", "eos_token_id", "hf"}, cls.type, required={"hf", "vocab_size"})
        hf = d["hf"]
        if not isinstance(hf, dict) or not isinstance(hf.get("model"), dict) or hf["model"].get("type") != "BPE":
            raise ValueError("bpe tokenizer: 'hf' must be a Hugging Face tokenizer JSON object with a BPE model")
        tok = cls(parse_hf_json(hf, cls.type))
        if d["vocab_size"] != tok.vocab_size or d.get("eos_token_id", tok.eos_token_id) != tok.eos_token_id:
            raise ValueError(
                f"bpe tokenizer: vocab_size={d['vocab_size']}, eos_token_id={d.get('eos_token_id')} disagree with "
                f"its 'hf' vocabulary (vocab_size={tok.vocab_size}, eos_token_id={tok.eos_token_id})"
            )
        return tok


# Top-level keys of Hugging Face's tokenizer JSON; anything else in a file is refused as tampering.
HF_KEYS = frozenset(
    {"version", "truncation", "padding", "added_tokens", "normalizer", "pre_tokenizer", "post_processor", "decoder"}
    | {"model"}
)


def parse_hf_json(hf: Any, kind: str):
    """A `tokenizers.Tokenizer` from Hugging Face's tokenizer JSON (a dict). The Rust side parses it as data (serde):
    it can describe only built-in models, normalizers, pre-tokenizers and decoders, never Python code."""
    from tokenizers import Tokenizer as RustTokenizer

    if not isinstance(hf, dict) or not isinstance(hf.get("model"), dict):
        raise ValueError(f"{kind} tokenizer: expected a Hugging Face tokenizer JSON object with a 'model'")
    unknown = sorted(set(hf) - HF_KEYS)
    if unknown:
        raise ValueError(
            f"{kind} tokenizer: unknown keys {unknown} in 'hf' (its Hugging Face JSON); it takes {sorted(HF_KEYS)}"
        )
    try:
        return RustTokenizer.from_str(json.dumps(hf))
    except Exception as e:  # the Rust parser's errors (bad merges, unknown component types, ...)
        raise ValueError(f"{kind} tokenizer: not a valid Hugging Face tokenizer: {e}") from None


class HFTokenizer(_RustBacked):
    """Any Hugging Face fast tokenizer (`tokenizer.json`: BPE, Unigram, WordPiece, ...), as an imported
    transformers checkpoint carries it, with the eos / bos ids of its model config.

    `encode` adds no special tokens (no bos): callers that want one put it in front themselves; `decode` skips
    special tokens. Stored in the zoo's `tokenizer.json` under `"hf"`, as `BPETokenizer` is."""

    type: ClassVar[str] = "hf"

    def __init__(self, hf_tokenizer, eos_token_id: int | None, bos_token_id: int | None):
        self._hf = hf_tokenizer
        self.vocab_size: int = hf_tokenizer.get_vocab_size(with_added_tokens=True)
        self.eos_token_id, self.bos_token_id = eos_token_id, bos_token_id

    @classmethod
    def from_file(cls, path: Path, eos_token_id: int | None, bos_token_id: int | None) -> HFTokenizer:
        try:
            hf = json.loads(Path(path).read_text(encoding="utf-8"))
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise ValueError(f"not valid JSON: {e}") from None
        return cls(parse_hf_json(hf, cls.type), eos_token_id, bos_token_id)

    def decode(self, ids: Iterable[int]) -> str:
        ids = _as_int_list(ids)
        if any(i < 0 for i in ids):
            raise ValueError(f"HFTokenizer.decode got negative ids {[i for i in ids if i < 0][:5]}")
        return self._hf.decode([i for i in ids if i < self.vocab_size], skip_special_tokens=True)

    def __eq__(self, other) -> bool:
        return isinstance(other, HFTokenizer) and self.to_dict() == other.to_dict()

    __hash__ = None

    def __repr__(self) -> str:
        return f"HFTokenizer(vocab_size={self.vocab_size}, eos_token_id={self.eos_token_id})"

    def to_dict(self) -> dict[str, Any]:
        ids = {"eos_token_id": self.eos_token_id, "bos_token_id": self.bos_token_id}
        return {"type": self.type, "vocab_size": self.vocab_size, **ids, "hf": json.loads(self._hf.to_str())}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> HFTokenizer:
        _check_keys(d, {"type", "vocab_size", "eos_token_id", "bos_token_id", "hf"}, cls.type, required={"hf"})
        tok = cls(parse_hf_json(d["hf"], cls.type), d.get("eos_token_id"), d.get("bos_token_id"))
        if d.get("vocab_size", tok.vocab_size) != tok.vocab_size:
            raise ValueError(
                f"hf tokenizer: vocab_size={d['vocab_size']} disagrees with its vocabulary ({tok.vocab_size})"
            )
        return tok


TOKENIZERS: dict[str, type] = {"bpe": BPETokenizer, "byte": ByteTokenizer, "hf": HFTokenizer, "int": IntTokenizer}


def build_tokenizer(name: str, **kwargs: Any) -> Tokenizer:
    """`build_tokenizer("byte")`, `build_tokenizer("int", vocab_size=8192)`, and
    `build_tokenizer("bpe", documents=texts, vocab_size=4096)` (a BPE vocabulary is learnt: `BPETokenizer.train`)."""
    buildable = sorted(set(TOKENIZERS) - {"hf"})  # an hf tokenizer comes with the checkpoint that carries it
    if name not in buildable:
        raise ValueError(f"unknown tokenizer {name!r}; choose one of {buildable}")
    if name == "bpe":
        return BPETokenizer.train(**kwargs)
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
    reject_code_keys(d, path, "a tokenizer file")
    if d["type"] not in TOKENIZERS:
        raise ValueError(f"{path}: unknown tokenizer type {d['type']!r}; known types are {sorted(TOKENIZERS)}")
    try:
        return TOKENIZERS[d["type"]].from_dict(d)
    except ValueError as e:
        raise ValueError(f"{path}: {e}") from None


def _check_keys(d: Mapping[str, Any], allowed: set[str], kind: str, required: set[str] = frozenset()) -> None:
    unknown, missing = sorted(set(d) - allowed), sorted(required - set(d))
    if unknown or missing:
        raise ValueError(f"{kind} tokenizer config: unknown keys {unknown}, missing keys {missing}")


def _write_json(directory: str | os.PathLike, obj: dict[str, Any]) -> Path:
    """Write `directory/tokenizer.json` atomically."""
    return write_text_atomically(Path(directory) / TOKENIZER_FILE, json.dumps(obj, indent=2, sort_keys=True) + "\n")
