"""The typed schema of every config group, mirroring `conf/`: one dataclass per group (per dataset for `data/`) and
one per root config, registered in Hydra's ConfigStore by `register()`.

Every yaml of a group names its schema first in its defaults list (`defaults: [/schema/train@_here_, _self_]`;
the datasets `/schema/data/<name>@_here_`; the roots `schema/config`, `schema/zoo_eval`, `schema/zoo_bench`), so
a misspelt key in a yaml, an experiment or a command-line override fails while Hydra composes. Defaults live in
`conf/` only: a field here is MISSING unless the yaml may leave it out, and its documentation is the comment next
to it in the yaml.

`OmegaConf.to_object` of a composed node gives these dataclasses; entry points convert once (`zoo.config.typed`)
and pass them down. The model's runtime type stays `zoo.model.config.ModelConfig`, built from the composed node.
The `mixer/` group is not composed here: `zoo.model.config.mixer_defaults` reads it when a model is built.

This module imports only dataclasses, typing and omegaconf (Hydra inside `register`), so reading it is cheap.
OmegaConf resolves the postponed annotations of `from __future__ import annotations` with `typing.get_type_hints`
against this module's globals, so `int | None` and `list[int]` work here as in any other module.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from typing import Any

from omegaconf import MISSING

# UNIONS: a field that takes values of two types (`bool | str`) is typed `Any`, because OmegaConf 2.3's Union
# nodes fail inside Hydra's composition (an AssertionError in `_get_root` when a typed node is expanded); the code
# that reads such a field checks its type itself.

# RUN_OPTIONS: a train field made with `run_option()` changes how a job runs, not what it trains (the same updates
# up to float round-off, or only what is logged and when a checkpoint is written). A run resumed or rerun under
# other values of these is the same job (zoo.train.loop._matches), so a grid can take a faster option between
# sittings without losing its runs. A new option of that kind is marked here, where it is declared.


def run_option() -> Any:
    return field(default=MISSING, metadata={"run_option": True})


# -- model/ -----------------------------------------------------------------------------------------------------


@dataclass
class ModelSchema:
    """`conf/model/*.yaml` (every architecture extends `transformer.yaml`, which names this schema)."""

    name: str = MISSING
    vocab_size: int = MISSING
    d_model: int = MISSING
    n_layers: int = MISSING
    head_dim: int = MISSING
    mixer: Any = MISSING  # a mixer name or a list of names repeated through the depth
    attn: dict[str, Any] = MISSING  # attention kwargs (conf/mixer/attn.yaml) + `layers`
    layers: list[str] | None = MISSING
    mixers: dict[str, Any] = MISSING  # mixer name -> kwargs over conf/mixer/<name>.yaml
    mlp: Any = MISSING  # an MLP name or a list of names repeated through the depth
    mlp_ratio: float = MISSING
    mlp_hidden: int | None = MISSING  # the MLP's hidden size exactly, over mlp_ratio
    norm_position: Any = MISSING  # pre | post, or a list of them repeated through the depth
    tie_embeddings: bool = MISSING
    norm_eps: float = MISSING
    init_std: float = MISSING
    learned_positions: int | None = MISSING  # learned absolute position embeddings for this many positions
    shared: dict[str, Any] = MISSING  # shared blocks reused at several layers (zoo/model/shared.py)


# -- data/ ------------------------------------------------------------------------------------------------------
# Every field but `name` (and text's `_vocab` table) is a keyword argument of the dataset's builder in
# `zoo.data.DATASETS` (tests/zoo/test_data_defaults.py checks both ways).


@dataclass
class DataConfig:
    """What every `conf/data/*.yaml` has; `name` picks the builder."""

    name: str = MISSING
    vocab_size: int | None = MISSING  # text / hf derive it from the tokenizer (null until resolved)
    seq_len: int = MISSING
    seed: int = MISSING


@dataclass
class MqarData(DataConfig):
    num_kv_pairs: int = MISSING
    train_size: int = MISSING
    test_size: int = MISSING
    power_a: float = MISSING
    random_non_queries: bool = MISSING
    mix_kv_pairs: list[int] = MISSING  # more kv counts: each set is split evenly over num_kv_pairs and these


@dataclass
class PasskeyData(DataConfig):
    train_size: int = MISSING
    test_size: int = MISSING


@dataclass
class CopyData(DataConfig):
    min_len: int = MISSING
    train_size: int = MISSING
    test_size: int = MISSING


@dataclass
class StateTrackingData(DataConfig):
    task: str = MISSING
    modulus: int | None = MISSING  # mod_add only
    train_size: int = MISSING
    test_size: int = MISSING


@dataclass
class TextData(DataConfig):
    tokenizer: str = MISSING
    bpe_vocab_size: int = MISSING
    _vocab: dict[str, Any] = MISSING  # vocab_size per tokenizer: an interpolation table, not a setting
    val_fraction: float = MISSING
    paths: Any = MISSING  # null, a path, or a list of paths
    glob: str | None = MISSING
    max_bytes: int | None = MISSING


@dataclass
class HfData(DataConfig):
    path: str = MISSING
    config_name: str | None = MISSING
    data_files: Any = MISSING  # null, a path, a list of paths, or {split: paths}
    split: str = MISSING
    val_split: str | None = MISSING
    text_field: str = MISSING
    streaming: bool = MISSING
    max_bytes: int | None = MISSING
    max_docs: int | None = MISSING
    cache_dir: str | None = MISSING
    tokenizer: str = MISSING
    bpe_vocab_size: int = MISSING
    _vocab: dict[str, Any] = MISSING
    val_fraction: float = MISSING


@dataclass
class TokensData(DataConfig):
    path: str = MISSING
    order: str = MISSING
    val_blocks: int | None = MISSING


DATA_SCHEMAS: dict[str, type[DataConfig]] = {
    "mqar": MqarData,
    "passkey": PasskeyData,
    "copy": CopyData,
    "state_tracking": StateTrackingData,
    "text": TextData,
    "hf": HfData,
    "tokens": TokensData,
}


# -- train/ -----------------------------------------------------------------------------------------------------


@dataclass
class DistributedConfig:
    backend: str = MISSING


@dataclass
class LogConfig:
    tensorboard: bool = MISSING
    wandb: dict[str, Any] | None = MISSING  # wandb.init arguments


@dataclass
class EarlyStopConfig:
    metric: str | None = MISSING  # a held-out metric name (e.g. mqar/accuracy); null = train for max_steps
    mode: str = MISSING  # max | min
    threshold: float = MISSING
    patience: int = MISSING
    stop_sweeping: list[str] = MISSING  # config keys a multirun sweeps to reach the target (e.g. [train.lr])


@dataclass
class TrainConfig:
    max_steps: int = MISSING
    batch_size: int = MISSING  # the global batch of one optimizer step
    grad_accum_steps: int = MISSING  # micro-batches of batch_size / grad_accum_steps rows per optimizer step
    loss_chunk_size: int = run_option()  # tokens per chunk of the LM head's loss (0 = materialized logits)
    optimizer_impl: str = run_option()  # auto | foreach | fused | for_loop (see zoo.train.loop.optimizer_impl)
    activation_checkpointing: int = run_option()  # 0 none | 1 every block | k every k-th block (zoo.train.wrappers)
    compile: str = run_option()  # none | model | blocks: torch.compile of the training forward (zoo.train.wrappers)
    prefetch: int = run_option()  # batches drawn ahead in a background thread (0: none)
    peak_flops: float | None = run_option()  # FLOP/s of one device for train/mfu; null = auto (zoo.train.throughput)
    lr: float = MISSING
    schedule: str = MISSING  # cosine | wsd | constant (see zoo.train.loop.lr_at)
    min_lr_ratio: float = MISSING
    warmup_steps: int = MISSING
    decay_fraction: float = MISSING
    weight_decay: float = MISSING
    betas: list[float] = MISSING
    grad_clip: float = MISSING
    seed: int = MISSING
    resume: Any = MISSING  # false, true (this run folder) or a run folder's path (a union: see UNIONS)
    log_every: int = run_option()
    eval_every: int = MISSING
    save_every: int = run_option()
    device: str = MISSING
    num_threads: int | None = run_option()
    distributed: DistributedConfig = MISSING
    fsdp: bool = MISSING
    log: LogConfig = run_option()
    early_stop: EarlyStopConfig = MISSING


RUN_OPTIONS = tuple(f"train.{f.name}" for f in fields(TrainConfig) if f.metadata.get("run_option"))


# -- eval/ and its groups eval/recall, eval/lm_eval, eval/final ----------------------------------------------------


@dataclass
class MqarRecall:
    seq_lens: list[int] = MISSING
    num_kv_pairs: list[int] = MISSING
    random_non_queries: bool = MISSING  # as data.mqar's: random tokens (true) or zeros between the queries
    num_examples: int = MISSING
    batch_size: int = MISSING
    seed: int = MISSING


@dataclass
class CopyRecall:
    lengths: list[int] = MISSING
    num_examples: int = MISSING
    batch_size: int = MISSING
    exact_threshold: float = MISSING
    seed: int = MISSING


@dataclass
class StateTrackingRecall:
    task: str | None = MISSING  # the task the model was trained on; null: skipped with a note
    modulus: int | None = MISSING
    lengths: list[int] = MISSING
    num_examples: int = MISSING
    batch_size: int = MISSING
    seed: int = MISSING


@dataclass
class NeedleRecall:
    """What the needle tasks (passkey, niah) share: long prompts streamed through the cache under a budget."""

    lengths: list[int] = MISSING
    batch_size: int = MISSING
    prefill_chunk: int = MISSING
    memory_budget_gb: float = MISSING
    time_budget_s: float = MISSING
    seed: int = MISSING


@dataclass
class PasskeyRecall(NeedleRecall):
    depths: list[float] = MISSING
    trials: int = MISSING


@dataclass
class NiahRecall(NeedleRecall):
    num_keys: int = MISSING
    num_examples: int = MISSING


@dataclass
class RecallConfig:
    """`conf/eval/recall/*.yaml`: the recall suite (`eval.recall`); one section per task of `zoo.evals.recall`."""

    tasks: list[str] = MISSING
    device: str = MISSING
    mqar: MqarRecall = MISSING
    copy: CopyRecall = MISSING
    state_tracking: StateTrackingRecall = MISSING
    passkey: PasskeyRecall = MISSING
    niah: NiahRecall = MISSING


@dataclass
class LMEvalConfig:
    """`conf/eval/lm_eval/*.yaml` (`eval.lm_eval`): lm-eval's run settings and the `zoo` model type's defaults."""

    tasks: list[str] = MISSING
    include_path: Any = MISSING  # null, a folder, or a list of folders
    limit: Any = MISSING  # null, documents per task (an int), or a fraction < 1 (a union: see UNIONS)
    num_fewshot: int | None = MISSING
    metadata: dict[str, Any] = MISSING
    device: str = MISSING
    dtype: str = MISSING
    batch_size: int = MISSING
    max_length: int | None = MISSING
    fallback_max_length: int = MISSING
    max_gen_toks: int = MISSING
    prefill_chunk: int = MISSING


@dataclass
class FinalBenchConfig:
    lengths: list[int] = MISSING
    gen_len: int = MISSING
    batch_size: int = MISSING
    prefill_chunk: int = MISSING
    seed: int = MISSING


@dataclass
class FinalEvalConfig:
    """`conf/eval/final/*.yaml` (`eval.final`): what a training job evaluates on itself at the end."""

    recall: list[str] = MISSING
    lm_eval: list[str] = MISSING
    bench: FinalBenchConfig = MISSING


@dataclass
class EvalConfig:
    """`conf/eval/*.yaml`: evaluation inside training, plus the nested groups (same paths as before the split)."""

    batch_size: int = MISSING
    max_examples: int | None = MISSING
    state_bytes_at: list[int] = MISSING
    ar_ngram: dict[str, int] = MISSING  # tokenizer type -> n of the AR-slice n-grams (zoo.evals.ar_slice)
    repeat: bool = MISSING  # text data: val/ppl_repeat, each eval block's first half shown twice (zoo.evals.repeat)
    recall: RecallConfig = MISSING
    lm_eval: LMEvalConfig = MISSING
    final: FinalEvalConfig = MISSING


# -- bench/ -----------------------------------------------------------------------------------------------------


@dataclass
class BenchSize:
    d_model: int = MISSING
    n_layers: int = MISSING
    head_dim: int | None = None  # optional: each architecture's own head_dim (the transformer's for HF peers)


@dataclass
class BenchConfig:
    """`conf/bench/*.yaml` (`bench`). A plain dataclass, so zoo-bench's jobs pickle it to their processes."""

    archs: list[str] | None = MISSING
    attn_layers: list[int] | None = MISSING
    peers: list[str] | None = MISSING
    sizes: list[BenchSize] = MISSING
    vocab_size: int = MISSING
    prompt_lens: list[int] = MISSING
    gen_tokens: int = MISSING
    batch_sizes: list[int] = MISSING
    batch_max_prompt: int = MISSING
    prefill_chunk: int = MISSING
    device: str = MISSING
    dtype: str = MISSING
    memory_budget_gb: float = MISSING
    time_budget_s: float = MISSING
    seed: int = MISSING
    isolate: bool = MISSING
    quantize: list[str] = MISSING  # the zoo's rows per linear-weight mode: none (as built), int8, bf16, fp16
    kv_cache: list[str] = MISSING  # ... and per KV-cache dtype of their attention layers: none (as built), bf16
    llamacpp: list[str] = MISSING  # path= of a transformers checkpoint: llama.cpp rows at these GGUF types
    llamacpp_flash_attn: list[bool] = MISSING
    llamacpp_converter: str | None = MISSING  # a llama.cpp checkout; null: the installed version's converter


# -- the roots -----------------------------------------------------------------------------------------------------


@dataclass
class TrainRoot:
    """`conf/config.yaml` (`zoo-train`). `data` is the schema of the chosen dataset (a `DataConfig` subclass)."""

    model: ModelSchema = MISSING
    data: DataConfig = MISSING
    train: TrainConfig = MISSING
    eval: EvalConfig = MISSING


@dataclass
class EvalRoot:
    """`conf/zoo_eval.yaml` (`zoo-eval`)."""

    path: str = MISSING
    tasks: list[str] = MISSING  # recall tasks (default: eval.recall.tasks)
    lm_tasks: list[str] = MISSING  # lm-eval tasks (default: eval.lm_eval.tasks)
    eval: EvalConfig = MISSING


@dataclass
class BenchRoot:
    """`conf/zoo_bench.yaml` (`zoo-bench`)."""

    path: str | None = MISSING
    out: str = MISSING
    bench: BenchConfig = MISSING


# ConfigStore entries: config path -> schema. They live under `schema/`, not in the groups they type, so a group's
# options (`model=glob(*)`, `--help`) are only the yaml files of conf/.
SCHEMAS: dict[str, type] = {
    "schema/config": TrainRoot,
    "schema/zoo_eval": EvalRoot,
    "schema/zoo_bench": BenchRoot,
    "schema/model": ModelSchema,
    **{f"schema/data/{name}": schema for name, schema in DATA_SCHEMAS.items()},
    "schema/train": TrainConfig,
    "schema/eval": EvalConfig,
    "schema/eval/recall": RecallConfig,
    "schema/eval/lm_eval": LMEvalConfig,
    "schema/eval/final": FinalEvalConfig,
    "schema/bench": BenchConfig,
}

_registered = False


def register() -> None:
    """Store every schema in Hydra's ConfigStore (once). Call before composing: the yamls' defaults lists name
    them, so composing without them fails with "Could not load 'schema/<group>'"."""
    global _registered
    if _registered:
        return
    from hydra.core.config_store import ConfigStore

    store = ConfigStore.instance()
    for path, node in SCHEMAS.items():
        group, _, name = path.rpartition("/")
        store.store(group=group, name=name, node=node)
    _registered = True
