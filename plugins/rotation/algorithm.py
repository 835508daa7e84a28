"""Rotation pre-training, RotNet (Gidaris, Singh and Komodakis 2018, "Unsupervised Representation Learning by
Predicting Image Rotations"), evaluated few-shot on its frozen features.

Pre-training: each training image ``X`` (its class label ignored) is rotated by ``y * 90`` degrees for each of
the ``K = 4`` transformations ``g(.|y)``, ``y = 0..3``, and the network ``F`` (the run's backbone followed by a
linear head with 4 outputs) is trained to recognise which one was applied, minimising (eq. 1-2)

    loss(X_i, theta) = -1/K sum_y log F^y(g(X_i|y) | theta),

averaged over the batch. The paper feeds all four rotations of an image in the same batch (Section 4), as here,
and trains with SGD (Nesterov momentum 0.9, weight decay 5e-4, learning rate 0.1 divided by 5 three times).

Few-shot evaluation: the backbone is frozen (batch norm on its running moments) and each episode is scored by
nearest class centroid in feature space (squared Euclidean, as ProtoNets) or by a linear head fitted on the
support features only (a linear probe, as the paper's non-linear/linear classifiers on frozen features).
"""

from __future__ import annotations

import math
from typing import Any

import keras
import numpy as np
from keras import ops

from metalab.api import functional
from metalab.api.algorithms import MetaAlgorithm
from metalab.api.episodic import loss_and_metric, prototype_logits
from metalab.api import TaskBatch, TaskSpec

#: The rotations predicted, in degrees counter-clockwise; the class of a rotation is its index.
ANGLES = (0, 90, 180, 270)
#: Decay of the moving average of the per-angle training accuracy shown in the report.
EMA_DECAY = 0.9
#: Held-out images kept from the latest evaluation (for the report's rotation accuracy on unseen classes).
HELDOUT_IMAGES = 64
#: Seed of the linear probe's initialisation: every episode starts from the same draw.
PROBE_SEED = 1234


def rotations(x: Any) -> tuple[Any, Any]:
    """Returns the four rotations of a batch of images and their rotation labels.

    Args:
        x: ``[N, H, W, C]`` images with ``H == W``.

    Returns:
        ``(images [4N, H, W, C], labels [4N])``: all images at 0 degrees, then all at 90, 180 and 270 degrees
        (counter-clockwise), labelled 0, 1, 2, 3.
    """
    n = x.shape[0]
    rotated = [x] + [ops.rot90(x, k=k, axes=(1, 2)) for k in (1, 2, 3)]
    labels = ops.repeat(ops.arange(len(ANGLES), dtype="int32"), n)
    return ops.concatenate(rotated, axis=0), labels


class RotationPretraining(MetaAlgorithm):
    """RotNet pre-training on the training split's images, then few-shot scoring on the frozen backbone.

    Args:
        params: A validated ``RotationParams``.
        task: What the tasks look like; square images ``(H, H, C)``.

    Raises:
        ValueError: If the inputs are not square images.
    """

    #: Trained on mini-batches of the training split (plugin API 1.2); the class labels are not used.
    batch_kind = "supervised"

    def __init__(self, params: Any, task: TaskSpec):
        shape = tuple(int(s) for s in task.input_shape)
        if len(shape) != 3 or shape[0] != shape[1]:
            raise ValueError(
                "Rotation pre-training rotates images by multiples of 90 degrees, so it needs square images of "
                f"shape (H, H, C). Received: input_shape={task.input_shape}"
            )
        super().__init__(params, task)
        self.backbone = task.make_backbone()
        self.model = keras.Sequential(
            [keras.Input(shape), self.backbone, keras.layers.Dense(len(ANGLES), name="head")], name="rotnet"
        )
        self.fmodel = functional.FunctionalModel(self.model)
        self.fbackbone = functional.FunctionalModel(self.backbone)
        self.feature_dim = int(self.backbone.output_shape[-1])
        # Training bookkeeping for the report; checkpointed with the weights so a resumed run reports the same.
        self.steps_taken = keras.Variable(0, dtype="int64", trainable=False, name="steps_taken")
        self.angle_accuracy_ema = keras.Variable(np.zeros(len(ANGLES), np.float32), trainable=False,
                                                 name="angle_accuracy_ema")
        # The latest evaluated episode's images (held-out classes): not training state, so not checkpointed.
        self._heldout_count = min(HELDOUT_IMAGES, task.ways * (task.shots + task.queries))
        self.heldout_images = keras.Variable(np.zeros((self._heldout_count, *shape), np.float32), trainable=False,
                                             name="heldout_images")
        self.heldout_filled = keras.Variable(False, dtype="bool", trainable=False, name="heldout_filled")
        self.track(self.model)
        self.keep(self.steps_taken, self.angle_accuracy_ema)

    def make_optimizer(self) -> keras.optimizers.Optimizer:
        """Returns SGD with Nesterov momentum 0.9 (or Adam), with weight decay and the paper's learning-rate drops."""
        config = self.config
        lr: Any = float(config.lr)
        if config.lr_drops and self.task.total_steps >= 4:
            total = int(self.task.total_steps)
            boundaries = [int(total * f) for f in (0.3, 0.6, 0.8)]
            lr = keras.optimizers.schedules.PiecewiseConstantDecay(
                boundaries, [float(config.lr) / 5**i for i in range(4)]
            )
        decay = float(config.weight_decay) or None
        if config.optimizer == "adam":
            return keras.optimizers.Adam(learning_rate=lr, weight_decay=decay)
        return keras.optimizers.SGD(learning_rate=lr, momentum=0.9, nesterov=True, weight_decay=decay)

    def meta_gradients(self, batch: TaskBatch) -> tuple[list[Any], dict[str, Any]]:
        """Returns the rotation-prediction cross-entropy gradient on all four rotations of the batch's images.

        The batch's class labels are ignored. Also moves batch-norm running moments (used by the frozen
        backbone at evaluation) and the per-angle accuracy average shown in the report.

        Returns:
            The gradients and ``loss`` and ``accuracy`` (of the rotation prediction).
        """
        x, y = rotations(self.flat_inputs(batch, self.model.compute_dtype))

        def loss_fn(weights):
            logits, state = self.fmodel.call_with_state(weights, x, training=True)
            loss, accuracy = loss_and_metric("classification", logits, y)
            return loss, (accuracy, logits, state)

        (loss, (accuracy, logits, state)), grads = functional.value_and_grad(loss_fn, self.fmodel.params(),
                                                                            has_aux=True)
        self.fmodel.set_state(functional.stop_gradient(state))
        hits = ops.cast(ops.equal(ops.cast(ops.argmax(logits, axis=-1), "int32"), y), "float32")
        per_angle = ops.mean(ops.reshape(functional.stop_gradient(hits), (len(ANGLES), -1)), axis=1)
        self.angle_accuracy_ema.assign(EMA_DECAY * self.angle_accuracy_ema + (1.0 - EMA_DECAY) * per_angle)
        self.steps_taken.assign_add(1)
        return grads, self.scores(loss, accuracy)

    # -- few-shot evaluation on frozen features ------------------------------------------------------------

    def features(self, x: Any) -> Any:
        """Frozen backbone features of ``x`` (batch norm on its running moments, no gradient)."""
        weights = functional.stop_gradient(self.fbackbone.params())
        return ops.stop_gradient(self.fbackbone(weights, x, training=False, state=self.fbackbone.state()))

    def linear_probe(self, support_features: Any, support_y: Any, query_features: Any) -> Any:
        """Fits a linear head on the support features by full-batch SGD (momentum 0.9, L2 on the weights).

        Returns:
            The query logits ``[queries, ways]`` of the fitted head.
        """
        config = self.config
        steps, ways = int(config.probe_steps), self.task.ways
        dtype = support_features.dtype
        # convert_to_tensor, not cast: TensorFlow's cast of a Python float goes through float32.
        lr = ops.convert_to_tensor(config.probe_lr, dtype=dtype)
        decay = ops.convert_to_tensor(config.probe_weight_decay, dtype=dtype)
        bound = 1.0 / math.sqrt(self.feature_dim)
        head = [keras.random.uniform((self.feature_dim, ways), -bound, bound, dtype=dtype, seed=PROBE_SEED),
                ops.zeros((ways,), dtype=dtype)]

        def support_loss(h):
            return loss_and_metric("classification", ops.matmul(support_features, h[0]) + h[1], support_y)[0]

        def step(i, carry):
            h, momentum = carry
            _, grads = functional.value_and_grad(support_loss, h)
            grads = [grads[0] + decay * h[0], grads[1]]
            momentum = [0.9 * m + g for m, g in zip(momentum, grads)]
            return [w - lr * m for w, m in zip(h, momentum)], momentum

        head, _ = ops.fori_loop(0, steps, step, (head, [ops.zeros_like(w) for w in head]))
        return ops.matmul(query_features, head[0]) + head[1]

    def evaluate(self, batch: TaskBatch) -> dict[str, Any]:
        """Scores each episode on the frozen features by nearest centroid or a linear probe.

        Also keeps the first episode's images for the report's held-out rotation accuracy.

        Returns:
            ``loss`` ``[T]``, ``accuracy`` ``[T]`` and ``predictions`` (query logits ``[T, queries, ways]``).
        """
        dtype = self.model.compute_dtype
        sx = ops.convert_to_tensor(batch.support_x, dtype=dtype)
        qx = ops.convert_to_tensor(batch.query_x, dtype=dtype)
        sy = ops.convert_to_tensor(batch.support_y, dtype="int32")
        qy = ops.convert_to_tensor(batch.query_y, dtype="int32")
        self.heldout_images.assign(ops.concatenate([sx[0], qx[0]], axis=0)[: self._heldout_count])
        self.heldout_filled.assign(True)
        ways = self.task.ways

        def one_task(arrays):
            tsx, tsy, tqx, tqy = arrays
            n_support = tsx.shape[0]
            features = self.features(ops.concatenate([tsx, tqx], axis=0))
            support, query = features[:n_support], features[n_support:]
            if self.config.probe == "linear":
                logits = self.linear_probe(support, tsy, query)
            else:
                logits = prototype_logits(support, tsy, query, ways)
            loss, accuracy = loss_and_metric("classification", logits, tqy)
            return loss, accuracy, logits

        losses, accuracies, predictions = ops.map(one_task, (sx, sy, qx, qy))
        return self.scores(losses, accuracies, predictions=predictions)

    # -- report --------------------------------------------------------------------------------------------

    def rotation_accuracy(self, images: Any) -> np.ndarray:
        """Per-angle rotation-prediction accuracy ``[4]`` of the trained network on ``images`` (inference mode)."""
        x, y = rotations(ops.convert_to_tensor(images, dtype=self.model.compute_dtype))
        logits = self.fmodel(self.fmodel.params(), x, training=False)
        hits = np.asarray(ops.convert_to_numpy(ops.argmax(logits, axis=-1))) == np.asarray(ops.convert_to_numpy(y))
        return hits.reshape(len(ANGLES), -1).mean(axis=1)

    def report_data(self) -> dict[str, Any]:
        """Rotation-prediction accuracy per angle: on training batches (moving average) and on held-out images.

        Returns:
            ``{"angles", "steps", "train_per_angle", "heldout_per_angle" (or None), "heldout_images", "probe"}``.
            The training figures are a moving average (decay 0.9) over the latest steps, bias-corrected; the
            held-out ones are measured now on the images of the latest evaluated episode (meta-test classes when
            the run evaluates at the end).
        """
        steps = int(ops.convert_to_numpy(self.steps_taken))
        ema = np.asarray(ops.convert_to_numpy(self.angle_accuracy_ema), dtype=np.float64)
        train = ema / (1.0 - EMA_DECAY**steps) if steps else None
        heldout = None
        if bool(ops.convert_to_numpy(self.heldout_filled)):
            heldout = self.rotation_accuracy(self.heldout_images)
        return {
            "angles": list(ANGLES), "steps": steps, "probe": self.config.probe,
            "train_per_angle": None if train is None else [float(v) for v in train],
            "heldout_per_angle": None if heldout is None else [float(v) for v in heldout],
            "heldout_images": self._heldout_count if heldout is not None else 0,
        }
