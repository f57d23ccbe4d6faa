"""Timing one model's inference as zoo-bench does: peak memory, the machine's bandwidth / FLOP limits, and one
(prompt, generation) cell timed through a runner. A runner wraps one model behind the calls the benchmark times
(`prefill`, `step`) plus `state_bytes`, so `Budget` can refuse a length before it runs out of memory."""

from __future__ import annotations

import resource
import statistics
import sys
import time
from itertools import pairwise
from pathlib import Path

import torch

from kernels.utils import median_seconds, sync


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


class ZooRunner:
    """One of our models: prefill streamed through the cache, then one-token decode steps."""

    def __init__(self, model, prefill_chunk: int, note: str = ""):
        self.model, self.prefill_chunk, self.note = model, prefill_chunk, note
        self.params = model.num_params()
        # decode reads every weight matrix once per token (the tied embedding as the LM head), as stored (int8,
        # bf16, ...); prefill only applies the LM head to the last position
        self.weight_bytes = model.weight_bytes()
        head = 0 if model.config.tie_embeddings else model.lm_head.out_features * model.config.d_model
        self.flop_params = self.params - model.embed.weight.numel() - head

    def state_bytes(self, seq_len: int, batch_size: int = 1) -> int:
        return self.model.state_bytes(seq_len, batch_size)

    def prefill(self, ids: torch.Tensor, total_len: int):
        out = self.model.prefill(ids, prefill_chunk=self.prefill_chunk, max_length=total_len)
        return out.cache, out.logits[:, -1]

    def step(self, cache, ids: torch.Tensor, position: int):
        out = self.model(ids, cache=cache, logits_to_keep=1)
        return out.cache, out.logits[:, -1]


class StepClock:
    """The seconds of each step of a loop, from `mark()` called at the end of every step (the clock starts at
    construction). On a GPU each mark records a CUDA event, and `seconds()` synchronizes once: a host sync per step
    would stall every decoded token's kernel launches on the host and time that stall too. Elsewhere the host
    clock is the device's."""

    def __init__(self, device: torch.device):
        self.cuda = device.type == "cuda"
        self.marks: list = []
        self.mark()

    def mark(self) -> None:
        if self.cuda:
            event = torch.cuda.Event(enable_timing=True)
            event.record()
            self.marks.append(event)
        else:
            self.marks.append(time.perf_counter())

    def seconds(self) -> list[float]:
        if self.cuda:
            self.marks[-1].synchronize()
            return [a.elapsed_time(b) / 1e3 for a, b in pairwise(self.marks)]  # elapsed_time is in ms
        return [b - a for a, b in pairwise(self.marks)]


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
        clock = StepClock(device)
        for i in range(gen):
            cache, logits = runner.step(cache, nxt, length + i)
            nxt = logits.argmax(-1, keepdim=True)
            clock.mark()
        # `gen` steps at the median step's pace: a step or two preempted on a busy machine does not set the
        # number, as it did when one 16-step total was timed
        decode_s = gen * statistics.median(clock.seconds())
    return {
        "prefill_s": prefill_s,
        "prefill_tok_s": batch * length / prefill_s,
        "ttft_s": prefill_s,
        "decode_s": decode_s,
        "decode_tok_s": batch * gen / decode_s,
        "peak_mib": mem.mib,
        "memory_method": mem.method,
        "cache_bytes": runner.state_bytes(length + gen, batch),
    }
