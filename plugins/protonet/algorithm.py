"""Prototypical Networks (Snell, Swersky and Zemel 2017) written against metalab's functional seam.

Each class ``k`` of an episode gets a prototype, the mean embedding of its support examples (eq. 1),
``c_k = 1/|S_k| sum_{x in S_k} f_phi(x)``; a query ``x`` is classified by
``p(y = k | x) = softmax_k(-d(f_phi(x), c_k))`` (eq. 2) with ``d`` the squared Euclidean distance, and ``phi`` is
trained by Adam on the query cross-entropy.

As in the paper's code, support and query are embedded in one batch during training (batch norm in training
mode, which also moves its running moments) and evaluation uses the running moments (inductive). With
``transductive`` an evaluated episode is normalised with its own batch statistics instead, as MAML's reference code
does; the choice is part of the run config, so every report says which was used.
"""

from __future__ import annotations

import math
from typing import Any

from keras import ops

from metalab.api import functional
from metalab.api.algorithms import MetaAlgorithm
from metalab.api.episodic import batch_tensors, batched_loss_and_metric, prototype_logits
from metalab.api import TaskBatch, TaskSpec


class ProtoNet(MetaAlgorithm):
    """Prototypical Networks on the run's backbone (the embedding; no head).

    The outer optimizer is the base class's: Adam at ``outer_lr``, halved every ``lr_decay_every`` updates.

    Args:
        params: A validated ``ProtoNetParams``.
        task: What the tasks look like (the spec declares classification only).
    """

    #: Inductive meta-testing: input values (images x pixels x channels) that one backbone call may take, so that
    #: several episodes share a call (2**20: sixteen 5-way 1-shot Omniglot episodes of 80 28x28 images). 0 (the
    #: default): one episode per backbone call, mapped over the episodes of the compiled call. On a 2-core AVX2
    #: CPU sixteen such episodes took 1.20 CPU-s one per call and 1.38 in one call (larger activations, out of
    #: cache), so sharing is for accelerators, where small calls leave the device idle.
    eval_inputs_per_call = 0

    def __init__(self, params: Any, task: TaskSpec):
        super().__init__(params, task)
        self.model = task.make_backbone()
        self.fmodel = functional.FunctionalModel(self.model)
        self.track(self.model)

    def logits(self, support_embeddings: Any, support_y: Any, query_embeddings: Any) -> Any:
        """Returns ``[queries, ways]`` logits: negative distances from each query to each class prototype."""
        return prototype_logits(support_embeddings, support_y, query_embeddings, self.task.ways,
                                distance=self.config.distance)

    def episode(self, weights: list[Any], sx: Any, sy: Any, qx: Any, qy: Any, *, training: bool, state: list[Any]):
        """Scores one episode; returns ``(loss, accuracy, logits, new_state)``."""
        n_support = sx.shape[0]
        embeddings, state = self.fmodel.call_with_state(
            weights, ops.concatenate([sx, qx], axis=0), training=training, state=state
        )
        logits = self.logits(embeddings[:n_support], sy, embeddings[n_support:])
        labels = ops.cast(qy, "int32")
        loss = functional.mean(ops.sparse_categorical_crossentropy(labels, logits, from_logits=True))
        hits = ops.equal(ops.cast(ops.argmax(logits, axis=-1), "int32"), labels)
        return loss, functional.mean(ops.cast(hits, logits.dtype)), logits, state

    def meta_gradients(self, batch: TaskBatch) -> tuple[list[Any], dict[str, Any]]:
        """Returns the gradient of the mean query cross-entropy over the batch's episodes, and loss/accuracy.

        Also moves the batch norms' running moments (as a training-mode forward pass does).
        """
        sx, sy, qx, qy, num_tasks = batch_tensors(batch, "classification", self.model.compute_dtype)

        def mean_loss(weights):
            state = self.fmodel.state()
            losses, accuracies = [], []
            for t in range(num_tasks):
                loss, accuracy, _, state = self.episode(weights, sx[t], sy[t], qx[t], qy[t], training=True, state=state)
                losses.append(loss)
                accuracies.append(accuracy)
            return functional.mean(ops.stack(losses)), (functional.mean(ops.stack(accuracies)), state)

        (loss, (accuracy, state)), grads = functional.value_and_grad(mean_loss, self.fmodel.params(), has_aux=True)
        self.fmodel.set_state(functional.stop_gradient(state))
        return grads, self.scores(loss, accuracy)

    def evaluate(self, batch: TaskBatch) -> dict[str, Any]:
        """Scores each episode's query set against its support prototypes.

        Batch norm uses the running moments, or with ``transductive`` the statistics of the episode's support and
        query images together (the running moments are not moved).

        Returns:
            ``loss`` ``[T]``, ``accuracy`` ``[T]`` and ``predictions`` (query logits ``[T, queries, ways]``).
        """
        sx, sy, qx, qy, num_tasks = batch_tensors(batch, "classification", self.model.compute_dtype)
        weights, state = self.fmodel.params(), self.fmodel.state()
        group = self._episodes_per_call(num_tasks, sx.shape[1] + qx.shape[1], math.prod(sx.shape[2:]))
        if self.config.transductive or group == 1:
            def one_task(arrays):
                return self.episode(weights, *arrays, training=bool(self.config.transductive), state=state)[:3]

            losses, accuracies, predictions = ops.map(one_task, (sx, sy, qx, qy))
            return self.scores(losses, accuracies, predictions=predictions)

        # Inductive batch norm (running moments) scores every image on its own, so `group` episodes share one
        # backbone call: a few large convolutions instead of one small call per episode, same scores.
        def grouped(arrays):
            gsx, gsy, gqx, gqy = arrays  # [group, n, ...]
            n_support = gsx.shape[1]
            images = ops.concatenate([gsx, gqx], axis=1)
            flat = ops.reshape(images, (-1, *images.shape[2:]))
            embeddings = self.fmodel(weights, flat, training=False, state=state)
            embeddings = ops.reshape(embeddings, (group, images.shape[1], -1))
            logits = self.logits(embeddings[:, :n_support], gsy, embeddings[:, n_support:])
            return (*batched_loss_and_metric("classification", logits, gqy), logits)

        def split(x):
            return ops.reshape(x, (num_tasks // group, group, *x.shape[1:]))

        losses, accuracies, predictions = ops.map(grouped, tuple(split(x) for x in (sx, sy, qx, qy)))
        return self.scores(ops.reshape(losses, (num_tasks,)), ops.reshape(accuracies, (num_tasks,)),
                           predictions=ops.reshape(predictions, (num_tasks, *predictions.shape[2:])))

    def _episodes_per_call(self, num_tasks: int, images: int, pixels: int) -> int:
        """Episodes scored per backbone call at meta-test time: the most that divide ``num_tasks`` and keep a
        call's inputs within :attr:`eval_inputs_per_call` values (at least one)."""
        fits = max(int(self.eval_inputs_per_call) // max(images * pixels, 1), 1)
        return max(g for g in range(1, min(fits, num_tasks) + 1) if num_tasks % g == 0)
