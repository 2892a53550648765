"""The README's test command is what CI runs, and its examples name real things."""

import re

from conftest import REPO

from clbench.methods import METHODS


def test_ci_runs_the_readme_test_command():
    readme = (REPO / "README.md").read_text()
    blocks = re.findall(r"```bash\n(.*?)```", readme, re.S)
    test_cmd = blocks[1].strip().split("&&")[-1].strip()
    assert test_cmd == "python -m pytest"
    ci = (REPO / ".ci" / "run").read_text().splitlines()
    assert test_cmd in [line.strip() for line in ci]
    assert "pip install torch==2.13.0" in blocks[0] and "clbench run" in blocks[0]


def test_every_registered_builtin_method_is_documented():
    readme = (REPO / "README.md").read_text()
    for name in METHODS.names():
        if name in ("finetune", "joint", "piggyback", "packnet", "ewc"):
            assert f"`{name}`" in readme
