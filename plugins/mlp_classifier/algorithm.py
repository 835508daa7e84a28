"""The supervised MLP reference, trained on the training split's classes and meta-tested by nearest centroid.

Training is ordinary supervised learning: ``Flatten -> Dense(h_1, relu) -> ... -> Dense(c)`` with softmax
cross-entropy over the ``c`` training classes, on mini-batches from the runner's supervised sampler. Inputs
arrive as ``float32`` already divided by the dataset's ``scale`` (``ClassificationDataset.to_float``), so the
model has no rescaling layer of its own: pixels are scaled exactly once.

Meta-test classes are never seen in training, so the softmax layer cannot name them. Each episode is instead
classified by the nearest class centroid in the last hidden layer's features: ``c_k`` is the mean feature of
the support images of class ``k`` and a query gets ``softmax_k(-||h(x) - c_k||^2)``. No parameter is updated at
meta-test time; this is what plain supervised features give a few-shot task without any meta-learning.
"""

from __future__ import annotations

from typing import Any

import keras
from keras import ops

from metalab.core import functional
from metalab.core.plugin_api import TaskBatch, TaskSpec


def _cross_entropy_and_accuracy(logits: Any, labels: Any) -> tuple[Any, Any]:
    labels = ops.cast(labels, "int32")
    loss = ops.mean(ops.sparse_categorical_crossentropy(labels, logits, from_logits=True))
    hits = ops.equal(ops.cast(ops.argmax(logits, axis=-1), "int32"), labels)
    return loss, ops.mean(ops.cast(hits, logits.dtype))


class MLPClassifier:
    """A Keras MLP classifier over the training classes, scored few-shot by nearest centroid.

    Args:
        params: A validated ``MLPClassifierParams``.
        task: What the tasks look like; must be classification with ``num_train_classes >= 2``.

    Raises:
        ValueError: If ``task.kind`` is not classification or the number of training classes is unknown.
    """

    #: Trained on mini-batches of the training split with global labels (plugin API 1.2).
    batch_kind = "supervised"

    def __init__(self, params: Any, task: TaskSpec):
        if task.kind != "classification":
            raise ValueError(f"The MLP classifier needs classification tasks. Received: task.kind={task.kind!r}")
        classes = int(getattr(task, "num_train_classes", 0))
        if classes < 2:
            raise ValueError(
                "The MLP classifier learns the training classes, so it needs task.num_train_classes >= 2. "
                f"Received: num_train_classes={classes}"
            )
        self.config = params
        self.task = task
        self.meta_batch_size = 1
        self.batch_size = int(params.batch_size)
        layers: list[Any] = [keras.Input(tuple(task.input_shape)), keras.layers.Flatten(name="flatten")]
        layers += [keras.layers.Dense(int(h), activation="relu", name=f"dense{i}") for i, h in enumerate(params.hidden)]
        self.trunk = keras.Sequential(layers, name="mlp_trunk")
        self.model = keras.Sequential(
            [keras.Input(tuple(task.input_shape)), self.trunk, keras.layers.Dense(classes, name="head")],
            name="mlp_classifier",
        )
        self.fmodel = functional.FunctionalModel(self.model)
        self.ftrunk = functional.FunctionalModel(self.trunk)

    @property
    def trainable_variables(self) -> list[Any]:
        return self.fmodel.trainable_variables

    @property
    def variables(self) -> list[Any]:
        return list(self.model.variables)

    def make_optimizer(self) -> keras.optimizers.Optimizer:
        """Returns Adam at ``lr``."""
        return keras.optimizers.Adam(learning_rate=self.config.lr)

    def meta_gradients(self, batch: TaskBatch) -> tuple[list[Any], dict[str, Any]]:
        """Returns the cross-entropy gradient over a supervised batch (support and query halves together)."""
        dtype = self.model.compute_dtype
        x = ops.concatenate([ops.convert_to_tensor(batch.support_x, dtype=dtype),
                             ops.convert_to_tensor(batch.query_x, dtype=dtype)], axis=1)
        y = ops.concatenate([ops.convert_to_tensor(batch.support_y, dtype="int32"),
                             ops.convert_to_tensor(batch.query_y, dtype="int32")], axis=1)
        x = ops.reshape(x, (-1, *self.task.input_shape))
        y = ops.reshape(y, (-1,))

        def loss_fn(weights):
            loss, accuracy = _cross_entropy_and_accuracy(self.fmodel(weights, x, training=True), y)
            return loss, accuracy

        (loss, accuracy), grads = functional.value_and_grad(loss_fn, self.fmodel.params(), has_aux=True)
        return grads, {"loss": loss, "accuracy": accuracy}

    def nearest_centroid(self, support_features: Any, support_y: Any, query_features: Any) -> Any:
        """Returns ``[queries, ways]`` logits: negative squared distances to the support class centroids."""
        onehot = ops.one_hot(ops.cast(support_y, "int32"), self.task.ways, dtype=support_features.dtype)
        centroids = ops.matmul(ops.transpose(onehot), support_features) / ops.expand_dims(ops.sum(onehot, axis=0), -1)
        diff = ops.expand_dims(query_features, 1) - ops.expand_dims(centroids, 0)
        return -ops.sum(ops.square(diff), axis=-1)

    def evaluate(self, batch: TaskBatch) -> dict[str, Any]:
        """Classifies each episode's queries by the nearest support centroid in the last hidden features.

        Returns:
            ``loss`` ``[T]``, ``accuracy`` ``[T]`` and ``predictions`` (query logits ``[T, queries, ways]``).
        """
        dtype = self.model.compute_dtype
        sx = ops.convert_to_tensor(batch.support_x, dtype=dtype)
        qx = ops.convert_to_tensor(batch.query_x, dtype=dtype)
        sy = ops.convert_to_tensor(batch.support_y, dtype="int32")
        qy = ops.convert_to_tensor(batch.query_y, dtype="int32")
        weights = self.ftrunk.params()

        def one_task(arrays):
            tsx, tsy, tqx, tqy = arrays
            n_support = tsx.shape[0]
            features = self.ftrunk(weights, ops.concatenate([tsx, tqx], axis=0), training=False)
            logits = self.nearest_centroid(features[:n_support], tsy, features[n_support:])
            loss, accuracy = _cross_entropy_and_accuracy(logits, tqy)
            return loss, accuracy, logits

        losses, accuracies, predictions = ops.map(one_task, (sx, sy, qx, qy))
        return {"loss": losses, "accuracy": accuracies, "predictions": predictions}
