import pytest
import torch

from clbench.datasets import load_graph
from clbench.errors import ClbenchError
from clbench.scenario import NCScenarioLoader
from clbench.trainer import NCTrainer


@pytest.fixture(scope="module")
def graph():
    return load_graph("synthetic")


def test_split_uses_seeded_permutation_and_reports_dropped(graph):
    a = NCScenarioLoader(graph, 3, 3, seed=1)
    b = NCScenarioLoader(graph, 3, 3, seed=1)
    c = NCScenarioLoader(graph, 3, 3, seed=2)
    assert a.class_order == b.class_order != c.class_order
    assert len(a.dropped_classes) == 1
    used = sorted(a.task_classes.view(-1).tolist() + a.dropped_classes)
    assert used == list(range(10))
    assert a.dropped_classes == [a.class_order[-1]]


def test_default_classes_per_task(graph):
    sc = NCScenarioLoader(graph, 4)
    assert sc.classes_per_task == 2 and len(sc.dropped_classes) == 2


def test_explicit_class_order(graph):
    sc = NCScenarioLoader(graph, 2, 2, class_order=[9, 8, 1, 0])
    assert sc.task_classes.tolist() == [[8, 9], [0, 1]]
    assert sc.class_to_task[9] == 0 and sc.class_to_task[1] == 1
    assert sc.class_to_task[5] == -1


@pytest.mark.parametrize(
    ("tasks", "per_task", "order", "message"),
    [
        (0, None, None, "at least 1"),
        (6, 2, None, "need 12 classes"),
        (None, 11, None, "only 10 classes"),
        (11, None, None, "only 10 classes"),
        (2, 2, [0, 1, 2], "need 4"),
        (2, 2, [0, 0, 1, 2], "distinct"),
        (2, 2, [0, 1, 2, 99], "distinct"),
    ],
)
def test_impossible_splits_say_why(graph, tasks, per_task, order, message):
    with pytest.raises(ClbenchError, match=message):
        NCScenarioLoader(graph, tasks, per_task, class_order=order)


def test_batches_cover_each_task_once(graph):
    sc = NCScenarioLoader(graph, 5, 2, seed=0)
    (batch,) = sc.eval_batches("test")
    assert batch.nodes.numel() == int(graph.test_mask.sum())
    for t in range(5):
        sel = batch.task_ids == t
        assert torch.isin(batch.labels[sel], sc.task_classes[t]).all()
    assert (batch.candidates.gather(1, batch.local_labels.view(-1, 1)).view(-1)
            == batch.labels).all()


def test_task_il_logit_restriction(graph):
    """Logits outside a node's task never change its prediction or its loss."""
    sc = NCScenarioLoader(graph, 5, 2, seed=0)
    (batch,) = sc.eval_batches("test")
    torch.manual_seed(0)
    logits = torch.randn(graph.num_nodes, sc.num_classes)
    restricted = batch.restrict(logits)
    preds = batch.to_global(restricted.argmax(-1))
    # predictions always lie in the node's own task
    assert (sc.class_to_task[preds] == batch.task_ids).all()
    # pushing every other class's logit up by a lot changes nothing
    outside = torch.ones_like(logits, dtype=torch.bool)
    outside[batch.nodes.view(-1, 1), batch.candidates] = False
    boosted = logits.masked_fill(outside, 1e6)
    assert torch.equal(batch.restrict(boosted), restricted)
    # and equals argmax of the full logits masked to the task's classes
    masked = torch.full_like(logits[batch.nodes], float("-inf"))
    masked.scatter_(1, batch.candidates, logits[batch.nodes].gather(1, batch.candidates))
    assert torch.equal(masked.argmax(-1), preds)

    class Fixed(torch.nn.Module):
        def forward(self, x, g):
            return self.logits

    model = Fixed()
    model.logits = boosted
    trainer = NCTrainer(model, sc, lambda p: torch.optim.SGD([torch.zeros(1)], lr=0.1))
    res = trainer.inference(model, batch, None)
    model.logits = logits
    res2 = trainer.inference(model, batch, None)
    assert torch.equal(res["loss"], res2["loss"])


def test_task_graph_mode_has_no_inter_task_edges(graph):
    sc = NCScenarioLoader(graph, 5, 2, seed=0, graph_mode="task")
    batches = sc.eval_batches("val")
    assert len(batches) == 5
    for t, b in enumerate(batches):
        src, dst = b.graph.global_edge_index
        assert (sc.node_task[src] == t).all() and (sc.node_task[dst] == t).all()
        assert b.graph.num_edges > 0


@pytest.mark.parametrize("mode", ["full", "task"])
def test_one_pass_over_val_and_test_scores_each_split_alone(graph, mode):
    """Evaluating val and test nodes together gives the scores of each split on its own."""
    from clbench.models import build_model

    sc = NCScenarioLoader(graph, 3, 2, seed=1, graph_mode=mode)
    torch.manual_seed(0)
    trainer = NCTrainer(build_model("gcn", graph.num_features, sc.num_classes, hidden=16),
                        sc, lambda p: torch.optim.Adam(p, lr=0.01))
    trainer.run(epoch_per_task=3)
    both = trainer._evaluate(("val", "test"))
    for split in ("val", "test"):
        alone = trainer._evaluate((split,))[split]
        assert both[split].tolist() == alone.tolist()
        assert (both[split] > 0).all()
