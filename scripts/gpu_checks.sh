#!/usr/bin/env bash
# Every check that needs a GPU, in one go, for a short lease on a GPU machine (CI has none):
#   1. the Triton kernel tests compiled for the GPU (no interpreter), including the realistic-size and
#      bf16/fp16 cases that are skipped on CPU;
#   2. scripts/bench_kernels.py on CUDA: Triton vs fla vs torch-chunked vs SDPA / flash-attn, T = 1k ... 32k;
#   3. our Triton kernels against flash-linear-attention's (tests/kernels/test_against_fla.py, needs fla-core);
#   4. zoo-bench bench=gpu: every architecture and the HF peers in bf16 (needs hydra-core and transformers);
#   5. train: the ~340M hybrid recipe (conf/experiment/gpu_340m.yaml) on one GPU for TRAIN_STEPS steps from a
#      pre-tokenized offline corpus: the trainer's tokens/s, MFU and peak memory (not in the default STEPS;
#      TRAIN_ARGS adds overrides, e.g. TRAIN_ARGS="train.compile=none" to measure what compile buys).
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
train() {  # one GPU: no FSDP; global batch 32 = 4 micro-batches of 8 x 2048 tokens; compile, checkpointing, chunked loss
  python -m zoo.data.cli prepare data=text data.tokenizer=bpe data.bpe_vocab_size=32000 --out "$OUT/corpus" \
    --overwrite --workers 8 2>&1 | tail -1
  timeout "${TRAIN_S:-300}" python -m zoo.train +experiment=gpu_340m data.path="$OUT/corpus" train.fsdp=false \
    train.batch_size=32 train.grad_accum_steps=4 train.max_steps="${TRAIN_STEPS:-40}" train.log_every=1 \
    train.eval_every=100000 train.save_every=100000 eval.max_examples=8 hydra.run.dir="$OUT/train_340m" ${TRAIN_ARGS:-} 2>&1 \
    | grep -v "it/s\]" | tail -15 > "$OUT/train.log"
  python - "$OUT/train_340m/metrics.jsonl" <<'PY' | tee -a "$OUT/train.log"
import json, statistics, sys
rows = [json.loads(l) for l in open(sys.argv[1]) if '"train/tokens_per_s"' in l]
late = rows[len(rows) // 2 :]  # the first half includes compilation
med = lambda k: statistics.median(r[k] for r in late)
print(f"gpu_340m: steps {rows[-1]['step']}, tokens/s {med('train/tokens_per_s'):.0f}, MFU {med('train/mfu'):.3f}, "
      f"peak {max(r['train/peak_mem_bytes'] for r in late) / 2**30:.1f} GiB (median over steps {late[0]['step']}-{late[-1]['step']})")
PY
}
IFS=, read -ra steps <<< "${STEPS:-tests,bench,fla,zoo}"
for step in "${steps[@]}"; do echo "== $step"; "$step"; done
