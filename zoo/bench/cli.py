"""`zoo-bench` (also `python -m zoo.bench`): what each architecture costs at inference, stated precisely.

For every architecture (the parameter-matched configs of `conf/model/`, built with random weights at each size
in `bench.sizes`) and every prompt length X: the X prompt tokens are prefilled, streamed through the cache in
chunks of `bench.prefill_chunk` tokens, then Y = `bench.gen_tokens` tokens are generated greedily one at a time.
Per (architecture, size, X, batch) it reports prefill tokens/s, time to first token, decode tokens/s, peak memory
(the process's peak RSS on CPU, `torch.cuda.max_memory_allocated` on CUDA) and cache bytes; and, against this
machine's limits measured at the start of the same run, the fraction of the decode memory-bandwidth bound
(weight bytes read per token / matrix-vector bandwidth) and of the prefill FLOP bound (2 FLOPs per non-embedding
parameter per token / matmul throughput; the mixers' own FLOPs are not counted, so this fraction is a lower
bound). With `transformers` installed, peer rows are measured at the same shapes: HF's Llama with its static KV
cache, HF's Mamba2 and OLMo-hybrid (gated DeltaNet) models.

    zoo-bench                                        # conf/bench/default.yaml: every architecture at d256 x 4
    zoo-bench bench=readme                           # the README table: d256x4 and d768x12, X = 512/8k/64k
    zoo-bench bench.archs=[gla,transformer] bench.prompt_lens=[512,8192] bench.peers=[]
    zoo-bench path=runs/RUN                          # one trained checkpoint; merges bench/* into its results.json

Writes `bench.csv`, `bench.md` and `bench.png` into `out` (default `runs/bench/<time>`). Every architecture runs
in its own process: its peak memory is its own, and a crash or out-of-memory is a failed row, not the end of
the run. A length that would exceed `memory_budget_gb` (by cache size) or whose projected prefill time exceeds
`time_budget_s` (quadratic for attention) is reported as skipped, with the reason.
"""

from __future__ import annotations

import importlib.util
import itertools
import sys
import traceback
from collections.abc import Mapping
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass
from multiprocessing import get_context
from pathlib import Path

import hydra
import torch
from omegaconf import DictConfig
from tqdm import tqdm

import zoo
from zoo import schemas
from zoo.bench import llamacpp
from zoo.bench.measure import ZooRunner, machine_limits, time_cell
from zoo.bench.peers import HF_CHECKPOINT, checkpoint_runner, peer_runner
from zoo.bench.report import markdown, plot, results_metrics, targets, with_efficiency, write_csv
from zoo.config import DTYPES, check_command_line, compose, conf_dir, from_mapping, typed
from zoo.errors import ZooError
from zoo.evals.recall import Budget
from zoo.io.hf import is_transformers_checkpoint
from zoo.io.results import update_results
from zoo.io.runs import locate
from zoo.model.quant import KV_CACHE_DTYPES
from zoo.model.quant import MODES as QUANT_MODES
from zoo.schemas import BenchConfig, BenchRoot, BenchSize


@dataclass
class Job:
    """One architecture at one size, measured in a process of its own: plain data, pickled to that process."""

    name: str  # a conf/model name, `path:<checkpoint folder>`, or an HF peer (`hf_...`)
    label: str  # the row's `arch`
    attn_layers: list[int] | None  # None: as the architecture is configured
    size: BenchSize | None  # None: a checkpoint's own size
    cfg: BenchConfig
    device: str
    dtype: str
    quantize: str = "none"  # our models' linear-weight mode (HybridLM.quantize), "none" as built
    kv_cache: str = "none"  # our attention layers' KV-cache dtype (HybridLM.quantize(kv_cache=)), "none" as built


def zoo_runner(
    arch: str, size: BenchSize | None, cfg: BenchConfig, device, dtype, attn_layers=None, quantize="none", kv="none"
) -> ZooRunner:
    note = ""
    if arch.startswith("path:"):
        model = zoo.from_pretrained(arch[5:], device=device)
    else:
        overrides = [
            f"model={arch}",
            f"model.d_model={size.d_model}",
            f"model.n_layers={size.n_layers}",
            f"data.vocab_size={cfg.vocab_size}",
        ]
        overrides += [f"model.head_dim={size.head_dim}"] if size.head_dim is not None else []
        if attn_layers is None:  # a hybrid config's attention layers, moved to the same depth fractions
            attn_layers, note = scaled_attn_layers(arch, size.n_layers)
        if attn_layers is not None:
            overrides.append(f"model.attn.layers={list(attn_layers)}")
        model = zoo.build_model(compose(overrides).model).to(device)
    model = model.to(dtype).eval()
    if quantize != "none" or kv != "none":
        model.quantize(None if quantize == "none" else quantize, None if kv == "none" else kv)
    return ZooRunner(model.optimize_for_decode(), cfg.prefill_chunk, note)


def scaled_attn_layers(arch: str, n_layers: int) -> tuple[list[int] | None, str]:
    """`conf/model/<arch>`'s attention layers at `n_layers` depth: the same fractions of the depth as in the
    config's own depth (hybrid_gla's [2, 6] of 8 layers is [1, 3] of 4), or (None, "") when nothing moves."""
    native = compose([f"model={arch}"]).model
    layers = list(native.attn.layers)
    if not layers or native.n_layers == n_layers:
        return None, ""
    scaled = sorted({i * n_layers // native.n_layers for i in layers})
    return scaled, f"attention at layers {scaled} (the config's {layers} of {native.n_layers} layers, same depths)"


def measure(job: Job) -> list[dict]:
    """Every cell of one architecture at one size (runs in a fresh process). Errors come back as one failed row
    (as text: not every library's exception survives pickling back to the parent)."""
    try:
        return measure_cells(job)
    except Exception as e:  # noqa: BLE001 - recorded, and the run goes on with the next architecture
        traceback.print_exc()
        return [failed_row(job, f"{type(e).__name__}: {e}")]


def measure_cells(job: Job) -> list[dict]:
    cfg, name = job.cfg, job.name
    torch.manual_seed(cfg.seed)
    device, dtype = torch.device(job.device), DTYPES[job.dtype]
    if name.startswith(HF_CHECKPOINT):
        runner = checkpoint_runner(name.removeprefix(HF_CHECKPOINT), cfg, device, dtype)
    elif name.startswith(llamacpp.PREFIX):
        outtype, flash_attn, folder = llamacpp.parse_job(name)
        runner = llamacpp.LlamaCppRunner(folder, outtype, flash_attn, cfg, cfg.llamacpp_converter)
    elif name.startswith("hf_"):
        runner = peer_runner(name, job.size, cfg, device, dtype, job.attn_layers)
    else:
        runner = zoo_runner(name, job.size, cfg, device, dtype, job.attn_layers, job.quantize, job.kv_cache)
    d_model, n_layers = (job.size.d_model, job.size.n_layers) if job.size is not None else (None, None)
    if isinstance(runner, ZooRunner | llamacpp.LlamaCppRunner):  # a checkpoint's size is its own
        d_model, n_layers = runner.model.config.d_model, runner.model.config.n_layers
    elif name.startswith(HF_CHECKPOINT):
        text = runner.model.config.get_text_config()
        d_model, n_layers = text.hidden_size, text.num_hidden_layers
    base = {
        "arch": job.label,
        "d_model": d_model,
        "n_layers": n_layers,
        "params": runner.params,
        "weight_bytes": runner.weight_bytes,
        "flop_params": runner.flop_params,
        "device": str(device),
        "dtype": ", ".join(
            [job.dtype]
            + ([f"{job.quantize} linears"] if job.quantize != "none" else [])
            + ([f"{job.kv_cache} KV cache"] if job.kv_cache != "none" else [])
        ),
        "note": runner.note,
    }
    gen = cfg.gen_tokens
    vocab = cfg.vocab_size if name.startswith("hf_") else runner.model.config.vocab_size
    # Warm-up, so that one-time costs stay out of the rows: two prompt pieces (the second continues a state, a
    # kernel variant of its own) and a few decode steps, at every batch size. On a GPU the Triton kernels
    # compile for each of these on first use, which took up to a second and made the X=512 rows meaningless.
    # (A llama.cpp cell runs in a process of its own, which warms itself up.)
    timer = getattr(runner, "time_cell", None)
    warm = min(cfg.prefill_chunk + 64, max(cfg.prompt_lens))
    for batch in cfg.batch_sizes if timer is None else []:
        time_cell(runner, vocab, batch, warm if batch == 1 else min(warm, cfg.batch_max_prompt), 2, device, cfg.seed)
    rows = []
    for batch in cfg.batch_sizes:
        # batch > 1 prefills that many prompts, so it is measured only up to batch_max_prompt tokens
        lengths = sorted(x for x in cfg.prompt_lens if batch == 1 or x <= cfg.batch_max_prompt)
        budget = Budget(runner, batch, cfg.memory_budget_gb, cfg.time_budget_s)
        for length in lengths:
            row = base | {"batch": batch, "prompt_len": length, "gen_len": gen}
            reason = budget.refuse(length)
            if timer is not None and batch != 1:
                reason = "llama.cpp rows are measured at batch 1"
            if reason is None:
                try:
                    if timer is None:
                        row |= time_cell(runner, vocab, batch, length, gen, device, cfg.seed)
                    else:
                        row |= timer(vocab, batch, length, gen, device, cfg.seed)
                    budget.record(length, row["prefill_s"])
                except torch.OutOfMemoryError as e:
                    reason = f"out of memory: {str(e).splitlines()[0]}"
            if reason is not None:
                row["note"] = f"skipped: {reason}"
            rows.append(row)
            print(format_cell(row), flush=True)
    return rows


def format_cell(row: dict) -> str:
    head = f"{row['arch']:>16} d{row['d_model']}x{row['n_layers']} B={row['batch']} X={row['prompt_len']:>6}"
    if row.get("prefill_tok_s") is None:  # skipped or failed
        return f"{head}  {row['note']}"
    return (
        f"{head}  prefill {row['prefill_tok_s']:9.1f} tok/s  ttft {row['ttft_s']:7.2f} s  "
        f"decode {row['decode_tok_s']:7.1f} tok/s  peak {row['peak_mib']:7.0f} MiB"
    )


def run_jobs(jobs: list[Job], isolate: bool) -> list[dict]:
    """Each job in its own spawned process (`isolate`; else in this one, e.g. for a debugger); a failure
    (exception, crash, OOM kill) becomes one failed row."""
    rows = []
    for job in tqdm(jobs, desc="zoo-bench", unit="arch"):
        if not isolate:
            rows += measure(job)
            continue
        try:
            with ProcessPoolExecutor(max_workers=1, mp_context=get_context("spawn")) as pool:
                rows += pool.submit(measure, job).result()
        except BrokenProcessPool:
            rows.append(failed_row(job, "the process died (killed for memory?)"))
        except Exception as e:  # noqa: BLE001 - any error of one architecture is recorded, the rest go on
            traceback.print_exc()
            rows.append(failed_row(job, f"{type(e).__name__}: {e}"))
    return rows


def failed_row(job: Job, error: str) -> dict:
    d_model, n_layers = (job.size.d_model, job.size.n_layers) if job.size is not None else (None, None)
    return {"arch": job.label, "d_model": d_model, "n_layers": n_layers, "note": f"failed: {error}"}


def plan(cfg: BenchConfig, path: str | None) -> list[Job]:
    """One job per (size, architecture, quantization mode): our architectures, then the peers."""
    device = "cuda" if cfg.device == "auto" and torch.cuda.is_available() else cfg.device
    device = "cpu" if device == "auto" else device
    dtype = cfg.dtype if cfg.dtype != "auto" else ("bfloat16" if device == "cuda" else "float32")
    bad = sorted(set(cfg.quantize) - {"none", *QUANT_MODES})
    if bad or not cfg.quantize:
        raise ZooError(f"bench.quantize={list(cfg.quantize)}: valid modes are none, {', '.join(QUANT_MODES)}")
    bad = sorted(set(cfg.kv_cache) - {"none", *KV_CACHE_DTYPES})
    if bad or not cfg.kv_cache:
        raise ZooError(f"bench.kv_cache={list(cfg.kv_cache)}: valid are none, {', '.join(KV_CACHE_DTYPES)}")
    peer_names: list[str] = []
    if path is not None:
        folder = locate(path)[0]
        names, sizes = [(f"path:{folder}", None)], [None]  # a checkpoint's own size
        if is_transformers_checkpoint(folder):  # the same weights through transformers' and llama.cpp's code
            peer_names = checkpoint_peers(folder, cfg)
    else:
        archs = cfg.archs
        if archs is None:
            archs = sorted(p.stem for p in (conf_dir() / "model").glob("*.yaml"))
        peers = list(cfg.peers or [])
        if peers and importlib.util.find_spec("transformers") is None:
            print(
                "zoo-bench: transformers is not installed, so the peer rows are left out "
                "(pip install 'hybrid-zoo[bench]' to measure them)",
                file=sys.stderr,
            )
            peers = []
        names = [(a, cfg.attn_layers) for a in archs] + [(p, None) for p in peers]
        if "hf_olmo_hybrid" in peers:
            names.append(("gated_deltanet", [1]))  # our model in the OLMo-hybrid peer's layout
        sizes = cfg.sizes
    jobs = []
    for size in sizes:
        for name, attn in names:
            label = name.removeprefix("path:") + ("" if attn is None else f"+attn{list(attn)}")
            attn = None if attn is None else list(attn)
            ours = not name.startswith("hf_")
            for mode, kv in itertools.product(cfg.quantize if ours else ["none"], cfg.kv_cache if ours else ["none"]):
                suffix = ("" if mode == "none" else f"+{mode}") + ("" if kv == "none" else f"+kv_{kv}")
                jobs.append(Job(name, label + suffix, attn, size, cfg, device, dtype, mode, kv))
        jobs += [Job(name, name, None, size, cfg, device, dtype) for name in peer_names]
    return jobs


def checkpoint_peers(folder: Path, cfg: BenchConfig) -> list[str]:
    """The other implementations of a transformers checkpoint that are installed: transformers' own model, and
    llama.cpp at each of `bench.llamacpp`'s GGUF types (a note on stderr for each one missing)."""
    names = []
    if importlib.util.find_spec("transformers") is None:
        print("zoo-bench: transformers is not installed, so its row of this checkpoint is left out", file=sys.stderr)
    else:
        names.append(f"{HF_CHECKPOINT}{folder}")
    if cfg.llamacpp and importlib.util.find_spec("llama_cpp") is None:
        print(
            "zoo-bench: llama-cpp-python is not installed, so the llama.cpp rows are left out "
            "(pip install llama-cpp-python: it compiles llama.cpp, ~8 minutes on 2 cores)",
            file=sys.stderr,
        )
    elif cfg.llamacpp:
        from zoo.io.hf import read_hf_config
        from zoo.model.config import branch_names

        arch, hf_cfg = read_hf_config(folder)
        zoo_cfg = arch.zoo_config(hf_cfg)
        names_used = {
            n for name in zoo_cfg.layer_names() for n in [name, *branch_names(name, zoo_cfg.mixer_kwargs(name))]
        }
        has_attention = bool(names_used & {"attn", "swa"})  # Falcon-H1's attention is a branch of `parallel`
        names += llamacpp.job_names(str(folder), list(cfg.llamacpp), list(cfg.llamacpp_flash_attn), has_attention)
    return names


def run(cfg: BenchConfig | Mapping, out: Path, path: str | None = None) -> tuple[list[dict], list[str]]:
    """zoo-bench with the settings `cfg` (`bench`; a plain dict must give every one) into the folder `out`."""
    if not isinstance(cfg, BenchConfig):
        cfg = from_mapping(BenchConfig, cfg, "bench")
    jobs = plan(cfg, path)
    device, dtype = torch.device(jobs[0].device), DTYPES[jobs[0].dtype]
    limits = machine_limits(device, dtype)
    print(
        f"machine: matrix-vector {limits['matvec_gb_s']:.1f} GB/s, matmul {limits['matmul_gflop_s']:.0f} GFLOP/s "
        f"({device}, {dtype}, {torch.get_num_threads()} threads)",
        flush=True,
    )
    rows = with_efficiency(run_jobs(jobs, cfg.isolate), limits)
    out.mkdir(parents=True, exist_ok=True)
    write_csv(rows, out / "bench.csv")
    settings = (
        f"{jobs[0].device}, {jobs[0].dtype}, {torch.get_num_threads()} threads, vocab {cfg.vocab_size}, "
        f"prefill chunk {cfg.prefill_chunk}, {cfg.gen_tokens} generated tokens, "
        f"memory budget {cfg.memory_budget_gb} GiB, time budget {cfg.time_budget_s} s"
    )
    checks = targets(rows) if path is None else []
    (out / "bench.md").write_text(markdown(rows, limits, settings) + "\n" + "\n".join(f"- {c}" for c in checks) + "\n")
    if any(r.get("prefill_tok_s") for r in rows):
        plot(rows, out / "bench.png")
    if path is not None:  # the zoo's rows as built; the others (quantized, transformers, llama.cpp) stay in bench.*
        ours = [r for r in rows if r["arch"] == jobs[0].label]
        update_results(locate(path)[1], results_metrics(ours))
    return rows, checks


schemas.register()  # before @hydra.main composes: the yamls' defaults lists name the schemas


@hydra.main(version_base=None, config_path=str(conf_dir()), config_name="zoo_bench")
def _hydra_main(cfg: DictConfig) -> None:
    try:
        root: BenchRoot = typed(cfg)
        out = Path(root.out)
        rows, checks = run(root.bench, out, root.path)
    except ZooError as e:  # a failing architecture is a row; this is bad input of the whole run
        print(f"zoo-bench: error: {e}", file=sys.stderr)
        sys.exit(2)
    print("\n" + "\n".join(checks))
    print(f"\nwrote {out / 'bench.csv'}, {out / 'bench.md'} and {out / 'bench.png'}")
    if any(str(r.get("note", "")).startswith("failed") for r in rows):
        sys.exit(1)


def main() -> None:
    check_command_line("zoo-bench", "zoo_bench")  # an unknown key or option: one line and exit code 2, before Hydra
    _hydra_main()


if __name__ == "__main__":
    main()
