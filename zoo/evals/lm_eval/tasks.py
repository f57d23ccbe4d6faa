"""Datasets of the offline lm-eval tasks in `conf/lm_eval_tasks/` (`zoo_mqar`, `zoo_passkey_1k`, `zoo_passkey_4k`,
`zoo_ppl`, group `zoo_offline`): the recall suite and the offline text corpus as lm-eval tasks that never download.

Each task yaml names a builder here through its `custom_dataset` (via `conf/lm_eval_tasks/zoo_tasks.py`) and holds
the builder's parameters in its `metadata` block; lm-eval passes that block, merged with `--metadata` (and with
the model args, which the builders ignore), as keyword arguments. A builder writes its examples once to a JSONL
file named by a hash of its parameters under `data_dir()` and reads them back on later runs;
`python -m zoo.lm_eval make-data [--out DIR]` writes every task's file with the yaml defaults.

Parameters (`--metadata key=value` overrides them for every task that reads that key):
- `zoo_mqar`: Zoology's names `vocab_size`, `seq_len`, `num_kv_pairs`, plus `num_examples`, `seed`. One document
  per query: the context is the sequence up to and including the query key, the target the key's value, so
  lm-eval's `acc` is the recall suite's teacher-forced `mqar/accuracy@<seq_len>x<num_kv_pairs>` on the same set.
- `zoo_passkey_*`: `passkey_length`, `passkey_depths`, `passkey_trials`, `passkey_seed`: the prompts of the
  recall suite's `passkey/accuracy@<length>` (same seed rule), answered by generation.
- `zoo_ppl`: `text_paths`, `text_max_bytes`, `text_val_fraction`, `text_seed`: the validation documents of
  `data=text` (`zoo.data.text`), scored with `loglikelihood_rolling`. Each one left out takes the value of
  `paths`, `max_bytes`, `val_fraction`, `seed` in conf/data/text.yaml, so the task reads what training reads.
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from zoo.config import conf_dir, load_option
from zoo.data.mqar import IGNORE_INDEX, mqar
from zoo.data.passkey import passkey_examples
from zoo.data.text import load_text_corpus, split_documents
from zoo.io.runs import write_text_atomically

DATA_ENV = "ZOO_LM_EVAL_DATA"  # where the JSONL files live; default ~/.cache/hybrid_zoo/lm_eval
FORMAT_VERSION = 1  # part of every file's hash: bump it when a builder's output changes


def data_dir() -> Path:
    """`$ZOO_LM_EVAL_DATA`, else `~/.cache/hybrid_zoo/lm_eval`."""
    return Path(os.environ.get(DATA_ENV) or Path.home() / ".cache" / "hybrid_zoo" / "lm_eval").expanduser()


def tasks_dir() -> Path:
    """The offline task folder (`conf/lm_eval_tasks`, or `zoo/conf/lm_eval_tasks` in an installed wheel)."""
    return conf_dir() / "lm_eval_tasks"


def offline_task_names() -> list[str]:
    """Names of the tasks and groups defined in `tasks_dir()`, from their yaml files."""
    names = []
    for cfg in _task_yamls().values():
        name = cfg.get("group") or cfg.get("task")  # a group's `task` is its list of members
        if isinstance(name, str):
            names.append(name)
    return sorted(names)


# -- files --------------------------------------------------------------------------------------------------------


def _file_for(kind: str, params: dict[str, Any], out: Path | None) -> Path:
    key = json.dumps({"kind": kind, "format": FORMAT_VERSION, **params}, sort_keys=True)
    digest = hashlib.sha256(key.encode()).hexdigest()[:16]
    return (out or data_dir()) / f"{kind}-{digest}.jsonl"


def cached_rows(kind: str, params: dict[str, Any], make: Callable[[], list[dict]], out: Path | None = None):
    """The rows of `kind` with `params`: read from their JSONL file, which `make()` writes first when missing.
    Returns `(rows, path)`. The file is written atomically, so parallel runs never read half of one."""
    path = _file_for(kind, params, out)
    if not path.exists():
        rows = make()
        header = json.dumps({"params": params, "kind": kind}) + "\n"  # what the file holds
        write_text_atomically(path, header + "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))
    with open(path, encoding="utf-8") as f:
        lines = f.read().splitlines()
    return [json.loads(line) for line in lines[1:] if line], path


def _as_dataset(rows: list[dict]):
    import datasets

    return datasets.DatasetDict({"test": datasets.Dataset.from_list(rows)})


def _need(meta: dict[str, Any], keys: tuple[str, ...], task: str) -> dict[str, Any]:
    missing = [k for k in keys if k not in meta]
    if missing:
        raise ValueError(f"{task}: metadata {missing} missing (the task yaml sets them; --metadata overrides them)")
    return {k: meta[k] for k in keys}


# -- builders -----------------------------------------------------------------------------------------------------


def mqar_rows(vocab_size: int, seq_len: int, num_kv_pairs: int, num_examples: int, seed: int) -> list[dict]:
    """One row per query of `zoo.data.mqar.mqar(...)`: whitespace-separated integer context ending with the query
    key, the value as target text " <value>" (lm-eval appends a loglikelihood target to the context as is)."""
    x, y = mqar(vocab_size, seq_len, num_kv_pairs, num_examples, seed=seed)
    rows = []
    for i, (xs, ys) in enumerate(zip(x.tolist(), y.tolist(), strict=True)):
        for p, label in enumerate(ys):
            if label != IGNORE_INDEX:
                rows.append(
                    {"context": " ".join(map(str, xs[: p + 1])), "target": f" {label}", "example": i, "position": p}
                )
    return rows


def passkey_rows(passkey_length: int, passkey_depths, passkey_trials: int, passkey_seed: int) -> list[dict]:
    """The recall suite's passkey prompts at one length (each depth `passkey_trials` times, seed
    `passkey_seed + length`), as text, with their 5-digit keys."""
    depths = [float(d) for d in passkey_depths for _ in range(int(passkey_trials))]
    prompts, keys = passkey_examples(len(depths), passkey_length, seed=passkey_seed + passkey_length, depths=depths)
    return [
        {"context": bytes(p).decode("utf-8"), "answer": k, "depth": d}
        for p, k, d in zip(prompts.tolist(), keys, depths, strict=True)
    ]


def text_rows(text_paths, text_max_bytes: int, text_val_fraction: float, text_seed: int) -> list[dict]:
    """The validation documents of `data=text` with these settings (`zoo.data.text.split_documents`)."""
    docs = load_text_corpus(text_paths, max_bytes=text_max_bytes)
    _, val = split_documents(docs, text_val_fraction, text_seed)
    return [{"text": d} for d in val]


def _mqar_params(meta):
    p = _need(meta, ("vocab_size", "seq_len", "num_kv_pairs", "num_examples", "seed"), "zoo_mqar")
    return {k: int(v) for k, v in p.items()}


def _passkey_params(meta):
    p = _need(meta, ("passkey_length", "passkey_depths", "passkey_trials", "passkey_seed"), "zoo_passkey")
    depths = p["passkey_depths"]
    depths = [depths] if isinstance(depths, (int, float)) else depths
    return {
        "passkey_length": int(p["passkey_length"]),
        "passkey_depths": [float(d) for d in depths],
        "passkey_trials": int(p["passkey_trials"]),
        "passkey_seed": int(p["passkey_seed"]),
    }


def _text_params(meta):
    text = load_option("data", "text")  # data=text's corpus, unless --metadata says otherwise
    p = {f"text_{k}": meta.get(f"text_{k}", getattr(text, k)) for k in ("paths", "max_bytes", "val_fraction", "seed")}
    paths = p["text_paths"]
    if paths is not None:
        paths = [str(Path(q).expanduser().resolve()) for q in ([paths] if isinstance(paths, str) else paths)]
    params = {
        "text_paths": paths,
        "text_max_bytes": None if p["text_max_bytes"] is None else int(p["text_max_bytes"]),
        "text_val_fraction": float(p["text_val_fraction"]),
        "text_seed": int(p["text_seed"]),
    }
    if paths is None:  # the default corpus is the standard library of the running Python: part of the file's key
        params["python"] = f"{sys.version_info.major}.{sys.version_info.minor}"
    return params


def _rows_for_text(params):
    return text_rows(**{k: v for k, v in params.items() if k != "python"})


# builder name (as in the yamls' custom_dataset) -> (parameters from metadata, rows from parameters)
BUILDERS: dict[str, tuple[Callable, Callable]] = {
    "mqar": (_mqar_params, lambda p: mqar_rows(**p)),
    "passkey": (_passkey_params, lambda p: passkey_rows(**p)),
    "ppl": (_text_params, _rows_for_text),
}


def build(builder: str, meta: dict[str, Any], out: Path | None = None):
    """`(rows, path)` of `builder` with the parameters found in `meta` (unrelated keys are ignored)."""
    to_params, make = BUILDERS[builder]
    params = to_params(meta)
    return cached_rows(builder, params, lambda: make(params), out)


def load(builder: str, **meta):
    """What a task's `custom_dataset` returns: `{"test": datasets.Dataset}` of `builder`'s rows."""
    rows, _ = build(builder, meta)
    return _as_dataset(rows)


# -- make-data ----------------------------------------------------------------------------------------------------


def _task_yamls() -> dict[Path, dict]:
    """Every yaml of `tasks_dir()`, parsed with lm-eval's `!function` tags kept as plain strings."""
    import yaml

    class Loader(yaml.SafeLoader):
        pass

    Loader.add_constructor("!function", lambda loader, node: loader.construct_scalar(node))
    return {p: yaml.load(p.read_text(), Loader=Loader) or {} for p in sorted(tasks_dir().glob("*.yaml"))}


def make_data(out: Path | None = None) -> list[tuple[str, Path, int]]:
    """Write the JSONL file of every offline task with its yaml's default metadata into `out` (default
    `data_dir()`); returns `(task, path, rows)` per task. Files already there are kept (they are deterministic)."""
    written = []
    for cfg in _task_yamls().values():
        fn = cfg.get("custom_dataset")
        if not isinstance(fn, str) or not fn.startswith("zoo_tasks."):
            continue
        builder = fn.split(".", 1)[1]
        rows, path = build(builder, cfg.get("metadata") or {}, out)
        written.append((cfg["task"], path, len(rows)))
    return written
