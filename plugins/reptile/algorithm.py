"""Reptile (Nichol, Achiam and Schulman 2018) written against metalab's functional seam.

For each task ``tau_i`` of a meta-batch of ``n``, train from ``theta`` for ``k`` steps: ``phi_i = U^k_tau_i(theta)``;
then (the paper's Algorithm 2, batched version)

    theta <- theta + epsilon * (1/n * sum_i phi_i - theta)

``epsilon`` is annealed linearly from ``outer_stepsize`` to 0 over the run, as in the paper. The update is handed
to the runner as the "gradient" ``theta - mean_i phi_i`` for a plain SGD optimizer whose learning rate is that
schedule, so the runner's loop needs nothing Reptile-specific.

Choices (the paper leaves them to the implementation or its code does otherwise):

- ``U`` is Adam with ``beta1 = 0`` (as the paper) or plain SGD. Adam's moments start from zero for every task;
  the reference code keeps them across tasks, which makes the update depend on the task order.
- The inner loop trains on the task's support set, full batch, during meta-training and at test time. The query
  set is only scored, so the reported loss/accuracy (query, after ``inner_steps`` steps) mean the same as MAML's.
  The paper samples more shots for meta-training than for testing: raise the episode's shots to do the same.
- Batch norm uses batch statistics; at meta-test time ``transductive`` (default) scores the query batch at once,
  the paper's ``--transductive`` setting, and ``transductive=False`` scores each query with the support set only.
"""

from __future__ import annotations

from typing import Any

import keras
from keras import ops

from metalab.api import functional
from metalab.api.algorithms import MetaAlgorithm
from metalab.api.episodic import batch_tensors, build_model, evaluate_adaptation, loss_and_metric
from metalab.api import TaskBatch, TaskSpec

_ADAM_BETA2 = 0.999
_ADAM_EPSILON = 1e-8
#: Meta-training unrolls its tasks and inner steps (straight-line code the graph optimiser fuses, and tasks that
#: run side by side on the inter-op threads) while tasks x steps stays within this; beyond it, loops keep the
#: graph small and compiling fast.
_UNROLL_LIMIT = 64


class Reptile(MetaAlgorithm):
    """Reptile: move the initialisation towards the weights each task trains to.

    Args:
        params: A validated ``ReptileParams``.
        task: What the tasks look like; ``task.make_backbone()`` gives the feature extractor under the head.
    """

    def __init__(self, params: Any, task: TaskSpec):
        super().__init__(params, task)
        self.model = build_model(task, "reptile")
        self.fmodel = functional.FunctionalModel(self.model)
        self.track(self.model)

    def make_optimizer(self) -> keras.optimizers.Optimizer:
        """Returns SGD whose learning rate, epsilon, falls linearly from ``outer_stepsize`` to 0 over the run."""
        schedule = keras.optimizers.schedules.PolynomialDecay(
            initial_learning_rate=self.config.outer_stepsize,
            decay_steps=max(int(self.task.total_steps), 1),
            end_learning_rate=0.0,
            power=1.0,
        )
        return keras.optimizers.SGD(learning_rate=schedule)

    def task_loss(self, weights: list[Any], x: Any, y: Any) -> tuple[Any, Any]:
        """Returns ``(loss, metric)`` of the model under ``weights`` on one task's ``(x, y)``."""
        return loss_and_metric(self.task.kind, self.fmodel(weights, x, training=True), y)

    def init_inner_state(self, weights: list[Any]) -> dict[str, Any]:
        """Returns a fresh inner-optimizer state: the step count and, for Adam, zero second moments."""
        state = {"t": ops.zeros((), dtype=weights[0].dtype)}
        if self.config.inner_optimizer == "adam":
            state["v"] = [ops.zeros_like(w) for w in weights]
        return state

    def inner_step(self, weights: list[Any], state: dict[str, Any], x: Any, y: Any) -> tuple[list[Any], dict]:
        """One inner-optimizer step on ``(x, y)``; returns the new weights and optimizer state."""
        _, grads = functional.value_and_grad(lambda w: self.task_loss(w, x, y)[0], weights)
        grads = functional.stop_gradient(grads)
        lr = self.config.inner_lr
        t = state["t"] + 1
        # Python constants enter through convert_to_tensor (or arithmetic with a tensor), never cast: TensorFlow's
        # cast of a Python float goes through float32 (in a float64 run beta2 = 0.999 would become 0.99900001287,
        # which moves 1 - beta2 by 1.3e-5).
        if self.config.inner_optimizer == "sgd":
            return [w - ops.convert_to_tensor(lr, dtype=w.dtype) * g for w, g in zip(weights, grads)], {"t": t}
        # Adam with beta1 = 0 (the first moment is the gradient itself), in TF1's form, as the paper's code.
        v = [_ADAM_BETA2 * v + (1 - _ADAM_BETA2) * ops.square(g) for v, g in zip(state["v"], grads)]
        step = lr * ops.sqrt(1 - ops.power(ops.convert_to_tensor(_ADAM_BETA2, dtype=t.dtype), t))
        new = [w - ops.cast(step, w.dtype) * g / (ops.sqrt(vi) + _ADAM_EPSILON) for w, g, vi in zip(weights, grads, v)]
        return new, {"t": t, "v": v}

    def adapt(self, weights: list[Any], x: Any, y: Any, steps: int, *, unroll: bool = False) -> list[Any]:
        """Returns the weights after ``steps`` inner-optimizer steps from ``weights`` on ``(x, y)``.

        With ``unroll`` the steps are written out one after another instead of a loop (same result).
        """
        carry = (list(weights), self.init_inner_state(weights))
        if unroll:
            for _ in range(steps):
                carry = self.inner_step(*carry, x, y)
            return carry[0]

        def step(_, carry):
            return self.inner_step(*carry, x, y)

        weights, _ = ops.fori_loop(0, steps, step, carry)
        return weights

    def meta_gradients(self, batch: TaskBatch) -> tuple[list[Any], dict[str, Any]]:
        """Returns ``theta - mean_i phi_i`` (see the module docstring), and query loss/accuracy after adaptation."""
        kind = self.task.kind
        sx, sy, qx, qy, _ = batch_tensors(batch, kind, self.model.compute_dtype)
        theta = functional.stop_gradient(self.fmodel.params())

        steps = int(self.config.inner_steps)
        num_tasks = sx.shape[0]
        unroll = num_tasks is not None and num_tasks * steps <= _UNROLL_LIMIT

        def one_task(arrays):
            tsx, tsy, tqx, tqy = arrays
            phi = self.adapt(theta, tsx, tsy, steps, unroll=unroll)
            loss, metric = self.task_loss(phi, tqx, tqy)
            return phi, loss, metric

        if unroll:
            done = [one_task((sx[t], sy[t], qx[t], qy[t])) for t in range(num_tasks)]
            mean_phi = [functional.mean(ops.stack(ws), axis=0) for ws in zip(*(phi for phi, _, _ in done))]
            losses, metrics = ops.stack([d[1] for d in done]), ops.stack([d[2] for d in done])
        else:
            # No gradient flows through the tasks, so a loop over them is exact too, and keeps the graph small.
            phis, losses, metrics = ops.map(one_task, (sx, sy, qx, qy))
            mean_phi = [functional.mean(p, axis=0) for p in phis]
        grads = [w - p for w, p in zip(theta, mean_phi)]
        return grads, self.scores(functional.mean(losses), functional.mean(metrics))

    def evaluate(self, batch: TaskBatch) -> dict[str, Any]:
        """Adapts to each task's support set with ``eval_inner_steps`` steps and scores its query set.

        Returns:
            ``loss`` ``[T]``, ``accuracy`` ``[T]`` (classification), ``curve`` ``[T, eval_inner_steps + 1]`` (query
            accuracy or MSE after 0..steps steps) and ``predictions`` ``[T, queries, output_dim]``.
        """
        theta = functional.stop_gradient(self.fmodel.params())
        return evaluate_adaptation(
            self.fmodel, self.task.kind, batch, (theta, self.init_inner_state(theta)),
            lambda state, x, y: self.inner_step(state[0], state[1], x, y), int(self.config.eval_inner_steps),
            weights_of=lambda state: state[0], transductive=self.config.transductive,
        )
