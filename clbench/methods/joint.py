"""``joint``: the upper bound: at each step, train from scratch on all tasks so far."""

from __future__ import annotations

from clbench.methods.base import register_method
from clbench.scenario import TaskDataset
from clbench.trainer import NCTrainer


@register_method("joint")
class NCTaskILJointTrainer(NCTrainer):
    """At task ``t``, re-initialise the model and train on tasks ``0..t`` together
    (BeGin's *accum* model). Every node keeps the Task-IL restriction to its own
    task's classes."""

    def getTrainingDataset(self, task_id: int) -> TaskDataset:
        return self.scenario.get_accumulated(task_id)

    def processBeforeTraining(self, task_id, curr_dataset, curr_model, curr_optimizer,
                              curr_training_states) -> None:
        self.reset_model(curr_model)
        super().processBeforeTraining(task_id, curr_dataset, curr_model, curr_optimizer,
                                      curr_training_states)
