"""scripts/params.py: every pure architecture's parameter count is within +-10% of the transformer's at the
papers' comparison size (d_model 768, 12 layers), and the table lists every architecture."""

from __future__ import annotations

from tests.helpers import load_script


def test_every_architecture_matches_the_transformer_within_10_percent(capsys):
    params = load_script("params")
    assert params.main(["--d-model", "768", "--n-layers", "12", "--check"]) == 0, capsys.readouterr().out
    out = capsys.readouterr().out
    for arch in params.architectures():
        assert f"| {arch} |" in out


def test_check_fails_when_an_architecture_is_off():
    params = load_script("params")
    row = params.measure("gla", 768, 12, 8192, None)
    base = params.measure("transformer", 768, 12, 8192, None)
    assert abs(row["params"] / base["params"] - 1) <= params.TOLERANCE
    assert params.main(["--d-model", "768", "--n-layers", "12", "--check"]) == 0
    params.TOLERANCE = -1.0  # no architecture can be within a negative tolerance: the check must fail
    assert params.main(["--d-model", "768", "--n-layers", "12", "--check"]) == 1
