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

The meta-gradient is the mean of the tasks' own gradients. On TensorFlow each task's gradient is added to a
running sum as it finishes and ``task_window`` tasks at most are in flight (by default the inter-op threads), so a
step holds the activations of that many tasks whatever the meta-batch size. By default (``task_loop``) the tasks
run in a loop over one traced task (``episodic.looped_task_gradients``), so the step is traced and optimised once
for one task: second-order meta-batch 32 on a 2-core CPU compiles in seconds instead of about a minute, and the
graph does not grow with the meta-batch; ``task_loop="unroll"`` traces one copy per task
(``functional.mean_task_gradients``), as before. On JAX, XLA schedules the unrolled or vectorized
(``vectorize_tasks``) tasks itself.

``per_step_bn`` is MAML++'s per-step batch norm (Antoniou, Edwards and Storkey 2019, section 4, "BNWB" and
"BNRS"): each batch-norm layer keeps ``inner_steps + 1`` sets of scale, offset and running statistics; the forward
pass of inner step ``k`` (and the query pass after ``k`` steps) uses set ``k``, so the meta-learned
normalisation may differ from step to step. Set ``k`` is read by step ``k`` only, so its inner-loop update is never
used: the per-step scales and offsets are meta-learned, not adapted, as in MAML++. The running statistics are collected per step during meta-training;
with ``transductive=False`` meta-test queries are normalised with them (inductive), as the paper proposes.
"""

from __future__ import annotations

from typing import Any

import keras
from keras import ops

from metalab.api import functional
from metalab.api.algorithms import MetaAlgorithm
from metalab.api.episodic import (batch_tensors, build_model, evaluate_adaptation, looped_task_gradients,
                                  loss_and_metric)
from metalab.api.layers import batch_norm_step, batch_norm_steps, per_step_batch_norm
from metalab.api import TaskBatch, TaskSpec


#: With ``task_loop="auto"`` on TensorFlow, meta-batches of this many tasks or more run in a loop.
LOOP_TASKS_FROM = 2


class MAML(MetaAlgorithm):
    """Model-Agnostic Meta-Learning with exact (or first-order) meta-gradients.

    Args:
        params: A validated ``MAMLParams``.
        task: What the tasks look like; ``task.make_backbone()`` gives the feature extractor under the head.

    Raises:
        ValueError: If ``per_step_bn`` is set and the backbone has no ``MetaBatchNorm`` layer, or
            ``vectorize_tasks`` is ``"on"`` where it cannot be.
    """

    def __init__(self, params: Any, task: TaskSpec):
        super().__init__(params, task)
        self.per_step_bn = bool(getattr(params, "per_step_bn", False))
        if self.per_step_bn:
            with per_step_batch_norm(int(params.inner_steps) + 1):
                self.model = build_model(task, "maml")
            if batch_norm_steps(self.model) < 2:
                raise ValueError(
                    "per_step_bn needs a backbone with MetaBatchNorm layers (e.g. metalab.conv4); this backbone has "
                    f"no batch norm to give per-step parameters. Received: per_step_bn=True, model layers="
                    f"{[layer.name for layer in self.model.layers]}"
                )
        else:
            self.model = build_model(task, "maml")
        # "on"/"off", or "auto": vmap on JAX when the step runs on an accelerator (decided by map_tasks).
        mode = getattr(params, "vectorize_tasks", "auto")
        self.vectorize_tasks: bool | str = {"on": True, "off": False}.get(mode, "auto")
        if mode == "on" and self.per_step_bn:
            raise ValueError(
                "vectorize_tasks cannot be combined with per_step_bn: the per-step running statistics pass from "
                "one task to the next, so the tasks cannot run as one batch. Received: vectorize_tasks='on', "
                "per_step_bn=True"
            )
        if mode == "on" and keras.backend.backend() != "jax":
            raise ValueError(
                "vectorize_tasks='on' needs Keras's JAX backend (KERAS_BACKEND=jax); on TensorFlow the tasks run as "
                f"one unrolled graph (use 'auto' or 'off'). Received: vectorize_tasks='on', "
                f"backend={keras.backend.backend()!r}"
            )
        self.fmodel = functional.FunctionalModel(self.model)
        self.track(self.model)  # the outer optimizer is the base class's Adam at outer_lr (beta)

    def task_loss(self, weights: list[Any], x: Any, y: Any) -> tuple[Any, Any]:
        """Returns ``(loss, metric)`` of the model under ``weights`` on one task's ``(x, y)``."""
        return self._forward(weights, x, y, None)[:2]

    def inner_step(self, weights: list[Any], x: Any, y: Any, *, first_order: bool) -> list[Any]:
        """One step of eq. 1 on ``(x, y)``; differentiable in ``weights`` unless ``first_order``."""
        return self._inner_update(weights, x, y, None, first_order=first_order)[0]

    def adapt(self, weights: list[Any], x: Any, y: Any, steps: int, *, first_order: bool = True) -> list[Any]:
        """Returns the fast weights after ``steps`` inner steps from ``weights`` on ``(x, y)``."""
        for _ in range(steps):
            weights = self.inner_step(weights, x, y, first_order=first_order)
        return weights

    def _forward(self, weights: list[Any], x: Any, y: Any, state: list[Any] | None) -> tuple[Any, Any, Any]:
        """``(loss, metric, state)``; with ``state`` given, the running moments' updates are threaded through it."""
        if state is None:
            outputs = self.fmodel(weights, x, training=True)
        else:
            outputs, state = self.fmodel.call_with_state(weights, x, training=True, state=state)
        return (*loss_and_metric(self.task.kind, outputs, y), state)

    def _inner_update(self, weights: list[Any], x: Any, y: Any, state: list[Any] | None, *,
                      first_order: bool) -> tuple[list[Any], Any]:
        def loss(w):
            value, _, new_state = self._forward(w, x, y, state)
            return value, new_state

        (_, state), grads = functional.value_and_grad(loss, weights, has_aux=True)
        if first_order:
            grads = functional.stop_gradient(grads)
        # convert_to_tensor, not cast: TensorFlow's cast of a Python float goes through float32 (0.4 would become
        # 0.40000000596 in a float64 run).
        lr = self.config.inner_lr
        return [w - ops.convert_to_tensor(lr, dtype=w.dtype) * g for w, g in zip(weights, grads)], state

    def _loop_tasks(self, num_tasks: int) -> bool:
        """Whether this step's tasks run in a loop (one traced task) rather than unrolled (TensorFlow only)."""
        mode = getattr(self.config, "task_loop", "auto")
        if keras.backend.backend() != "tensorflow" or mode == "unroll":
            return False
        return mode == "loop" or num_tasks >= LOOP_TASKS_FROM

    def meta_gradients(self, batch: TaskBatch) -> tuple[list[Any], dict[str, Any]]:
        """Returns the gradient of the mean query loss after adaptation (eq. 2), and query loss/accuracy.

        With ``per_step_bn`` the per-step running statistics are also updated (assigned), once per forward pass
        of each task in turn, as the MAML++ reference does; shared batch norm keeps no running statistics.
        """
        steps = int(self.config.inner_steps)
        sx, sy, qx, qy, num_tasks = batch_tensors(batch, self.task.kind, self.model.compute_dtype)

        def task_loss(theta, sx_t, sy_t, qx_t, qy_t):
            fast = theta
            for _ in range(steps):
                fast, _ = self._inner_update(fast, sx_t, sy_t, None, first_order=self.config.first_order)
            loss, metric, _ = self._forward(fast, qx_t, qy_t, None)
            return loss, metric

        if not self.per_step_bn:
            # TensorFlow: one traced task run in a loop (task_loop), or one copy of the inner loop per task
            # (unrolled); at most task_window tasks in flight either way. JAX: unrolled, or one batched program
            # (vectorize_tasks).
            if self._loop_tasks(num_tasks):
                (loss, metric), grads = looped_task_gradients(
                    task_loss, self.fmodel.params(), sx, sy, qx, qy, window=self.config.task_window or "auto")
            else:
                (loss, metric), grads = functional.mean_task_gradients(
                    task_loss, self.fmodel.params(), sx, sy, qx, qy, vectorize=self.vectorize_tasks,
                    window=self.config.task_window or "auto")
            return grads, self.scores(loss, metric)

        def meta_loss(theta):
            # The running statistics thread through every forward pass; they never carry gradients.
            state = self.fmodel.state()
            losses, metrics = [], []
            for t in range(num_tasks):
                fast = theta
                for k in range(steps):
                    with batch_norm_step(k):  # no effect on one-set batch norm
                        fast, state = self._inner_update(fast, sx[t], sy[t], state,
                                                         first_order=self.config.first_order)
                with batch_norm_step(steps):
                    loss, metric, state = self._forward(fast, qx[t], qy[t], state)
                losses.append(loss)
                metrics.append(metric)
            return functional.mean(ops.stack(losses)), (functional.mean(ops.stack(metrics)), state)

        (loss, (metric, state)), grads = functional.value_and_grad(meta_loss, self.fmodel.params(), has_aux=True)
        self.fmodel.set_state(functional.stop_gradient(state))
        return grads, self.scores(loss, metric)

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
            running_statistics=self.per_step_bn and not self.config.transductive,
        )
