"""Zero-shot Prototypical Networks (Snell, Swersky and Zemel 2017, Sections 2.3 and 3.3).

Zero-shot learning gives each class a meta-data vector ``v_k`` (here: its attribute vector) instead of labelled
examples. The prototype of class ``k`` is an embedding of that vector, ``c_k = g_theta(v_k)``, and a query ``x``
is classified as in few-shot Prototypical Networks,

    p(y = k | x) = softmax_k(-d(f_phi(x), c_k)),   d = squared Euclidean distance,      (eq. 2 with c_k = g(v_k))

with ``f_phi`` the run's backbone (the image embedding) and ``g_theta`` a small MLP (the attribute embedding;
the paper's is linear). As in the paper's CUB experiment, the prototypes are fixed to unit length (the query
embedding is not constrained). Both embeddings are trained jointly on the query cross-entropy of episodes of the
training classes; the test classes are never seen, only their attribute vectors.

The attribute vectors of an episode's classes come in ``batch.extras["class_attributes"]`` ``[T, ways, A]``,
which metalab's episode sampler fills when the dataset stores ``info["class_attributes"]``. Without them (any
other dataset) the algorithm is few-shot Prototypical Networks on the same backbone: the prototypes are the mean
support embeddings (eq. 1). Generalised, then: with attributes zero-shot, without them few-shot prototypes.
"""

from __future__ import annotations

from typing import Any

import keras
import numpy as np
from keras import ops

from metalab.api import functional
from metalab.api.algorithms import MetaAlgorithm
from metalab.api.episodic import batch_tensors
from metalab.api import TaskBatch, TaskSpec

#: The key of the per-episode class attributes in ``TaskBatch.extras``.
ATTRIBUTES_KEY = "class_attributes"


class ZeroShotProtoNet(MetaAlgorithm):
    """Zero-shot Prototypical Networks: prototypes embedded from class attributes; few-shot ones without them.

    Args:
        params: A validated ``ZeroShotParams``.
        task: What the tasks look like (the spec declares classification only).
    """

    def __init__(self, params: Any, task: TaskSpec):
        super().__init__(params, task)
        self.attribute_dim = int(params.attribute_dim)
        self.model = task.make_backbone()
        self.embedding_dim = int(self.model(np.zeros((1, *task.input_shape), np.float32), training=False).shape[-1])
        layers: list[Any] = [keras.Input((self.attribute_dim,))]
        layers += [keras.layers.Dense(int(h), activation="relu") for h in params.attribute_hidden]
        layers.append(keras.layers.Dense(self.embedding_dim, name="prototype"))
        self.attribute_encoder = keras.Sequential(layers, name="attribute_encoder")
        self.fmodel = functional.FunctionalModel(self.model)
        self.fencoder = functional.FunctionalModel(self.attribute_encoder)
        self._n_image = len(self.fmodel.trainable_variables)
        # The image embedding's weights, then the attribute embedding's, trained by the base class's Adam at
        # outer_lr, halved every lr_decay_every updates.
        self.track(self.model, self.attribute_encoder)
        queries = task.ways * task.queries
        # The last evaluated batch's first episode, for the report (not checkpointed: evaluation writes it).
        self._record = {
            "mode": keras.Variable(-1, dtype="int32", trainable=False, name="record_mode"),
            "queries": keras.Variable(np.zeros((queries, self.embedding_dim)), dtype="float32", trainable=False,
                                      name="record_queries"),
            "labels": keras.Variable(np.zeros(queries), dtype="int32", trainable=False, name="record_labels"),
            "predicted": keras.Variable(np.zeros(queries), dtype="int32", trainable=False, name="record_predicted"),
            "prototypes": keras.Variable(np.zeros((task.ways, self.embedding_dim)), dtype="float32", trainable=False,
                                         name="record_prototypes"),
            "attributes": keras.Variable(np.zeros((task.ways, self.attribute_dim)), dtype="float32", trainable=False,
                                         name="record_attributes"),
        }

    def class_attributes(self, batch: TaskBatch) -> Any | None:
        """The batch's ``[T, ways, A]`` class attributes as a tensor, or ``None`` when it carries none.

        Raises:
            ValueError: If the attributes' size differs from ``attribute_dim``.
        """
        attributes = (batch.extras or {}).get(ATTRIBUTES_KEY)
        if attributes is None:
            return None
        attributes = ops.convert_to_tensor(attributes, dtype=self.model.compute_dtype)
        if attributes.shape[-1] != self.attribute_dim:
            raise ValueError(
                f"The dataset's classes have {attributes.shape[-1]} attributes but the attribute embedding expects "
                f"attribute_dim={self.attribute_dim}; set the algorithm parameter attribute_dim to "
                f"{attributes.shape[-1]}. Received: class_attributes with shape={tuple(attributes.shape)}"
            )
        return attributes

    def prototypes_from_attributes(self, weights: list[Any], attributes: Any) -> Any:
        """``[T, ways, D]`` prototypes ``g(v_k)``, of unit length when ``unit_prototypes``."""
        tasks, ways = attributes.shape[0], attributes.shape[1]
        flat = ops.reshape(attributes, (tasks * ways, self.attribute_dim))
        prototypes = ops.reshape(self.fencoder(weights, flat, training=True), (tasks, ways, self.embedding_dim))
        if self.config.unit_prototypes:
            prototypes = ops.normalize(prototypes, axis=-1, epsilon=1e-6)
        return prototypes

    def episodes(self, params: list[Any], batch: TaskBatch, *, training: bool, state: list[Any]):
        """Scores every episode of ``batch``.

        Returns:
            ``(loss [T], accuracy [T], logits [T, Q, ways], query embeddings [T, Q, D], prototypes [T, ways, D],
            attributes [T, ways, A] or None, new_state)``.
        """
        image_weights, attribute_weights = params[:self._n_image], params[self._n_image:]
        sx, sy, qx, qy, tasks = batch_tensors(batch, "classification", self.model.compute_dtype)
        attributes = self.class_attributes(batch)
        ways, n_query = self.task.ways, qx.shape[1]
        if attributes is not None:
            # Zero-shot: the support images are never looked at.
            flat = ops.reshape(qx, (tasks * n_query, *qx.shape[2:]))
            embedded, state = self.fmodel.call_with_state(image_weights, flat, training=training, state=state)
            queries = ops.reshape(embedded, (tasks, n_query, -1))
            prototypes = self.prototypes_from_attributes(attribute_weights, attributes)
        else:
            n_support = sx.shape[1]
            both = ops.concatenate([sx, qx], axis=1)
            flat = ops.reshape(both, (tasks * (n_support + n_query), *both.shape[2:]))
            embedded, state = self.fmodel.call_with_state(image_weights, flat, training=training, state=state)
            embedded = ops.reshape(embedded, (tasks, n_support + n_query, -1))
            support, queries = embedded[:, :n_support], embedded[:, n_support:]
            onehot = ops.one_hot(ops.cast(sy, "int32"), ways, dtype=support.dtype)
            sums = ops.einsum("tsk,tsd->tkd", onehot, support)
            prototypes = sums / ops.expand_dims(ops.sum(onehot, axis=1), -1)
        logits = -ops.sum(ops.square(ops.expand_dims(queries, 2) - ops.expand_dims(prototypes, 1)), axis=-1)
        labels = ops.cast(qy, "int32")
        losses = ops.mean(ops.sparse_categorical_crossentropy(labels, logits, from_logits=True), axis=-1)
        hits = ops.equal(ops.cast(ops.argmax(logits, axis=-1), "int32"), labels)
        accuracies = ops.mean(ops.cast(hits, logits.dtype), axis=-1)
        return losses, accuracies, logits, queries, prototypes, attributes, state

    def meta_gradients(self, batch: TaskBatch) -> tuple[list[Any], dict[str, Any]]:
        """Returns the gradient of the mean query cross-entropy over the batch's episodes, and loss/accuracy.

        Also moves the backbone's batch-norm running moments (as a training-mode forward pass does).
        """
        def mean_loss(params):
            losses, accuracies, *_, state = self.episodes(params, batch, training=True, state=self.fmodel.state())
            return ops.mean(losses), (ops.mean(accuracies), state)

        (loss, (accuracy, state)), grads = functional.value_and_grad(mean_loss, self.params(), has_aux=True)
        self.fmodel.set_state(functional.stop_gradient(state))
        return grads, self.scores(loss, accuracy)

    def evaluate(self, batch: TaskBatch) -> dict[str, Any]:
        """Scores each episode's queries against its prototypes (batch norm on running moments).

        Returns:
            ``loss`` ``[T]``, ``accuracy`` ``[T]`` and ``predictions`` (query logits ``[T, queries, ways]``).
        """
        losses, accuracies, logits, queries, prototypes, attributes, _ = self.episodes(
            self.params(), batch, training=False, state=self.fmodel.state())
        self._remember(logits, queries, prototypes, attributes, batch)
        return self.scores(losses, accuracies, predictions=logits)

    def _remember(self, logits: Any, queries: Any, prototypes: Any, attributes: Any, batch: TaskBatch) -> None:
        record = self._record
        if tuple(queries.shape[1:]) != tuple(record["queries"].shape) or prototypes.shape[1] != self.task.ways:
            return  # another episode shape (e.g. a prediction request): nothing to compare it with
        record["mode"].assign(1 if attributes is not None else 0)
        record["queries"].assign(ops.cast(queries[0], "float32"))
        record["labels"].assign(ops.cast(ops.convert_to_tensor(batch.query_y)[0], "int32"))
        record["predicted"].assign(ops.cast(ops.argmax(logits[0], axis=-1), "int32"))
        record["prototypes"].assign(ops.cast(prototypes[0], "float32"))
        if attributes is not None:
            record["attributes"].assign(ops.cast(attributes[0], "float32"))

    def report_data(self) -> dict[str, Any] | None:
        """A 2-D projection of one evaluated episode: its query image embeddings and its class prototypes.

        The episode is the first of the last batch ``evaluate`` scored (at the end of a run: meta-test episodes of
        unseen classes). Both kinds of points are projected on the top two principal axes of the image
        embeddings and prototypes together.

        Returns:
            ``None`` before any evaluation, else ``{"mode": "zero-shot" | "few-shot", "ways", "query_points"
            [Q, 2], "query_labels" [Q], "query_predicted" [Q], "prototype_points" [ways, 2], "class_attributes"
            [ways, A] (zero-shot only), "per_class_accuracy" [ways], "accuracy"}``.
        """
        record = {k: np.asarray(keras.ops.convert_to_numpy(v)) for k, v in self._record.items()}
        mode = int(record["mode"])
        if mode < 0:
            return None
        queries = record["queries"].astype(np.float64)
        prototypes = record["prototypes"].astype(np.float64)
        points = np.concatenate([queries, prototypes])
        centred = points - points.mean(axis=0)
        _, _, vt = np.linalg.svd(centred, full_matrices=False)
        axes = vt[:2] if vt.shape[0] >= 2 else np.pad(vt, ((0, 2 - vt.shape[0]), (0, 0)))
        projected = centred @ axes.T
        labels, predicted = record["labels"].astype(int), record["predicted"].astype(int)
        ways = self.task.ways
        per_class = [float(np.mean(predicted[labels == k] == k)) if np.any(labels == k) else None
                     for k in range(ways)]
        data = {
            "mode": "zero-shot" if mode == 1 else "few-shot", "ways": ways,
            "query_points": projected[:len(queries)].round(5), "query_labels": labels,
            "query_predicted": predicted, "prototype_points": projected[len(queries):].round(5),
            "per_class_accuracy": per_class, "accuracy": float(np.mean(predicted == labels)),
        }
        if mode == 1:
            data["class_attributes"] = record["attributes"].round(4)
        return data
