"""`zoo-train`: the training loop (`loop`), its distributed set-up, loggers, trainer state and failure records."""
