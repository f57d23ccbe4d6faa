#!/usr/bin/env bash
# Every check that needs a GPU, in one go, for a short lease on a GPU machine (CI has none):
#   1. the Triton kernel tests compiled for the GPU (no interpreter), including the realistic-size and
#      bf16/fp16 cases that are skipped on CPU;
#   2. scripts/bench_kernels.py on CUDA: Triton vs fla vs torch-chunked vs SDPA / flash-attn, T = 1k ... 32k;
#   3. our Triton kernels against flash-linear-attention's (tests/kernels/test_against_fla.py, needs fla-core);
#   4. zoo-bench bench=gpu: every architecture and the HF peers in bf16 (needs hydra-core and transformers).
# Logs, kernels.csv/png and bench.csv/md/png go to $OUT (default runs/gpu_checks). Each step has its own time
# limit, so one hung step cannot eat the lease; a failing step does not stop the later ones. STEPS picks and
# orders them (default "tests,bench,fla,zoo").
#   bash scripts/gpu_checks.sh
#   STEPS=zoo,tests ZOO_S=300 bash scripts/gpu_checks.sh
set -uo pipefail
OUT=${OUT:-runs/gpu_checks}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
{ nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader
  python -c "import torch, triton; print('torch', torch.__version__, 'triton', triton.__version__)"
  python -c "import fla; print('fla', fla.__version__)" 2>/dev/null || echo "fla not installed"; } | tee "$OUT/gpu.txt"
xdist=$(python -c "import xdist" 2>/dev/null && echo "-n 8")

tests() {
  timeout "${TESTS_S:-240}" python -m pytest tests/kernels -q -p no:cacheprovider $xdist \
    --ignore=tests/kernels/test_against_fla.py 2>&1 | tee "$OUT/tests.log" | tail -25
}
bench() {  # the naive loop is skipped (a Python loop says nothing about a GPU); the targets need T >= 4096 only
  timeout "${BENCH_S:-200}" python scripts/bench_kernels.py --naive-max-T 0 --T 1024 4096 16384 32768 \
    --out "$OUT" 2>&1 | tee "$OUT/bench.log" | tail -25
}
fla() {  # fla autotunes every kernel on first use, which took > 90 s for this module on an H100
  timeout "${FLA_S:-180}" python -m pytest tests/kernels/test_against_fla.py -q -s -p no:cacheprovider 2>&1 \
    | tee "$OUT/fla.log" | grep -E "error vs fla|passed|failed|skipped|Error" | tail -25
}
zoo() {  # rows are printed as they are measured, so a run cut short still leaves them in zoo_bench.log
  timeout "${ZOO_S:-400}" python -m zoo.bench bench=gpu out="$OUT/zoo_bench" 2>&1 | tee "$OUT/zoo_bench.log" \
    | grep -v "it/s\]" | tail -40
}
IFS=, read -ra steps <<< "${STEPS:-tests,bench,fla,zoo}"
for step in "${steps[@]}"; do echo "== $step"; "$step"; done
