"""Comparing methods in the MLflow UI, as a user sees it: ``clbench ui`` on a real store,
driven by a real headless browser (Debian's Chromium through Playwright).

The test skips only when no browser (or Playwright) is installed, and fails instead
when ``CI=true``: CI installs the browser (``.ci/run``). Set ``CLBENCH_UI_SCREENSHOTS``
to a folder to keep the screenshots (the README's comes from here).
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient
from mlflow_server import cli_process, free_port, parent_runs

from clbench.serve import group_alive
from clbench.tracking.mlflow_ui import (
    KIND_MODEL_TRAINING,
    TAG_EXPERIMENT_KIND,
    VIEW_KEY,
    VIEW_TAG,
    metric_column,
)

pytestmark = pytest.mark.slow

BROWSERS = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")
COLUMNS = ("AP_mean", "AP_std", "AF_mean", "AF_std", "learned_bacc_min_mean")
#: Seconds a page may take on a busy 2-core machine.
PAGE_TIMEOUT = 90_000


def browser_or_skip() -> str:
    """Chromium's executable; without it (or Playwright) skip, or fail under ``CI=true``."""
    exe = next((p for p in map(shutil.which, BROWSERS) if p), None)
    why = None
    if exe is None:
        why = "no Chromium installed (apt-get install chromium)"
    else:
        try:
            import playwright.sync_api  # noqa: F401
        except ImportError:
            why = "Playwright for Python is not installed (pip install -e '.[test]')"
    if why is not None:
        if os.environ.get("CI") == "true":
            pytest.fail(f"CI=true but the browser test cannot run: {why}")
        pytest.skip(why)
    return exe


@pytest.fixture(scope="module")
def store(tmp_path_factory) -> tuple[Path, str]:
    """A store with two methods x two seeds on the synthetic dataset, via ``clbench run``."""
    root = tmp_path_factory.mktemp("ui-store")
    uri = f"sqlite:///{root / 'mlflow.db'}"
    proc = cli_process("run", "--method", "finetune,piggyback", "--seeds", "0-1",
                       "--epochs", "2", "--tasks", "2", "--tracking-uri", uri, "-q", cwd=root)
    assert proc.returncode == 0, proc.stderr
    return root, uri


@contextlib.contextmanager
def clbench_ui(root: Path, uri: str):
    """``clbench ui`` on a free port of 127.0.0.1; yields (base URL, its output file).
    Its whole process group is stopped at the end, and the test checks it is gone."""
    port = free_port()
    out = root / f"ui-{port}.log"
    env = {**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false", "COLUMNS": "300"}
    with open(out, "w") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "clbench.cli", "ui", "--tracking-uri", uri, "--port",
             str(port)], cwd=root, stdout=log, stderr=subprocess.STDOUT, env=env,
            start_new_session=True)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 180
        while True:
            assert proc.poll() is None, f"clbench ui exited: {out.read_text()}"
            with contextlib.suppress(OSError), urllib.request.urlopen(
                    f"{base}/health", timeout=2) as r:
                if r.status == 200:
                    break
            assert time.monotonic() < deadline, f"no UI after 180 s: {out.read_text()}"
            time.sleep(0.5)
        yield base, out
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(10)
        deadline = time.monotonic() + 15
        while group_alive(proc.pid) and time.monotonic() < deadline:
            time.sleep(0.2)
        alive = group_alive(proc.pid)
        if alive:
            os.killpg(proc.pid, signal.SIGKILL)
        assert not alive, "a process of clbench ui outlived it"


def cell_texts(page, column: str) -> list[str]:
    return page.eval_on_selector_all(
        f'.ag-center-cols-container .ag-row [col-id="{column}"], '
        f'.ag-pinned-left-cols-container .ag-row [col-id="{column}"]',
        "cells => cells.sort((a, b) => a.closest('.ag-row').getAttribute('row-index')"
        " - b.closest('.ag-row').getAttribute('row-index')).map(c => c.innerText.trim())")


def row_names(page) -> list[str]:
    return [re.sub(r"^(Pin run\s*)?#[0-9a-f]{6}\s*", "", t).strip()
            for t in cell_texts(page, "attributes.`Run Name`")]


def wait_for_rows(page, n: int) -> None:
    page.wait_for_function(
        f"document.querySelectorAll('.ag-center-cols-container .ag-row').length === {n}",
        timeout=PAGE_TIMEOUT)


def test_compare_methods_in_the_mlflow_ui(store, tmp_path):
    exe = browser_or_skip()
    from playwright.sync_api import sync_playwright

    root, uri = store
    client = MlflowClient(uri)
    exp = client.get_experiment_by_name("clbench")
    assert exp.tags[TAG_EXPERIMENT_KIND] == KIND_MODEL_TRAINING and VIEW_TAG in exp.tags
    parents = {r.info.run_name: r.data.metrics for r in parent_runs(client, exp.experiment_id)}
    assert sorted(parents) == ["finetune · synthetic · epochs=2 num_tasks=2",
                               "piggyback · synthetic · epochs=2 num_tasks=2"]
    best_first = sorted(parents, key=lambda n: -parents[n]["AP_mean"])

    shots = [tmp_path / "mlflow-ui-runs.png", tmp_path / "mlflow-ui-compare.png"]
    with clbench_ui(root, uri) as (base, log), sync_playwright() as pw:
        link = re.search(r"http://\S+viewStateShareKey=" + VIEW_KEY, log.read_text())
        assert link, log.read_text()  # `clbench ui` prints the link to the runs table
        assert f"/#/experiments/{exp.experiment_id}/runs?" in link.group(0)
        browser = pw.chromium.launch(executable_path=exe, args=["--no-sandbox"])
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 640})
            page.set_default_timeout(PAGE_TIMEOUT)
            # MLflow's AI-assistant panel opens on a browser's first visit; a user
            # closes it once (the browser remembers), and so does this test.
            page.goto(base)
            page.evaluate("localStorage.setItem('mlflow.assistant.panelOpen_v1', 'false');"
                          "localStorage.setItem("
                          "'mlflow.assistant.fab.autoOpenedOnFirstLoad_v1', 'true')")

            # The link opens the runs table: parent runs under readable names, best
            # AP first, with AP and AF (mean and std over seeds) as columns.
            page.goto(link.group(0))
            wait_for_rows(page, 2)
            headers = page.eval_on_selector_all(
                ".ag-header-cell", "cells => cells.map(c => c.getAttribute('col-id'))")
            assert all(metric_column(m) in headers for m in COLUMNS), headers
            assert row_names(page) == best_first
            shown = [float(t) for t in cell_texts(page, metric_column("AP_mean"))]
            assert shown == pytest.approx([parents[n]["AP_mean"] for n in best_first])
            page.screenshot(path=shots[0])

            # Sortable: a click on the AF_mean header sorts by it (the server re-queries);
            # clicked again if that order happens to be the one shown already.
            af = {n: parents[n]["AF_mean"] for n in parents}
            assert len(set(af.values())) == 2, af  # finetune forgets, piggyback cannot
            for _ in range(2):
                page.click('[data-testid="sort-header-AF_mean"]')
                page.wait_for_url(re.compile(r"orderByKey=metrics\.%60AF_mean%60"))
                want = sorted(af, key=af.get, reverse="orderByAsc=true" not in page.url)
                if want != best_first:
                    break
            assert want != best_first
            deadline = time.monotonic() + PAGE_TIMEOUT / 1000
            while row_names(page) != want and time.monotonic() < deadline:
                time.sleep(0.3)
            assert row_names(page) == want

            # The experiment page itself, in MLflow's "Model training" mode, is the
            # runs table too (not the GenAI overview of traces).
            page.goto(f"{base}/#/experiments/{exp.experiment_id}"
                      "?workflowType=machine_learning")
            page.wait_for_url(re.compile(rf"#/experiments/{exp.experiment_id}/runs"))

            # Compare two parent runs: tick them and press Compare.
            page.goto(link.group(0))
            wait_for_rows(page, 2)
            # locators, found again at each try: the grid may re-render its rows between
            # a lookup and the click (an element handle then fails as detached)
            boxes = page.locator(
                ".ag-pinned-left-cols-container .ag-row .ag-selection-checkbox input")
            boxes.nth(1).wait_for(timeout=PAGE_TIMEOUT)
            for i in range(2):
                boxes.nth(i).check(timeout=PAGE_TIMEOUT)
            page.get_by_role("button", name=re.compile(r"^Compare")).click()
            page.wait_for_url(re.compile(r"#/compare-runs\?runs="))
            for name in best_first:
                page.get_by_text(name).first.wait_for()
            page.get_by_role("link", name="AP_mean").first.wait_for()  # the metrics table
            page.set_viewport_size({"width": 1400, "height": 1800})
            page.screenshot(path=shots[1])
        finally:
            browser.close()

    keep = os.environ.get("CLBENCH_UI_SCREENSHOTS")
    for shot in shots:
        assert shot.stat().st_size > 10_000
        if keep:
            shutil.copy(shot, Path(keep) / shot.name)
