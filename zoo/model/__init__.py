"""The model library: `HybridLM` (a stack of mixer + MLP blocks), its layers, MLPs and token mixers."""
