"""The name registry: normalised lookup, aliases, errors that list the choices, scoping."""

import sys

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


# -- lazy entries ------------------------------------------------------------------------
LAZY_MODULE = """
from clbench.registry import normalize_name  # any import: the module runs once

def make():
    return "made"

class Other:
    pass
"""


@pytest.fixture
def lazy_module(tmp_path, monkeypatch):
    """A module on sys.path that is not imported yet."""
    name = f"clbench_lazy_target_{tmp_path.name.replace('-', '_')}"
    (tmp_path / f"{name}.py").write_text(LAZY_MODULE)
    monkeypatch.syspath_prepend(str(tmp_path))
    yield name
    sys.modules.pop(name, None)


def test_a_lazy_entry_is_known_by_name_and_imported_on_first_get(lazy_module):
    r: Registry[object] = Registry("method")
    r.register_lazy("my-thing", f"{lazy_module}:make", aliases=("thing",))
    assert r.canonical("THING") == "my-thing" and r.names() == ["my-thing"]
    assert r.aliases_of("my_thing") == ["thing"] and "thing" in r and len(r) == 1
    with pytest.raises(UnknownNameError, match="Did you mean 'my-thing'"):
        r.get("my-thin")
    assert lazy_module not in sys.modules  # nothing above imported it
    made = r.get("thing")
    assert made() == "made" and lazy_module in sys.modules
    assert r.get("my-thing") is made


def test_the_module_a_lazy_entry_names_may_register_it_but_nothing_else_may(lazy_module):
    import importlib

    r: Registry[object] = Registry("method")
    r.register_lazy("make", f"{lazy_module}:make")
    module = importlib.import_module(lazy_module)
    with pytest.raises(ClbenchError, match="already registered"):
        r.register("make", module.Other)  # another object under the name: refused as ever
    r.register("make", module.make)  # what the entry names: fills it
    assert r.get("make") is module.make
    with pytest.raises(ValueError, match="module:attribute"):
        r.register_lazy("bad", "no-colon")


def test_a_lazy_entry_survives_a_scope_that_imported_it(lazy_module):
    r: Registry[object] = Registry("method")
    r.register_lazy("make", f"{lazy_module}:make")
    with r.scoped():
        made = r.get("make")
    assert r.get("make") is made


def test_the_builtin_tables_agree_with_what_the_modules_register():
    """Each built-in method and model is registered lazily from a table; importing its
    module registers the same object under the same name and aliases."""
    import importlib

    from clbench.backbones import BUILTIN_MODELS, MODELS
    from clbench.methods import BUILTIN_METHODS

    for registry, table in ((METHODS, BUILTIN_METHODS), (MODELS, BUILTIN_MODELS)):
        for name, (path, aliases) in table.items():
            module, _, attr = path.partition(":")
            obj = getattr(importlib.import_module(module), attr)
            assert registry.get(name) is obj, name
            assert registry.canonical(name) == name
            assert registry.aliases_of(name) == sorted(aliases), name
    for name in BUILTIN_METHODS:
        assert METHODS.get(name).method_name == name
