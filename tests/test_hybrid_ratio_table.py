"""scripts/hybrid_ratio_table.py: each run's point is named by its attention layers, the all-attention references
by their positions."""

from __future__ import annotations

from tests.helpers import load_script

script = load_script("hybrid_ratio_table")


def test_points_name_attention_layers_and_the_references_positions():
    hybrid = {"architecture": "gla", "n_layers": 4, "attn_layers": 2, "attn_at": "1 3", "learned_positions": None}
    assert script.point(hybrid) == "gla attn [1, 3]"
    table = {"architecture": "transformer", "n_layers": 4, "attn_layers": 4, "learned_positions": 64}
    assert script.point(table) == "all attention (64-row position table)"
    assert script.point(table | {"learned_positions": None}) == "all attention (no position table)"
    rope_100k = table | {"learned_positions": None, "train_size": 100_000}
    assert script.point(rope_100k) == "all attention (no position table, 100k training sequences)"
