"""How a clbench experiment looks in the MLflow UI (``clbench ui``, MLflow 3.17).

What the UI reads, found in MLflow 3.17.2's own code (its Python package and the UI's
JavaScript bundle), and what clbench does with it:

* **Which page an experiment opens on.** The experiment page opens on the runs table
  ("Model training") or on the GenAI overview of traces ("GenAI"). The experiment tag
  ``mlflow.experimentKind`` (``custom_model_development``: machine learning) names the
  kind; clbench sets it on its experiments. MLflow 3.17's open-source UI, though, takes
  the kind from its sidebar switch "GenAI | Model training" instead (remembered per
  browser, default GenAI) or from a ``workflowType=machine_learning`` query parameter.
  So :func:`runs_url` carries that parameter, and ``clbench ui`` prints such a link.
* **Which columns the runs table shows.** By default Run Name, Created, Duration,
  Dataset, Source and Models; metrics only once added by hand, and no server or
  experiment setting changes that. A *saved view* does: an experiment tag
  ``mlflow.sharedViewState.<key>`` holding a view's columns, order, sort and filter,
  listed under the page's "Views" menu and opened directly by a link with
  ``viewStateShareKey=<key>``. clbench saves one (:data:`VIEW_KEY`): the parent runs
  (one per method, dataset and configuration) with AP and AF (mean and std over seeds),
  the number of seeds and the mean of each seed's weakest task right after it was
  learned (``learned_bacc_min``: R's diagonal, as balanced accuracy), best AP first.
"""

from __future__ import annotations

import json
import time
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any
from urllib.parse import urlencode

from clbench.parsing import is_graph_file
from clbench.tracking.records import TAG_ROLE

if TYPE_CHECKING:  # pragma: no cover
    from mlflow.tracking import MlflowClient

    from clbench.spec import RunSpec

#: MLflow's experiment-kind tag and its value for model training ("Machine learning").
TAG_EXPERIMENT_KIND = "mlflow.experimentKind"
KIND_MODEL_TRAINING = "custom_model_development"
#: The query parameter (and value) that opens MLflow 3.17's UI in its "Model training" mode.
WORKFLOW_PARAM = ("workflowType", "machine_learning")

#: clbench's saved view of an experiment's runs table, and the tag that holds it.
VIEW_KEY = "clbench-methods"
VIEW_TAG = f"mlflow.sharedViewState.{VIEW_KEY}"
VIEW_NAME = "clbench: methods by AP and AF"
#: The parent runs' metrics the view shows, in this order.
VIEW_METRICS = ("AP_mean", "AP_std", "AF_mean", "AF_std", "n_seeds", "learned_bacc_min_mean")


def metric_column(name: str) -> str:
    """The runs table's column id of metric ``name``."""
    return f"metrics.`{name}`"


RUN_NAME_COLUMN = "attributes.`Run Name`"


def view_state() -> dict[str, Any]:
    """The saved view's state: search facets and table layout, as the UI stores them."""
    metrics = [metric_column(m) for m in VIEW_METRICS]
    return {
        "searchFilter": f"tags.`{TAG_ROLE}` = 'parent'",
        "orderByKey": metric_column("AP_mean"),
        "orderByAsc": False,
        "selectedColumns": metrics,
        "columnOrder": [RUN_NAME_COLUMN, *metrics, "runDateAndNestInfo", "duration"],
        "columnWidths": {RUN_NAME_COLUMN: 300, **{m: 110 for m in metrics}},
    }


def view_tag_value(now_ms: int | None = None) -> str:
    """The saved view as the value of :data:`VIEW_TAG` (the UI's envelope format)."""
    now = int(time.time() * 1000) if now_ms is None else now_ms
    return json.dumps({"name": VIEW_NAME, "createdAt": now, "updatedAt": now,
                       "state": json.dumps(view_state())})


def experiment_ui_tags() -> dict[str, str]:
    """The experiment tags clbench sets for the MLflow UI."""
    return {TAG_EXPERIMENT_KIND: KIND_MODEL_TRAINING, VIEW_TAG: view_tag_value()}


def missing_ui_tags(tags: Mapping[str, str]) -> dict[str, str]:
    """Those of :func:`experiment_ui_tags` an experiment with ``tags`` lacks (a view the
    user changed or a kind they chose is left as it is)."""
    return {k: v for k, v in experiment_ui_tags().items() if k not in tags}


def mark_experiment(client: MlflowClient, experiment_id: str,
                    tags: Mapping[str, str]) -> None:
    """Add the missing UI tags to an experiment whose current tags are ``tags``."""
    for key, value in missing_ui_tags(tags).items():
        client.set_experiment_tag(experiment_id, key, value)


def runs_url(base: str, experiment_id: str, view: bool = True) -> str:
    """The link that opens an experiment's runs table (in clbench's view if ``view``)."""
    query = dict([WORKFLOW_PARAM])
    if view:
        query["viewStateShareKey"] = VIEW_KEY
    return f"{base.rstrip('/')}/#/experiments/{experiment_id}/runs?{urlencode(query)}"


#: Longest configuration text in a run name.
MAX_LABEL = 80


def config_label(job: RunSpec) -> str:
    """A parent run's configuration in words: the settings that differ from the defaults
    of its method on its dataset in its setting (``epochs=3 lr=0.01``), ``defaults`` if none do, or
    the configuration hash if the defaults cannot be known (a method no longer loaded)."""
    from clbench.config import resolve_params
    from clbench.spec import TASK_KEYS_ABSENT, Protocol

    try:
        base = resolve_params(job.method, None if is_graph_file(job.dataset) else job.dataset,
                              setting=job.protocol.setting)
    except Exception:
        return f"config {job.config_hash[:8]}"
    tasks = {**TASK_KEYS_ABSENT, **Protocol().tasks()}
    changed = [(k, v) for k, v in job.config.items() if base.get(k) != v]
    changed += [(k, v) for k, v in job.task_protocol.items() if k in tasks and tasks[k] != v]
    text = " ".join(f"{k}={_short(v)}" for k, v in changed) or "defaults"
    return text if len(text) <= MAX_LABEL else text[: MAX_LABEL - 1] + "…"


def _short(value: Any) -> str:
    if isinstance(value, list | tuple):
        return ",".join(map(str, value))
    return f"{value:g}" if isinstance(value, float) else str(value)
