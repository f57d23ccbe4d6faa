"""`zoo-publish` (also `python -m zoo.io.publish`): a run folder -> a Hub-ready model folder, optionally pushed.

    zoo-publish runs/2026-11-27/12-00-00 --out published/hybrid-gla-mqar
    zoo-publish runs/mine --out published/mine --push me/hybrid-gla-mqar --private --max-shard-size 2GB

DIR receives, atomically: the weights (`model.safetensors`, or shards + `model.safetensors.index.json`
above --max-shard-size), `config.json`, the tokenizer, the run's `results.json`, and `README.md`, a model
card whose YAML front matter (library, tags, `model-index`) the Hub reads and whose prose gives the
architecture, size, inference-state cost, training data, results and the command that reproduces the run.
Whatever the run folder does not record is said in the card, not guessed. Optimizer state is not published.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

from zoo.errors import CheckpointError, ConfigError, PublishError
from zoo.io.card import RunRecord, model_card, read_run
from zoo.io.checkpoint import from_pretrained, parse_size, read_weights, write_config, write_weights
from zoo.io.results import RESULTS
from zoo.io.runs import CONFIG, write_dir_atomically

DEFAULT_MAX_SHARD_SIZE = "5GB"

CARD = "README.md"


def check_out_dir(out: Path, run: RunRecord) -> None:
    """DIR is replaced as a whole, so it must not hold the run itself or anything that is not a published model."""
    resolved = out.resolve()
    for keep in (run.run_dir.resolve(), run.checkpoint.resolve()):
        if resolved == keep or resolved in keep.parents:
            raise PublishError(f"--out {out} would replace the run folder {keep}; choose another folder")
    if out.exists() and any(out.iterdir()) and not (out / CONFIG).exists():
        raise PublishError(f"--out {out} exists and is not a published model folder; choose a new or empty folder")


def publish(source, out, max_shard_bytes: int | None = None, repo_id: str | None = None) -> Path:
    """Write the published folder `out` from the run or checkpoint folder `source`; returns `out`."""
    max_shard_bytes = parse_size(DEFAULT_MAX_SHARD_SIZE) if max_shard_bytes is None else max_shard_bytes
    run = read_run(source)
    out = Path(out)
    check_out_dir(out, run)
    model = from_pretrained(run.checkpoint)  # validates config, weights and tokenizer
    # The weights go out as stored (dtype untouched), not re-derived from the float32 model built to check them.
    tensors, _, _ = read_weights(run.checkpoint)
    name = repo_id.split("/")[-1] if repo_id else out.resolve().name
    card = model_card(model, run, name, repo_id)

    def write(tmp: Path) -> None:
        write_weights(tensors, tmp, max_shard_bytes)
        write_config(model.config, tmp)
        if model.tokenizer is not None:
            model.tokenizer.save(tmp)
        if run.results is not None:
            (tmp / RESULTS).write_text(json.dumps(run.results, indent=2, sort_keys=True) + "\n")
        (tmp / CARD).write_text(card)

    return write_dir_atomically(out, write)


def hub_offline() -> bool:
    """huggingface_hub's own switches (read here too, so the push fails at once instead of timing out)."""
    switches = (os.environ.get(k, "").upper() for k in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"))
    return any(value in ("1", "ON", "YES", "TRUE") for value in switches)


def push(out: Path, repo_id: str, private: bool = False) -> str:
    """Upload the complete folder `out` to the Hub model repo `repo_id` (created if needed); returns its URL."""
    later = f"the model is complete in {out}; push it later with `hf upload {repo_id} {out}`"
    try:
        import huggingface_hub
    except ImportError as e:
        raise PublishError(f"--push needs huggingface_hub: pip install huggingface_hub ({later})") from e
    if hub_offline():
        raise PublishError(f"cannot push to {repo_id}: HF_HUB_OFFLINE is set ({later})")
    try:
        huggingface_hub.create_repo(repo_id, private=private, exist_ok=True)
        huggingface_hub.upload_folder(repo_id=repo_id, folder_path=str(out), commit_message="zoo-publish")
    except Exception as e:  # network, auth, permission: one line, and the local folder stays as written
        reason = (str(e).strip().splitlines() or [""])[0]
        raise PublishError(f"could not push to {repo_id}: {type(e).__name__}: {reason} ({later})") from e
    return f"https://huggingface.co/{repo_id}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="zoo-publish", description=__doc__.splitlines()[0])
    parser.add_argument("run_dir", metavar="RUN_DIR", help="a run folder (with checkpoint/) or a checkpoint folder")
    parser.add_argument("--out", required=True, metavar="DIR", help="folder to write (replaced atomically)")
    parser.add_argument("--push", metavar="REPO_ID", help="also upload DIR to this Hugging Face Hub model repo")
    parser.add_argument("--private", action="store_true", help="create the Hub repo as private (with --push)")
    parser.add_argument(
        "--max-shard-size",
        default=DEFAULT_MAX_SHARD_SIZE,
        metavar="SIZE",
        help=f"split the weights into shards of at most SIZE (default {DEFAULT_MAX_SHARD_SIZE})",
    )
    args = parser.parse_args(argv)
    if args.private and not args.push:
        parser.error("--private only applies with --push REPO_ID")
    try:
        max_shard_bytes = parse_size(args.max_shard_size)
    except ValueError as e:
        parser.error(f"--max-shard-size: {e}")
    try:
        out = publish(args.run_dir, args.out, max_shard_bytes, args.push)
    except (CheckpointError, ConfigError, PublishError, OSError) as e:
        print(f"zoo-publish: error: {e}", file=sys.stderr)
        return 2
    files = sorted(p.name for p in out.iterdir())
    print(f"published {out}: {', '.join(files)}")
    if args.push:
        try:
            url = push(out, args.push, args.private)
        except PublishError as e:
            print(f"zoo-publish: error: {e}", file=sys.stderr)
            return 1
        print(f"pushed to {url}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
