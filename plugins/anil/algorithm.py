"""ANIL (Raghu et al. 2019) written against metalab's functional seam.

The network is a backbone ``phi`` (meta-learned) under a linear head ``w`` (adapted). For each task ``T_i``
with support set ``S_i`` and query set ``Q_i``, the backbone runs once on each set and only the head moves:

    w'_i  = w - alpha * grad_w L_S(w; phi(S_i))                  (MAML's eq. 1 restricted to the head, ``inner_steps`` times)
    (phi, w) <- (phi, w) - beta * grad mean_i L_Q(w'_i; phi(Q_i))  (MAML's eq. 2, with Adam)

The meta-gradient reaches ``phi`` through the query features and, to second order, through the support features
inside ``w'_i`` (only head Hessians appear, so second order is cheap); ``first_order`` drops that second path.
The head is linear, so the heads of all tasks of a batch adapt at once as one batched matrix product. With
``zero_head`` the head starts at zero (Kao et al. 2022, "MAML is a Noisy Contrastive Learner in Classification",
ICLR): one inner step from zero gives logits ``alpha * (shots / n) * phi(x) . (mu_k - mu)``, a centroid classifier
of the support features, and the head is meta-learned from there. Batch norm
in the backbone uses the statistics of the set it sees, as MAML's reference implementation does.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from keras import ops

from metalab.api import functional
from metalab.api.algorithms import MetaAlgorithm
from metalab.api.episodic import batch_tensors, batched_loss_and_metric, build_model
from metalab.api import TaskBatch, TaskSpec


class ANIL(MetaAlgorithm):
    """Almost No Inner Loop: MAML whose inner loop adapts only the linear head.

    Args:
        params: A validated ``ANILParams``.
        task: What the tasks look like; ``task.make_backbone()`` gives the feature extractor under the head.
    """

    def __init__(self, params: Any, task: TaskSpec):
        super().__init__(params, task)
        self.model = build_model(task, "anil")
        self.track(self.model)  # the outer optimizer is the base class's Adam at outer_lr (beta)
        self.backbone, self.head = self.model.layers[0], self.model.layers[-1]
        self.fbackbone = functional.FunctionalModel(self.backbone)
        variables = self.trainable_variables
        # The head's kernel and bias by identity, wherever the model lists them.
        ids = [id(v) for v in variables]
        self._kernel_index = ids.index(id(self.head.kernel))
        self._bias_index = ids.index(id(self.head.bias))
        self._backbone_indices = [i for i in range(len(variables)) if i not in (self._kernel_index, self._bias_index)]
        if params.zero_head:
            for weight in (self.head.kernel, self.head.bias):
                weight.assign(ops.zeros(weight.shape, dtype=weight.dtype))

    # -- pieces ---------------------------------------------------------------------------------------------

    def split(self, weights: list[Any]) -> tuple[list[Any], tuple[Any, Any]]:
        """Splits weights aligned with ``trainable_variables`` into ``(backbone weights, (kernel, bias))``."""
        return [weights[i] for i in self._backbone_indices], (weights[self._kernel_index], weights[self._bias_index])

    def features(self, backbone_weights: list[Any], x: Any) -> Any:
        """Backbone features ``[n, d]`` of one task's inputs ``x`` under ``backbone_weights``."""
        return self.fbackbone(backbone_weights, x, training=True)

    @staticmethod
    def head_outputs(head: tuple[Any, Any], features: Any) -> Any:
        """Outputs ``[T, n, k]`` of per-task heads (kernel ``[T, d, k]``, bias ``[T, k]``) on ``[T, n, d]``."""
        kernel, bias = head
        return ops.einsum("tnd,tdk->tnk", features, kernel) + bias[:, None, :]

    def head_step(self, head: tuple[Any, Any], features: Any, y: Any, *, first_order: bool) -> tuple[Any, Any]:
        """One inner step of every task's head on its support features; differentiable unless ``first_order``."""

        def support_loss(h):
            # Tasks are independent, so the gradient of the sum with respect to task t's head is task t's gradient.
            return ops.sum(batched_loss_and_metric(self.task.kind, self.head_outputs(h, features), y)[0])

        _, grads = functional.value_and_grad(support_loss, head)
        if first_order:
            grads = functional.stop_gradient(grads)
        lr = self.config.inner_lr
        # convert_to_tensor, not cast: TensorFlow's cast of a Python float goes through float32 (in a float64 run
        # 0.4 would become 0.40000000596).
        return tuple(w - ops.convert_to_tensor(lr, dtype=w.dtype) * g for w, g in zip(head, grads))

    def tile_head(self, head: tuple[Any, Any], num_tasks: int) -> tuple[Any, Any]:
        """The meta-learned head repeated for ``num_tasks`` tasks (the gradient sums back over the copies)."""
        return tuple(ops.repeat(ops.expand_dims(w, 0), num_tasks, axis=0) for w in head)

    def adapt(self, weights: list[Any], x: Any, y: Any, steps: int, *, first_order: bool = True) -> list[Any]:
        """Returns the fast weights after ``steps`` inner steps on one task ``(x, y)``: only the head moves.

        Args:
            weights: Tensors aligned with ``trainable_variables``.
            x: The task's support inputs.
            y: The task's support targets.
            steps: Inner steps.
            first_order: Treat the inner gradients as constants.

        Returns:
            Weights aligned with ``trainable_variables``; the backbone's are ``weights``' own tensors, unchanged.
        """
        backbone, head = self.split(weights)
        features = self.features(backbone, x)[None]
        head = self.tile_head(head, 1)
        for _ in range(steps):
            head = self.head_step(head, features, ops.expand_dims(y, 0), first_order=first_order)
        fast = list(weights)
        fast[self._kernel_index], fast[self._bias_index] = head[0][0], head[1][0]
        return fast

    # -- the protocol --------------------------------------------------------------------------------------

    def meta_gradients(self, batch: TaskBatch) -> tuple[list[Any], dict[str, Any]]:
        """Returns the gradient of the mean query loss after the heads adapted, and query loss/accuracy."""
        kind = self.task.kind
        sx, sy, qx, qy, num_tasks = batch_tensors(batch, kind, self.model.compute_dtype)

        def meta_loss(theta):
            backbone, head = self.split(theta)
            # Each task's sets go through the backbone once (and on their own, for per-set batch statistics);
            # on a JAX GPU or TPU as one vmapped (batched) call, else one call per set.
            fs, fq = functional.map_tasks(lambda s, q: (self.features(backbone, s), self.features(backbone, q)),
                                          sx, qx, vectorize="auto")
            heads = self.tile_head(head, num_tasks)
            for _ in range(self.config.inner_steps):
                heads = self.head_step(heads, fs, sy, first_order=self.config.first_order)
            losses, metrics = batched_loss_and_metric(kind, self.head_outputs(heads, fq), qy)
            return functional.mean(losses), functional.mean(metrics)

        (loss, metric), grads = functional.value_and_grad(meta_loss, self.params(), has_aux=True)
        return grads, self.scores(loss, metric)

    def evaluate(self, batch: TaskBatch) -> dict[str, Any]:
        """Adapts every task's head with ``eval_inner_steps`` steps on its support features and scores its queries.

        Returns:
            ``loss`` ``[T]``, ``accuracy`` ``[T]`` (classification), ``curve`` ``[T, eval_inner_steps + 1]`` (query
            accuracy or MSE after 0..steps steps) and ``predictions`` ``[T, queries, output_dim]``.
        """
        kind = self.task.kind
        sx, sy, qx, qy, num_tasks = batch_tensors(batch, kind, self.model.compute_dtype)
        backbone, head = self.split(functional.stop_gradient(self.params()))
        steps = int(self.config.eval_inner_steps)
        # Mapped, not unrolled: the graph holds one backbone call per set whatever the number of tasks.
        fs, fq = ops.map(lambda xs: (self.features(backbone, xs[0]), self.features(backbone, xs[1])), (sx, qx))
        dtype = self.model.compute_dtype

        def step(i, carry):
            heads, curve = carry
            metric = batched_loss_and_metric(kind, self.head_outputs(heads, fq), qy)[1]
            curve = curve + metric[:, None] * ops.one_hot(i, steps + 1, dtype=dtype)[None, :]
            return self.head_step(heads, fs, sy, first_order=True), curve

        curve = ops.zeros((num_tasks, steps + 1), dtype=dtype)
        heads, curve = ops.fori_loop(0, steps, step, (self.tile_head(head, num_tasks), curve))
        outputs = self.head_outputs(heads, fq)
        losses, metrics = batched_loss_and_metric(kind, outputs, qy)
        curve = curve + metrics[:, None] * ops.one_hot(steps, steps + 1, dtype=dtype)[None, :]
        return self.scores(losses, metrics, curve=curve, predictions=outputs)

    def report_data(self) -> dict[str, Any]:
        """Which weights adapt in the inner loop (the head) and which are meta-learned only (the backbone).

        Returns:
            ``{"layers": [{"name", "shape", "params", "adapts"}, ...], "inner_lr", "inner_steps",
            "eval_inner_steps", "first_order"}`` (plain JSON types).
        """
        head = {self._kernel_index, self._bias_index}
        layers = [
            {"name": v.path, "shape": [int(s) for s in v.shape], "params": int(np.prod(v.shape)), "adapts": i in head}
            for i, v in enumerate(self.trainable_variables)
        ]
        return {"layers": layers, "inner_lr": float(self.config.inner_lr), "inner_steps": int(self.config.inner_steps),
                "eval_inner_steps": int(self.config.eval_inner_steps), "first_order": bool(self.config.first_order)}
