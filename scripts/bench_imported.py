"""Published model classes on CPU: the zoo's import against transformers' own implementation, same weights.

For each transformers class the zoo imports, a random-init checkpoint at the README's d768 x 12 shape (or
`--d-model` / `--n-layers`) is built from its config class and saved, then `zoo-bench path=<folder>` times both
implementations of it in one run (prefill of X prompt tokens, then Y generated tokens, each in its own process).

    python scripts/bench_imported.py --out docs/results/imported_bench            # every class, X = 512 and 8k
    python scripts/bench_imported.py --classes llama mamba2 --prompt-lens 512     # a subset

Writes `<out>/<class>/bench.{csv,md,png}` and `<out>/imported.md` (one table: tokens/s of both and their ratio).
Needs transformers (pip install 'hybrid-zoo[bench]').
"""

from __future__ import annotations

import argparse
import csv
import subprocess
import sys
from pathlib import Path


def configs(d: int, n: int, vocab: int) -> dict[str, tuple[str, dict]]:
    """(config class, fields) per class, at width `d` and depth `n`: heads of 64, SwiGLU 8/3 d, hybrids with an
    attention layer in every 4 (as OLMo-Hybrid and Qwen3.5 ship), Mamba-2 heads of 64 with d_state 128."""
    heads, hidden = d // 64, 8 * -(-8 * d // 3 // 8)
    base = {"vocab_size": vocab, "hidden_size": d, "num_hidden_layers": n, "tie_word_embeddings": True}
    dense = {**base, "intermediate_size": hidden, "num_attention_heads": heads, "num_key_value_heads": heads}
    every4 = ["full_attention" if i % 4 == 3 else "linear_attention" for i in range(n)]
    mamba = {"mamba_n_heads": 2 * d // 64, "mamba_d_head": 64, "mamba_d_state": 128, "mamba_n_groups": 1}
    linear = {"linear_num_key_heads": heads, "linear_num_value_heads": heads, "linear_key_head_dim": 64}
    return {
        "llama": ("LlamaConfig", dense),
        "qwen3": ("Qwen3Config", {**dense, "head_dim": 64}),
        "mamba2": (
            "Mamba2Config",
            {**base, "num_heads": 2 * d // 64, "head_dim": 64, "state_size": 128, "n_groups": 1},
        ),
        "bamba": ("BambaConfig", {**dense, **mamba, "attn_layer_indices": [i for i in range(n) if i % 4 == 3]}),
        "nemotron_h": (
            "NemotronHConfig",
            {
                **dense,
                "head_dim": 64,
                "layers_block_type": [("full_attention" if i % 4 == 3 else "linear_attention") for i in range(n)],
                "mamba_num_heads": 2 * d // 64,
                "mamba_head_dim": 64,
                "ssm_state_size": 128,
                "n_groups": 1,
            },
        ),
        "olmo_hybrid": (
            "OlmoHybridConfig",
            {**dense, **linear, "linear_value_head_dim": 128, "layer_types": every4, "pad_token_id": None},
        ),
        "qwen3_5": (
            "Qwen3_5TextConfig",
            {**dense, **linear, "head_dim": 64, "linear_value_head_dim": 128, "layer_types": every4},
        ),
        # the layout of the released Qwen3.5 / Qwen3-Next models, value heads as wide as key heads and twice as
        # many (llama.cpp loads only that; same parameters and state bytes as qwen3_5 above)
        "qwen3_5_equal_heads": (
            "Qwen3_5TextConfig",
            {**dense, **linear, "head_dim": 64, "linear_value_head_dim": 64, "layer_types": every4}
            | {"linear_num_value_heads": 2 * heads},
        ),
        # released Falcon-H1 configs carry head_dim (llama.cpp's converter reads it; transformers' class does not)
        "falcon_h1": ("FalconH1Config", {**dense, **mamba, "mamba_d_ssm": 2 * d, "head_dim": 64}),
        "zamba2": (
            "Zamba2Config",
            {
                **base,
                "num_attention_heads": heads,
                "intermediate_size": hidden,
                "layers_block_type": ["hybrid" if i % 4 == 3 else "mamba" for i in range(n)],
                "n_mamba_heads": 2 * d // 64,
                "mamba_d_state": 128,
                "num_mem_blocks": 2,
                "use_shared_attention_adapter": True,
                "use_mem_rope": True,
            },
        ),
    }


def build(name: str, spec: tuple[str, dict], folder: Path) -> None:
    import torch
    import transformers

    cls, fields = spec
    torch.manual_seed(0)
    config = getattr(transformers, cls)(**fields)
    transformers.AutoModelForCausalLM.from_config(config).save_pretrained(folder)


def summary(out: Path, names: list[str]) -> str:
    """One markdown table from the classes' bench.csv: batch-1 tokens/s of the zoo and of transformers."""
    lines = [
        "| class | prompt | zoo prefill tok/s | transformers prefill tok/s | ratio | zoo decode tok/s | "
        "transformers decode tok/s | ratio |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for name in names:
        path = out / name / "bench.csv"
        if not path.exists():
            lines.append(f"| {name} | - | failed: no bench.csv | | | | | |")
            continue
        every = list(csv.DictReader(path.open()))
        rows = [r for r in every if r.get("batch") == "1"]
        lines += [
            f"| {name} | - | {r['arch']}: {r['note']} | | | | | |" for r in every if r["note"].startswith("failed")
        ]
        for x in sorted({int(r["prompt_len"]) for r in rows}):
            at_x = [r for r in rows if int(r["prompt_len"]) == x]
            ours = next((r for r in at_x if not r["arch"].startswith("transformers:")), {})
            theirs = next((r for r in at_x if r["arch"].startswith("transformers:")), {})

            cells = []
            for key in ("prefill_tok_s", "decode_tok_s"):
                a, b = (float(r[key]) if r.get(key) else None for r in (ours, theirs))
                cells += ["-" if a is None else f"{a:.1f}", "-" if b is None else f"{b:.1f}"]
                cells.append(f"{a / b:.2f}x" if a and b else "-")
            lines.append(f"| {name} | {x} | {' | '.join(cells)} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=Path("runs/imported_bench"))
    parser.add_argument("--classes", nargs="*", default=None, help="default: every class but the layout variants")
    parser.add_argument("--d-model", type=int, default=768)
    parser.add_argument("--n-layers", type=int, default=12)
    parser.add_argument("--vocab", type=int, default=32000)
    parser.add_argument("--prompt-lens", type=int, nargs="+", default=[512, 8192])
    parser.add_argument("--gen", type=int, default=128)
    parser.add_argument("--bench", nargs="*", default=[], help="zoo-bench overrides, e.g. bench.quantize=[none,int8]")
    args = parser.parse_args(argv)
    specs = configs(args.d_model, args.n_layers, args.vocab)
    names = args.classes or [n for n in specs if not n.endswith("_equal_heads")]
    unknown = sorted(set(names) - set(specs))
    if unknown:
        parser.error(f"unknown classes {unknown}; valid: {', '.join(specs)}")
    for name in names:
        folder = args.out / name / "checkpoint"
        if not (folder / "config.json").exists():
            build(name, specs[name], folder)
        cmd = [
            sys.executable,
            "-m",
            "zoo.bench",
            f"path={folder}",
            f"out={args.out / name}",
            f"bench.prompt_lens={args.prompt_lens}",
            f"bench.gen_tokens={args.gen}",
            "bench.batch_sizes=[1]",
            *args.bench,
        ]
        print(" ".join(cmd), flush=True)
        subprocess.run(cmd, check=False)
    table = summary(args.out, names)
    (args.out / "imported.md").write_text(table)
    print(table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
