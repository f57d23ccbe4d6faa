"""Self-evaluation at the end of a `zoo-train` job (`eval.final`: conf/eval/final/default.yaml).

A sweep job should leave a complete `results.json`, without a separate `zoo-eval` / `zoo-bench` pass per run
folder. After training, on the trained model and in the same process:
- `eval.final.recall`: recall tasks of `zoo.evals.recall` (settings from `eval.recall.<task>`);
- `eval.final.bench`: prefill and decode tokens/s at `lengths` (zoo.bench.cli's runner and timing), written as
  `bench/prefill_tok_s@<len>` and `bench/decode_tok_s@<len>`;
- `eval.final.lm_eval`: lm-eval tasks (settings from `eval.lm_eval`), written as `lm_eval/<task>/<metric>`.
Each part is merged into results.json as soon as it is done, so a later part that fails leaves the earlier
ones recorded. Everything is off by default.
"""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path

from omegaconf import DictConfig

from zoo.bench.measure import ZooRunner, time_cell
from zoo.config import typed
from zoo.errors import ConfigError
from zoo.evals.recall import run_suite
from zoo.io.results import update_results
from zoo.rank import is_main
from zoo.schemas import EvalConfig, FinalBenchConfig

log = logging.getLogger("zoo.evals.final")


def wanted(eval_cfg: EvalConfig | DictConfig) -> bool:
    """Whether `eval.final` asks for anything (`eval_cfg` is `eval`, typed or a composed node)."""
    final = (typed(eval_cfg) if isinstance(eval_cfg, DictConfig) else eval_cfg).final
    return bool(final.recall) or bool(final.lm_eval) or bool(final.bench.lengths)


def check_fits(model, eval_cfg: EvalConfig) -> None:
    """Refuse, before any training, a throughput length that `model` cannot read (a learned position table
    shorter than the prompt plus its generated tokens): the job would otherwise fail after training. Recall
    lengths past the table are skipped with a note instead, as the suite skips any task that does not fit."""
    bench, limit = eval_cfg.final.bench, model.max_positions
    too_long = [n for n in bench.lengths if limit is not None and n + bench.gen_len > limit]
    if too_long:
        raise ConfigError(
            f"eval.final.bench.lengths {too_long} plus gen_len={bench.gen_len} are past model.learned_positions="
            f"{limit}: set eval.final.bench.lengths to values <= {limit - bench.gen_len}, or [] for no throughput"
        )


def measure_throughput(model, bench_cfg: FinalBenchConfig, device) -> dict[str, float]:
    """Prefill and decode tokens/s of `model` at each prompt length of `bench_cfg.lengths` (batch `batch_size`,
    `gen_len` generated tokens), timed as zoo-bench does (`time_cell` on a `ZooRunner`)."""
    runner = ZooRunner(model, prefill_chunk=bench_cfg.prefill_chunk)
    vocab, batch, gen = model.config.vocab_size, bench_cfg.batch_size, bench_cfg.gen_len
    # one untimed pass at the shortest length: the first call pays for allocations and kernel selection
    time_cell(runner, vocab, batch, min(bench_cfg.lengths), gen, device, bench_cfg.seed)
    metrics = {}
    for length in bench_cfg.lengths:
        cell = time_cell(runner, vocab, batch, length, gen, device, bench_cfg.seed)
        metrics[f"bench/prefill_tok_s@{length}"] = cell["prefill_tok_s"]
        metrics[f"bench/decode_tok_s@{length}"] = cell["decode_tok_s"]
    return metrics


def run_final_eval(model, eval_cfg: EvalConfig, seq_len: int, run_dir, device) -> dict:
    """The parts of `eval_cfg.final` that are switched on, on `model` (which carries its tokenizer; `seq_len` is
    its training data.seq_len, lm-eval's default max_length); each part's metrics are merged into
    `run_dir/results.json` when done. Returns all of them."""
    # under torchrun every rank trains, but one evaluation per job is enough (and rank 0 owns results.json)
    if not wanted(eval_cfg) or not is_main():
        return {}
    model = getattr(model, "module", model)  # a DDP wrapper's model
    final = eval_cfg.final
    run_dir, metrics = Path(run_dir), {}
    model.eval()
    if final.recall:
        part, _, notes = run_suite(model, model.tokenizer, list(final.recall), eval_cfg.recall, device)
        update_results(run_dir, part, recall_notes=notes)
        metrics.update(part)
        log.info("final recall: %s", part)
    if final.bench.lengths:
        part = measure_throughput(model, final.bench, device)
        update_results(run_dir, part)
        metrics.update(part)
        log.info("final throughput: %s", part)
    if final.lm_eval:
        # lm-eval is a heavy import: only when a job asks for it
        from zoo.evals.lm_eval.run import evaluate_model, flat_metrics, lm_eval_record

        lm_cfg = dataclasses.replace(eval_cfg.lm_eval, tasks=list(final.lm_eval))
        results = evaluate_model(model, lm_cfg, max_length=seq_len)
        part = flat_metrics(results)
        update_results(run_dir, part, lm_eval=lm_eval_record(results, lm_cfg))
        metrics.update(part)
        log.info("final lm-eval: %s", part)
    return metrics
