"""The model card of a published run: `README.md` with the YAML front matter the Hub reads (library, tags,
`model-index` from results.json) and prose on the architecture, size, inference-state cost, training data,
results and the command that reproduces the run. Whatever the run folder does not record is said, not guessed."""

from __future__ import annotations

import json
import math
import shlex
from dataclasses import dataclass
from pathlib import Path

import yaml

from zoo.errors import PublishError
from zoo.io.results import RESULTS
from zoo.io.runs import locate

STATE_LENGTHS = (1024, 65536)  # the card's inference-state numbers: 1k and 64k tokens

# results.json metrics that describe cost or bookkeeping rather than an evaluation: kept out of model-index.
COST_PREFIXES = ("train/", "bench/", "state/")


@dataclass
class RunRecord:
    """The parts of a run folder the card describes; None where the folder does not have them."""

    run_dir: Path
    checkpoint: Path
    results: dict | None
    config: dict | None  # .hydra/config.yaml, resolved
    overrides: list[str] | None  # .hydra/overrides.yaml


def load_yaml(path: Path):
    """A Hydra-written YAML file, interpolations resolved where they can be (`${data.vocab_size}`)."""
    from omegaconf import OmegaConf

    node = OmegaConf.load(path)
    try:
        return OmegaConf.to_container(node, resolve=True)
    except Exception:  # an interpolation needing Hydra's runtime (e.g. ${hydra:...}): keep it as written
        return OmegaConf.to_container(node, resolve=False)


def read_run(path) -> RunRecord:
    checkpoint, run_dir = locate(path)
    results_path, hydra = run_dir / RESULTS, run_dir / ".hydra"
    try:
        results = json.loads(results_path.read_text()) if results_path.exists() else None
    except json.JSONDecodeError as e:
        raise PublishError(f"{results_path} is not valid JSON: {e}") from e
    config = load_yaml(hydra / "config.yaml") if (hydra / "config.yaml").exists() else None
    overrides = None
    if (hydra / "overrides.yaml").exists():
        # plain YAML, not OmegaConf: an override such as `x=${y}` is a command-line string, not an interpolation
        overrides = yaml.safe_load((hydra / "overrides.yaml").read_text()) or []
        if not isinstance(overrides, list):
            raise PublishError(f"{hydra / 'overrides.yaml'} should hold a list of overrides, got {overrides!r}")
    return RunRecord(run_dir, checkpoint, results, config, overrides)


def is_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def fmt(value) -> str:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return str(value)
    if isinstance(value, int):
        return f"{value:,}"
    return f"{value:,.1f}" if abs(value) >= 1000 else f"{value:.4f}"


def fmt_bytes(n: int) -> str:
    for unit, size in (("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if n >= size:
            return f"{n:,} bytes ({n / size:.1f} {unit})"
    return f"{n:,} bytes"


def layer_kinds(model) -> list[str]:
    """Per layer: which kind of token mixer it is, as the card's architecture table says it."""
    kinds = []
    for block in model.blocks:
        mixer = block.mixer
        window = getattr(mixer, "window_size", None)  # attention's; a sliding window keeps a fixed-size cache too
        if mixer is None:
            kinds.append("MLP only")
        elif mixer.state_grows:
            kinds.append("attention (full)")
        elif window is not None:
            kinds.append(f"attention (sliding window {window})")
        else:
            kinds.append("linear / recurrent (fixed-size state)")
    return kinds


def attention_layers(model) -> list[int]:
    return [i for i, kind in enumerate(layer_kinds(model)) if kind.startswith("attention")]


def eval_metrics(metrics: dict) -> dict[str, list[tuple[str, str, float]]]:
    """results.json's evaluation numbers grouped by dataset, as `(metric name, metric type, value)`:
    `mqar/accuracy@64x4` -> dataset mqar, type accuracy; `lm_eval/<task>/<metric>` -> dataset <task>.
    Cost and bookkeeping (params, train/, bench/, state/) and non-numbers (NaN) are left out."""
    groups: dict[str, list[tuple[str, str, float]]] = {}
    for key, value in metrics.items():
        if key.startswith(COST_PREFIXES) or "/" not in key or not is_number(value):
            continue
        parts = key.split("/")
        dataset = parts[1] if parts[0] == "lm_eval" and len(parts) >= 3 else parts[0]
        kind = parts[-1].split("@")[0].split(",")[0]  # accuracy@64x4 -> accuracy; lm-eval's acc,none -> acc
        groups.setdefault(dataset, []).append((key, kind, value))
    return groups


def model_index(name: str, metrics: dict, data_name: str | None) -> list[dict]:
    """Hugging Face's `model-index`: one result per dataset, each metric with its type, value and full name."""
    results = []
    for dataset, entries in eval_metrics(metrics).items():
        if dataset == "val":  # the held-out split of the training data
            ds = {"type": data_name or "validation", "name": f"{data_name or 'training data'} (held-out split)"}
        else:
            ds = {"type": dataset, "name": dataset}
        results.append(
            {
                "task": {"type": "text-generation", "name": "Text Generation"},
                "dataset": ds,
                "metrics": [{"type": kind, "value": value, "name": key} for key, kind, value in entries],
            }
        )
    return [{"name": name, "results": results}] if results else []


def hub_datasets(data: dict | None) -> list[str]:
    """Hub dataset ids the model was trained on. The built-in data (mqar, copy, passkey: generated; text: local
    files) are not Hub datasets, so only a Hub-backed data config (`name: hf` with a `path`) names one."""
    if data and data.get("name") == "hf" and isinstance(data.get("path"), str):
        return [data["path"]]
    return []


def front_matter(model, run: RunRecord, name: str) -> dict:
    mixers = list(dict.fromkeys(model.layer_mixers))
    n_attn = len(attention_layers(model))
    tags = ["hybrid-zoo", *mixers]
    if n_attn < len(model.blocks):
        tags.append("linear-attention")
    tags.append("hybrid" if 0 < n_attn < len(model.blocks) else "transformer" if n_attn else "recurrent")
    meta: dict = {"library_name": "hybrid-zoo", "pipeline_tag": "text-generation", "tags": tags}
    data = (run.config or {}).get("data")
    if hub_datasets(data):
        meta["datasets"] = hub_datasets(data)
    index = model_index(name, (run.results or {}).get("metrics", {}), data.get("name") if data else None)
    if index:
        meta["model-index"] = index
    return meta


def architecture_section(model) -> list[str]:
    cfg = model.config
    kinds = layer_kinds(model)
    attn = attention_layers(model)
    if not attn:
        summary = "Attention layers: none. Every layer keeps a fixed-size state, so memory does not grow with length."
    elif len(attn) == len(kinds):
        summary = "Attention layers: all of them (a transformer); the KV cache grows with the sequence."
    else:
        others = ", ".join(dict.fromkeys(m for i, m in enumerate(model.layer_mixers) if i not in attn))
        summary = (
            f"Attention layers: {', '.join(map(str, attn))} ({len(attn)} of {len(kinds)}); "
            f"the other layers use {others}."
        )
    mlp_size = f"ratio {cfg.mlp_ratio}" if cfg.mlp_hidden is None else f"hidden {cfg.mlp_hidden}"
    mlp_kinds = "/".join(dict.fromkeys(cfg.mlp_names()))
    lines = [
        "## Architecture",
        "",
        f"{cfg.n_layers} layers, d_model {cfg.d_model}, head_dim {cfg.head_dim}, vocabulary {cfg.vocab_size:,}, "
        f"{mlp_kinds} MLP ({mlp_size}), {'tied' if cfg.tie_embeddings else 'untied'} embeddings. "
        "Each block is `x + mixer(norm(x))`, then `x + mlp(norm(x))`.",
        "",
        summary,
        "",
        "| layer | mixer | kind |",
        "|---:|---|---|",
    ]
    lines += [
        f"| {i} | {name} | {kind} |" for i, (name, kind) in enumerate(zip(model.layer_mixers, kinds, strict=True))
    ]
    return lines


def size_section(model) -> list[str]:
    n = model.num_params()
    lines = ["## Size and inference state", "", f"- Parameters: {n:,} ({n / 1e6:.2f}M)"]
    for length in STATE_LENGTHS:
        lines.append(f"- Inference state at {length:,} tokens (batch 1): {fmt_bytes(model.state_bytes(length))}")
    lines += [
        "",
        "The state is what generation keeps per sequence (`model.state_bytes(seq_len)`): attention "
        "layers' KV caches grow with the length, linear layers' states do not.",
    ]
    return lines


def training_section(run: RunRecord) -> list[str]:
    lines = ["## Training", ""]
    metrics = (run.results or {}).get("metrics", {})
    steps = metrics.get("train/steps")
    if run.config is None:
        lines.append("The run folder has no `.hydra/config.yaml`, so the training data and settings are not recorded.")
        if steps is not None:
            lines.append(f"results.json records {fmt(steps)} training steps.")
        return lines
    data, train = run.config.get("data") or {}, run.config.get("train") or {}
    settings = ", ".join(f"{k}={v}" for k, v in data.items() if k != "name")
    lines.append(f"- Data: `{data.get('name', 'unknown')}` ({settings})" if data else "- Data: not recorded")
    planned = train.get("max_steps")
    done = f"{fmt(steps)} steps trained" if steps is not None else "steps trained not recorded (no train/steps)"
    lines.append(f"- Steps: {done} (train.max_steps={planned})")
    batch, seq_len = train.get("batch_size"), data.get("seq_len")
    if is_number(steps) and is_number(batch) and is_number(seq_len):
        lines.append(f"- Tokens: {steps * batch * seq_len:,} (steps x batch size {batch} x sequence length {seq_len})")
    lines.append(
        f"- Optimizer: AdamW, lr {train.get('lr')}, weight decay {train.get('weight_decay')}, seed {train.get('seed')}"
    )
    if is_number(metrics.get("train/time_s")):
        lines.append(f"- Training time: {metrics['train/time_s']:,.0f} s on {run.results.get('device', 'unknown')}")
    return lines


def results_section(run: RunRecord) -> list[str]:
    lines = ["## Results", ""]
    if run.results is None:
        return [*lines, "No results.json in the run folder: no evaluation results are reported."]
    metrics = run.results.get("metrics", {})
    evals = {key for entries in eval_metrics(metrics).values() for key, _, _ in entries}
    quality = {k: v for k, v in metrics.items() if k in evals}
    other = {k: v for k, v in metrics.items() if k not in evals}
    if quality:
        lines += ["Quality and recall (from results.json):", "", "| metric | value |", "|---|---:|"]
        lines += [f"| {k} | {fmt(v)} |" for k, v in sorted(quality.items())]
    else:
        lines.append("results.json holds no evaluation metrics (no validation, recall or lm-eval numbers).")
    if other:
        lines += ["", "Size, cost and training bookkeeping:", "", "| metric | value |", "|---|---:|"]
        lines += [f"| {k} | {fmt(v)} |" for k, v in sorted(other.items())]
    return lines


def reproduce_section(run: RunRecord) -> list[str]:
    lines = ["## Reproduce", ""]
    if run.overrides is None:
        missing = ".hydra/overrides.yaml" if run.config is not None else ".hydra/"
        return [*lines, f"The run folder has no `{missing}`, so the command that trained it is not recorded."]
    command = " ".join(["zoo-train", *(shlex.quote(str(o)) for o in run.overrides)])
    lines += ["```bash", command, "```"]
    # Training itself records only its held-out metrics (`<data>/accuracy`, `val/loss`, ...); the recall suite's
    # per-length numbers (`...@<len>`), lm-eval and throughput are added later by the eval and bench tools.
    metrics = (run.results or {}).get("metrics", {})
    later = []
    if any(
        k.startswith(("mqar/", "copy/", "passkey/", "niah/")) and ("@" in k or k.endswith("max_exact_len"))
        for k in metrics
    ) or any(k.startswith("lm_eval/") for k in metrics):
        later.append("`zoo-eval path=RUN_DIR` (recall suite and lm-eval metrics)")
    if any(k.startswith("bench/") for k in metrics):
        later.append("`zoo-bench` (throughput and memory, `bench/` metrics)")
    if later:
        lines += ["", f"The run folder's results.json was then completed by {' and '.join(later)}."]
    return lines


def intro(model, run: RunRecord) -> str:
    arch = ((run.config or {}).get("model") or {}).get("name")
    n_attn, n = len(attention_layers(model)), len(model.blocks)
    kind = (
        "a pure linear-attention / recurrent model"
        if n_attn == 0
        else "a transformer (attention in every layer)"
        if n_attn == n
        else f"a hybrid: {n - n_attn} linear-attention / recurrent layers and {n_attn} attention layer(s)"
    )
    named = f" (architecture `{arch}` in conf/model)" if arch else ""
    return f"A hybrid-zoo language model{named}: {kind}."


def model_card(model, run: RunRecord, name: str, repo_id: str | None = None) -> str:
    meta = front_matter(model, run, name)
    where = repo_id or "path/to/this/folder"
    lines = [
        f"# {name}",
        "",
        intro(model, run),
        "",
        "## Use",
        "",
        "```python",
        "import zoo",
        "",
        f'model = zoo.from_pretrained("{where}")  # safetensors + JSON only: nothing is unpickled',
        "```",
        "",
        *architecture_section(model),
        "",
        *size_section(model),
        "",
        *training_section(run),
        "",
        *results_section(run),
        "",
        *reproduce_section(run),
    ]
    header = yaml.safe_dump(meta, sort_keys=False, allow_unicode=True)
    return f"---\n{header}---\n\n" + "\n".join(lines) + "\n"
