"""`zoo-data`: pre-tokenized corpora (`zoo.data.tokens`).

    zoo-data prepare data=text data.tokenizer=bpe --out corpora/stdlib-bpe4k [--workers 4] [--overwrite]
    zoo-data prepare data=hf data.path=roneneldan/TinyStories data.val_split=validation --out corpora/tinystories
    zoo-data verify corpora/stdlib-bpe4k       # hash every file against the index
    zoo-data info corpora/stdlib-bpe4k         # the index, without the source config

`prepare` takes the data overrides `zoo-train` takes (`data=text|hf` and its keys), learns the tokenizer and splits
the documents exactly as training on that config would, then tokenizes in worker processes. Train from the folder
with `zoo-train data=tokens data.path=DIR`.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

from omegaconf import OmegaConf

from zoo.config import compose, typed
from zoo.errors import ConfigError


def prepare(overrides: list[str], out: str, workers: int, overwrite: bool) -> None:
    from zoo.data import lm_documents
    from zoo.data.tokens import prepare_corpus

    data = compose(overrides).data
    cfg = typed(data)
    t0 = time.perf_counter()
    train_docs, val_docs, tokenizer = lm_documents(cfg)
    source = OmegaConf.to_container(data, resolve=True)
    path = prepare_corpus(train_docs, val_docs, tokenizer, out, source=source, workers=workers, overwrite=overwrite)
    index = json.loads((path / "index.json").read_text())
    train, val = (index["splits"][split]["tokens"] for split in ("train", "val"))
    took = time.perf_counter() - t0
    print(f"{path}: {train:,} train / {val:,} val tokens ({index['dtype']}), vocab {index['vocab_size']}, {took:.1f} s")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="zoo-data", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("prepare", help="tokenize a data=text|hf config into a corpus folder")
    p.add_argument("overrides", nargs="*", help="data overrides as for zoo-train, e.g. data=text data.tokenizer=bpe")
    p.add_argument("--out", required=True, metavar="DIR", help="the corpus folder to write (atomically)")
    p.add_argument("--workers", type=int, default=min(4, os.cpu_count() or 1), help="tokenizing processes")
    p.add_argument("--overwrite", action="store_true", help="replace DIR if it exists")
    for name, text in (
        ("verify", "check every file of a corpus against its index"),
        ("info", "print a corpus's index"),
    ):
        sub.add_parser(name, help=text).add_argument("path", metavar="DIR")
    args = parser.parse_args(argv)
    try:
        if args.command == "prepare":
            bad = [o for o in args.overrides if not o.split("=", 1)[0].lstrip("+~").startswith("data")]
            if bad:
                raise ConfigError(f"prepare takes data overrides only (data=..., data.<key>=...), got {bad}")
            prepare(args.overrides, args.out, args.workers, args.overwrite)
        else:
            from zoo.data.tokens import open_corpus, verify_corpus

            index = verify_corpus(args.path) if args.command == "verify" else open_corpus(args.path).index
            if args.command == "verify":
                counts = ", ".join(f"{split} {info['tokens']:,} tokens" for split, info in index["splits"].items())
                print(f"{args.path}: ok ({counts})")
            else:
                print(json.dumps({k: v for k, v in index.items() if k != "source"}, indent=2))
    except ConfigError as e:
        print(f"zoo-data: error: {e}", file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    main()
