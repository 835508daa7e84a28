"""Meta-SGD (Li, Zhou, Chen and Li 2017) written against metalab's functional seam.

Meta-SGD learns, besides the initialisation ``theta``, a vector ``alpha`` of the same shape as ``theta``: one
learning rate per parameter, giving both the size and the direction of the inner update. For each task ``T_i``
with support set ``S_i`` and query set ``Q_i``:

    theta'_i = theta - alpha ∘ grad_theta L_S(f_theta)                           (eq. 1; ∘ is the element-wise product)
    (theta, alpha) <- (theta, alpha) - beta * grad mean_i L_Q(f_{theta'_i})      (eq. 2-3, with Adam)

``alpha`` starts at ``inner_lr_init`` everywhere and is meta-learned jointly with ``theta``. The paper adapts with
a single inner step; more are allowed. With ``first_order`` the inner gradients are constants: ``alpha`` still
gets its gradient ``-grad L_S ∘ grad L_Q``, ``theta`` its first-order one.
"""

from __future__ import annotations

from typing import Any

import keras
import numpy as np

from metalab.api import functional
from metalab.api.algorithms import MetaAlgorithm
from metalab.api.episodic import batch_tensors, build_model, evaluate_adaptation, loss_and_metric
from metalab.api import TaskBatch, TaskSpec

#: Bins of each learned-rate histogram in the report.
HISTOGRAM_BINS = 30


class MetaSGD(MetaAlgorithm):
    """Meta-SGD: MAML with a learned learning rate per parameter.

    Args:
        params: A validated ``MetaSGDParams``.
        task: What the tasks look like; ``task.make_backbone()`` gives the feature extractor under the head.
    """

    def __init__(self, params: Any, task: TaskSpec):
        super().__init__(params, task)
        self.model = build_model(task, "metasgd")
        self.fmodel = functional.FunctionalModel(self.model)
        self.weights = self.fmodel.trainable_variables
        init = float(params.inner_lr_init)
        self.alphas = [
            keras.Variable(
                # ops.full converts the Python float straight to the weight's dtype; keras.initializers.Constant
                # casts it, which on TensorFlow goes through float32 (float64 rates of 0.01 would start at
                # 0.0099999998).
                lambda shape, dtype: keras.ops.full(shape, init, dtype=dtype), shape=tuple(w.shape), dtype=w.dtype,
                trainable=True, name="alpha_" + w.path.replace("/", "_"),
            )
            for w in self.weights
        ]
        # The model's weights, then one learning-rate variable per weight in the same order; the base class's
        # Adam at outer_lr (beta) updates the weights and the rates alike.
        self.track(self.model, self.alphas)

    def task_loss(self, weights: list[Any], x: Any, y: Any) -> tuple[Any, Any]:
        """Returns ``(loss, metric)`` of the model under ``weights`` on one task's ``(x, y)``."""
        return loss_and_metric(self.task.kind, self.fmodel(weights, x, training=True), y)

    def inner_step(self, weights: list[Any], alphas: list[Any], x: Any, y: Any, *, first_order: bool) -> list[Any]:
        """One step of eq. 1 on ``(x, y)``: ``w - alpha * grad``, differentiable in both unless ``first_order``."""
        _, grads = functional.value_and_grad(lambda w: self.task_loss(w, x, y)[0], weights)
        if first_order:
            grads = functional.stop_gradient(grads)
        return [w - a * g for w, a, g in zip(weights, alphas, grads)]

    def adapt(self, weights: list[Any], alphas: list[Any], x: Any, y: Any, steps: int, *,
              first_order: bool = True) -> list[Any]:
        """Returns the fast weights after ``steps`` inner steps from ``weights`` with rates ``alphas`` on ``(x, y)``."""
        for _ in range(steps):
            weights = self.inner_step(weights, alphas, x, y, first_order=first_order)
        return weights

    def split(self, params: list[Any]) -> tuple[list[Any], list[Any]]:
        """Splits tensors aligned with ``trainable_variables`` into ``(weights, alphas)``."""
        n = len(self.weights)
        return list(params[:n]), list(params[n:])

    def meta_gradients(self, batch: TaskBatch) -> tuple[list[Any], dict[str, Any]]:
        """Returns the gradients of the mean query loss after adaptation for the weights and the rates."""
        kind = self.task.kind
        sx, sy, qx, qy, _ = batch_tensors(batch, kind, self.model.compute_dtype)

        def task_loss(params, sx_t, sy_t, qx_t, qy_t):
            theta, alphas = self.split(params)
            fast = self.adapt(theta, alphas, sx_t, sy_t, self.config.inner_steps, first_order=self.config.first_order)
            return self.task_loss(fast, qx_t, qy_t)

        # Each task's gradient on its own, the tasks in a window of the inter-op threads on TensorFlow (as MAML).
        (loss, metric), grads = functional.mean_task_gradients(task_loss, self.params(), sx, sy, qx, qy,
                                                               window="auto")
        return grads, self.scores(loss, metric)

    def evaluate(self, batch: TaskBatch) -> dict[str, Any]:
        """Adapts to each task's support set with ``eval_inner_steps`` steps of the learned rates and scores it.

        Returns:
            ``loss`` ``[T]``, ``accuracy`` ``[T]`` (classification), ``curve`` ``[T, eval_inner_steps + 1]`` (query
            accuracy or MSE after 0..steps steps) and ``predictions`` ``[T, queries, output_dim]``.
        """
        theta, alphas = self.split(functional.stop_gradient(self.params()))
        return evaluate_adaptation(
            self.fmodel, self.task.kind, batch, theta,
            lambda weights, x, y: self.inner_step(weights, alphas, x, y, first_order=True),
            int(self.config.eval_inner_steps),
        )

    def report_data(self) -> dict[str, Any]:
        """The learned rates' distribution per weight: a histogram and summary statistics of each ``alpha``.

        Returns:
            ``{"init": inner_lr_init, "layers": [{"name", "shape", "count", "mean", "std", "min", "median",
            "max", "negative", "edges", "counts"}, ...]}`` (plain JSON types; ``negative`` is the fraction of
            rates below zero, which step against the gradient).
        """
        layers = []
        for weight, alpha in zip(self.weights, self.alphas):
            values = np.asarray(keras.ops.convert_to_numpy(alpha), dtype=np.float64).reshape(-1)
            low, high = float(values.min()), float(values.max())
            if high - low < 1e-12:
                # All rates equal (e.g. untrained): one narrow bin around the value.
                low, high = low - 1e-6, high + 1e-6
            counts, edges = np.histogram(values, bins=HISTOGRAM_BINS, range=(low, high))
            layers.append({
                "name": weight.path, "shape": [int(s) for s in weight.shape], "count": int(values.size),
                "mean": float(values.mean()), "std": float(values.std()), "min": float(values.min()),
                "median": float(np.median(values)), "max": float(values.max()),
                "negative": float(np.mean(values < 0)),
                "edges": [float(e) for e in edges], "counts": [int(c) for c in counts],
            })
        return {"init": float(self.config.inner_lr_init), "layers": layers}
