"""``clbench list methods`` shows every method's card: summary, defaults, allowed values,
help and per-dataset overrides."""

from __future__ import annotations

from typer.testing import CliRunner

from clbench.cli import app
from clbench.config import load_card
from clbench.methods import METHODS


def test_list_methods_shows_each_cards_help_and_overrides():
    out = CliRunner().invoke(app, ["list", "methods"], env={"COLUMNS": "400"})
    assert out.exit_code == 0, out.output
    text = " ".join(out.output.split())
    for name in METHODS.names():
        card = load_card(name)
        assert f"{name}" in text and " ".join(card.summary.split()) in text
        for key, help_text in card.help.items():
            assert key in text and " ".join(help_text.split()) in text, (name, key)
    assert "on cora: num_memories=12" in text  # GEM's per-dataset override
    assert "batch, empirical" in text and "in [0, 1]" in text  # choices and bounds
