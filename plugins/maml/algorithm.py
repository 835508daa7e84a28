"""MAML (Finn, Abbeel and Levine 2017) written against metalab's functional seam.

For each task ``T_i`` of a meta-batch, with its support set (the inner loop's data) and query set:

    theta'_i = theta - alpha * grad_theta L_support(f_theta)                   (eq. 1, applied ``inner_steps`` times)
    theta   <- theta - beta * grad_theta mean_i L_query(f_{theta'_i})           (eq. 2, with Adam as in the paper)

The meta-gradient differentiates through eq. 1, so it holds the second derivatives of the support loss; with
``first_order`` the inner gradients are treated as constants (the paper's first-order approximation). Batch norm
always uses the statistics of the batch it sees, so running moments are not used. At meta-test time
``transductive`` (default, as the reference implementation) scores the query batch at once; with
``transductive=False`` each query is scored in a batch of the support set plus itself (inductive), so no query's
prediction depends on the others. The choice is part of the run config, so every report says which was used.
"""

from __future__ import annotations

from typing import Any

import keras
from keras import ops

from metalab.core import functional
from metalab.core.episodic import batch_tensors, build_model, evaluate_adaptation, loss_and_metric
from metalab.core.plugin_api import TaskBatch, TaskSpec


class MAML:
    """Model-Agnostic Meta-Learning with exact (or first-order) meta-gradients.

    Args:
        params: A validated ``MAMLParams``.
        task: What the tasks look like; ``task.make_backbone()`` gives the feature extractor under the head.

    Raises:
        ValueError: If ``task.kind`` is neither classification nor regression.
    """

    def __init__(self, params: Any, task: TaskSpec):
        if task.kind not in ("classification", "regression"):
            raise ValueError(f"MAML supports classification and regression tasks. Received: task.kind={task.kind!r}")
        self.config = params
        self.task = task
        self.meta_batch_size = int(params.meta_batch_size)
        self.model = build_model(task, "maml")
        self.fmodel = functional.FunctionalModel(self.model)

    @property
    def trainable_variables(self) -> list[Any]:
        return self.fmodel.trainable_variables

    @property
    def variables(self) -> list[Any]:
        return list(self.model.variables)

    def make_optimizer(self) -> keras.optimizers.Optimizer:
        """Returns Adam with the meta step size beta (``outer_lr``)."""
        return keras.optimizers.Adam(learning_rate=self.config.outer_lr)

    def task_loss(self, weights: list[Any], x: Any, y: Any) -> tuple[Any, Any]:
        """Returns ``(loss, metric)`` of the model under ``weights`` on one task's ``(x, y)``."""
        return loss_and_metric(self.task.kind, self.fmodel(weights, x, training=True), y)

    def inner_step(self, weights: list[Any], x: Any, y: Any, *, first_order: bool) -> list[Any]:
        """One step of eq. 1 on ``(x, y)``; differentiable in ``weights`` unless ``first_order``."""
        _, grads = functional.value_and_grad(lambda w: self.task_loss(w, x, y)[0], weights)
        if first_order:
            grads = functional.stop_gradient(grads)
        lr = self.config.inner_lr
        return [w - ops.cast(lr, w.dtype) * g for w, g in zip(weights, grads)]

    def adapt(self, weights: list[Any], x: Any, y: Any, steps: int, *, first_order: bool = True) -> list[Any]:
        """Returns the fast weights after ``steps`` inner steps from ``weights`` on ``(x, y)``."""
        for _ in range(steps):
            weights = self.inner_step(weights, x, y, first_order=first_order)
        return weights

    def meta_gradients(self, batch: TaskBatch) -> tuple[list[Any], dict[str, Any]]:
        """Returns the gradient of the mean query loss after adaptation (eq. 2), and query loss/accuracy."""
        kind = self.task.kind
        sx, sy, qx, qy, num_tasks = batch_tensors(batch, kind, self.model.compute_dtype)

        def meta_loss(theta):
            losses, metrics = [], []
            for t in range(num_tasks):
                fast = self.adapt(theta, sx[t], sy[t], self.config.inner_steps, first_order=self.config.first_order)
                loss, metric = self.task_loss(fast, qx[t], qy[t])
                losses.append(loss)
                metrics.append(metric)
            return ops.mean(ops.stack(losses)), ops.mean(ops.stack(metrics))

        (loss, metric), grads = functional.value_and_grad(meta_loss, self.fmodel.params(), has_aux=True)
        metrics = {"loss": loss}
        if kind == "classification":
            metrics["accuracy"] = metric
        return grads, metrics

    def evaluate(self, batch: TaskBatch) -> dict[str, Any]:
        """Adapts to each task's support set with ``eval_inner_steps`` steps and scores its query set.

        Returns:
            ``loss`` ``[T]``, ``accuracy`` ``[T]`` (classification), ``curve`` ``[T, eval_inner_steps + 1]`` (query
            accuracy or MSE after 0..steps steps) and ``predictions`` ``[T, queries, output_dim]``.
        """
        theta = functional.stop_gradient(self.fmodel.params())
        return evaluate_adaptation(
            self.fmodel, self.task.kind, batch, theta,
            lambda weights, x, y: self.inner_step(weights, x, y, first_order=True), int(self.config.eval_inner_steps),
            transductive=self.config.transductive,
        )
