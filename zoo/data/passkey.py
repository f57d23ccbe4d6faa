"""Needle-in-filler recall over any text tokenizer: passkey retrieval and RULER-style multi-key needles.

Passkey (Mohtashami & Jaggi 2023, "Landmark Attention"): the filler text repeats
"The grass is green. The sky is blue. ..."; somewhere inside it, at a chosen depth, sits
"The pass key is 12345. Remember it. 12345 is the pass key. "; the prompt ends with
"What is the pass key? The pass key is " and the answer is the five digits.

Multi-key needle (Hsieh et al. 2024, "RULER", niah_multikey): several needles
"One of the special magic numbers for <word> is: <7 digits>. " at random depths; the question names one word.

Byte tokens (`ByteTokenizer`, or no tokenizer: the default): a prompt of `length` tokens is exactly `length`
bytes long. Prompts are built with numpy from a tiled filler (no Python loop per token); needles are inserted
at sentence boundaries, at the boundary nearest to `depth * filler_length`. `data=passkey` trains on these.

Subword tokens (`BPETokenizer`, an imported checkpoint's `HFTokenizer`: anything whose `encode(str)` adds no
special tokens): the prompt is built as text and tokenized whole, so that no token is split at the joins of
filler, needle and question. A lead-in (one period of the same filler, continuing into the filler that follows)
precedes everything; the filler amount (whole sentences) is chosen from its characters per token, and the few
tokens of surplus are dropped from the start of the lead-in, so a prompt has exactly `length` tokens and a
needle at depth 0 is never cut. The depth is the fraction of the filler after the lead-in that precedes the
needle (sentence boundaries as for bytes). The question ends without its trailing space ("... The pass key is"),
since BPE and SentencePiece attach a space to the word after it: the expected continuation is " 12345"
(`answer_tokens`, `is_answer`).
"""

from __future__ import annotations

import numpy as np
import torch

from zoo.data._rng import make_rng
from zoo.data.mqar import IGNORE_INDEX
from zoo.data.tokenizer import ByteTokenizer
from zoo.errors import ConfigError

FILLER = "The grass is green. The sky is blue. The sun is yellow. Here we go. There and back again. "
PASSKEY_DIGITS = 5
PASSKEY_QUESTION = "What is the pass key? The pass key is "
NIAH_DIGITS = 7
# extra greedy tokens after a subword answer " <key>": inside the prompt the digits may split differently
ANSWER_MARGIN = 2
# Needle words: short common nouns (RULER draws words or UUIDs as keys); a fixed list keeps it offline.
NIAH_WORDS = (
    "apple",
    "anchor",
    "badge",
    "basket",
    "beacon",
    "candle",
    "canyon",
    "cobalt",
    "compass",
    "crystal",
    "desert",
    "dragon",
    "ember",
    "falcon",
    "feather",
    "forest",
    "garnet",
    "glacier",
    "harbor",
    "hazel",
    "island",
    "jasmine",
    "kettle",
    "lantern",
    "lemon",
    "marble",
    "meadow",
    "mirror",
    "nectar",
    "oasis",
    "orchid",
    "pepper",
    "pillar",
    "quartz",
    "quiver",
    "raven",
    "ribbon",
    "saddle",
    "silver",
    "spruce",
    "summit",
    "thistle",
    "timber",
    "tulip",
    "velvet",
    "violet",
    "walnut",
    "willow",
    "winter",
    "zephyr",
)


def passkey_needle(key: str) -> str:
    return f"The pass key is {key}. Remember it. {key} is the pass key. "


def niah_needle(word: str, number: str) -> str:
    return f"One of the special magic numbers for {word} is: {number}. "


def niah_question(word: str) -> str:
    # RULER's question; the answer prefix repeats the needle's own wording ("for <word> is: "), so that the
    # answer is a pure recall of what followed that phrase, not also a paraphrase
    return f"What is the special magic number for {word} mentioned in the provided text? The special magic number for {word} is: "  # noqa: E501


def _bytes(text: str) -> np.ndarray:
    return np.frombuffer(text.encode("utf-8"), dtype=np.uint8).astype(np.int64)


_FILLER = _bytes(FILLER)
# offsets inside one FILLER period where a sentence starts (after ". ")
_SENTENCE_STARTS = np.array([0, *[i + 2 for i in range(len(FILLER) - 3) if FILLER[i : i + 2] == ". "]])


def _offset(n: int) -> int:
    """Where in the filler period `filler(n)` starts, so that it ends with a whole sentence."""
    return (-n) % len(_FILLER)


def filler(n: int) -> np.ndarray:
    """`n` bytes of the repeated filler text, ending at the end of a sentence (so the question that follows
    starts a sentence; the cut sentence, if any, is the first one)."""
    return np.resize(np.roll(_FILLER, -_offset(n)), n)


def sentence_boundary(n_filler: int, depth: float) -> int:
    """The sentence start inside `filler(n_filler)` nearest to `depth * n_filler` (0 and n_filler included)."""
    target = depth * n_filler
    period, offset = len(_FILLER), _offset(n_filler)
    base = int((target + offset) // period) * period - offset
    candidates = np.concatenate([base - period + _SENTENCE_STARTS, base + _SENTENCE_STARTS, [base + period]])
    candidates = np.clip(np.concatenate([candidates, [0, n_filler]]), 0, n_filler)
    return int(candidates[np.argmin(np.abs(candidates - target))])


def _check_depth(depth: float) -> None:
    if not 0.0 <= depth <= 1.0:
        raise ConfigError(f"needle depth must be in [0, 1] (fraction of the filler before the needle), got {depth}")


def passkey_prompt(length: int, depth: float, key: str, tokenizer=None) -> np.ndarray:
    """A passkey prompt `[length]` with the needle at `depth` (0 = start, 1 = end): bytes for `tokenizer` None or
    a `ByteTokenizer`, else the text tokenized whole by the subword `tokenizer` (`text_prompt`)."""
    _check_depth(depth)
    if not is_byte_level(tokenizer):
        question = PASSKEY_QUESTION.rstrip(" ")
        needle = [passkey_needle(key)]
        return text_prompt(length, tokenizer, needle, [depth], question, "passkey", "the needle and question alone")
    needle, question = _bytes(passkey_needle(key)), _bytes(PASSKEY_QUESTION)
    n_filler = length - len(needle) - len(question)
    if n_filler < 0:
        raise ConfigError(
            f"passkey prompt length {length} is shorter than the needle and question alone "
            f"({len(needle) + len(question)} tokens)"
        )
    text = filler(n_filler)
    at = sentence_boundary(n_filler, depth)
    return np.concatenate([text[:at], needle, text[at:], question])


def random_keys(rng: np.random.Generator, n: int, digits: int) -> list[str]:
    """`n` random decimal keys of `digits` digits without a leading zero."""
    values = rng.integers(10 ** (digits - 1), 10**digits, size=n)
    return [str(int(v)) for v in values]


def passkey_examples(
    num_examples: int, length: int, seed: int, depths=None, tokenizer=None
) -> tuple[torch.Tensor, list[str]]:
    """`num_examples` passkey prompts of `length` tokens (`[N, length]`) and their keys; byte tokens unless a
    subword `tokenizer` is given (the same keys and depths for either).

    Depths are drawn uniformly from [0, 1] unless `depths` (one per example) is given."""
    rng = make_rng(seed)
    keys = random_keys(rng, num_examples, PASSKEY_DIGITS)
    depths = rng.uniform(0.0, 1.0, size=num_examples) if depths is None else np.asarray(depths, dtype=float)
    if len(depths) != num_examples:
        raise ValueError(f"got {len(depths)} depths for {num_examples} examples")
    prompts = np.stack([passkey_prompt(length, float(d), k, tokenizer) for d, k in zip(depths, keys, strict=True)])
    return torch.from_numpy(prompts), keys


def niah_prompt(
    length: int, words: list[str], numbers: list[str], depths: list[float], asked: int, tokenizer=None
) -> np.ndarray:
    """A multi-key needle prompt `[length]`: needle i (word i, number i) at depth i; the question asks for
    `words[asked]`. Bytes for `tokenizer` None or a `ByteTokenizer`, else tokenized whole (`text_prompt`)."""
    if not is_byte_level(tokenizer):
        for d in depths:
            _check_depth(d)
        needles = [niah_needle(w, n) for w, n in zip(words, numbers, strict=True)]
        question = niah_question(words[asked]).rstrip(" ")
        fixed = f"its {len(needles)} needles and question"
        return text_prompt(length, tokenizer, needles, depths, question, "niah", fixed)
    needles = [_bytes(niah_needle(w, n)) for w, n in zip(words, numbers, strict=True)]
    question = _bytes(niah_question(words[asked]))
    n_filler = length - sum(len(n) for n in needles) - len(question)
    if n_filler < 0:
        raise ConfigError(
            f"niah prompt length {length} is shorter than its {len(needles)} needles and question "
            f"({length - n_filler} tokens)"
        )
    for d in depths:
        _check_depth(d)
    text = filler(n_filler)
    cuts = [sentence_boundary(n_filler, d) for d in depths]
    order = np.argsort(cuts, kind="stable")
    pieces, prev = [], 0
    for i in order:
        pieces += [text[prev : cuts[i]], needles[i]]
        prev = cuts[i]
    return np.concatenate([*pieces, text[prev:], question])


def niah_examples(
    num_examples: int, length: int, num_keys: int, seed: int, tokenizer=None
) -> tuple[torch.Tensor, list[str]]:
    """`num_examples` multi-key needle prompts (`[N, length]`) and the asked numbers (7 digits); byte tokens
    unless a subword `tokenizer` is given (the same draws for either)."""
    if not 1 <= num_keys <= len(NIAH_WORDS):
        raise ConfigError(f"niah num_keys must be in [1, {len(NIAH_WORDS)}], got {num_keys}")
    rng = make_rng(seed)
    prompts, answers = [], []
    for _ in range(num_examples):
        words = [NIAH_WORDS[i] for i in rng.choice(len(NIAH_WORDS), size=num_keys, replace=False)]
        numbers = random_keys(rng, num_keys, NIAH_DIGITS)
        depths = rng.uniform(0.0, 1.0, size=num_keys).tolist()
        asked = int(rng.integers(num_keys))
        prompts.append(niah_prompt(length, words, numbers, depths, asked, tokenizer))
        answers.append(numbers[asked])
    return torch.from_numpy(np.stack(prompts)), answers


# -- subword tokenizers: the prompt as text, tokenized whole --------------------------------------------------

_FIT_STEPS = 20  # tokenizations allowed to find the filler amount (two or three suffice: the count is near linear)
# filler amounts (characters, modulo one period) that are whole sentences: `filler_text(n)` then starts a sentence
_WHOLE = np.array([*sorted({(len(FILLER) - s) % len(FILLER) for s in _SENTENCE_STARTS.tolist()}), len(FILLER)])


def is_byte_level(tokenizer) -> bool:
    """Whether needle prompts are byte arrays (`ByteTokenizer`, or None: the default) rather than tokenized text."""
    return tokenizer is None or isinstance(tokenizer, ByteTokenizer)


def filler_text(n: int) -> str:
    """`filler(n)` as a string: the last `n` characters of the repeated filler, ending at the end of a sentence."""
    text = FILLER * (n // len(FILLER) + 1)
    return text[len(text) - n :]


def whole_sentences(n: int, up: bool) -> int:
    """The nearest filler amount at or above (`up`), or at or below, `n` characters that is whole sentences."""
    q, r = divmod(n, len(FILLER))
    i = np.searchsorted(_WHOLE, r, side="left") if up else np.searchsorted(_WHOLE, r, side="right") - 1
    return int(q * len(FILLER) + _WHOLE[i])


def needles_text(n: int, needles: list[str], depths: list[float], question: str) -> str:
    """The text of a subword prompt before trimming: a lead-in of `len(FILLER)` filler characters, then `n` filler
    characters with needle i at the sentence boundary nearest to `depths[i] * n` (as `sentence_boundary`), then
    the question. Lead-in and filler are one continuous `filler_text(len(FILLER) + n)`; with `n` whole sentences
    (`whole_sentences`), each starts a sentence, so a needle never splits one."""
    lead = len(FILLER)
    text = filler_text(lead + n)
    cuts = [lead + sentence_boundary(n, d) for d in depths]
    pieces, prev = [], 0
    for i in sorted(range(len(cuts)), key=cuts.__getitem__):  # stable: equal cuts keep the needles' order
        pieces += [text[prev : cuts[i]], needles[i]]
        prev = cuts[i]
    return "".join([*pieces, text[prev:], question])


def _common_prefix(a: list[int], b: list[int]) -> int:
    """How many leading ids `a` and `b` share."""
    return next((i for i, (x, y) in enumerate(zip(a, b, strict=False)) if x != y), min(len(a), len(b)))


def text_prompt(
    length: int, tokenizer, needles: list[str], depths: list[float], question: str, task: str, fixed: str
) -> np.ndarray:
    """`length` token ids (`[length]`): `needles_text(n, ...)` tokenized whole by `tokenizer`, for a filler amount
    `n` (characters, whole sentences) at which it has between `length` and `length + lead` tokens, `lead` being the
    tokens that lie wholly inside the lead-in; the surplus is dropped from the start of the lead-in.

    `n` starts at 0 (which also tells whether `length` can hold the needles and question; the error names `task`
    and, in `fixed`, what did not fit) and moves by the filler's characters per token times the distance from the
    surplus to the middle of that window, rounded outwards to whole sentences."""
    probe = tokenizer.encode(FILLER * 9)
    chars_per_token = 8 * len(FILLER) / max(len(probe) - len(tokenizer.encode(FILLER)), 1)
    n = 0
    for _ in range(_FIT_STEPS):
        text = needles_text(n, needles, depths, question)
        ids = tokenizer.encode(text)
        lead = _common_prefix(ids, tokenizer.encode(text[: len(FILLER)]))
        surplus = len(ids) - length
        if 0 <= surplus <= lead:
            return np.asarray(ids[surplus:], dtype=np.int64)
        if n == 0 and surplus > lead:
            raise ConfigError(
                f"{task} prompt length {length} is shorter than {fixed} ({len(ids) - lead} tokens with this tokenizer)"
            )
        step = round((surplus - lead // 2) * chars_per_token)  # sign: surplus lies outside [0, lead]
        n = max(0, whole_sentences(n - step, up=surplus < 0))
    raise ConfigError(f"{task}: no filler amount gives a prompt of exactly {length} tokens with this tokenizer")


def answer_tokens(tokenizer, answers: list[str]) -> int:
    """Greedy tokens to generate after the prompts of `answers`: the answers' bytes for byte tokens; for a subword
    tokenizer the longest tokenized " <answer>" (its question ends before the space) plus `ANSWER_MARGIN`."""
    if is_byte_level(tokenizer):
        return max(len(a.encode("utf-8")) for a in answers)
    return max(len(tokenizer.encode(" " + a)) for a in answers) + ANSWER_MARGIN


def is_answer(tokenizer, generated: str, answer: str) -> bool:
    """Whether the decoded greedy continuation `generated` answers `answer`: exactly, for byte tokens; for a
    subword tokenizer, stripped it starts with the answer and no further digit follows (" 12345. Rem" is right)."""
    if is_byte_level(tokenizer):
        return generated == answer
    rest = generated.strip()
    return rest.startswith(answer) and not rest[len(answer) : len(answer) + 1].isdigit()


def with_answers(prompts: torch.Tensor, answers: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
    """Training pairs: `prompt + answer` shifted by one, labels only on the answer tokens.

    Returns `(inputs, labels)`, both `[N, prompt_len + len(answer) - 1]`."""
    answer = torch.tensor([list(a.encode("utf-8")) for a in answers], dtype=torch.long)  # (N, digits)
    full = torch.cat([prompts, answer], dim=1)
    inputs, labels = full[:, :-1].clone(), full[:, 1:].clone()
    labels[:, : prompts.shape[1] - 1] = IGNORE_INDEX
    return inputs, labels


def build_passkey_splits(*, seq_len: int, train_size: int, test_size: int, seed: int) -> dict:
    """`data=passkey`: prompts of `seq_len - 5` tokens plus the 5 answer digits, depth uniform in [0, 1]."""
    length = seq_len + 1 - PASSKEY_DIGITS  # inputs hold the prompt and the first 4 answer digits
    splits = {}
    for name, size, stream in (("train", train_size, 0), ("test", test_size, 1)):
        prompts, keys = passkey_examples(size, length, seed=_split_seed(seed, stream))
        splits[name] = with_answers(prompts, keys)
    return splits


def _split_seed(seed: int, stream: int) -> int:
    """Independent integer seeds for the train and test splits of one `seed`."""
    return int(make_rng(seed, 3, stream).integers(2**62))
