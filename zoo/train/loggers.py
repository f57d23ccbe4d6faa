"""Where training metrics go: `metrics.jsonl` in the run folder always, plus TensorBoard and Weights & Biases
when `train.log` enables them. Neither is a dependency: enabling one that is not installed is a config error
naming the pip package (`pip install 'hybrid-zoo[tensorboard]'` / `[wandb]`)."""

from __future__ import annotations

import numbers
import secrets
from collections.abc import Mapping
from pathlib import Path

from zoo.config import from_mapping
from zoo.errors import ConfigError
from zoo.io.results import log_metrics
from zoo.schemas import LogConfig

TENSORBOARD_DIR = "tensorboard"
WANDB_ID_FILE = "wandb_id.txt"


def _missing(option: str, package: str) -> ConfigError:
    return ConfigError(
        f"{option} needs the `{package}` package, which is not installed: "
        f"pip install {package}  (or pip install 'hybrid-zoo[{package}]'), or turn the option off"
    )


class RunLogger:
    """One `log(record)` call per logged step fans the record out to every enabled sink.

    `record` is a flat dict with a `step` key (as written to `metrics.jsonl`). `enabled=False` (ranks other
    than 0) makes every call a no-op, so the training loop needs no rank checks of its own.
    `start_step` is where this (possibly resumed) run starts: TensorBoard drops events logged past it by an
    interrupted earlier run, as `metrics.jsonl` does (`results.truncate_metrics`).
    `log_cfg` is `train.log`; a plain dict may leave a sink out, which leaves that sink off."""

    def __init__(
        self, run_dir, log_cfg: LogConfig | Mapping, run_config: dict, start_step: int = 0, enabled: bool = True
    ):
        self.run_dir = Path(run_dir)
        self.enabled = enabled
        self._tb = self._wandb = None
        if not isinstance(log_cfg, LogConfig):
            log_cfg = from_mapping(LogConfig, {"tensorboard": False, "wandb": None, **log_cfg}, "train.log")
        # The imports are checked on every rank, so a missing package fails everywhere, not only on rank 0.
        if log_cfg.tensorboard:
            summary_writer = _import_tensorboard()
            if enabled:
                log_dir = str(self.run_dir / TENSORBOARD_DIR)
                self._tb = summary_writer(log_dir=log_dir, purge_step=start_step or None)
        if log_cfg.wandb:
            wandb = _import_wandb()
            if enabled:
                self._wandb = self._open_wandb(wandb, log_cfg.wandb, run_config)

    def _open_wandb(self, wandb, wandb_cfg: dict, run_config: dict):
        # A stable id stored in the run folder: a resumed run continues the same W&B run instead of a new one.
        id_file = self.run_dir / WANDB_ID_FILE
        run_id = id_file.read_text().strip() if id_file.exists() else secrets.token_hex(4)
        id_file.write_text(run_id + "\n")
        kwargs = {"dir": str(self.run_dir), "config": run_config, "id": run_id, "resume": "allow", **wandb_cfg}
        return wandb.init(**kwargs)

    def log(self, record: dict) -> None:
        if not self.enabled:
            return
        log_metrics(self.run_dir, record)
        step = record["step"]
        scalars = {k: v for k, v in record.items() if k != "step" and isinstance(v, numbers.Real)}
        if self._tb is not None:
            for key, value in scalars.items():
                self._tb.add_scalar(key, value, step)
        if self._wandb is not None:
            self._wandb.log(scalars, step=step)

    def close(self) -> None:
        if self._tb is not None:
            self._tb.close()
            self._tb = None
        if self._wandb is not None:
            self._wandb.finish()
            self._wandb = None


def _import_tensorboard():
    try:  # torch.utils.tensorboard imports the `tensorboard` package and raises ImportError without it
        from torch.utils.tensorboard import SummaryWriter
    except ImportError as e:
        raise _missing("train.log.tensorboard=true", "tensorboard") from e
    return SummaryWriter


def _import_wandb():
    try:
        import wandb
    except ImportError as e:
        raise _missing("train.log.wandb", "wandb") from e
    return wandb
