"""`zoo-train` (also `python -m zoo.train`): one training loop for every architecture.

    zoo-train +experiment=quickstart
    zoo-train model=gla data=text train.max_steps=500
    zoo-train hydra.run.dir=runs/mine train.resume=true      # continue runs/mine from its checkpoint

Writes the run folder of docs/architecture.md: `.hydra/config.yaml`, `metrics.jsonl`, `checkpoint/`
(weights, config.json, tokenizer, optimizer state), `results.json`.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import sys
import time
from collections.abc import Callable
from pathlib import Path

import hydra
import torch
import torch.nn.functional as F
from omegaconf import DictConfig, OmegaConf, open_dict
from tqdm.auto import tqdm

from zoo import schemas
from zoo.config import check_command_line, conf_dir, pick_device, typed
from zoo.data import IGNORE_INDEX, BatchStream, build_dataset, prefetch
from zoo.errors import CheckpointError, ConfigError, ZooError
from zoo.evals import final as final_eval
from zoo.evals.ar_slice import ar_hits
from zoo.evals.repeat import repeat_metrics
from zoo.io.checkpoint import load_weights, write_model_files
from zoo.io.results import read_results, truncate_metrics, update_results
from zoo.io.runs import CHECKPOINT, RESULTS, readable_dir, write_dir_atomically
from zoo.model.lm import HybridLM, build_model
from zoo.rank import is_main
from zoo.schemas import RUN_OPTIONS, EarlyStopConfig, EvalConfig, TrainConfig, TrainRoot
from zoo.train import distributed
from zoo.train.failures import clear_failure, record_failure, release_memory
from zoo.train.loggers import RunLogger
from zoo.train.state import load_trainer_state, save_trainer_state
from zoo.train.throughput import Throughput
from zoo.train.wrappers import apply_wrappers
from zoo.train.wrappers import check_options as check_wrapper_options

log = logging.getLogger("zoo.train.loop")


SCHEDULES = ("cosine", "wsd", "constant")
OPTIMIZER_IMPLS = ("auto", "foreach", "fused", "for_loop")
_IMPL_FLAGS = {"for_loop": {"foreach": False}, "foreach": {"foreach": True}, "fused": {"fused": True}}


def check_step_options(cfg: TrainConfig) -> None:
    """The options of how a step is computed, before anything is built (`train.grad_accum_steps` against the
    batch is `distributed.check_batch`'s, which knows the world size)."""
    if cfg.loss_chunk_size < 0:
        raise ConfigError(
            f"train.loss_chunk_size={cfg.loss_chunk_size}; valid: 0 (off: materialized logits) or a positive number "
            "of tokens per chunk"
        )
    if cfg.optimizer_impl not in OPTIMIZER_IMPLS:
        raise ConfigError(f"train.optimizer_impl={cfg.optimizer_impl!r}; valid: {', '.join(OPTIMIZER_IMPLS)}")
    check_wrapper_options(cfg.activation_checkpointing, cfg.compile)
    if cfg.prefetch < 0:
        raise ConfigError(f"train.prefetch={cfg.prefetch}; valid: 0 (no background thread) or batches to draw ahead")
    if cfg.peak_flops is not None and not cfg.peak_flops > 0:
        raise ConfigError(f"train.peak_flops={cfg.peak_flops}; valid: null (auto) or a positive FLOP/s per device")


def lr_at(step: int, cfg: TrainConfig) -> float:
    """Linear warmup to `lr`, then `cfg.schedule`: `cosine` decays to `min_lr_ratio * lr` at `max_steps`; `wsd`
    (warmup-stable-decay) holds `lr` and decays linearly to `min_lr_ratio * lr` over the last `decay_fraction` of
    `max_steps`; `constant` holds `lr`. The last two do not spend a run that stops early on a decay."""
    if cfg.schedule not in SCHEDULES:
        raise ConfigError(f"train.schedule={cfg.schedule!r}; valid schedules: {', '.join(SCHEDULES)}")
    if step < cfg.warmup_steps:
        return cfg.lr * (step + 1) / cfg.warmup_steps
    floor = cfg.lr * cfg.min_lr_ratio
    if cfg.schedule == "constant":
        return cfg.lr
    if cfg.schedule == "wsd":
        decay_steps = max(1, round(cfg.decay_fraction * cfg.max_steps))
        into_decay = step - (cfg.max_steps - decay_steps)
        return cfg.lr if into_decay < 0 else cfg.lr - (cfg.lr - floor) * min(1.0, into_decay / decay_steps)
    progress = (step - cfg.warmup_steps) / max(1, cfg.max_steps - cfg.warmup_steps)
    cosine = 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))
    return floor + (cfg.lr - floor) * cosine


class EarlyStop:
    """`train.early_stop`: whether the held-out `metric` has been at or past `threshold` for `patience`
    evaluations in a row; `reached` is the step of the evaluation where that first held (None until then)."""

    def __init__(self, cfg: EarlyStopConfig, hits: int = 0, reached: int | None = None):
        if cfg.mode not in ("max", "min") or cfg.patience < 1:
            raise ConfigError(
                f"train.early_stop needs mode max or min and patience >= 1, got {cfg.mode}, {cfg.patience}"
            )
        self.cfg, self.hits, self.reached = cfg, hits, reached

    @property
    def enabled(self) -> bool:
        return self.cfg.metric is not None

    def update(self, step: int, metrics: dict[str, float]) -> bool:
        """Record one evaluation at `step`; True when training should stop."""
        if not self.enabled:
            return False
        if self.cfg.metric not in metrics:
            raise ConfigError(
                f"train.early_stop.metric={self.cfg.metric!r} is not evaluated; evaluated: {sorted(metrics)}"
            )
        value = metrics[self.cfg.metric]
        past = value >= self.cfg.threshold if self.cfg.mode == "max" else value <= self.cfg.threshold
        self.hits = self.hits + 1 if past else 0
        if self.hits >= self.cfg.patience and self.reached is None:
            self.reached = step
        return self.reached is not None


def optimizer_impl(name: str, params: list[torch.Tensor]) -> str:
    """`train.optimizer_impl` resolved: `auto` is `fused` (one kernel for every parameter) when they all live on
    CUDA, else `foreach` (a few batched ops per step; on CPU it updates the weights bit for bit as `for_loop`)."""
    if name not in OPTIMIZER_IMPLS:
        raise ConfigError(f"train.optimizer_impl={name!r}; valid: {', '.join(OPTIMIZER_IMPLS)}")
    if name != "auto":
        return name
    return "fused" if params and all(p.device.type == "cuda" for p in params) else "foreach"


def make_optimizer(model: torch.nn.Module, cfg: TrainConfig) -> torch.optim.AdamW:
    """AdamW with weight decay on matrices and embeddings only (not norms, biases, gate vectors), run by
    `train.optimizer_impl` (`optimizer_impl`). The implementations hold the same state, so a checkpoint written
    with one resumes with another (`zoo.train.state.load_trainer_state` keeps the running one's flags)."""
    decay = [p for p in model.parameters() if p.ndim >= 2]
    no_decay = [p for p in model.parameters() if p.ndim < 2]
    groups = [{"params": decay, "weight_decay": cfg.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    impl = optimizer_impl(cfg.optimizer_impl, decay + no_decay)
    log.info("AdamW implementation: %s (train.optimizer_impl=%s)", impl, cfg.optimizer_impl)
    try:
        return torch.optim.AdamW(groups, lr=cfg.lr, betas=tuple(cfg.betas), **_IMPL_FLAGS[impl])
    except RuntimeError as e:  # fused kernels exist for some devices only
        raise ConfigError(
            f"train.optimizer_impl={cfg.optimizer_impl} cannot run here ({e}); valid here: foreach, for_loop, auto"
        ) from e


def lm_loss(logits: torch.Tensor, labels: torch.Tensor, reduction: str = "mean") -> torch.Tensor:
    return F.cross_entropy(
        logits.flatten(0, 1).float(), labels.flatten(), ignore_index=IGNORE_INDEX, reduction=reduction
    )


def labelled_logits(model, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """`(logits [n, vocab], labels [n], mask [B, T])` of the labelled positions only: the LM head runs where
    a loss is taken (MQAR labels a few positions per sequence), and the loss is the same as over all of them."""
    mask = y != IGNORE_INDEX
    return model(x, logits_mask=mask).logits, y[mask], mask


@torch.no_grad()
def evaluate(model: HybridLM, data, name: str, eval_cfg: EvalConfig, device, autocast) -> dict[str, float]:
    """Held-out metrics: MQAR accuracy at label positions only, or validation loss / perplexity per token and,
    for text, bits per byte and perplexity per byte (total NLL over the UTF-8 bytes the tokens encode), the AR
    slice and the repeated spans."""
    model.eval()
    try:
        return _held_out_metrics(model, data, name, eval_cfg, device, autocast)
    finally:
        model.train()


def _held_out_metrics(model: HybridLM, data, name: str, eval_cfg: EvalConfig, device, autocast) -> dict[str, float]:
    inputs, labels = data.eval
    if eval_cfg.max_examples is not None:
        inputs, labels = inputs[: eval_cfg.max_examples], labels[: eval_cfg.max_examples]
    correct = total = 0
    loss_sum = 0.0
    n = eval_cfg.ar_ngram.get(getattr(data.tokenizer, "type", None)) if data.metric == "ppl" else None
    ar = {"nll": 0.0, "count": 0}  # the AR slice of the targets (text data with an ar_ngram for its tokenizer)
    for i in range(0, len(inputs), eval_cfg.batch_size):
        x, y = inputs[i : i + eval_cfg.batch_size].to(device), labels[i : i + eval_cfg.batch_size].to(device)
        with autocast():
            logits, targets, mask = labelled_logits(model, x, y)
        correct += (logits.argmax(-1) == targets).sum().item()
        total += len(targets)
        nll = torch.zeros(y.shape, device=device)  # 0 where the label is ignored
        nll[mask] = F.cross_entropy(logits.float(), targets, reduction="none")
        loss_sum += nll.sum().item()
        if n is not None:
            hits = ar_hits(torch.cat([x, y[:, -1:]], dim=1), n) & mask  # the block, then its last label
            ar["nll"] += nll[hits].sum().item()
            ar["count"] += int(hits.sum())
    loss = loss_sum / max(total, 1)
    if data.metric == "accuracy":
        return {f"{name}/accuracy": correct / max(total, 1), f"{name}/loss": loss}
    metrics = {"val/loss": loss, "val/ppl": math.exp(min(loss, 50.0))}
    if n is not None:
        rest = (loss_sum - ar["nll"], total - ar["count"])
        metrics["val/ar_fraction"] = ar["count"] / max(total, 1)
        metrics["val/ppl_ar"] = math.exp(min(ar["nll"] / ar["count"], 50.0)) if ar["count"] else float("nan")
        metrics["val/ppl_non_ar"] = math.exp(min(rest[0] / rest[1], 50.0)) if rest[1] else float("nan")
    if data.metric == "ppl" and eval_cfg.repeat:
        metrics |= repeat_metrics(model, inputs, labels, eval_cfg.batch_size, device, autocast)
    eval_bytes = getattr(data, "eval_bytes", None)  # text data: UTF-8 bytes behind each eval block's labels
    if eval_bytes is not None:  # per byte, models with different tokenizers compare
        nll_per_byte = loss_sum / max(int(eval_bytes[: len(inputs)].sum()), 1)
        metrics |= {"val/bpb": nll_per_byte / math.log(2), "val/ppl_byte": math.exp(min(nll_per_byte, 50.0))}
    return metrics


def train_step(
    train_model, model, optimizer, x, y, cfg: TrainConfig, dctx, autocast
) -> tuple[torch.Tensor, torch.Tensor]:
    """One optimizer step on this rank's share `x, y` of the global batch; returns `(loss, grad_norm)`, the global
    batch's mean loss (the same on every rank) and the gradient norm before clipping.

    The share runs in `cfg.grad_accum_steps` micro-batches, one forward and backward each, whose gradients add
    up: every micro-batch's summed loss is divided by the labelled tokens of the whole global batch, so the sum
    is the gradient of the global batch's mean loss, as one pass over it would give. Data-parallel gradients are
    synchronised once, in the last micro-batch's backward (`dctx.gradient_sync`)."""
    count = dctx.global_count(y)  # labelled tokens in the whole global batch
    steps = cfg.grad_accum_steps
    micro = len(x) // steps
    total = torch.zeros((), device=y.device)
    for i in range(steps):
        xi, yi = x[i * micro : (i + 1) * micro], y[i * micro : (i + 1) * micro]
        with dctx.gradient_sync(train_model, i == steps - 1):
            with autocast():
                loss_sum = train_model(xi, labels=yi, loss_chunk_size=cfg.loss_chunk_size).loss_sum
            dctx.loss_for_backward(loss_sum, count).backward()
        total += loss_sum.detach()
    loss = dctx.global_loss(total, count)  # the global batch's mean loss, the same on every rank
    if not torch.isfinite(loss):
        raise FloatingPointError(f"loss is {loss.item()}")
    grad_norm = dctx.plain(torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip))
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    return loss, grad_norm


def progress(speed: dict[str, float]) -> dict[str, str]:
    """The throughput metrics (`Throughput.read`) as the progress bar shows them."""
    shown = {"tok/s": f"{speed['train/tokens_per_s']:.4g}", "mem": f"{speed['train/peak_mem_bytes'] / 2**30:.2f}G"}
    if "train/mfu" in speed:
        shown["mfu"] = f"{speed['train/mfu']:.1%}"
    return shown


def data_stream(data, tcfg: TrainConfig, start_step: int, saved: dict | None) -> BatchStream:
    """The training batches from `start_step` on: where the checkpoint's stream stood (`saved`, its `data` meta:
    epoch and position, so a resume continues on exactly the next window even with another batch size), or, for a
    checkpoint from before streams were saved, `start_step` batches from the start. Resuming on another token
    corpus than the run's is a ConfigError."""
    if saved is None:
        return BatchStream.at_step(data.train, tcfg.batch_size, tcfg.seed, start_step, data.shuffle)
    if saved.get("fingerprint") != data.fingerprint:
        raise ConfigError(
            f"the checkpoint was trained on another corpus ({saved.get('fingerprint')}) than data.path's "
            f"({data.fingerprint}): resume with the run's own data, or start a new run"
        )
    return BatchStream(data.train, tcfg.batch_size, tcfg.seed, data.shuffle, saved)


def save_checkpoint(run_dir: Path, model: HybridLM, optimizer, meta: dict) -> None:
    def write(tmp: Path) -> None:
        write_model_files(model, tmp)
        save_trainer_state(tmp, optimizer, meta)

    write_dir_atomically(run_dir / CHECKPOINT, write)


def resume_dir(run_dir: Path, resume) -> Path | None:
    """The checkpoint folder to resume from (`train.resume`: false, true = this run folder, or a path)."""
    if resume is False or resume is None:
        return None
    source = run_dir if resume is True else Path(str(resume))
    ckpt = source if (source / "trainer_state.json").exists() else readable_dir(source / CHECKPOINT)
    if not (ckpt / "trainer_state.json").exists():
        if resume is True:
            log.info("train.resume=true but %s holds no checkpoint yet: starting from step 0", ckpt)
            return None
        raise CheckpointError(f"train.resume={resume}: no checkpoint with trainer state under {source}")
    return ckpt


def run_training(cfg: DictConfig, run_dir, on_step: Callable[[int, float], None] | None = None) -> dict:
    """Train the model of `cfg` into `run_dir`; returns the final metrics. `on_step(step, loss)` is
    called after every optimizer step (tests use it to interrupt a run)."""
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    root: TrainRoot = typed(cfg)  # checked against zoo.schemas once; the model is built from the node, cfg.model
    tcfg, eval_cfg = root.train, root.eval
    check_step_options(tcfg)
    if tcfg.num_threads:
        torch.set_num_threads(tcfg.num_threads)
    device = pick_device(tcfg.device)
    dctx = distributed.setup(tcfg.distributed, tcfg.fsdp, device)  # under torchrun: join the process group
    device = dctx.device
    distributed.check_batch(tcfg.batch_size, dctx, tcfg.grad_accum_steps)
    run_dir = dctx.agree_on_run_dir(run_dir)  # Hydra's ${now:...} may differ between the ranks
    data = build_dataset(root.data)  # impossible data settings are ConfigErrors (one line, before training)
    if root.model.vocab_size < data.vocab_size:
        raise ConfigError(f"model.vocab_size={root.model.vocab_size} < data vocab size {data.vocab_size}")

    torch.manual_seed(tcfg.seed)
    model = build_model(cfg.model).to(device)
    model.tokenizer = data.tokenizer
    final_eval.check_fits(model, eval_cfg)  # before step 0, not after the whole budget
    use_bf16 = device.type == "cuda"

    def autocast():
        return torch.autocast(device.type, dtype=torch.bfloat16, enabled=use_bf16)

    start_step, elapsed_before, stopper = 0, 0.0, EarlyStop(tcfg.early_stop)
    ckpt = resume_dir(run_dir, tcfg.resume)
    if ckpt is not None:
        load_weights(model, ckpt)  # into the whole model, before DDP / FSDP2 take it over
    apply_wrappers(model, tcfg.activation_checkpointing, tcfg.compile)  # names unchanged; before DDP / FSDP2
    train_model = dctx.wrap(model)  # `model` itself, or its DDP wrapper (FSDP2 shards `model` in place)
    optimizer = make_optimizer(model, tcfg)  # after sharding: FSDP2's optimizer holds the local shards
    if ckpt is not None:
        meta = dctx.load_optimizer(ckpt, model, optimizer, load_trainer_state)
        start_step, elapsed_before = meta["step"], meta.get("train_time_s", 0.0)
        stopper = EarlyStop(tcfg.early_stop, meta.get("early_stop_hits", 0), meta.get("steps_to_target"))
        log.info("resumed from %s at step %d", ckpt, start_step)
    if dctx.is_main:
        truncate_metrics(run_dir, start_step)  # records past the checkpoint are re-logged (or a fresh start)
    logger = RunLogger(run_dir, tcfg.log, OmegaConf.to_container(cfg, resolve=True), start_step, dctx.is_main)

    n_params = model.num_params()
    log.info("model %s: %s params, layers %s, device %s", root.model.name, f"{n_params:,}", model.layer_mixers, device)
    run_info = {"model": {"layers": model.layer_mixers}, "backend": model.kernel_backends(), "device": str(device)}
    if dctx.is_main:
        update_results(
            run_dir,
            {"params": n_params},
            status="running",
            config=job_config(cfg),
            config_sha=config_sha(cfg),
            point_sha=point_sha(cfg),
            **run_info,
        )
    evals: dict[str, float] = {}
    meter = Throughput(model, root.data.seq_len, device, dctx.world, tcfg.peak_flops)
    t0 = time.perf_counter()
    model.train()
    done = start_step  # optimizer steps taken so far
    bar = tqdm(total=tcfg.max_steps, initial=start_step, desc="train", dynamic_ncols=True, disable=None)
    stream = data_stream(data, tcfg, start_step, meta.get("data") if ckpt is not None else None)
    data_state = stream.state()
    batches = prefetch(iter(stream), tcfg.prefetch, pin_memory=device.type == "cuda")
    for step, (x, y, next_state) in enumerate(batches, start_step):
        if step >= tcfg.max_steps or stopper.reached is not None:
            break
        data_state = next_state  # where the stream stands once this batch is trained on
        lr = lr_at(step, tcfg)
        for group in optimizer.param_groups:
            group["lr"] = lr
        tokens, labelled = y.numel(), int((y != IGNORE_INDEX).sum())  # the global batch's, before this rank's share
        x, y = dctx.local_slice(x, y)  # this rank's share of the global batch
        with meter.measure(tokens, labelled):
            x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
            try:
                loss, grad_norm = train_step(train_model, model, optimizer, x, y, tcfg, dctx, autocast)
            except FloatingPointError as e:
                raise FloatingPointError(f"{e} at step {step}") from None
            loss_value = loss.item()  # waits for the device: the step's time is all in
        done = step + 1
        bar.update(1)
        record = {"step": done, "train/loss": loss_value}
        if done % tcfg.log_every == 0 or done == tcfg.max_steps:
            speed = meter.read()
            bar.set_postfix(loss=f"{loss_value:.4f}", **progress(speed))
            logger.log(
                record
                | {"lr": lr, "grad_norm": grad_norm.item(), "time_s": elapsed_before + time.perf_counter() - t0}
                | speed
            )
        stop = False
        if done % tcfg.eval_every == 0 or done == tcfg.max_steps:
            evals = evaluate(model, data, root.data.name, eval_cfg, device, autocast)
            logger.log({"step": done, **evals})
            bar.set_postfix({"loss": f"{loss_value:.4f}", **{k: f"{v:.3f}" for k, v in evals.items()}})
            stop = stopper.update(done, evals)  # every rank evaluates the same model, so all stop together
            if stop:
                log.info(
                    "early stop at step %d: %s reached %s", done, tcfg.early_stop.metric, tcfg.early_stop.threshold
                )
        if done % tcfg.save_every == 0 or done == tcfg.max_steps or stop:
            meta = {"step": done, "train_time_s": elapsed_before + time.perf_counter() - t0}
            meta |= {"early_stop_hits": stopper.hits, "steps_to_target": stopper.reached}
            meta["data"] = data_state | {"fingerprint": data.fingerprint}
            views = dctx.checkpoint_views(model, optimizer)  # every rank calls: FSDP2 gathers here
            if views is not None:  # rank 0
                save_checkpoint(run_dir, *views, meta)
        if on_step is not None:
            on_step(done, loss_value)
        if stop:
            break
    batches.close()  # stops the prefetch thread
    bar.close()
    logger.close()
    if not dctx.is_main:  # rank 0 alone finishes the run folder (and evaluates a gathered copy under FSDP2)
        dctx.gather_model(model, lambda: build_model(cfg.model))
        return {
            "params": n_params,
            "train/steps": done,
            "train/time_s": elapsed_before + time.perf_counter() - t0,
            **evals,
        }
    model = dctx.gather_model(model, lambda: build_model(cfg.model)) or model
    train_time = elapsed_before + time.perf_counter() - t0
    metrics = {"params": n_params, "train/steps": done, "train/time_s": train_time, **evals}
    if stopper.enabled:  # sample efficiency: null when the budget ran out first
        reached = stopper.reached
        metrics["train/steps_to_target"] = reached
        metrics["train/tokens_to_target"] = None if reached is None else reached * tcfg.batch_size * root.data.seq_len
    for length in eval_cfg.state_bytes_at:
        metrics[f"state/bytes@{length}"] = model.state_bytes(length)
    if final_eval.wanted(eval_cfg):  # eval.final: recall / throughput / lm-eval on the trained model
        update_results(run_dir, metrics, status="evaluating", **run_info)
        metrics.update(final_eval.run_final_eval(model, eval_cfg, root.data.seq_len, run_dir, device))
    update_results(run_dir, metrics, status="completed", **run_info)
    return metrics


def job_config(cfg: DictConfig, without: list[str] | tuple[str, ...] = ()) -> dict:
    """A job's resolved config as JSON data, without `train.resume` (a resumed run is the same job) and the
    dotted keys `without`, which must be config keys."""
    data = json.loads(json.dumps(OmegaConf.to_container(cfg, resolve=True), default=str))
    data.get("train", {}).pop("resume", None)
    for key in without:
        if not _drop(data, key):
            raise ConfigError(f"train.early_stop.stop_sweeping names {key!r}, which is not a config key")
    return data


def _drop(data: dict, key: str) -> bool:
    """Remove the dotted `key` from the nested dict `data`; whether it was there."""
    *parents, leaf = key.split(".")
    for part in parents:
        data = data.get(part) if isinstance(data, dict) else None
    return isinstance(data, dict) and data.pop(leaf, _drop) is not _drop


def config_sha(cfg: DictConfig, without: list[str] | tuple[str, ...] = ()) -> str:
    """A fingerprint of `job_config(cfg, without)`, kept in results.json for people and for older readers."""
    return hashlib.sha256(json.dumps(job_config(cfg, without), sort_keys=True).encode()).hexdigest()[:16]


def point_sha(cfg: DictConfig) -> str | None:
    """The fingerprint of a job's point in a sweep: its config without `train.early_stop.stop_sweeping`'s keys."""
    keys = list(cfg.train.early_stop.stop_sweeping)
    return config_sha(cfg, keys) if keys else None


def same_job(recorded: dict, current: dict) -> bool:
    """Whether a run folder's recorded job config is the current job's. Only keys both have are compared: an
    option added to conf/ after the run was written defaults to the behaviour from before it existed (the rule for
    added options, docs/architecture.md), so a grid finished over several sittings survives new options."""
    for key in recorded.keys() & current.keys():
        old, new = recorded[key], current[key]
        if isinstance(old, dict) and isinstance(new, dict):
            if not same_job(old, new):
                return False
        elif old != new:
            return False
    return True


def _matches(results: dict, cfg: DictConfig, without: list[str]) -> bool | None:
    """Whether the run `results` (a results.json) holds the job `cfg` (`without` some keys, and never the
    `RUN_OPTIONS`): by its recorded `config`, else by the fingerprints that folders written before it kept (those
    count every key); None when it recorded neither."""
    if "config" in results:
        ignored = (*without, *RUN_OPTIONS)
        recorded = json.loads(json.dumps(results["config"]))  # a copy, to drop the ignored keys from
        for key in ignored:
            _drop(recorded, key)
        return same_job(recorded, job_config(cfg, ignored))
    sha = results.get("point_sha" if without else "config_sha")
    if sha is None:
        return None
    return sha == (point_sha(cfg) if without else config_sha(cfg))


def settled_by(cfg: DictConfig, sweep_dir: Path, run_dir: Path) -> Path | None:
    """The run folder under `sweep_dir` that already reached the early-stop target at this job's point, if any."""
    keys = list(cfg.train.early_stop.stop_sweeping)
    if not keys:
        return None
    for path in sorted(sweep_dir.glob(f"**/{RESULTS}")):
        other = read_results(path.parent)
        reached = other.get("metrics", {}).get("train/steps_to_target") is not None
        if path.parent != run_dir and other.get("status") == "completed" and reached and _matches(other, cfg, keys):
            return path.parent
    return None


def resume_sweep_job(cfg: DictConfig, run_dir: Path, job: int, sweep_dir: Path) -> bool:
    """Resumable sweeps: the state of a grid is what its run folders say. A job whose folder holds a completed run
    of the same config is skipped; a cut or failed one continues from its checkpoint; a folder holding another
    config's run is left alone (its job is reported, not run); a job whose point another run already settled
    (`train.early_stop.stop_sweeping`) is skipped. True when the job should run."""
    prior = read_results(run_dir)
    settled = None if prior.get("status") == "completed" else settled_by(cfg, sweep_dir, run_dir)
    if settled is not None:
        log.info("job %s: %s reached the target at this point, skipped (train.early_stop.stop_sweeping)", job, settled)
        return False
    if _matches(prior, cfg, []) is False:  # folders written before fingerprints existed count as the same job
        log.error("job %s: %s holds a run of another config; left as it is (use another hydra.sweep.dir)", job, run_dir)
        _restore_job_config(run_dir, prior)
        return False
    if prior.get("status") == "completed":
        log.info("job %s: completed in %s before, skipped", job, run_dir)
        _restore_job_config(run_dir, prior)
        return False
    if (readable_dir(run_dir / CHECKPOINT) / "trainer_state.json").exists():
        with open_dict(cfg):
            cfg.train.resume = True
        log.info("job %s: continues from the checkpoint in %s", job, run_dir)
    return True


def _restore_job_config(run_dir: Path, prior: dict) -> None:
    """Hydra writes `.hydra/config.yaml` of the current job before the task runs, also into the folder of a job the
    sweep then skips, where the file would no longer describe the run it holds: write back the config the run
    recorded in results.json (resolved; folders written before it was recorded are left as Hydra wrote them)."""
    if "config" in prior and (run_dir / ".hydra").is_dir():
        OmegaConf.save(OmegaConf.create(prior["config"]), run_dir / ".hydra" / "config.yaml")


def summary(cfg: DictConfig, metrics: dict, run_dir) -> str:
    name = cfg.model.name
    parts = [
        f"{name}: {metrics['params'] / 1e6:.2f}M params",
        f"{metrics['train/steps']} steps",
        f"{metrics['train/time_s']:.0f} s",
    ]
    parts += [f"{k} {v:.4f}" for k, v in metrics.items() if k.endswith("/accuracy") or k.startswith("val/")]
    parts += [f"state {v / 1024:.1f} KiB @{k.split('@')[1]}" for k, v in metrics.items() if k.startswith("state/")]
    return " | ".join(parts) + f"\nrun folder: {run_dir}"


schemas.register()  # before @hydra.main composes: the yamls' defaults lists name the schemas


@hydra.main(version_base=None, config_path=str(conf_dir()), config_name="config")
def _hydra_main(cfg: DictConfig) -> None:
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    hydra_cfg = HydraConfig.get()
    run_dir = Path(hydra_cfg.runtime.output_dir)
    if hydra_cfg.mode == RunMode.MULTIRUN and not resume_sweep_job(
        cfg, run_dir, hydra_cfg.job.num, Path(hydra_cfg.sweep.dir)
    ):
        return
    clear_failure(run_dir)  # a resumed run's old error is history, not its status
    try:
        metrics = run_training(cfg, run_dir)
    except Exception as e:  # every failure is recorded in results.json (status: failed, error)
        message = record_failure(run_dir, e)
        if hydra_cfg.mode != RunMode.MULTIRUN:
            print(f"zoo-train: error: {message}", file=sys.stderr)
            sys.exit(2 if isinstance(e, ZooError) else 1)
        log.error("job %s failed, the sweep goes on: %s", hydra_cfg.job.num, message)
        metrics = None
    if metrics is None:
        release_memory()  # out here the traceback no longer holds the failed job's tensors
        return
    if is_main():  # under torchrun every rank returns here; one summary is enough
        print(summary(cfg, metrics, run_dir))


def main() -> None:
    sys.argv += distributed.hydra_overrides_for_rank()  # under torchrun, only rank 0 writes .hydra/ and the log
    check_command_line("zoo-train", "config")  # an unknown key or option: one line and exit code 2, before Hydra
    _hydra_main()


if __name__ == "__main__":
    main()
