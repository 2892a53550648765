"""The name registry: normalised lookup, aliases, errors that list the choices, scoping."""

import pytest

from clbench.errors import ClbenchError, UnknownNameError
from clbench.methods import METHODS
from clbench.registry import Registry, normalize_name


@pytest.fixture
def reg() -> Registry[int]:
    r: Registry[int] = Registry("method")
    r.register("ogbn-arxiv", 1, aliases=["arxiv"])
    r.register("Cora", 2)
    return r


def test_lookup_ignores_case_dashes_underscores_and_spaces(reg):
    assert normalize_name("OGBN_Arxiv ") == "ogbnarxiv"
    for spelling in ("ogbn-arxiv", "OGBN_Arxiv", "ogbn arxiv", "ogbnarxiv", "ARXIV"):
        assert reg.get(spelling) == 1
        assert reg.canonical(spelling) == "ogbn-arxiv"
    assert reg.names() == ["Cora", "ogbn-arxiv"]
    assert reg.aliases_of("ogbn_arxiv") == ["arxiv"]
    assert "cora" in reg and "pubmed" not in reg and 3 not in reg


def test_unknown_name_lists_the_valid_names_and_the_closest(reg):
    with pytest.raises(UnknownNameError) as err:
        reg.get("ogbn-arxv")
    msg = str(err.value)
    assert "unknown method 'ogbn-arxv'" in msg
    assert "Did you mean 'ogbn-arxiv'?" in msg
    assert msg.endswith("Valid methods: Cora, ogbn-arxiv")
    with pytest.raises(UnknownNameError, match="Valid methods: Cora, ogbn-arxiv") as err:
        reg.get("zzz")
    assert "Did you mean" not in str(err.value)


def test_a_taken_name_or_alias_is_refused_unless_overwritten(reg):
    with pytest.raises(ClbenchError, match="already registered"):
        reg.register("CORA", 5)
    with pytest.raises(ClbenchError, match="already registered"):
        reg.register("arxiv", 5)
    with pytest.raises(ClbenchError, match="must not be empty"):
        reg.register("-_ ", 5)
    reg.register("cora", 5, overwrite=True)
    assert reg.get("Cora") == 5


def test_scoped_undoes_registrations_and_overwrites_made_inside_it(reg):
    with reg.scoped() as inner:
        assert inner is reg
        reg.register("mine", 7, aliases=["my-method"])
        reg.register("cora", 9, overwrite=True)
        assert reg.get("my_method") == 7 and reg.get("cora") == 9
    assert "mine" not in reg and "my-method" not in reg
    assert reg.get("cora") == 2 and reg.canonical("cora") == "Cora"
    assert reg.names() == ["Cora", "ogbn-arxiv"]


def test_scoped_restores_even_when_the_block_raises():
    builtins = METHODS.names()
    with pytest.raises(RuntimeError), METHODS.scoped():
        METHODS.register("half-done", object())
        raise RuntimeError("boom")
    assert METHODS.names() == builtins
