"""Baseline and Baseline++ (Chen, Liu, Kira, Wang and Huang 2019, "A Closer Look at Few-shot Classification").

Training stage: the backbone ``f_theta`` and a classifier ``C(.|W_b)`` over all ``c`` base classes are trained
with cross-entropy on ordinary mini-batches of the training split (the runner's supervised batches). Baseline's
classifier is linear, ``W_b^T f_theta(x)``; Baseline++'s gives each class a weight vector ``w_j`` and scores
by cosine similarity, ``s_j = scale * cos(f_theta(x), w_j)`` (Section 3.2), which reduces intra-class
variation.

Fine-tuning stage (evaluation): for each test episode the backbone is frozen, and a new classifier ``W_n`` over
the episode's ``ways`` classes, of the same kind, is trained on the support features only. The paper uses SGD
(momentum 0.9, learning rate 0.01, weight decay 0.001) with batches of 4 for 100 epochs; here the head takes
``finetune_steps`` full-batch steps on the (at most a few dozen) support features, inside one compiled loop.
"""

from __future__ import annotations

import math
from typing import Any

import keras
from keras import ops

from metalab.api import functional
from metalab.api.algorithms import MetaAlgorithm
from metalab.api.episodic import loss_and_metric
from metalab.api import TaskBatch, TaskSpec

#: Seed of the new head's initialisation: every episode starts from the same draw, so scores are reproducible.
HEAD_SEED = 1234


class CosineClassifier(keras.layers.Layer):
    """Baseline++'s classifier: ``scale * cos(x, w_j)`` for each class weight vector ``w_j`` (no bias).

    Args:
        units: Number of classes.
        scale: Multiplies the cosine similarities (the softmax's inverse temperature).
    """

    def __init__(self, units: int, scale: float, **kwargs: Any):
        super().__init__(**kwargs)
        self.units = int(units)
        self.scale = float(scale)

    def build(self, input_shape: tuple[int, ...]) -> None:
        self.kernel = self.add_weight(
            shape=(int(input_shape[-1]), self.units), initializer="glorot_uniform", name="kernel"
        )

    def call(self, x: Any) -> Any:
        return cosine_logits(x, self.kernel, self.scale)

    def get_config(self) -> dict[str, Any]:
        return {**super().get_config(), "units": self.units, "scale": self.scale}


def cosine_logits(x: Any, kernel: Any, scale: float) -> Any:
    """Returns ``scale * cos(x_i, kernel[:, j])`` as ``[N, classes]`` logits."""
    x = ops.normalize(x, axis=-1, epsilon=1e-6)
    kernel = ops.normalize(kernel, axis=0, epsilon=1e-6)
    return ops.convert_to_tensor(scale, dtype=x.dtype) * ops.matmul(x, kernel)


class Baseline(MetaAlgorithm):
    """The fine-tuning baseline: supervised pre-training, then a new head per episode on frozen features.

    Args:
        params: A validated ``BaselineParams``.
        task: What the tasks look like; ``num_train_classes >= 2``.

    Raises:
        ValueError: If the number of training classes is unknown.
    """

    #: Trained on mini-batches of the training split with global labels (plugin API 1.2).
    batch_kind = "supervised"

    def __init__(self, params: Any, task: TaskSpec):
        if int(getattr(task, "num_train_classes", 0)) < 2:
            raise ValueError(
                "The Baseline pre-trains a classifier over the training classes, so it needs "
                f"task.num_train_classes >= 2. Received: num_train_classes={getattr(task, 'num_train_classes', None)!r}"
            )
        super().__init__(params, task)
        self.backbone = task.make_backbone()
        classes = int(task.num_train_classes)
        if params.head == "cosine":
            head: keras.layers.Layer = CosineClassifier(classes, params.cosine_scale, name="head")
        else:
            head = keras.layers.Dense(classes, name="head")
        self.model = keras.Sequential([keras.Input(tuple(task.input_shape)), self.backbone, head], name="baseline")
        self.fmodel = functional.FunctionalModel(self.model)
        self.fbackbone = functional.FunctionalModel(self.backbone)
        self.feature_dim = int(self.backbone.output_shape[-1])
        self.track(self.model)  # the outer optimizer is the base class's Adam at lr (the paper's pre-training)

    def meta_gradients(self, batch: TaskBatch) -> tuple[list[Any], dict[str, Any]]:
        """Returns the cross-entropy gradient over a supervised batch (support and query halves together).

        Also moves batch-norm running moments, which the frozen backbone uses at evaluation.
        """
        x, y = self.flat_inputs(batch, self.model.compute_dtype), self.flat_labels(batch)

        def loss_fn(weights):
            logits, state = self.fmodel.call_with_state(weights, x, training=True)
            loss, accuracy = loss_and_metric("classification", logits, y)
            return loss, (accuracy, state)

        (loss, (accuracy, state)), grads = functional.value_and_grad(loss_fn, self.fmodel.params(), has_aux=True)
        self.fmodel.set_state(functional.stop_gradient(state))
        return grads, self.scores(loss, accuracy)

    # -- fine-tuning a new head ----------------------------------------------------------------------------

    def _head_logits(self, head: list[Any], features: Any) -> Any:
        if self.config.head == "cosine":
            return cosine_logits(features, head[0], self.config.cosine_scale)
        return ops.matmul(features, head[0]) + head[1]

    def _initial_head(self, dtype: str) -> list[Any]:
        # PyTorch's default Linear initialisation, as in the paper's code: U(-1/sqrt(d), 1/sqrt(d)).
        bound = 1.0 / math.sqrt(self.feature_dim)
        kernel = keras.random.uniform((self.feature_dim, self.task.ways), -bound, bound, dtype=dtype, seed=HEAD_SEED)
        return [kernel, ops.zeros((self.task.ways,), dtype=dtype)]

    def finetune(self, support_features: Any, support_y: Any, query_features: Any, query_y: Any) -> tuple[Any, ...]:
        """Trains a new head on one episode's support features; returns ``(loss, accuracy, curve, logits)``.

        ``curve[i]`` is the query accuracy after ``i`` steps, ``i = 0..finetune_steps``.
        """
        config = self.config
        steps = int(config.finetune_steps)
        dtype = support_features.dtype
        # convert_to_tensor, not cast: TensorFlow's cast of a Python float goes through float32.
        lr = ops.convert_to_tensor(config.finetune_lr, dtype=dtype)
        decay = ops.convert_to_tensor(config.finetune_weight_decay, dtype=dtype)
        adam = config.finetune_optimizer == "adam"

        def support_loss(head):
            return loss_and_metric("classification", self._head_logits(head, support_features), support_y)[0]

        def query_accuracy(head):
            return loss_and_metric("classification", self._head_logits(head, query_features), query_y)[1]

        def step(i, carry):
            head, first, second, curve = carry
            curve = curve + query_accuracy(head) * ops.one_hot(i, steps + 1, dtype=dtype)
            _, grads = functional.value_and_grad(support_loss, head)
            # Weight decay on the weights, not the bias (as an L2 term in the SGD update).
            grads = [grads[0] + decay * head[0], *grads[1:]]
            if adam:
                t = ops.cast(i + 1, dtype)
                first = [0.9 * m + 0.1 * g for m, g in zip(first, grads)]
                second = [0.999 * v + 0.001 * ops.square(g) for v, g in zip(second, grads)]
                correction = ops.sqrt(1.0 - ops.power(0.999, t)) / (1.0 - ops.power(0.9, t))
                head = [w - lr * correction * m / (ops.sqrt(v) + 1e-8) for w, m, v in zip(head, first, second)]
            else:
                first = [0.9 * m + g for m, g in zip(first, grads)]
                head = [w - lr * m for w, m in zip(head, first)]
            return head, first, second, curve

        head = self._initial_head(dtype)
        zeros = [ops.zeros_like(w) for w in head]
        curve = ops.zeros((steps + 1,), dtype=dtype)
        if steps:
            head, _, _, curve = ops.fori_loop(0, steps, step, (head, zeros, list(zeros), curve))
        logits = self._head_logits(head, query_features)
        loss, accuracy = loss_and_metric("classification", logits, query_y)
        curve = curve + accuracy * ops.one_hot(steps, steps + 1, dtype=dtype)
        return loss, accuracy, curve, logits

    def evaluate(self, batch: TaskBatch) -> dict[str, Any]:
        """Trains a new head on each episode's support features (frozen backbone) and scores its queries.

        Returns:
            ``loss`` ``[T]``, ``accuracy`` ``[T]``, ``curve`` ``[T, finetune_steps + 1]`` (query accuracy after
            0..finetune_steps head updates) and ``predictions`` (query logits ``[T, queries, ways]``).
        """
        dtype = self.model.compute_dtype
        sx = ops.convert_to_tensor(batch.support_x, dtype=dtype)
        qx = ops.convert_to_tensor(batch.query_x, dtype=dtype)
        sy = ops.convert_to_tensor(batch.support_y, dtype="int32")
        qy = ops.convert_to_tensor(batch.query_y, dtype="int32")
        weights = functional.stop_gradient(self.fbackbone.params())
        state = self.fbackbone.state()

        def one_task(arrays):
            tsx, tsy, tqx, tqy = arrays
            n_support = tsx.shape[0]
            # Frozen backbone: batch norm on its running moments, features computed once per episode.
            features = self.fbackbone(weights, ops.concatenate([tsx, tqx], axis=0), training=False, state=state)
            features = ops.stop_gradient(features)
            return self.finetune(features[:n_support], tsy, features[n_support:], tqy)

        losses, accuracies, curves, predictions = ops.map(one_task, (sx, sy, qx, qy))
        return {"loss": losses, "accuracy": accuracies, "curve": curves, "predictions": predictions}
