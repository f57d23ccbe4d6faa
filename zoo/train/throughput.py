"""Training throughput in `metrics.jsonl` and the progress bar: `train/tokens_per_s`, `train/mfu` and
`train/peak_mem_bytes`, over the optimizer steps since the previous logged step.

- tokens/s: the global batch's tokens (`batch_size x seq_len`, every rank's) over the seconds the steps took
  (the forward, backward and optimizer step up to the loss on the host; evaluation and checkpoints excluded,
  compilation in the first steps included).
- MFU: the model FLOPs those tokens cost (`HybridLM.flops_per_token`, times 3 for the backward; the LM head at
  the labelled positions only, where training runs it) per second, over the peak FLOP/s of the devices (one per
  rank): `train.peak_flops` when set; on CUDA the bf16 dense peak of the GPU from `GPU_PEAK_FLOPS` (the trainer
  runs bf16 autocast there); on CPU a measured fp32 matmul rate (`measured_cpu_peak`, once per process).
- peak memory: `zoo.bench.measure.PeakMemory` around each step (the CUDA allocator's peak, or on CPU the
  process's RSS high-water mark), the largest over the window, of this rank.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import time

import torch

from zoo.bench.measure import PeakMemory
from zoo.errors import ConfigError

log = logging.getLogger("zoo.train.throughput")

# bf16 dense tensor-core peaks (FLOP/s) from NVIDIA's datasheets, without sparsity, by a piece of
# `torch.cuda.get_device_name`; the first piece found in the name wins, so the longer names come first.
GPU_PEAK_FLOPS = (
    ("H100 PCIe", 756e12),
    ("H100 NVL", 835e12),
    ("H100", 989.4e12),  # SXM ("NVIDIA H100 80GB HBM3")
    ("H200 NVL", 835e12),
    ("H200", 989.4e12),  # SXM, GH200
    ("H800", 989.4e12),
    ("A100", 312e12),
    ("A800", 312e12),
    ("L40S", 362e12),
    ("L4", 121e12),
    ("A10G", 70e12),
    ("A10", 125e12),
)


def gpu_peak_flops(name: str) -> float | None:
    """The bf16 dense peak of the GPU called `name`, or None for one not in `GPU_PEAK_FLOPS`."""
    return next((peak for piece, peak in GPU_PEAK_FLOPS if piece in name), None)


@functools.cache
def measured_cpu_peak(threads: int, size: int = 1024, repeats: int = 5) -> float:
    """FLOP/s of the fastest of `repeats` fp32 `size x size` matmuls on `threads` torch threads: what this CPU gives
    a dense product now (the reference of CPU MFU; cached per thread count, so measured once per run)."""
    with torch.inference_mode():
        a, b = torch.randn(size, size), torch.randn(size, size)
        a @ b  # warm-up: threads, caches
        best = float("inf")
        for _ in range(repeats):
            start = time.perf_counter()
            a @ b
            best = min(best, time.perf_counter() - start)
    return 2 * size**3 / best


def peak_flops(device: torch.device, configured: float | None) -> tuple[float | None, str]:
    """`(FLOP/s of one device, where the number comes from)`; None where it is unknown (an unlisted GPU)."""
    if configured is not None:
        if configured <= 0:
            raise ConfigError(f"train.peak_flops={configured}; valid: null (auto) or a positive FLOP/s per device")
        return float(configured), "train.peak_flops"
    if device.type == "cuda":
        name = torch.cuda.get_device_name(device)
        peak = gpu_peak_flops(name)
        return peak, f"the bf16 dense peak of {name}" if peak else f"{name} (not in GPU_PEAK_FLOPS)"
    if device.type == "cpu":
        threads = torch.get_num_threads()
        return measured_cpu_peak(threads), f"a measured fp32 matmul, torch threads: {threads}"
    return None, f"device {device.type}"


class Throughput:
    """Counts the optimizer steps between logged steps (`measure`) and turns them into the metrics (`read`)."""

    def __init__(self, model, seq_len: int, device: torch.device, world: int, configured_peak: float | None):
        self.device, self.world = device, world
        self.head = model.head_flops_per_token()
        self.body = model.flops_per_token(seq_len) - self.head  # the blocks, at every position
        self.peak, source = peak_flops(device, configured_peak)
        if self.peak is None:
            log.warning("no peak FLOP/s known for %s: set train.peak_flops for train/mfu", source)
        else:
            per_token = self.body + self.head
            log.info(
                "MFU: %.4g forward FLOPs per token, peak %.4g FLOP/s per device (%s)", per_token, self.peak, source
            )
        self._reset()

    def _reset(self) -> None:
        self.seconds = self.flops = 0.0
        self.tokens = self.peak_bytes = 0

    @contextlib.contextmanager
    def measure(self, tokens: int, labelled: int):
        """Time one optimizer step over `tokens` tokens of the global batch, `labelled` of them with a label, and
        take its peak memory. The block must end with the device synchronized (the loop reads the loss)."""
        with PeakMemory(self.device) as mem:
            start = time.perf_counter()
            yield
            self.seconds += time.perf_counter() - start
        self.tokens += tokens
        self.flops += 3 * (self.body * tokens + self.head * labelled)
        self.peak_bytes = max(self.peak_bytes, round(mem.mib * 2**20))

    def read(self) -> dict[str, float]:
        """The metrics of the steps since the last `read`, and a new window."""
        seconds = max(self.seconds, 1e-9)
        metrics = {"train/tokens_per_s": self.tokens / seconds, "train/peak_mem_bytes": self.peak_bytes}
        if self.peak is not None:
            metrics["train/mfu"] = self.flops / seconds / (self.peak * self.world)
        self._reset()
        return metrics
