"""The run folder on disk: where a run's checkpoint is, its `.old` twin, and atomic writes.

A run folder holds `.hydra/`, `metrics.jsonl`, `results.json` and `checkpoint/`. Every file the zoo writes is
written atomically (a temporary file or folder next to it, then a rename), so a crash leaves the old version or
the new one, never half of one. Replacing a whole folder takes two renames (the old folder to `<name>.old`, the
new one into place); a crash between them leaves only the `.old` twin, which every reader here accepts."""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path

from zoo.errors import CheckpointError

CHECKPOINT = "checkpoint"  # a run folder's checkpoint folder
CONFIG = "config.json"  # what makes a folder a checkpoint
RESULTS = "results.json"


def write_text_atomically(path, text: str) -> Path:
    """Write `text` to `path` through a temporary file in the same folder and a rename."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def write_dir_atomically(directory, write: Callable[[Path], None]) -> Path:
    """Run `write(tmp_dir)` then swap `tmp_dir` into `directory`, so a crash never leaves a half-written
    folder: readers see the old folder, or `<directory>.old` during the swap (see `readable_dir`)."""
    directory = Path(directory)
    directory.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{directory.name}.tmp-", dir=directory.parent))
    try:
        write(tmp)
        old = old_twin(directory)
        if directory.exists():
            if old.exists():
                shutil.rmtree(old)
            os.replace(directory, old)
        os.replace(tmp, directory)
        if old.exists():
            shutil.rmtree(old)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp)
    return directory


def old_twin(directory) -> Path:
    """`<directory>.old`: where `write_dir_atomically` keeps the previous folder during a swap."""
    directory = Path(directory)
    return directory.with_name(directory.name + ".old")


def readable_dir(directory) -> Path:
    """`directory`, or its `.old` twin when a crash hit between the two renames of an atomic write."""
    directory = Path(directory)
    if not directory.exists() and old_twin(directory).exists():
        return old_twin(directory)
    return directory


def locate(path) -> tuple[Path, Path]:
    """`(checkpoint folder, record folder)` of a run folder (with `checkpoint/`) or a checkpoint folder; the record
    folder is the one whose `results.json` describes the model (a run's `checkpoint/` is described by its run).
    Either folder may be the `.old` twin an interrupted write left."""
    path = Path(path)
    ckpt = readable_dir(path / CHECKPOINT)
    if (ckpt / CONFIG).exists():
        return ckpt, path
    path = readable_dir(path)
    if (path / CONFIG).exists():
        run = path.parent
        in_run = (run / ".hydra").is_dir() or (run / RESULTS).exists()
        if in_run and path.name in (CHECKPOINT, old_twin(CHECKPOINT).name):
            return path, run
        return path, path
    raise CheckpointError(f"{path} is neither a run folder (with checkpoint/) nor a checkpoint folder (config.json)")
