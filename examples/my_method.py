"""An example third-party method: load it with ``clbench run --plugin examples/my_method.py``.

``lwf-lite`` regularises the current task's training with the previous model's
outputs on the current task's nodes (a tiny Learning-without-Forgetting). It
only overrides event functions; the loop, the Task-IL restriction and the
evaluation come from :class:`clbench.NCTrainer`.
"""

import torch
import torch.nn.functional as F

from clbench import NCTrainer, register_method


@register_method("lwf-lite")
class LwfLiteTrainer(NCTrainer):
    # Without a methods/<name>.toml card, hyperparameters are declared here.
    card = {
        "summary": "Distil the previous model's logits while learning a new task.",
        "params": {"alpha": 1.0},
    }

    def processBeforeTraining(self, task_id, curr_dataset, curr_model, curr_optimizer,
                              curr_training_states):
        super().processBeforeTraining(task_id, curr_dataset, curr_model, curr_optimizer,
                                      curr_training_states)
        curr_training_states["teacher"] = None
        if task_id > 0:
            curr_model.eval()
            with torch.no_grad():
                curr_training_states["teacher"] = self.forward(curr_model, curr_dataset.train)

    def inference(self, model, _curr_batch, training_states):
        results = super().inference(model, _curr_batch, training_states)
        teacher = (training_states or {}).get("teacher")
        if teacher is not None and model.training:
            logits = self.forward(model, _curr_batch)
            old = self.scenario.task_classes[: self.curr_task].reshape(-1)
            nodes = _curr_batch.nodes
            results["loss"] = results["loss"] + self.hparams["alpha"] * F.mse_loss(
                logits[nodes][:, old], teacher[nodes][:, old])
        return results
