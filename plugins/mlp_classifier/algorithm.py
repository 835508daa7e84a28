"""The supervised MLP reference, trained on the training split's classes and meta-tested by nearest centroid.

Training is ordinary supervised learning: ``Flatten -> Dense(h_1, relu) -> ... -> Dense(c)`` with softmax
cross-entropy over the ``c`` training classes, on mini-batches from the runner's supervised sampler. Inputs
arrive as ``float32`` already divided by the dataset's ``scale`` (``ClassificationDataset.to_float``), so the
model has no rescaling layer of its own: pixels are scaled exactly once.

Meta-test classes are never seen in training, so the softmax layer cannot name them. Each episode is instead
classified by the nearest class centroid in the last hidden layer's features: ``c_k`` is the mean feature of
the support images of class ``k`` and a query gets ``softmax_k(-||h(x) - c_k||^2)``. No parameter is updated at
meta-test time; this is what plain supervised features give a few-shot task without any meta-learning.

Its plain supervised accuracy is measured too. On a supervised-mode dataset (``ClassificationDataset.supervised``:
every split holds every class, e.g. ``metalab.mnist`` with ``mode="supervised"``) the runner hands over the test
split (``set_supervised_test``: MNIST's official test images) and ``report_data()`` gives the standard test
accuracy over all classes. On a few-shot dataset, with ``holdout_fraction > 0``, the runner holds a seeded share of
each training class's images out of the supervised batches and hands them over (``set_supervised_holdout``);
``report_data()`` scores the trained classifier on them at the end of the run.
"""

from __future__ import annotations

from typing import Any, Callable

import keras
import numpy as np
from keras import ops

from metalab.api import functional
from metalab.api.algorithms import MetaAlgorithm
from metalab.api.episodic import loss_and_metric
from metalab.api import TaskBatch, TaskSpec


class MLPClassifier(MetaAlgorithm):
    """A Keras MLP classifier over the training classes, scored few-shot by nearest centroid.

    Args:
        params: A validated ``MLPClassifierParams``.
        task: What the tasks look like; must be classification with ``num_train_classes >= 2``.

    Raises:
        ValueError: If the number of training classes is unknown.
    """

    #: Trained on mini-batches of the training split with global labels (plugin API 1.2).
    batch_kind = "supervised"
    #: Images scored per call when measuring held-out accuracy (bounds memory on large splits).
    holdout_chunk = 1024

    def __init__(self, params: Any, task: TaskSpec):
        classes = int(getattr(task, "num_train_classes", 0))
        if classes < 2:
            raise ValueError(
                "The MLP classifier learns the training classes, so it needs task.num_train_classes >= 2. "
                f"Received: num_train_classes={classes}"
            )
        super().__init__(params, task)
        #: Read by the runner, which then keeps these training images out of every batch.
        self.supervised_holdout_fraction = float(getattr(params, "holdout_fraction", 0.0))
        self._holdout: tuple[Any, np.ndarray, Callable[[Any], Any]] | None = None
        self._test: tuple[Any, np.ndarray, Callable[[Any], Any]] | None = None
        layers: list[Any] = [keras.Input(tuple(task.input_shape)), keras.layers.Flatten(name="flatten")]
        layers += [keras.layers.Dense(int(h), activation="relu", name=f"dense{i}") for i, h in enumerate(params.hidden)]
        self.trunk = keras.Sequential(layers, name="mlp_trunk")
        self.model = keras.Sequential(
            [keras.Input(tuple(task.input_shape)), self.trunk, keras.layers.Dense(classes, name="head")],
            name="mlp_classifier",
        )
        self.fmodel = functional.FunctionalModel(self.model)
        self.ftrunk = functional.FunctionalModel(self.trunk)
        self.track(self.model)  # the outer optimizer is the base class's Adam at lr

    def meta_gradients(self, batch: TaskBatch) -> tuple[list[Any], dict[str, Any]]:
        """Returns the cross-entropy gradient over a supervised batch (support and query halves together)."""
        x, y = self.flat_inputs(batch, self.model.compute_dtype), self.flat_labels(batch)

        def loss_fn(weights):
            loss, accuracy = loss_and_metric("classification", self.fmodel(weights, x, training=True), y)
            return loss, accuracy

        (loss, accuracy), grads = functional.value_and_grad(loss_fn, self.fmodel.params(), has_aux=True)
        return grads, self.scores(loss, accuracy)

    def set_supervised_holdout(self, images: Any, labels: Any, to_float: Callable[[Any], Any]) -> None:
        """Keeps the held-out training images (never in a training batch) to score the classifier on at the end.

        Called by the runner when it builds the training sampler.

        Args:
            images: The held-out images as the dataset stores them ``[m, *input_shape]``.
            labels: Their class indices in the training split ``[m]`` (the head's classes).
            to_float: The dataset's conversion to scaled ``float32`` inputs.
        """
        self._holdout = (images, np.asarray(labels, dtype=np.int64).reshape(-1), to_float)

    def set_supervised_test(self, images: Any, labels: Any, to_float: Callable[[Any], Any]) -> None:
        """Keeps a supervised-mode dataset's test split (e.g. MNIST's official test images) to score on at the end.

        Called by the runner when the dataset has ``supervised=True`` (every split holds the training classes).

        Args:
            images: The test images as the dataset stores them ``[m, *input_shape]``.
            labels: Their class indices ``[m]`` (the same classes as the head's).
            to_float: The dataset's conversion to scaled ``float32`` inputs.
        """
        self._test = (images, np.asarray(labels, dtype=np.int64).reshape(-1), to_float)

    def _score(self, images: Any, labels: np.ndarray, to_float: Callable[[Any], Any]) -> dict[str, Any]:
        """Softmax-head accuracy on ``images``, scored in chunks of ``holdout_chunk`` (bounds memory)."""
        classes = int(self.model.output_shape[-1])
        correct = 0
        hits = np.zeros(classes, dtype=np.int64)
        totals = np.bincount(labels, minlength=classes)[:classes]
        for start in range(0, len(labels), self.holdout_chunk):
            x = np.asarray(to_float(images[start:start + self.holdout_chunk]), dtype=np.float32)
            logits = ops.convert_to_numpy(self.model(x, training=False))
            chunk = labels[start:start + self.holdout_chunk]
            right = logits.argmax(axis=-1) == chunk
            correct += int(np.sum(right))
            hits += np.bincount(chunk[right], minlength=classes)[:classes]
        per_class = [float(h / t) if t else None for h, t in zip(hits, totals)]
        return {"accuracy": correct / len(labels), "correct": correct, "images": int(len(labels)),
                "classes": classes, "chance": 1.0 / classes, "per_class": per_class}

    def holdout_accuracy(self) -> dict[str, Any] | None:
        """Scores the classifier on the held-out training images; ``None`` when none were held out.

        Returns:
            ``accuracy`` (fraction correct), ``correct``, ``images``, ``classes`` (training classes, the
            head's outputs), ``held_out_classes`` (classes among the held-out images), ``chance``
            (``1 / classes``), ``per_class`` (accuracy per head class, ``None`` for a class with no image) and
            ``fraction`` (the ``holdout_fraction`` parameter).
        """
        if self._holdout is None or len(self._holdout[1]) == 0:
            return None
        images, labels, to_float = self._holdout
        return {**self._score(images, labels, to_float), "held_out_classes": int(len(np.unique(labels))),
                "fraction": self.supervised_holdout_fraction}

    def test_accuracy(self) -> dict[str, Any] | None:
        """Scores the classifier on a supervised-mode dataset's test split; ``None`` when the runner gave none.

        Returns:
            ``accuracy`` (fraction correct over all classes), ``correct``, ``images``, ``classes``,
            ``test_classes`` (classes among the test images), ``chance`` (``1 / classes``) and ``per_class``
            (accuracy per class, ``None`` for a class with no test image).
        """
        if self._test is None or len(self._test[1]) == 0:
            return None
        images, labels, to_float = self._test
        return {**self._score(images, labels, to_float), "test_classes": int(len(np.unique(labels)))}

    def report_data(self) -> dict[str, Any] | None:
        """The report's data (plugin API 1.2): ``{"test": test_accuracy()}`` on a supervised-mode dataset,
        ``{"holdout": holdout_accuracy()}`` with held-out training images, or ``None`` with neither."""
        data = {name: value for name, value in (("test", self.test_accuracy()), ("holdout", self.holdout_accuracy()))
                if value is not None}
        return data or None

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
            loss, accuracy = loss_and_metric("classification", logits, tqy)
            return loss, accuracy, logits

        losses, accuracies, predictions = ops.map(one_task, (sx, sy, qx, qy))
        return {"loss": losses, "accuracy": accuracies, "predictions": predictions}
