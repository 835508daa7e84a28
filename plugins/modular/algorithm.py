"""Modular meta-learning (Alet, Lozano-Pérez and Kaelbling 2018) written against metalab's functional seam.

A library of modules is shared by all tasks; a task is solved by a *structure*, a choice of one module per slot,
and nothing else is adapted. Here the network is the run's backbone (shared by every structure), then ``num_slots``
slots, each holding ``num_modules`` dense ReLU blocks, then the read-out. With ``S`` a structure and ``theta`` the
module weights, BounceGrad (the paper's Algorithm 1) alternates

    S_i  <- argmin_S  L(D_i^train; S, theta)                    (structure search on the task's training data)
    theta <- theta - eta * grad_theta L(D_i^test; S_i, theta)   (the modules of the chosen structure learn)

and at meta-test time a new task gets ``S = argmin_S L(D^train; S, theta)`` and is scored on its test data. Here
``D^train`` is the episode's support set and ``D^test`` its query set. The paper searches with simulated annealing
and keeps one structure per training dataset across iterations; metalab's episodes are drawn afresh and never
revisited, so each episode's structure is searched from scratch, exhaustively over all ``num_modules **
num_slots`` structures or greedily (coordinate descent: each slot in turn takes its best module with the others
fixed, for ``greedy_sweeps`` sweeps from the all-zero structure).

Read-out. Regression (the paper's experiments are function regression): a shared linear layer maps the last
slot's output to the targets; the support loss is the MSE. Classification: metalab relabels classes in every
episode, so the composed network is an embedding read out by prototypes (Snell et al. 2017, the mean support
embedding per class, negative squared distances as logits); the support loss that picks the structure scores each
support example against leave-one-out prototypes of its class when ``shots >= 2``.
"""

from __future__ import annotations

import itertools
import math
from typing import Any

import keras
import numpy as np
from keras import ops

from metalab.api import functional
from metalab.api.algorithms import MetaAlgorithm
from metalab.api.episodic import batch_tensors
from metalab.api import TaskBatch, TaskSpec

#: Largest structure space whose every structure gets its own usage counter (else only slot-module counts).
MAX_COUNTED_STRUCTURES = 4096


class ModularMetaLearner(MetaAlgorithm):
    """Modular meta-learning: a searched choice of modules per task over a shared module library.

    Args:
        params: A validated ``ModularParams``.
        task: What the tasks look like; classification or regression.

    Raises:
        ValueError: If an exhaustive search would exceed ``max_structures``.
    """

    def __init__(self, params: Any, task: TaskSpec):
        super().__init__(params, task)
        self.num_modules, self.num_slots, self.width = int(params.num_modules), int(params.num_slots), int(params.module_width)
        self.num_structures = self.num_modules ** self.num_slots
        if params.search == "exhaustive" and self.num_structures > params.max_structures:
            raise ValueError(
                f"An exhaustive search over num_modules**num_slots = {self.num_structures} structures exceeds "
                f"max_structures={params.max_structures}; use search='greedy' or fewer modules or slots. "
                f"Received: num_modules={self.num_modules}, num_slots={self.num_slots}"
            )
        self.model = task.make_backbone()
        self.fmodel = functional.FunctionalModel(self.model)
        feature_dim = int(self.model(np.zeros((1, *task.input_shape), np.float32), training=False).shape[-1])
        # One stacked kernel and bias per slot: module k of slot s is kernels[s][k], biases[s][k].
        self.kernels, self.biases = [], []
        for s in range(self.num_slots):
            fan_in = feature_dim if s == 0 else self.width
            limit = math.sqrt(6.0 / (fan_in + self.width))
            self.kernels.append(keras.Variable(
                keras.initializers.RandomUniform(-limit, limit)((self.num_modules, fan_in, self.width)),
                name=f"slot{s}_kernels"))
            self.biases.append(keras.Variable(np.zeros((self.num_modules, self.width)), dtype="float32",
                                              name=f"slot{s}_biases"))
        self.head = []
        if task.kind == "regression":
            limit = math.sqrt(6.0 / (self.width + task.output_dim))
            self.head = [
                keras.Variable(keras.initializers.RandomUniform(-limit, limit)((self.width, task.output_dim)), name="head_kernel"),
                keras.Variable(np.zeros(task.output_dim), dtype="float32", name="head_bias"),
            ]
        self._n_backbone = len(self.fmodel.trainable_variables)
        self.all_structures = np.asarray(list(itertools.product(range(self.num_modules), repeat=self.num_slots)),
                                         dtype=np.int32) if self.num_structures <= params.max_structures else None
        counted = self.num_structures if self.num_structures <= MAX_COUNTED_STRUCTURES else 0
        # Training counts are checkpointed (they describe the run); evaluation counts are this process's only.
        # aggregation="sum": with devices=N each device counts its own tasks, and the counts add up.
        self.train_slot_counts = keras.Variable(np.zeros((self.num_slots, self.num_modules)), dtype="float32",
                                                trainable=False, name="train_slot_counts", aggregation="sum")
        self.train_structure_counts = keras.Variable(np.zeros(counted), dtype="float32", trainable=False,
                                                     name="train_structure_counts", aggregation="sum")
        self.eval_slot_counts = keras.Variable(np.zeros((self.num_slots, self.num_modules)), dtype="float32",
                                               trainable=False, name="eval_slot_counts")
        self.eval_structure_counts = keras.Variable(np.zeros(counted), dtype="float32", trainable=False,
                                                    name="eval_structure_counts")
        # The backbone's weights, the slots' kernels then biases, then the regression head (if any), trained by the
        # base class's Adam at outer_lr (the paper trains the modules with Adam); the training counts describe
        # the run, so they are checkpointed too.
        self.track(self.model, self.module_variables + self.head)
        self.keep(self.train_slot_counts, self.train_structure_counts)

    # -- variables ---------------------------------------------------------------------------------------

    @property
    def module_variables(self) -> list[Any]:
        return self.kernels + self.biases

    def _split(self, params: list[Any]) -> tuple[list[Any], list[Any], list[Any], list[Any]]:
        n, s = self._n_backbone, self.num_slots
        return params[:n], params[n:n + s], params[n + s:n + 2 * s], params[n + 2 * s:]

    # -- the composed network ----------------------------------------------------------------------------

    def compose(self, kernels: list[Any], biases: list[Any], features: Any, structures: Any) -> Any:
        """Runs the slots under many structures at once.

        Args:
            kernels, biases: Per slot, ``[K, in, width]`` and ``[K, width]``.
            features: Backbone outputs ``[T, N, D]``.
            structures: ``int32 [T, M, S]``: ``M`` structures per task, one module index per slot.

        Returns:
            ``[T, M, N, width]``: the last slot's outputs under each structure.
        """
        tasks, candidates = structures.shape[0], structures.shape[1]
        h = ops.broadcast_to(ops.expand_dims(features, 1), (tasks, candidates, *features.shape[1:]))
        for s in range(self.num_slots):
            # One-hot selection, not a gather: dense gradients reach the chosen modules only.
            pick = ops.one_hot(structures[:, :, s], self.num_modules, dtype=h.dtype)
            kernel = ops.einsum("tmk,kio->tmio", pick, kernels[s])
            bias = ops.einsum("tmk,ko->tmo", pick, biases[s])
            h = ops.relu(ops.einsum("tmni,tmio->tmno", h, kernel) + ops.expand_dims(bias, 2))
        return h

    def _outputs(self, head: list[Any], h: Any) -> Any:
        return ops.matmul(h, head[0]) + head[1]

    def support_losses(self, head: list[Any], h: Any, sy: Any) -> Any:
        """``[T, M]``: each structure's loss on the support set (what the search minimises)."""
        if self.task.kind == "regression":
            error = self._outputs(head, h) - ops.expand_dims(ops.cast(sy, h.dtype), 1)
            return ops.mean(ops.square(error), axis=(2, 3))
        ways = self.task.ways
        onehot = ops.one_hot(ops.cast(sy, "int32"), ways, dtype=h.dtype)  # [T, N, ways]
        sums = ops.einsum("tnk,tmnd->tmkd", onehot, h)
        counts = ops.sum(onehot, axis=1)  # [T, ways]
        prototypes = sums / ops.reshape(counts, (counts.shape[0], 1, ways, 1))
        distances = ops.sum(ops.square(ops.expand_dims(h, 3) - ops.expand_dims(prototypes, 2)), axis=-1)
        if self.task.shots >= 2:
            # Leave-one-out: an example's own class prototype without it, so the search cannot reward memorising.
            own_sum = ops.einsum("tnk,tmkd->tmnd", onehot, sums)
            own_count = ops.einsum("tnk,tk->tn", onehot, counts)
            own_count = ops.reshape(own_count, (own_count.shape[0], 1, own_count.shape[1], 1))
            loo = (own_sum - h) / ops.maximum(own_count - 1.0, 1.0)
            loo_distance = ops.sum(ops.square(h - loo), axis=-1)
            mask = ops.expand_dims(onehot, 1)
            distances = distances * (1.0 - mask) + ops.expand_dims(loo_distance, -1) * mask
        labels = ops.broadcast_to(ops.expand_dims(ops.cast(sy, "int32"), 1), distances.shape[:3])
        return ops.mean(ops.sparse_categorical_crossentropy(labels, -distances, from_logits=True), axis=-1)

    def search(self, kernels: list[Any], biases: list[Any], head: list[Any], features: Any, sy: Any) -> Any:
        """``int32 [T, S]``: each task's structure with the lowest support loss (no gradient flows through it)."""
        kernels, biases, head, features = functional.stop_gradient((kernels, biases, head, features))
        tasks = features.shape[0]
        if self.config.search == "exhaustive":
            structures = ops.broadcast_to(ops.convert_to_tensor(self.all_structures)[None],
                                          (tasks, *self.all_structures.shape))
            losses = self.support_losses(head, self.compose(kernels, biases, features, structures), sy)
            best = ops.cast(ops.argmin(losses, axis=1), "int32")
            return ops.take_along_axis(structures, ops.reshape(best, (tasks, 1, 1)), axis=1)[:, 0]
        current = ops.zeros((tasks, self.num_slots), dtype="int32")
        modules = ops.arange(self.num_modules, dtype="int32")
        for _ in range(int(self.config.greedy_sweeps)):
            for s in range(self.num_slots):
                slot = ops.one_hot(s, self.num_slots, dtype="int32")
                candidates = (ops.expand_dims(current * (1 - slot), 1)
                              + ops.reshape(modules, (1, -1, 1)) * ops.reshape(slot, (1, 1, -1)))
                losses = self.support_losses(head, self.compose(kernels, biases, features, candidates), sy)
                best = ops.cast(ops.argmin(losses, axis=1), "int32")
                current = current * (1 - slot) + ops.expand_dims(best, 1) * ops.expand_dims(slot, 0)
        return current

    def episodes(self, params: list[Any], batch: TaskBatch, *, training: bool, state: list[Any]):
        """Searches each task's structure on its support set and scores it on the query set.

        Returns:
            ``(loss [T], metric [T], outputs [T, Q, ...], structures int32 [T, S], new_state)``; classification
            outputs are logits over the ways, the metric accuracy; regression's metric is the MSE.
        """
        kind = self.task.kind
        backbone, kernels, biases, head = self._split(params)
        sx, sy, qx, qy, tasks = batch_tensors(batch, kind, self.model.compute_dtype)
        n_support, n_query = sx.shape[1], qx.shape[1]
        both = ops.concatenate([sx, qx], axis=1)
        flat = ops.reshape(both, (tasks * (n_support + n_query), *both.shape[2:]))
        features, state = self.fmodel.call_with_state(backbone, flat, training=training, state=state)
        features = ops.reshape(features, (tasks, n_support + n_query, -1))
        structures = self.search(kernels, biases, head, features[:, :n_support], sy)
        h = self.compose(kernels, biases, features, ops.expand_dims(structures, 1))[:, 0]
        support, queries = h[:, :n_support], h[:, n_support:]
        if kind == "regression":
            outputs = self._outputs(head, queries)
            losses = ops.mean(ops.square(outputs - qy), axis=(1, 2))
            return losses, losses, outputs, structures, state
        onehot = ops.one_hot(ops.cast(sy, "int32"), self.task.ways, dtype=h.dtype)
        prototypes = ops.einsum("tnk,tnd->tkd", onehot, support) / ops.expand_dims(ops.sum(onehot, axis=1), -1)
        logits = -ops.sum(ops.square(ops.expand_dims(queries, 2) - ops.expand_dims(prototypes, 1)), axis=-1)
        labels = ops.cast(qy, "int32")
        losses = ops.mean(ops.sparse_categorical_crossentropy(labels, logits, from_logits=True), axis=-1)
        hits = ops.equal(ops.cast(ops.argmax(logits, axis=-1), "int32"), labels)
        return losses, ops.mean(ops.cast(hits, logits.dtype), axis=-1), logits, structures, state

    def _count(self, structures: Any, slot_counts: Any, structure_counts: Any) -> None:
        slot_counts.assign_add(ops.sum(ops.one_hot(structures, self.num_modules, dtype="float32"), axis=0))
        if structure_counts.shape[0]:
            weights = ops.convert_to_tensor([self.num_modules ** (self.num_slots - 1 - s) for s in range(self.num_slots)],
                                            dtype="int32")
            index = ops.sum(structures * weights, axis=-1)
            structure_counts.assign_add(ops.sum(ops.one_hot(index, self.num_structures, dtype="float32"), axis=0))

    # -- the runner's interface --------------------------------------------------------------------------

    def meta_gradients(self, batch: TaskBatch) -> tuple[list[Any], dict[str, Any]]:
        """Returns the gradient of the mean query loss under each task's searched structure, and metrics.

        Also counts which modules the tasks chose (``train_slot_counts``, ``train_structure_counts``).
        """
        def mean_loss(params):
            losses, metrics, _, structures, state = self.episodes(params, batch, training=True, state=self.fmodel.state())
            return ops.mean(losses), (ops.mean(metrics), structures, state)

        (loss, (metric, structures, state)), grads = functional.value_and_grad(mean_loss, self.params(), has_aux=True)
        self.fmodel.set_state(functional.stop_gradient(state))
        self._count(structures, self.train_slot_counts, self.train_structure_counts)
        return grads, self.scores(loss, metric)

    def evaluate(self, batch: TaskBatch) -> dict[str, Any]:
        """Searches each task's structure on its support set and scores its query set (no weights adapt).

        Returns:
            ``loss`` ``[T]``, ``accuracy`` ``[T]`` (classification), ``predictions`` (query logits or outputs) and
            ``structures`` ``int32 [T, num_slots]`` (each task's module per slot).
        """
        losses, metrics, outputs, structures, _ = self.episodes(self.params(), batch, training=False,
                                                               state=self.fmodel.state())
        self._count(structures, self.eval_slot_counts, self.eval_structure_counts)
        return self.scores(losses, metrics, predictions=outputs, structures=structures)

    def report_data(self) -> dict[str, Any]:
        """Which modules the tasks used: counts per slot and module, and per whole structure.

        Returns:
            ``{"num_modules", "num_slots", "search", "train": {"slot_counts" [S][K], "structures": [{"modules"
            [S], "count"}] (most used first, at most 20)}, "evaluation": {...}}``; ``evaluation`` counts every task
            this process evaluated (validation and meta-test episodes; a padded final chunk repeats its last task).
        """
        def summary(slot_counts: Any, structure_counts: Any) -> dict[str, Any]:
            slots = np.asarray(keras.ops.convert_to_numpy(slot_counts)).round().astype(int)
            counts = np.asarray(keras.ops.convert_to_numpy(structure_counts)).round().astype(int)
            top = [int(i) for i in np.argsort(-counts, kind="stable")[:20] if counts[i] > 0]
            structures = [{"modules": [int(m) for m in np.unravel_index(i, (self.num_modules,) * self.num_slots)],
                           "count": int(counts[i])} for i in top]
            return {"slot_counts": slots.tolist(), "tasks": int(slots[0].sum()), "structures": structures,
                    "distinct_structures": int(np.count_nonzero(counts))}

        return {
            "num_modules": self.num_modules, "num_slots": self.num_slots, "search": self.config.search,
            "train": summary(self.train_slot_counts, self.train_structure_counts),
            "evaluation": summary(self.eval_slot_counts, self.eval_structure_counts),
        }
