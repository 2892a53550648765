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
    assert "on ogbn-arxiv: num_memories=2000" in text  # as the user names it, not normalised
    assert "batch, empirical" in text and "in [0, 1]" in text  # choices and bounds
    assert "backbones: gcn, gat (its topology term needs" in text  # TWP's declaration
    assert "backbones: any" in text  # the methods that leave the backbone alone


def test_cards_declare_only_known_backbones_and_bad_declarations_are_refused():
    import pytest

    from clbench.backbones import BUILTIN_MODELS
    from clbench.cards import MethodCard
    from clbench.errors import ClbenchError

    for name in METHODS.names():
        assert set(load_card(name).backbones) <= set(BUILTIN_MODELS), name
    assert load_card("twp").backbones == ("gcn", "gat")
    for bad in ([], ["gcn", ""], "gcn", [1]):
        with pytest.raises(ClbenchError, match="backbones must be a non-empty list"):
            MethodCard.from_dict("m", {"backbones": bad})


def test_a_plugin_cards_backbones_are_enforced_before_anything_runs():
    import pytest

    from clbench import NCTrainer, register_method
    from clbench.errors import ClbenchError
    from clbench.resolve import resolve_run

    class GcnOnly(NCTrainer):
        card = {"backbones": ["gcn"], "backbones_note": "it reads GCN weights"}

    with METHODS.scoped():
        register_method("gcn-only-test")(GcnOnly)
        assert resolve_run("gcn-only-test", "synthetic", 0).protocol.model == "gcn"
        with pytest.raises(ClbenchError, match=r"runs only on --model gcn, not gat: it reads"):
            resolve_run("gcn-only-test", "synthetic", 0, params={"model": "gat"})
