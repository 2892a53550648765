"""The command line: a real run, --json, list, and every bad input exiting 2 with one line."""

import json
import sys

import pytest
from datahelpers import REPO

from clbench import cli


def invoke(monkeypatch, capsys, *args):
    monkeypatch.setattr(sys, "argv", ["clbench", *args])
    with pytest.raises(SystemExit) as exc:
        cli.main()
        raise SystemExit(0)
    out = capsys.readouterr()
    return exc.value.code, out.out, out.err


def test_run_prints_matrix_and_writes_json(monkeypatch, capsys, tmp_path):
    out_file = tmp_path / "r.json"
    code, out, _ = invoke(monkeypatch, capsys, "run", "--method", "bare", "--epochs", "20",
                          "-p", "hidden=32", "--tasks", "3x2", "--json", str(out_file), "-q")
    assert code == 0
    assert "AP" in out and "AF" in out and "after task" in out
    data = json.loads(out_file.read_text())
    assert data["method"] == "finetune" and len(data["R_test"]) == 3
    assert data["config"]["hidden"] == 32 and data["scenario"]["classes_per_task"] == 2


def test_list_shows_methods_params_and_datasets(monkeypatch, capsys):
    code, out, _ = invoke(monkeypatch, capsys, "list")
    assert code == 0
    for word in ("finetune", "joint", "piggyback", "threshold", "synthetic", "gcn"):
        assert word in out


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["run", "--method", "nope"], "unknown method 'nope'"),
        (["run", "--dataset", "nope"], "Valid datasets:"),
        (["run", "--model", "mlp"], "Valid models: gat, gcn, sage"),
        (["run", "--tasks", "0"], "at least 1"),
        (["run", "--tasks", "11"], "only 10 classes"),
        (["run", "--tasks", "3x5"], "need 15 classes"),
        (["run", "--tasks", "abc"], "--tasks expects"),
        (["run", "--epochs", "0"], "--epochs must be at least 1"),
        (["run", "-p", "nokey=1"], "Valid keys:"),
        (["run", "-p", "lr=fast"], "expects float"),
        (["run", "-p", "lr"], "key=value"),
        (["run", "--method", "piggyback", "-p", "mask_type=quaternary"], "must be one of"),
        (["run", "-p", "dropout=1.5"], "dropout"),
        (["run", "--graph", "partial"], "--graph must be full or task"),
        (["run", "--metric", "f1"], "--metric must be accuracy or balanced_accuracy"),
        (["run", "--plugin", "missing_file.py"], "plugin file not found"),
        (["list", "things"], "unknown list"),
    ],
)
def test_bad_input_exits_2_with_one_clear_line(monkeypatch, capsys, args, message):
    code, _, err = invoke(monkeypatch, capsys, *args)
    assert code == 2
    assert message in " ".join(err.split())
    assert "Traceback" not in err
    assert len([line for line in err.splitlines() if line.strip()]) <= 3


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["report"], "No such command 'report'"),
        (["run", "--bogus"], "No such option: --bogus"),
        (["run", "--epochs", "ten"], "Invalid value for '--epochs'"),
        (["sweep"], "Missing argument"),
    ],
)
def test_usage_errors_exit_2_with_clicks_message(monkeypatch, capsys, args, message):
    """Typer vendors its own click (0.2x): its usage errors must still be reported as
    usage errors, not escape as a traceback."""
    code, _, err = invoke(monkeypatch, capsys, *args)
    assert code == 2
    assert message in " ".join(err.replace("│", " ").split())
    assert "Traceback" not in err


def test_unknown_method_lists_the_valid_ones(monkeypatch, capsys):
    _, _, err = invoke(monkeypatch, capsys, "run", "--method", "pigyback")
    err = " ".join(err.split())
    assert "Did you mean 'piggyback'?" in err
    from clbench.methods import BUILTIN_METHODS

    assert f"Valid methods: {', '.join(sorted(BUILTIN_METHODS))}" in err


def test_plugin_example_via_cli(monkeypatch, capsys):
    code, out, _ = invoke(monkeypatch, capsys, "run", "--plugin",
                          str(REPO / "examples" / "my_method.py"), "--method", "lwf-lite",
                          "--epochs", "10", "-p", "alpha=0.5", "-p", "hidden=32", "-q")
    assert code == 0 and "lwf-lite on synthetic" in " ".join(out.split())


def test_help_does_not_import_torch():
    """`clbench --help` (and importing the CLI or `clbench`) stays fast: torch, PyG,
    MLflow and scikit-learn are imported only by the commands that use them."""
    import subprocess

    probe = ("import sys; import clbench, clbench.cli; "
             "heavy = [m for m in ('torch', 'torch_geometric', 'mlflow', 'sklearn') "
             "if m in sys.modules]; print(heavy)")
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True,
                         check=True)
    assert out.stdout.strip() == "[]", out.stdout + out.stderr
    for module in ("clbench.cli", "clbench"):  # `python -m clbench` is the command too
        helped = subprocess.run([sys.executable, "-m", module, "--help"],
                                capture_output=True, text=True, check=True)
        assert "run" in helped.stdout and "sweep" in helped.stdout


def test_compare_on_a_missing_sqlite_store_creates_nothing(monkeypatch, capsys, tmp_path):
    # MLflow would create an empty store (and its directory) at a mistyped path
    missing = tmp_path / "typo" / "mlflow.db"
    code, _, err = invoke(monkeypatch, capsys, "compare", "--tracking-uri",
                          f"sqlite:///{missing}", "--out", str(tmp_path / "out"))
    assert code == 2
    assert f"no MLflow store at sqlite:///{missing}" in " ".join(err.split())
    assert not (tmp_path / "typo").exists() and not (tmp_path / "out").exists()


def test_a_single_run_into_a_log_file_prints_a_line_per_task(tmp_path):
    """The bars are not drawn into a file: a line per finished task shows progress."""
    import subprocess

    with open(tmp_path / "log.txt", "w") as log:
        proc = subprocess.run([sys.executable, "-m", "clbench.cli", "run", "--method",
                               "finetune", "--param", "epochs=3", "--param", "hidden=16"],
                              cwd=tmp_path, stdout=log, stderr=subprocess.PIPE, text=True,
                              timeout=300)
    assert proc.returncode == 0, proc.stderr
    lines = (tmp_path / "log.txt").read_text().splitlines()
    done = [ln for ln in lines if " done: test acc on it " in ln]
    assert [ln.split()[1] for ln in done] == [f"{k}/5" for k in range(1, 6)]
    assert lines.index(done[-1]) < next(i for i, ln in enumerate(lines) if ln.startswith("AP "))


@pytest.mark.parametrize("command", [[], ["run"], ["sweep"], ["compare"], ["ui"], ["list"]])
def test_help_shows_flags_without_a_type(monkeypatch, capsys, command):
    """Typer would print ``--force <bool>``, as if the flag took a value."""
    code, out, _ = invoke(monkeypatch, capsys, *command, "--help")
    assert code == 0 and "--help" in out
    assert "<bool>" not in out
    if command == ["run"]:
        assert "<int>" in out  # options that take a value keep their type
        flag_lines = [line for line in out.splitlines() if "--force" in line or "--quiet" in line]
        assert flag_lines and all("<" not in line for line in flag_lines)


def test_the_command_list_gives_each_summary_as_one_sentence(monkeypatch, capsys):
    """``clbench --help`` lists each command by its docstring's first paragraph, joined:
    Typer's Rich list would keep the docstring's line breaks, mid-sentence."""
    import inspect

    import typer

    monkeypatch.setenv("COLUMNS", "300")
    code, out, _ = invoke(monkeypatch, capsys, "--help")
    assert code == 0
    group = typer.main.get_command(cli.app)
    for name, command in group.commands.items():
        summary = " ".join(inspect.cleandoc(command.help).split("\n\n")[0].split())
        assert f"{name} " in out and summary in out, (name, summary)
