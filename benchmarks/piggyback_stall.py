"""Instrument one Piggyback task, epoch by epoch: why a task stalls at the majority class.

Usage::

    python benchmarks/piggyback_stall.py RECORD.json --task 4 --data-dir ROOT [--param k=v]
    python benchmarks/piggyback_stall.py --dataset cora --seed 0 --task 1 [--param k=v]

Trains only task ``--task`` of the run (a committed run record, re-resolved with
:func:`clbench.resolve.resolve_record`, or a dataset and seed with the card's defaults).
With a frozen backbone (``backbone_init = random``) Piggyback's tasks are independent:
every task starts from the initial weights, fresh mask scores and a reset optimizer, and
its classifier rows are untouched before it, so the task trains exactly as in the full
run (the script prints the record's score and epochs to compare). Per epoch: the
learning rate, train and val loss, val accuracy, the fraction of mask entries off and
flipped since the last epoch (per layer), and statistics of the last layer's embedding
on the task's train nodes.
"""

from __future__ import annotations

import argparse
import json

import torch

from clbench.experiment import build_scenario, build_trainer, seed_everything
from clbench.resolve import resolve_record, resolve_run


def _embedding_stats(trainer, batch, weights) -> dict[str, float]:
    """Last-layer embedding on the task's nodes: active units, spread across nodes."""
    model = trainer.model
    graph = batch.graph
    with torch.no_grad():
        if weights:
            emb = _encode(model, weights, graph)
        else:
            emb = model.encode(model.inputs(graph), graph)
    e = emb[batch.nodes]
    active = (e > 0).float().mean().item()
    spread = e.std(0).mean().item()
    scale = e.abs().mean().item()
    centred = e - e.mean(0)
    s = torch.linalg.svdvals(centred)
    p = s**2 / (s**2).sum().clamp_min(1e-30)
    erank = torch.exp(-(p * torch.log(p.clamp_min(1e-30))).sum()).item()
    return {"active": active, "spread/scale": spread / max(scale, 1e-30), "scale": scale,
            "erank": erank}


def _encode(model, weights, graph):
    class _Enc(torch.nn.Module):
        def __init__(self, m):
            super().__init__()
            self.m = m

        def forward(self, x, g):
            return self.m.encode(x, g)

    enc = _Enc(model)
    return torch.func.functional_call(enc, {f"m.{k}": v for k, v in weights.items()},
                                      (model.inputs(graph), graph), strict=False)


def _train(tr, task: int, states: dict, epochs: int) -> None:
    """The loop of :meth:`NCTrainer.run` for one task, without evaluation."""
    tr.curr_task = task
    data = tr.getTrainingDataset(task)
    train, val, _ = tr.prepareLoader(data, states)
    tr.processBeforeTraining(task, data, tr.model, tr.optimizer, states)
    for _ in range(epochs):
        tr.model.train()
        stats = tr.processTrainIteration(tr.model, tr.optimizer, train[0], states)
        tr.model.eval()
        val_acc, val_stats = tr._score_loader(val)
        if not tr.processAfterEachIteration(tr.model, tr.optimizer, states,
                                            {"val_metric": val_acc, "train_stats": stats,
                                             "val_stats": val_stats}):
            break
    tr.model.eval()
    tr.processAfterTraining(task, data, tr.model, tr.optimizer, states)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("record", nargs="?")
    ap.add_argument("--dataset", default="cora")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--task", type=int, required=True)
    ap.add_argument("--data-dir")
    ap.add_argument("--param", action="append", default=[])
    ap.add_argument("--every", type=int, default=1, help="print every n-th epoch")
    args = ap.parse_args()
    params = dict(p.split("=", 1) for p in args.param)
    rec = None
    if args.record:
        with open(args.record) as fh:
            rec = json.load(fh)
        spec = resolve_record(rec["spec"], data_dir=args.data_dir)
        if params:
            spec = resolve_record({**rec["spec"], "params": {**rec["spec"]["params"],
                                                              **params}},
                                  data_dir=args.data_dir)
    else:
        spec = resolve_run("piggyback", args.dataset, args.seed, params=params,
                           data_dir=args.data_dir)
    torch.set_num_threads(spec.threads or 1)
    seed_everything(spec.seed)
    scenario = build_scenario(spec)
    seed_everything(spec.seed)
    tr = build_trainer(spec, scenario)
    states = tr.initTrainingStates(tr.scenario, tr.model, tr.optimizer)
    tr.training_states = states
    task = args.task
    if spec.params["backbone_init"] == "random":
        tr._freeze_backbone(tr.model)  # what task 0's processBeforeTraining does
    elif task > 0:  # the backbone is made on task 0: train it first (not instrumented)
        _train(tr, 0, states, spec.protocol.epochs)
        states["done_masks"] = states["done_masks"][:0] + [states["done_masks"][0]] * task
    tr.curr_task = task
    data = tr.getTrainingDataset(task)
    train, val, _ = tr.prepareLoader(data, states)
    tr.processBeforeTraining(task, data, tr.model, tr.optimizer, states)
    labels = data.test.local_labels
    majority = torch.bincount(labels).max().item() / len(labels)
    print(f"{spec.method} {spec.dataset} seed {spec.seed} task {task}: "
          f"{dict(spec.params)} lr={spec.protocol.lr}; test majority rate {majority:.4f}")
    thr = tr.threshold
    prev = {n: (m >= thr) for n, m in states["real_masks"].items()}
    print("epoch   lr        train_loss val_loss  val_acc  off%(per layer)       "
          "flipped%(per layer)   active spread/scale erank")
    epochs = 0
    for epoch in range(spec.protocol.epochs):
        epochs = epoch + 1
        tr.model.train()
        stats = tr.processTrainIteration(tr.model, tr.optimizer, train[0], states)
        tr.model.eval()
        val_acc, val_stats = tr._score_loader(val)
        lr = tr.optimizer.param_groups[0]["lr"]
        real = states["real_masks"]
        now = {n: (m >= thr) for n, m in real.items()}
        off = [100 * (~now[n]).float().mean().item() for n in now]
        flipped = [100 * (now[n] != prev[n]).float().mean().item() for n in now]
        prev = now
        if epoch % args.every == 0 or epoch < 10:
            w = tr._eval_weights(tr.model, task, states)
            es = _embedding_stats(tr, train[0], w)
            print(f"{epoch:5d} {lr:.2e} {stats['loss']:10.4f} {val_stats['loss']:9.4f} "
                  f"{val_acc:8.4f} {' '.join(f'{o:5.1f}' for o in off):20s} "
                  f"{' '.join(f'{f:5.1f}' for f in flipped):20s} {es['active']:.3f} "
                  f"{es['spread/scale']:.3g} {es['erank']:.1f}")
        if not tr.processAfterEachIteration(tr.model, tr.optimizer, states,
                                            {"val_metric": val_acc, "train_stats": stats,
                                             "val_stats": val_stats}):
            break
    tr.model.eval()
    tr.processAfterTraining(task, data, tr.model, tr.optimizer, states)
    row = tr._evaluate(("test",))["test"]
    print(f"stopped after {epochs} epochs; test acc {row[task]:.4f} "
          f"(majority {majority:.4f})")
    if rec is not None:
        print(f"record: R_test[{task}][{task}] = {rec['R_test'][task][task]:.4f}, "
              f"epochs {rec['timing']['task_epochs'][task]}")


if __name__ == "__main__":
    main()
