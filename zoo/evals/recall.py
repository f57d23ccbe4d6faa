"""The recall suite: what a fixed-size state forgets, measured on any model.

Tasks (registry `TASKS`, each `task(model, tokenizer, settings, device) -> TaskResult`, with its section of
`eval.recall` as settings: conf/eval/recall/default.yaml, typed by `zoo.schemas.RecallConfig`):
- `mqar`: Zoology's MQAR accuracy at label positions over a grid of `seq_lens` x `num_kv_pairs`
  (`mqar/accuracy@<seq_len>x<num_kv_pairs>`); needs an integer-token model.
- `copy`: copy `L` random tokens after reading them (`copy/accuracy@L`, `copy/exact@L`, and
  `copy/max_exact_len`, the longest length up to which every tested length is copied exactly in at least
  `exact_threshold` of the examples); integer tokens.
- `passkey`: greedy continuation after a prompt of `L` byte tokens with the key at each depth
  (`passkey/accuracy@L`, exact match of the 5 digits); byte tokens.
- `niah`: RULER-style multi-key needle (`niah/accuracy@L`); byte tokens.

Long prompts are streamed through the cache `prefill_chunk` tokens at a time, so a linear model's memory
does not grow with `L`. Before each length the model's cache size (`state_bytes`) and the time projected
from the previous length are checked against `memory_budget_gb` / `time_budget_s`; a length over budget is
reported as skipped with the reason (it is not silently dropped).
"""

from __future__ import annotations

import time
import typing
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

import torch
from tqdm.auto import tqdm

from zoo.config import from_mapping
from zoo.data.copy import copy_examples
from zoo.data.mqar import mqar
from zoo.data.passkey import PASSKEY_DIGITS, niah_examples, passkey_examples
from zoo.data.tokenizer import ByteTokenizer, IntTokenizer
from zoo.errors import ConfigError
from zoo.model.lm import HybridLM
from zoo.schemas import CopyRecall, MqarRecall, NiahRecall, PasskeyRecall, RecallConfig


class TaskSkipped(Exception):
    """The task cannot run on this model (e.g. the wrong kind of tokenizer); the message says why."""


@dataclass
class TaskResult:
    metrics: dict[str, float] = field(default_factory=dict)
    rows: list[dict] = field(default_factory=list)  # one per measured cell, for the printed table
    notes: list[str] = field(default_factory=list)  # lengths skipped over budget, and why


def _need(tokenizer, kind: type, task: str) -> None:
    if not isinstance(tokenizer, kind):
        have = "none" if tokenizer is None else f"{type(tokenizer).__name__}"
        want = "byte-level text (data=text/passkey)" if kind is ByteTokenizer else "integer tokens (data=mqar/copy)"
        raise TaskSkipped(f"{task} needs a model trained on {want}; this checkpoint's tokenizer is {have}")


@torch.inference_mode()
def stream_prefill(model: HybridLM, ids: torch.Tensor, chunk: int):
    """Run `ids` `[B, T]` through the model `chunk` tokens at a time; returns the last call's output (its
    `.logits` cover the last chunk, `.cache` the whole prompt)."""
    out = None
    for piece in ids.split(chunk, dim=1):
        out = model(piece, cache=None if out is None else out.cache, use_cache=True)
    return out


@torch.inference_mode()
def greedy_continue(model: HybridLM, out, n: int) -> torch.Tensor:
    """`n` greedy tokens `[B, n]` after a prefill output `out` (logits + cache)."""
    tokens = []
    for i in range(n):
        nxt = out.logits[:, -1].argmax(-1, keepdim=True)
        tokens.append(nxt)
        if i + 1 < n:
            out = model(nxt, cache=out.cache)
    return torch.cat(tokens, dim=1)


@torch.inference_mode()
def label_accuracy(model: HybridLM, inputs, labels, batch_size: int, device) -> tuple[float, float]:
    """Teacher-forced argmax accuracy at labelled positions, and the fraction of rows with all of them right
    (for a row, all-right under teacher forcing is exactly what greedy decoding would reproduce)."""
    correct = total = exact = 0
    for i in range(0, len(inputs), batch_size):
        x, y = inputs[i : i + batch_size].to(device), labels[i : i + batch_size].to(device)
        hit = (model(x).logits.argmax(-1) == y) | (y == -100)
        mask = y != -100
        correct += (hit & mask).sum().item()
        total += mask.sum().item()
        exact += hit.all(-1).sum().item()
    return correct / max(total, 1), exact / max(len(inputs), 1)


def _grows(model: HybridLM) -> bool:
    # a HybridLM declares it (`state_grows`); a zoo-bench runner or a test oracle only reports its bytes
    declared = getattr(model, "state_grows", None)
    return model.state_bytes(2048) > model.state_bytes(1024) if declared is None else declared


def past_positions(model: HybridLM, num_tokens: int) -> str | None:
    """Why `model` cannot read a sequence of `num_tokens` (its learned position table is shorter), or None."""
    limit = model.max_positions
    if limit is not None and num_tokens > limit:
        return f"{num_tokens} tokens > model.learned_positions={limit}"
    return None


class Budget:
    """Memory and time limits for long prompts: which lengths an architecture can run, and why not."""

    def __init__(self, model: HybridLM, batch_size: int, memory_budget_gb: float, time_budget_s: float):
        self.model, self.batch_size = model, batch_size
        self.memory = memory_budget_gb * 2**30
        self.time = time_budget_s
        self.last: tuple[int, float] | None = None  # (length, seconds) of the last measured length
        self.power = 2 if _grows(model) else 1  # attention's prefill time is quadratic in the length

    def refuse(self, length: int) -> str | None:
        need = self.model.state_bytes(length, self.batch_size)
        if need > self.memory:
            return f"cache at {length} tokens needs {need / 2**30:.2f} GiB > memory budget {self.memory / 2**30:g} GiB"
        if self.last is not None:
            prev_len, prev_s = self.last
            projected = prev_s * (length / prev_len) ** self.power
            if projected > self.time:
                return f"projected {projected:.0f} s at {length} tokens > time budget {self.time:g} s"
        return None

    def record(self, length: int, seconds: float) -> None:
        self.last = (length, seconds)


def _needle_task(name, make, answer_len, model, tokenizer, cfg: PasskeyRecall | NiahRecall, device) -> TaskResult:
    """Shared loop of passkey and niah: for each length, prompts -> streamed prefill -> greedy answer."""
    _need(tokenizer, ByteTokenizer, name)
    result = TaskResult()
    budget = Budget(model, cfg.batch_size, cfg.memory_budget_gb, cfg.time_budget_s)
    for length in tqdm(cfg.lengths, desc=name, leave=False):
        # the answer's last token is never read, so the model sees length + answer_len - 1 tokens
        reason = past_positions(model, length + answer_len - 1) or budget.refuse(length)
        if reason:
            result.notes.append(f"{name}@{length}: skipped: {reason}")
            result.rows.append({"task": name, "length": length, "accuracy": None, "note": reason})
            continue
        prompts, answers, depths = make(length)
        start, hits = time.perf_counter(), []
        for i in range(0, len(prompts), cfg.batch_size):
            out = stream_prefill(model, prompts[i : i + cfg.batch_size].to(device), cfg.prefill_chunk)
            got = greedy_continue(model, out, answer_len).cpu()
            hits += [tokenizer.decode(g) == a for g, a in zip(got.tolist(), answers[i : i + len(got)], strict=True)]
        seconds = time.perf_counter() - start
        budget.record(length, seconds)
        result.metrics[f"{name}/accuracy@{length}"] = sum(hits) / len(hits)
        by_depth: dict = {}  # one table row per needle depth (niah draws its depths: one row)
        for hit, depth in zip(hits, depths or [None] * len(hits), strict=True):
            by_depth.setdefault(depth, []).append(hit)
        for depth, sel in by_depth.items():
            row = {"task": name, "length": length, "depth": depth, "accuracy": sum(sel) / len(sel)}
            result.rows.append(row | {"seconds": round(seconds, 2)})
    return result


def passkey_task(model, tokenizer, cfg: PasskeyRecall, device) -> TaskResult:
    depths = [float(d) for d in cfg.depths for _ in range(cfg.trials)]

    def make(length):
        prompts, keys = passkey_examples(len(depths), length, seed=cfg.seed + length, depths=depths)
        return prompts, keys, depths

    return _needle_task("passkey", make, PASSKEY_DIGITS, model, tokenizer, cfg, device)


def niah_task(model, tokenizer, cfg: NiahRecall, device) -> TaskResult:
    def make(length):
        prompts, numbers = niah_examples(cfg.num_examples, length, cfg.num_keys, seed=cfg.seed + length)
        return prompts, numbers, None

    return _needle_task("niah", make, len("1234567"), model, tokenizer, cfg, device)


def mqar_task(model, tokenizer, cfg: MqarRecall, device) -> TaskResult:
    _need(tokenizer, IntTokenizer, "mqar")
    result = TaskResult()
    for seq_len in cfg.seq_lens:
        reason = past_positions(model, seq_len)
        if reason:
            result.notes.append(f"mqar@{seq_len}: skipped: {reason}")
            continue
        for n in cfg.num_kv_pairs:
            if 4 * n > seq_len:
                result.notes.append(f"mqar@{seq_len}x{n}: skipped: 4 * num_kv_pairs > seq_len")
                continue
            x, y = mqar(
                tokenizer.vocab_size,
                seq_len,
                n,
                cfg.num_examples,
                seed=cfg.seed,
                random_non_queries=cfg.random_non_queries,
            )
            acc, _ = label_accuracy(model, x, y, cfg.batch_size, device)
            result.metrics[f"mqar/accuracy@{seq_len}x{n}"] = acc
            result.rows.append({"task": "mqar", "seq_len": seq_len, "num_kv_pairs": n, "accuracy": acc})
    return result


def copy_task(model, tokenizer, cfg: CopyRecall, device) -> TaskResult:
    _need(tokenizer, IntTokenizer, "copy")
    result, max_exact, unbroken = TaskResult(), 0, True
    for length in sorted(cfg.lengths):
        reason = past_positions(model, 2 * length)
        if reason:  # and so is every longer one
            result.notes.append(f"copy@{length} and longer: skipped: {reason}")
            break
        x, y = copy_examples(cfg.num_examples, length, tokenizer.vocab_size, seed=cfg.seed + length)
        acc, exact = label_accuracy(model, x, y, cfg.batch_size, device)
        result.metrics[f"copy/accuracy@{length}"] = acc
        result.metrics[f"copy/exact@{length}"] = exact
        unbroken = unbroken and exact >= cfg.exact_threshold
        max_exact = length if unbroken else max_exact
        result.rows.append({"task": "copy", "length": length, "accuracy": acc, "exact": exact})
    result.metrics["copy/max_exact_len"] = max_exact
    return result


TASKS: dict[str, Callable[..., TaskResult]] = {
    "copy": copy_task,
    "mqar": mqar_task,
    "niah": niah_task,
    "passkey": passkey_task,
}


def run_suite(
    model: HybridLM, tokenizer, tasks: list[str], cfg: RecallConfig | Mapping, device
) -> tuple[dict, list[dict], list[str]]:
    """Run `tasks` (names in `TASKS`) with their settings, the sections of `cfg` (`eval.recall`; a plain dict
    `{task: settings}` needs only the sections of `tasks`); returns (metrics, rows, notes).
    A task that does not fit the model is noted as skipped, not raised."""
    unknown = sorted(set(tasks) - set(TASKS))
    if unknown:
        raise ConfigError(f"unknown recall task(s) {unknown}; valid: {sorted(TASKS)}")
    if isinstance(cfg, RecallConfig):
        sections = {name: getattr(cfg, name) for name in tasks}
    else:
        schemas = typing.get_type_hints(RecallConfig)
        sections = {name: from_mapping(schemas[name], cfg[name], f"eval.recall.{name}") for name in tasks}
    metrics, rows, notes = {}, [], []
    model.eval()
    for name in tasks:
        try:
            res = TASKS[name](model, tokenizer, sections[name], device)
        except TaskSkipped as e:
            notes.append(f"{name}: skipped: {e}")
            continue
        metrics.update(res.metrics)
        rows += res.rows
        notes += res.notes
    return metrics, rows, notes
