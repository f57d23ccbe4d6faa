"""hybrid zoo: language models that mix linear-attention / recurrent layers with a few attention layers.

Public API: `build_model(cfg)`, `from_pretrained(dir_or_hub_id)`, `MIXERS`. Importing `zoo` is cheap and
never needs CUDA.
"""

from __future__ import annotations

from zoo.errors import ConfigError
from zoo.io.checkpoint import from_pretrained
from zoo.model.config import ModelConfig
from zoo.model.lm import HybridLM, build_model
from zoo.model.mixers import MIXERS

__all__ = ["MIXERS", "ConfigError", "HybridLM", "ModelConfig", "build_model", "from_pretrained"]
__version__ = "0.1.0"
