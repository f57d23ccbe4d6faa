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

import csv
import importlib.util
import math
import resource
import sys
import time
import traceback
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from multiprocessing import get_context
from pathlib import Path

import hydra
import torch
from omegaconf import DictConfig, OmegaConf
from tqdm import tqdm

from kernels.utils import median_seconds, sync
from zoo.config import DTYPES, compose, conf_dir
from zoo.evals.recall import Budget

# ----------------------------------------------------------------------------------------------- measuring


class PeakMemory:
    """Peak memory of this process during a `with` block, in MiB. CPU (Linux): the kernel's RSS high-water mark,
    reset at entry through /proc/self/clear_refs; elsewhere on CPU the process's lifetime peak (ru_maxrss, so
    only lengths in increasing order are meaningful: `method` says which one was used); CUDA: the allocator's
    peak."""

    def __init__(self, device: torch.device):
        self.device, self.mib = device, float("nan")
        self.method = "cuda_max_allocated" if device.type == "cuda" else "rss_hwm"

    def __enter__(self):
        if self.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(self.device)
            return self
        try:
            Path("/proc/self/clear_refs").write_text("5")  # resets VmHWM to the current RSS (Linux >= 4.0)
        except OSError:
            self.method = "ru_maxrss"
        return self

    def __exit__(self, *exc):
        if self.device.type == "cuda":
            self.mib = torch.cuda.max_memory_allocated(self.device) / 2**20
        elif self.method == "rss_hwm":
            status = Path("/proc/self/status").read_text().splitlines()
            self.mib = int(next(line for line in status if line.startswith("VmHWM")).split()[1]) / 1024
        else:
            scale = 1 if sys.platform == "darwin" else 1024  # bytes on macOS, KiB on Linux
            self.mib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * scale / 2**20
        return False


def machine_limits(device: torch.device, dtype: torch.dtype, repeats: int = 7) -> dict:
    """What the hardware gives a plain PyTorch program, measured now: matrix-vector bandwidth (GB/s, a weight
    matrix larger than the caches streamed once per product, as in decode) and matmul throughput (GFLOP/s, as
    in prefill)."""

    with torch.inference_mode():
        w = torch.randn(8192, 8192, device=device, dtype=dtype)  # 256 MiB in fp32
        x = torch.randn(8192, device=device, dtype=dtype)
        mv = median_seconds(lambda: torch.mv(w, x), repeats, device)
        a, b = torch.randn(2048, 2048, device=device, dtype=dtype), torch.randn(2048, 2048, device=device, dtype=dtype)
        mm = median_seconds(lambda: a @ b, repeats, device)
    return {"matvec_gb_s": w.numel() * w.element_size() / mv / 1e9, "matmul_gflop_s": 2 * 2048**3 / mm / 1e9}


# ----------------------------------------------------------------------------------------------- runners
# A runner wraps one model behind the three calls the benchmark times; `state_bytes` lets `Budget` refuse a
# length before it runs out of memory.


class ZooRunner:
    """One of our models: prefill streamed through the cache, then one-token decode steps."""

    def __init__(self, model, prefill_chunk: int, note: str = ""):
        self.model, self.prefill_chunk, self.note = model, prefill_chunk, note
        self.params = model.num_params()
        embed = model.embed.weight.numel()
        tied = model.lm_head.weight is model.embed.weight
        # decode reads every weight matrix once per token (the tied embedding as the LM head); prefill only
        # applies the LM head to the last position
        self.weight_bytes = self.params * model.embed.weight.element_size()
        self.flop_params = self.params - embed - (0 if tied else model.lm_head.weight.numel())

    def state_bytes(self, seq_len: int, batch_size: int = 1) -> int:
        return self.model.state_bytes(seq_len, batch_size)

    def prefill(self, ids: torch.Tensor, total_len: int):
        out = self.model.prefill(ids, prefill_chunk=self.prefill_chunk, max_length=total_len)
        return out.cache, out.logits[:, -1]

    def step(self, cache, ids: torch.Tensor, position: int):
        out = self.model(ids, cache=cache, logits_to_keep=1)
        return out.cache, out.logits[:, -1]


class HFRunner:
    """A Hugging Face causal LM at the same shapes (random init), timed through the same three calls."""

    def __init__(self, model, kind: str, prefill_chunk: int, kv_layers: int, kv_width: int):
        self.model, self.kind, self.prefill_chunk, self.note = model, kind, prefill_chunk, ""
        self.kv_layers, self.kv_width = kv_layers, kv_width  # full-attention layers and their K+V width
        self.params = sum(p.numel() for p in model.parameters())
        embed = model.get_input_embeddings().weight
        self.weight_bytes = self.params * embed.element_size()
        self.flop_params = self.params - embed.numel()
        self.elem = embed.element_size()

    def state_bytes(self, seq_len: int, batch_size: int = 1) -> int:
        # only the growing part matters for the budget: the attention layers' KV cache
        return batch_size * seq_len * self.kv_layers * self.kv_width * self.elem

    def prefill(self, ids: torch.Tensor, total_len: int):
        if self.kind == "static":
            from transformers import StaticCache

            cache = StaticCache(config=self.model.config, max_cache_len=total_len)
            for start in range(0, ids.shape[1], self.prefill_chunk):
                chunk = ids[:, start : start + self.prefill_chunk]
                pos = torch.arange(start, start + chunk.shape[1], device=ids.device)
                out = self.model(chunk, past_key_values=cache, cache_position=pos, use_cache=True, logits_to_keep=1)
            return cache, out.logits[:, -1]
        # HF's recurrent models take the prompt in one call (their documented use); memory grows with it
        out = self.model(ids, use_cache=True, logits_to_keep=1)
        cache = out.cache_params if self.kind == "mamba" else out.past_key_values
        return cache, out.logits[:, -1]

    def step(self, cache, ids: torch.Tensor, position: int):
        pos = torch.tensor([position], device=ids.device)
        if self.kind == "mamba":
            out = self.model(ids, cache_params=cache, use_cache=True, cache_position=pos)
            return out.cache_params, out.logits[:, -1]
        out = self.model(ids, past_key_values=cache, use_cache=True, cache_position=pos)
        return out.past_key_values, out.logits[:, -1]


def zoo_runner(arch: str, size: dict, cfg: dict, device, dtype, attn_layers=None) -> ZooRunner:
    import zoo

    note = ""
    if arch.startswith("path:"):
        model = zoo.from_pretrained(arch[5:], device=device)
    else:
        overrides = [f"model={arch}", f"model.d_model={size['d_model']}", f"model.n_layers={size['n_layers']}",
                     f"data.vocab_size={cfg['vocab_size']}"]  # fmt: skip
        overrides += [f"model.head_dim={size['head_dim']}"] if "head_dim" in size else []
        if attn_layers is None:  # a hybrid config's attention layers, moved to the same depth fractions
            attn_layers, note = scaled_attn_layers(arch, size["n_layers"])
        if attn_layers is not None:
            overrides.append(f"model.attn.layers={list(attn_layers)}")
        model = zoo.build_model(compose(overrides).model).to(device)
    return ZooRunner(model.to(dtype).eval().optimize_for_decode(), cfg["prefill_chunk"], note)


def scaled_attn_layers(arch: str, n_layers: int) -> tuple[list[int] | None, str]:
    """`conf/model/<arch>`'s attention layers at `n_layers` depth: the same fractions of the depth as in the
    config's own depth (hybrid_gla's [2, 6] of 8 layers is [1, 3] of 4), or (None, "") when nothing moves."""
    native = compose([f"model={arch}"]).model
    layers = list(native.attn.layers)
    if not layers or native.n_layers == n_layers:
        return None, ""
    scaled = sorted({i * n_layers // native.n_layers for i in layers})
    return scaled, f"attention at layers {scaled} (the config's {layers} of {native.n_layers} layers, same depths)"


def peer_runner(peer: str, size: dict, cfg: dict, device, dtype, attn_layers=None) -> HFRunner:
    """HF models shaped like ours: width, depth, heads (head_dim 64 unless the size says), vocab, tied
    embeddings; MLP width of our transformer (SwiGLU hidden 2/3 * 4 * d)."""
    import transformers as tf

    d, n, vocab, hd = size["d_model"], size["n_layers"], cfg["vocab_size"], size.get("head_dim", 64)
    heads, hidden = d // hd, 8 * math.ceil(2 / 3 * 4 * d / 8)
    common = {"vocab_size": vocab, "hidden_size": d, "num_hidden_layers": n, "tie_word_embeddings": True}
    if peer == "hf_llama_static":
        longest = max(cfg["prompt_lens"]) + cfg["gen_tokens"]
        config = tf.LlamaConfig(**common, intermediate_size=hidden, num_attention_heads=heads,
                                num_key_value_heads=heads, max_position_embeddings=longest)  # fmt: skip
        model, kind, kv = tf.LlamaForCausalLM(config), "static", (n, 2 * d)
    elif peer == "hf_mamba2":
        # HF's Mamba2 blocks have no MLP: twice the blocks of our mamba2 (mixer + MLP) at the same width, as the
        # paper's pure Mamba-2 LMs do, lands at about the same parameter count
        config = tf.Mamba2Config(**common | {"num_hidden_layers": 2 * n}, num_heads=2 * d // hd, head_dim=hd,
                                 state_size=128, n_groups=1, expand=2, chunk_size=64)  # fmt: skip
        model, kind, kv = tf.Mamba2ForCausalLM(config), "mamba", (0, 0)
    elif peer == "hf_olmo_hybrid":
        # gated DeltaNet with full attention at layer 1 (OLMo-hybrid needs one): compared with our
        # gated_deltanet+attn[1], which plan() adds to the run
        layer_types = ["full_attention" if i == 1 else "linear_attention" for i in range(n)]
        hidden = 8 * math.ceil(2 / 3 * 2 * d / 8)  # our gated_deltanet's SwiGLU (mlp_ratio 2, conf/model)
        config = tf.OlmoHybridConfig(**common, intermediate_size=hidden, num_attention_heads=heads,
                                     layer_types=layer_types, linear_num_key_heads=heads,
                                     linear_num_value_heads=heads, linear_key_head_dim=hd, linear_value_head_dim=2 * hd,
                                     pad_token_id=None, eos_token_id=None)  # fmt: skip
        model, kind, kv = tf.OlmoHybridForCausalLM(config), "dynamic", (1, 2 * d)
    else:
        raise ValueError(f"unknown peer {peer!r}; valid: hf_llama_static, hf_mamba2, hf_olmo_hybrid")
    return HFRunner(model.to(device=device, dtype=dtype).eval(), kind, cfg["prefill_chunk"], *kv)


# ----------------------------------------------------------------------------------------------- one architecture


def measure(job: dict) -> list[dict]:
    """Every cell of one architecture at one size (runs in a fresh process). Errors come back as one failed row
    (as text: not every library's exception survives pickling back to the parent)."""
    try:
        return measure_cells(job)
    except Exception as e:  # noqa: BLE001 - recorded, and the run goes on with the next architecture
        traceback.print_exc()
        return [failed_row(job, f"{type(e).__name__}: {e}")]


def measure_cells(job: dict) -> list[dict]:
    cfg, size, name = job["cfg"], job["size"], job["name"]
    torch.manual_seed(cfg["seed"])
    device, dtype = torch.device(job["device"]), DTYPES[job["dtype"]]
    make = peer_runner if name.startswith("hf_") else zoo_runner
    runner = make(name, size, cfg, device, dtype, job["attn_layers"])
    if isinstance(runner, ZooRunner):  # a checkpoint's size is its own
        size = {"d_model": runner.model.config.d_model, "n_layers": runner.model.config.n_layers}
    base = {"arch": job["label"], "d_model": size["d_model"], "n_layers": size["n_layers"],
            "params": runner.params, "weight_bytes": runner.weight_bytes, "flop_params": runner.flop_params,
            "device": str(device), "dtype": job["dtype"], "note": runner.note}  # fmt: skip
    gen = cfg["gen_tokens"]
    vocab = cfg["vocab_size"] if name.startswith("hf_") else runner.model.config.vocab_size
    # Warm-up, so that one-time costs stay out of the rows: two prompt pieces (the second continues a state, a
    # kernel variant of its own) and a few decode steps, at every batch size. On a GPU the Triton kernels
    # compile for each of these on first use, which took up to a second and made the X=512 rows meaningless.
    warm = min(cfg["prefill_chunk"] + 64, max(cfg["prompt_lens"]))
    for batch in cfg["batch_sizes"]:
        time_cell(
            runner, vocab, batch, warm if batch == 1 else min(warm, cfg["batch_max_prompt"]), 2, device, cfg["seed"]
        )
    rows = []
    for batch in cfg["batch_sizes"]:
        # batch > 1 prefills that many prompts, so it is measured only up to batch_max_prompt tokens
        lengths = sorted(x for x in cfg["prompt_lens"] if batch == 1 or x <= cfg["batch_max_prompt"])
        budget = Budget(runner, batch, cfg["memory_budget_gb"], cfg["time_budget_s"])
        for length in lengths:
            row = base | {"batch": batch, "prompt_len": length, "gen_len": gen}
            reason = budget.refuse(length)
            if reason is None:
                try:
                    row |= time_cell(runner, vocab, batch, length, gen, device, cfg["seed"])
                    budget.record(length, row["prefill_s"])
                except torch.OutOfMemoryError as e:
                    reason = f"out of memory: {str(e).splitlines()[0]}"
            if reason is not None:
                row["note"] = f"skipped: {reason}"
            rows.append(row)
            print(format_cell(row), flush=True)
    return rows


@torch.inference_mode()
def time_cell(runner, vocab: int, batch: int, length: int, gen: int, device, seed: int) -> dict:
    g = torch.Generator().manual_seed(seed + length)
    ids = torch.randint(0, vocab, (batch, length), generator=g).to(device)
    with PeakMemory(device) as mem:
        sync(device)
        start = time.perf_counter()
        cache, logits = runner.prefill(ids, length + gen)
        nxt = logits.argmax(-1, keepdim=True)  # the first generated token
        sync(device)
        prefill_s = time.perf_counter() - start
        start = time.perf_counter()
        for i in range(gen):
            cache, logits = runner.step(cache, nxt, length + i)
            nxt = logits.argmax(-1, keepdim=True)
        sync(device)
        decode_s = time.perf_counter() - start
    return {"prefill_s": prefill_s, "prefill_tok_s": batch * length / prefill_s, "ttft_s": prefill_s,
            "decode_s": decode_s, "decode_tok_s": batch * gen / decode_s, "peak_mib": mem.mib,
            "memory_method": mem.method, "cache_bytes": runner.state_bytes(length + gen, batch)}  # fmt: skip


def format_cell(row: dict) -> str:
    head = f"{row['arch']:>16} d{row['d_model']}x{row['n_layers']} B={row['batch']} X={row['prompt_len']:>6}"
    if row.get("prefill_tok_s") is None:  # skipped or failed
        return f"{head}  {row['note']}"
    return (f"{head}  prefill {row['prefill_tok_s']:9.1f} tok/s  ttft {row['ttft_s']:7.2f} s  "
            f"decode {row['decode_tok_s']:7.1f} tok/s  peak {row['peak_mib']:7.0f} MiB")  # fmt: skip


# ----------------------------------------------------------------------------------------------- the run


def run_jobs(jobs: list[dict], isolate: bool = True) -> list[dict]:
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


def failed_row(job: dict, error: str) -> dict:
    return {"arch": job["label"], "d_model": job["size"]["d_model"],
            "n_layers": job["size"]["n_layers"], "note": f"failed: {error}"}  # fmt: skip


def with_efficiency(rows: list[dict], limits: dict) -> list[dict]:
    """Fractions of the machine's bounds: decode at batch 1 against weight bytes / bandwidth, prefill against
    2 FLOPs per non-embedding parameter per token / matmul throughput."""
    for r in rows:
        if r.get("decode_tok_s") and r.get("batch") == 1:
            r["decode_bw_frac"] = r["weight_bytes"] * r["decode_tok_s"] / (limits["matvec_gb_s"] * 1e9)
        if r.get("prefill_tok_s"):
            r["prefill_flop_frac"] = 2 * r["flop_params"] * r["prefill_tok_s"] / (limits["matmul_gflop_s"] * 1e9)
    return rows


COLUMNS = ["arch", "d_model", "n_layers", "params", "batch", "prompt_len", "gen_len", "prefill_tok_s", "ttft_s",
           "decode_tok_s", "peak_mib", "cache_bytes", "decode_bw_frac", "prefill_flop_frac", "prefill_s", "decode_s",
           "weight_bytes", "flop_params", "memory_method", "device", "dtype", "note"]  # fmt: skip


def write_csv(rows: list[dict], path: Path) -> None:
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=COLUMNS, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)


def fmt(value, spec: str) -> str:
    return "" if value is None or value == "" else format(value, spec)


def markdown(rows: list[dict], limits: dict, settings: str) -> str:
    lines = [f"Settings: {settings}. Machine, measured in this run: matrix-vector {limits['matvec_gb_s']:.1f} GB/s, "
             f"matmul {limits['matmul_gflop_s']:.0f} GFLOP/s.", ""]  # fmt: skip
    for size in dict.fromkeys((r["d_model"], r["n_layers"]) for r in rows):
        lines += [f"### d_model {size[0]}, {size[1]} layers", "",
                  "| arch | params | batch | prompt | prefill tok/s | TTFT s | decode tok/s | peak MiB | cache MiB "
                  "| decode % of BW bound | prefill % of FLOP bound | note |",
                  "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|"]  # fmt: skip
        for r in rows:
            if (r["d_model"], r["n_layers"]) != size:
                continue
            cache = r.get("cache_bytes")
            lines.append(
                f"| {r['arch']} | {fmt(r.get('params', 0) / 1e6, '.1f')}M | {r.get('batch', '')} | "
                f"{r.get('prompt_len', '')} | {fmt(r.get('prefill_tok_s'), '.0f')} | {fmt(r.get('ttft_s'), '.2f')} | "
                f"{fmt(r.get('decode_tok_s'), '.1f')} | {fmt(r.get('peak_mib'), '.0f')} | "
                f"{fmt(cache / 2**20 if cache is not None else None, '.1f')} | "
                f"{fmt(100 * r['decode_bw_frac'] if 'decode_bw_frac' in r else None, '.0f')} | "
                f"{fmt(100 * r['prefill_flop_frac'] if 'prefill_flop_frac' in r else None, '.0f')} | "
                f"{r.get('note', '')} |"
            )
        lines.append("")
    return "\n".join(lines)


def plot(rows: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    sizes = list(dict.fromkeys((r["d_model"], r["n_layers"]) for r in rows))
    panels = [("prefill_tok_s", "prefill tokens/s"), ("decode_tok_s", "decode tokens/s (batch 1)"),
              ("peak_mib", "peak memory (MiB)")]  # fmt: skip
    fig, axes = plt.subplots(len(sizes), 3, figsize=(16, 4.5 * len(sizes)), squeeze=False)
    for row_axes, size in zip(axes, sizes, strict=True):
        for ax, (col, title) in zip(row_axes, panels, strict=True):
            for arch in dict.fromkeys(r["arch"] for r in rows):
                pts = [(r["prompt_len"], r[col]) for r in rows if r["arch"] == arch and r.get(col) is not None
                       and (r["d_model"], r["n_layers"]) == size and r.get("batch") == 1]  # fmt: skip
                if pts:
                    style = "--" if arch.startswith("hf_") else "-"
                    ax.plot(*zip(*pts, strict=True), style, marker="o", label=arch)
            ax.set(xscale="log", yscale="log", xlabel="prompt length (tokens)", title=f"{title}, d{size[0]}x{size[1]}")
            ax.grid(True, which="both", alpha=0.3)
        row_axes[0].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def cell(rows, arch, size, length, col, batch=1):
    """One measured value: `col` of `arch` at `size` (d_model, n_layers), prompt `length`, `batch`."""
    for r in rows:
        key = (r["arch"], r["d_model"], r["n_layers"], r.get("prompt_len"), r.get("batch"))
        if key == (arch, *size, length, batch):
            return r.get(col)
    return None


def targets(rows: list[dict]) -> list[str]:
    """The issue's targets, evaluated on whatever cells this run measured (a missing cell is said so)."""
    return [
        line for size in dict.fromkeys((r["d_model"], r["n_layers"]) for r in rows) for line in targets_at(rows, size)
    ]


def targets_at(rows: list[dict], size: tuple) -> list[str]:
    out, tag = [], f"d{size[0]}x{size[1]}"

    def check(what, value, goal, ok):
        verdict = (
            "not measured" if value is None else f"{value:.2f} (target {goal}: {'met' if ok(value) else 'MISSED'})"
        )
        out.append(f"{tag} {what}: {verdict}")

    def at(arch, x, col):
        return cell(rows, arch, size, x, col)

    def ratio(a, b, x, col, xb=None):
        top, bottom = at(a, x, col), at(b, xb or x, col)
        return None if top is None or bottom is None else top / bottom

    lens = sorted({r["prompt_len"] for r in rows if (r["d_model"], r["n_layers"]) == size and r.get("prompt_len")})
    if not lens:
        return out
    short, long = lens[0], lens[-1]
    ref = 1024 if 1024 in lens else short  # the memory target's "1k"
    check(f"gla decode @8192 / @{short}", ratio("gla", "gla", 8192, "decode_tok_s", short), ">= 0.85",
          lambda r: r >= 0.85)  # fmt: skip
    check("gla / transformer decode @8192", ratio("gla", "transformer", 8192, "decode_tok_s"), ">= 1.5",
          lambda r: r >= 1.5)  # fmt: skip
    check("gla / transformer prefill @8192", ratio("gla", "transformer", 8192, "prefill_tok_s"), ">= 1",
          lambda r: r >= 1)  # fmt: skip
    check("transformer / hf_llama_static decode @8192",
          ratio("transformer", "hf_llama_static", 8192, "decode_tok_s"), ">= 0.9", lambda r: r >= 0.9)  # fmt: skip
    for ours, peer in (("mamba2", "hf_mamba2"), ("gated_deltanet+attn[1]", "hf_olmo_hybrid")):
        check(f"{ours} / {peer} prefill @8192", ratio(ours, peer, 8192, "prefill_tok_s"), ">= 2",
              lambda r: r >= 2)  # fmt: skip
        check(f"{ours} / {peer} decode @8192", ratio(ours, peer, 8192, "decode_tok_s"), ">= 1",
              lambda r: r >= 1)  # fmt: skip
    # flat-state architectures of ours: the same cache bytes at the shortest and the longest prompt
    archs = dict.fromkeys(r["arch"] for r in rows if (r["d_model"], r["n_layers"]) == size)
    flat = [a for a in archs if not a.startswith("hf_") and at(a, short, "cache_bytes") is not None
            and at(a, long, "cache_bytes") == at(a, short, "cache_bytes")]  # fmt: skip
    for arch in flat:
        fracs = [at(arch, x, "decode_bw_frac") for x in lens if at(arch, x, "decode_bw_frac") is not None]
        check(f"{arch} decode, min fraction of BW bound", min(fracs) if fracs else None, ">= 0.6",
              lambda r: r >= 0.6)  # fmt: skip
        check(f"{arch} prefill @8192, fraction of FLOP bound", at(arch, 8192, "prefill_flop_frac"),
              ">= 0.5", lambda r: r >= 0.5)  # fmt: skip
        check(f"{arch} peak memory @{long} / @{ref}", ratio(arch, arch, long, "peak_mib", ref),
              "<= 1.1", lambda r: r <= 1.1)  # fmt: skip
    return out


def results_metrics(rows: list[dict]) -> dict:
    """Flat names of DESIGN.md for one model's rows (batch 1)."""
    metrics = {}
    for r in rows:
        if r.get("batch") == 1 and r.get("prefill_tok_s") is not None:
            metrics[f"bench/prefill_tok_s@{r['prompt_len']}"] = r["prefill_tok_s"]
            metrics[f"bench/decode_tok_s@{r['prompt_len']}"] = r["decode_tok_s"]
            metrics[f"state/bytes@{r['prompt_len']}"] = r["cache_bytes"]
    return metrics


def plan(cfg: dict, path: str | None) -> list[dict]:
    """One job per (size, architecture): our architectures, then the HF peers."""
    device = "cuda" if cfg["device"] == "auto" and torch.cuda.is_available() else cfg["device"]
    device = "cpu" if device == "auto" else device
    dtype = cfg["dtype"] if cfg["dtype"] != "auto" else ("bfloat16" if device == "cuda" else "float32")
    if path is not None:
        from zoo.evals.cli import locate

        names, sizes = [(f"path:{locate(path)[0]}", None)], [{"d_model": None, "n_layers": None}]  # its own size
    else:
        archs = cfg["archs"]
        if archs is None:
            archs = sorted(p.stem for p in (conf_dir() / "model").glob("*.yaml"))
        peers = list(cfg["peers"] or [])
        if peers and importlib.util.find_spec("transformers") is None:
            print("zoo-bench: transformers is not installed, so the peer rows are left out "
                  "(pip install 'hybrid-zoo[bench]' to measure them)", file=sys.stderr)  # fmt: skip
            peers = []
        names = [(a, cfg["attn_layers"]) for a in archs] + [(p, None) for p in peers]
        if "hf_olmo_hybrid" in peers:
            names.append(("gated_deltanet", [1]))  # our model in the OLMo-hybrid peer's layout
        sizes = cfg["sizes"]
    jobs = []
    for size in sizes:
        for name, attn in names:
            label = name.removeprefix("path:") + ("" if attn is None else f"+attn{list(attn)}")
            jobs.append({"name": name, "label": label, "attn_layers": attn, "size": dict(size), "cfg": cfg,
                         "device": device, "dtype": dtype})  # fmt: skip
    return jobs


def run(cfg: dict, out: Path, path: str | None = None) -> tuple[list[dict], list[str]]:
    jobs = plan(cfg, path)
    device, dtype = torch.device(jobs[0]["device"]), DTYPES[jobs[0]["dtype"]]
    limits = machine_limits(device, dtype)
    print(f"machine: matrix-vector {limits['matvec_gb_s']:.1f} GB/s, matmul {limits['matmul_gflop_s']:.0f} GFLOP/s "
          f"({device}, {dtype}, {torch.get_num_threads()} threads)", flush=True)  # fmt: skip
    rows = with_efficiency(run_jobs(jobs, cfg.get("isolate", True)), limits)
    out.mkdir(parents=True, exist_ok=True)
    write_csv(rows, out / "bench.csv")
    settings = (f"{jobs[0]['device']}, {jobs[0]['dtype']}, {torch.get_num_threads()} threads, "
                f"vocab {cfg['vocab_size']}, "
                f"prefill chunk {cfg['prefill_chunk']}, {cfg['gen_tokens']} generated tokens, "
                f"memory budget {cfg['memory_budget_gb']} GiB, time budget {cfg['time_budget_s']} s")  # fmt: skip
    checks = targets(rows) if path is None else []
    (out / "bench.md").write_text(markdown(rows, limits, settings) + "\n" + "\n".join(f"- {c}" for c in checks) + "\n")
    if any(r.get("prefill_tok_s") for r in rows):
        plot(rows, out / "bench.png")
    if path is not None:
        from zoo.evals.cli import locate
        from zoo.io.results import update_results

        update_results(locate(path)[1], results_metrics(rows))
    return rows, checks


@hydra.main(version_base=None, config_path=str(conf_dir()), config_name="zoo_bench")
def _hydra_main(cfg: DictConfig) -> None:
    settings = OmegaConf.to_container(cfg.bench, resolve=True)
    out = Path(cfg.out)
    rows, checks = run(settings, out, cfg.path)
    print("\n" + "\n".join(checks))
    print(f"\nwrote {out / 'bench.csv'}, {out / 'bench.md'} and {out / 'bench.png'}")
    if any(str(r.get("note", "")).startswith("failed") for r in rows):
        sys.exit(1)


def main() -> None:
    _hydra_main()


if __name__ == "__main__":
    main()
