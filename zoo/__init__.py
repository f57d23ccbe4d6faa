"""hybrid zoo: language models that mix linear-attention / recurrent layers with a few attention layers.

Public API: `build_model(cfg)`, `from_pretrained(dir_or_hub_id)`, `MIXERS`. Importing `zoo` is cheap and
never needs CUDA.
"""

from __future__ import annotations

from zoo.checkpoint import from_pretrained
from zoo.config import ModelConfig
from zoo.mixers import MIXERS, ConfigError
from zoo.model import HybridLM, build_model

__all__ = ["MIXERS", "ConfigError", "HybridLM", "ModelConfig", "build_model", "from_pretrained"]
__version__ = "0.1.0"
