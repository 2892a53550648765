"""An example third-party method: load it with ``clbench run --plugin examples/my_method.py``.

``lwf-lite`` regularises the current task's training with the previous model's
outputs on the current task's nodes (a tiny Learning-without-Forgetting). It
only overrides event functions; the loop, the Task-IL restriction and the
evaluation come from :class:`clbench.NCTrainer`. ``docs/methods.md`` describes
the events and what each may touch.
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
        "bounds": {"alpha": "[0, inf)"},
    }

    def initTrainingStates(self, scenario, model, optimizer):
        # The method's own state: the loop passes it to every event and saves it in
        # resume points. Here: the previous model's logits (None during task 0).
        return {"teacher": None}

    def processBeforeTraining(self, task_id, curr_dataset, curr_model, curr_optimizer,
                              curr_training_states):
        # The base event resets the optimizer and starts the task's scheduler.
        super().processBeforeTraining(task_id, curr_dataset, curr_model, curr_optimizer,
                                      curr_training_states)
        if task_id > 0:
            curr_model.eval()  # the teacher is the model as evaluated, without dropout
            with torch.no_grad():
                curr_training_states["teacher"] = self.forward(curr_model, curr_dataset.train)

    def afterInference(self, results, model, optimizer, _curr_batch, training_states):
        # A training-only loss term, added here so that validation losses stay task
        # losses. results["logits"] is the step's own forward pass (every node, every
        # class); a regulariser puts its weighted term in results["penalty"] too, so that
        # the run logs how strong it was against the task loss.
        teacher = training_states["teacher"]
        if teacher is not None:
            old = self.scenario.task_classes[: self.curr_task].reshape(-1)  # past classes
            nodes = _curr_batch.nodes
            penalty = self.hparams["alpha"] * F.mse_loss(
                results["logits"][nodes][:, old], teacher[nodes][:, old])
            results["penalty"] = penalty
            results["loss"] = results["loss"] + penalty
        return super().afterInference(results, model, optimizer, _curr_batch,
                                      training_states)
