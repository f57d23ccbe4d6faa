"""Run folders and checkpoints on disk: safetensors checkpoints, results.json / metrics.jsonl, publishing."""
