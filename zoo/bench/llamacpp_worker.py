"""One zoo-bench cell in llama.cpp (llama-cpp-python), in a process of its own that never imports torch: in one
process with torch, llama.cpp's decode ran 10-20x slower (torch's bundled OpenMP runtime competes with the one
llama.cpp uses). Run by file path, not as a module of the `zoo` package (whose `__init__` imports torch):

    python zoo/bench/llamacpp_worker.py < request.json     # one JSON object in, one JSON line out

The request names the GGUF file, the prompt token ids, the number of tokens to generate, the threads, the prompt
piece size (llama.cpp's n_batch, as the zoo's prefill chunk) and flash attention on or off. The cell is timed as
the zoo's are (`zoo/bench/measure.py`): after a warm-up, prefill of the prompt to the first generated token, then
greedy decode one token at a time, `gen` steps at the median step's pace. With `logits`, the last prompt
position's logits come back too (the tests compare them with the zoo's on the same checkpoint, with `kv_f32`: the
KV cache in f32 instead of llama.cpp's f16).
"""

from __future__ import annotations

import json
import resource
import statistics
import sys
import time


def last_logits(llm):
    """The logits of the last token evaluated (llama-cpp-python keeps none itself unless every position's are
    computed, which would slow the prefill)."""
    import numpy as np

    return np.ctypeslib.as_array(llm._ctx.get_logits_ith(-1), shape=(llm.n_vocab(),))


def run(request: dict) -> dict:
    import llama_cpp.llama_cpp as low
    from llama_cpp import Llama

    if not request.get("extra_bufts", True):
        # llama.cpp's extra weight buffer types (AMX, repacked weights) off: Llama() takes no switch for them, so
        # the defaults it starts from are changed
        defaults = low.llama_model_default_params

        def without_extra_bufts():
            params = defaults()
            params.use_extra_bufts = False
            return params

        low.llama_model_default_params = without_extra_bufts

    ids, gen = request["ids"], request["gen"]
    n_ctx = len(ids) + gen + 8
    llm = Llama(
        model_path=request["gguf"],
        n_ctx=n_ctx,
        n_batch=min(request["prefill_chunk"], n_ctx),
        n_ubatch=min(request["prefill_chunk"], n_ctx, 512),  # llama.cpp's default micro-batch (compute buffers)
        n_threads=request["threads"],
        n_threads_batch=request["threads"],
        flash_attn=request["flash_attn"],
        **({"type_k": 0, "type_v": 0} if request.get("kv_f32") else {}),  # GGML_TYPE_F32; default f16
        seed=0,
        verbose=False,
    )
    warm = ids[: min(64, len(ids))]
    llm.eval(warm)
    llm.eval([int(last_logits(llm).argmax())])
    llm.reset()  # n_tokens = 0: the next eval clears the cache from position 0 on (recurrent states included)

    start = time.perf_counter()
    llm.eval(ids)
    last = last_logits(llm)
    nxt = int(last.argmax())
    prefill_s = time.perf_counter() - start
    logits = last.tolist() if request.get("logits") else None
    steps = []
    for _ in range(gen):
        t0 = time.perf_counter()
        llm.eval([nxt])
        nxt = int(last_logits(llm).argmax())
        steps.append(time.perf_counter() - t0)
    decode_s = gen * statistics.median(steps) if steps else float("nan")
    peak_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux
    return {
        "prefill_s": prefill_s,
        "decode_s": decode_s,
        "peak_mib": peak_kib / 1024,
        "logits": logits,
        "n_vocab": llm.n_vocab(),
    }


if __name__ == "__main__":
    print(json.dumps(run(json.loads(sys.stdin.read()))))
