"""The README's test command is what CI runs, and its examples name real things."""

import re
import subprocess
import sys
from pathlib import Path

from datahelpers import REPO

from clbench.methods import BUILTIN_METHODS, METHODS


def test_ci_runs_the_readme_test_command():
    readme = (REPO / "README.md").read_text()
    blocks = re.findall(r"```bash\n(.*?)```", readme, re.S)
    test_cmd = blocks[1].strip().split("&&")[-1].strip()
    assert test_cmd == "python -m pytest"
    ci = [line.strip() for line in (REPO / ".ci" / "run").read_text().splitlines()]
    assert test_cmd in ci
    # the default run leaves the slow cases out; CI runs them too
    assert "python -m pytest -m slow" in ci and "`python -m pytest -m slow`" in readme
    assert "pip install torch==2.13.0" in blocks[0] and "clbench run" in blocks[0]


def test_every_registered_builtin_method_is_documented():
    readme = (REPO / "README.md").read_text()
    for name in METHODS.names():
        if name in BUILTIN_METHODS:
            assert f"`{name}`" in readme


def check_python_snippets_are_ruff_clean(page: Path, tmp_path: Path) -> None:
    """Every ```python block of ``page``, written to ``tmp_path``, passes ``ruff check``
    with the project's configuration (there is at least one)."""
    blocks = re.findall(r"```python\n(.*?)```", page.read_text(), re.S)
    assert blocks
    for i, block in enumerate(blocks):
        (tmp_path / f"snippet_{i}.py").write_text(block)
    proc = subprocess.run([sys.executable, "-m", "ruff", "check", "--no-cache",
                           "--config", str(REPO / "pyproject.toml"), str(tmp_path)],
                          capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_readme_python_snippets_are_ruff_clean(tmp_path):
    """A newcomer copies these: no unused imports or other lint."""
    check_python_snippets_are_ruff_clean(REPO / "README.md", tmp_path)


def test_methods_page_snippets_are_ruff_clean(tmp_path):
    """docs/methods.md's worked example is copied too (tests/test_method_contract.py
    runs it)."""
    check_python_snippets_are_ruff_clean(REPO / "docs" / "methods.md", tmp_path)


def test_readme_links_the_methods_page():
    readme = (REPO / "README.md").read_text()
    section = readme[readme.index("### Writing a method"):readme.index("## Command line")]
    assert "(docs/methods.md)" in section and (REPO / "docs" / "methods.md").is_file()


def test_run_help_states_the_defaults():
    from typer.testing import CliRunner

    from clbench.cli import app

    out = CliRunner().invoke(app, ["run", "--help"], env={"COLUMNS": "200"}).output
    for text in ("Default: piggyback", "Default: 1000", "Default: gcn"):
        assert text in out, text


def test_compare_commit_help_matches_the_behaviour():
    """Without --commit the table takes the commit the runs logged (the README says so)."""
    from typer.testing import CliRunner

    from clbench.cli import app

    out = " ".join(CliRunner().invoke(app, ["compare", "--help"],
                                      env={"COLUMNS": "300"}).output.split())
    assert "the commit the runs logged" in out
    assert "the git commit the runs logged" in " ".join(
        (REPO / "README.md").read_text().split())
