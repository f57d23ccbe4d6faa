"""`zoo-convert` and `zoo-export`: transformers checkpoints into zoo checkpoints, and back.

zoo-convert Qwen/Qwen3-0.6B --out ckpt/qwen3        # a Hub id or a folder of a supported model_type
zoo-export runs/my-run --to hf --out hf/my-model     # a run folder or a zoo checkpoint
"""

from __future__ import annotations

import argparse
import sys

from zoo.errors import CheckpointError, ConfigError
from zoo.io.checkpoint import from_pretrained, parse_size, save_pretrained
from zoo.io.hf import ARCHS, export_transformers
from zoo.io.runs import locate


def convert(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="zoo-convert",
        description="Write a transformers checkpoint as a zoo checkpoint (weights mapped onto zoo modules, with its "
        f"tokenizer). Supported model_types: {', '.join(sorted(ARCHS))}.",
    )
    parser.add_argument("src", metavar="SRC", help="a transformers checkpoint folder or a Hub id (owner/name)")
    parser.add_argument("--out", required=True, metavar="DIR", help="folder to write (replaced atomically)")
    args = parser.parse_args(argv)
    try:
        model = from_pretrained(args.src)
        out = save_pretrained(model, args.out)
    except (CheckpointError, ConfigError, OSError) as e:
        print(f"zoo-convert: error: {e}", file=sys.stderr)
        return 2
    params = sum(p.numel() for p in model.parameters())
    print(f"converted {args.src} -> {out}: {model.config.n_layers} layers {model.layer_mixers}, {params:,} params")
    return 0


def export(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="zoo-export", description="Write a zoo model as a checkpoint of another library."
    )
    parser.add_argument("src", metavar="RUN_OR_CKPT", help="a run folder (with checkpoint/) or a zoo checkpoint")
    parser.add_argument("--to", required=True, choices=["hf"], help="hf: a transformers checkpoint")
    parser.add_argument("--out", required=True, metavar="DIR", help="folder to write (replaced atomically)")
    parser.add_argument("--max-shard-size", default=None, metavar="SIZE", help="shard the weights (e.g. 5GB)")
    args = parser.parse_args(argv)
    try:
        shard = None if args.max_shard_size is None else parse_size(args.max_shard_size)
    except ValueError as e:
        parser.error(f"--max-shard-size: {e}")
    try:
        ckpt, _ = locate(args.src)
        out = export_transformers(from_pretrained(ckpt), args.out, shard)
    except (CheckpointError, ConfigError, OSError) as e:
        print(f"zoo-export: error: {e}", file=sys.stderr)
        return 2
    print(f"exported {args.src} -> {out}: {', '.join(sorted(p.name for p in out.iterdir()))}")
    return 0
