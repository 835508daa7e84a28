"""DCGAN (Radford, Metz and Chintala 2016), with few-shot evaluation on the discriminator's features.

The generator ``G`` maps noise ``z ~ N(0, I)`` to an image; the discriminator ``D`` is the run's backbone
followed by one logit unit. Both play the minimax game of Goodfellow et al. 2014 (eq. 1),

    min_G max_D  E_x[log D(x)] + E_z[log(1 - D(G(z)))],

with the non-saturating generator loss ``-log D(G(z))`` used in practice. At each step the discriminator's
gradient comes from its own loss on a batch of real images and a batch of generated ones (the generator held
fixed), and the generator's gradient from its own loss (the discriminator held fixed), both at the current
parameters; one Adam optimizer (learning rate 0.0002, beta_1 = 0.5, as the paper) applies them together.
This is the simultaneous form of the paper's alternating updates (as in TensorFlow's DCGAN tutorial).

DCGAN's generator (Section 3): a dense projection of ``z`` reshaped to a small feature map, then fractionally
strided (transposed) convolutions with batch norm and ReLU, and the output activation bounded; weights drawn from
``N(0, 0.02)``. The data here are in [0, 1], so the output is a sigmoid (the paper's tanh on [-1, 1], rescaled).
The discriminator is whatever backbone the run names (the paper's is a strided LeakyReLU convnet).

Few-shot evaluation (the paper's Section 5.1 uses the discriminator's features for CIFAR-10 and SVHN): each
episode is scored by nearest class centroid on the frozen backbone features (batch norm on running moments).
"""

from __future__ import annotations

import math
from typing import Any

import keras
import numpy as np
from keras import ops

from metalab.api import functional
from metalab.api.algorithms import MetaAlgorithm
from metalab.api.data import to_uint8
from metalab.api.episodic import prototype_logits
from metalab.api import TaskBatch, TaskSpec

#: Snapshots of generator samples kept over training (at evenly spaced steps).
SNAPSHOTS = 8
#: Samples per snapshot, all from the same fixed noise vectors.
SAMPLES = 8
#: Seed of the fixed noise vectors of the snapshots.
SAMPLE_SEED = 2016


def _bce(logits: Any, target: float) -> Any:
    """Mean binary cross-entropy of ``logits`` against a constant label ``target`` (0 or 1), computed stably."""
    return ops.mean(ops.maximum(logits, 0.0) - logits * target + ops.log1p(ops.exp(-ops.abs(logits))))


def build_generator(params: Any, input_shape: tuple[int, ...]) -> keras.Model:
    """DCGAN's generator for ``input_shape``: transposed convolutions for images whose sides divide by 4, else an MLP.

    Args:
        params: A ``GANParams`` (``latent_dim``, ``generator``, ``generator_filters``).
        input_shape: Shape of one real input.

    Returns:
        A built ``keras.Sequential`` mapping ``[N, latent_dim]`` to ``[N, *input_shape]`` in [0, 1].

    Raises:
        ValueError: If ``generator="conv"`` and the inputs are not images with sides divisible by 4.
    """
    init = keras.initializers.RandomNormal(0.0, 0.02)
    filters = int(params.generator_filters)
    convolutional = len(input_shape) == 3 and input_shape[0] % 4 == 0 and input_shape[1] % 4 == 0
    if params.generator == "conv" and not convolutional:
        raise ValueError(
            "The convolutional generator doubles height and width twice, so it needs images (H, W, C) with H and W "
            f"divisible by 4; use generator='dense' or 'auto'. Received: input_shape={input_shape}"
        )
    layers: list[Any] = [keras.Input((int(params.latent_dim),))]
    if convolutional and params.generator != "dense":
        height, width, channels = input_shape
        layers += [
            keras.layers.Dense((height // 4) * (width // 4) * 2 * filters, use_bias=False, kernel_initializer=init,
                               name="project"),
            keras.layers.BatchNormalization(name="bn0"),
            keras.layers.ReLU(name="relu0"),
            keras.layers.Reshape((height // 4, width // 4, 2 * filters), name="reshape"),
            keras.layers.Conv2DTranspose(filters, 5, strides=2, padding="same", use_bias=False,
                                         kernel_initializer=init, name="deconv1"),
            keras.layers.BatchNormalization(name="bn1"),
            keras.layers.ReLU(name="relu1"),
            keras.layers.Conv2DTranspose(channels, 5, strides=2, padding="same", kernel_initializer=init,
                                         activation="sigmoid", name="deconv2"),
        ]
    else:
        hidden = 4 * filters
        layers += [
            keras.layers.Dense(hidden, use_bias=False, kernel_initializer=init, name="dense0"),
            keras.layers.BatchNormalization(name="bn0"),
            keras.layers.ReLU(name="relu0"),
            keras.layers.Dense(hidden, use_bias=False, kernel_initializer=init, name="dense1"),
            keras.layers.BatchNormalization(name="bn1"),
            keras.layers.ReLU(name="relu1"),
            keras.layers.Dense(math.prod(input_shape), activation="sigmoid", kernel_initializer=init, name="output"),
            keras.layers.Reshape(tuple(input_shape), name="reshape"),
        ]
    return keras.Sequential(layers, name="generator")


class DCGAN(MetaAlgorithm):
    """A DCGAN whose discriminator is the run's backbone plus a logit, evaluated few-shot on the backbone features.

    Args:
        params: A validated ``GANParams``.
        task: What the tasks look like (the spec declares classification only; inputs in [0, 1]).

    Raises:
        ValueError: If the generator does not fit the input shape.
    """

    #: Trained on mini-batches of the training split (plugin API 1.2); the class labels are not used.
    batch_kind = "supervised"

    def __init__(self, params: Any, task: TaskSpec):
        super().__init__(params, task)
        self.latent_dim = int(params.latent_dim)
        shape = tuple(int(s) for s in task.input_shape)
        self.input_shape = shape
        self.backbone = task.make_backbone()
        self.discriminator = keras.Sequential(
            [keras.Input(shape), self.backbone,
             keras.layers.Dense(1, kernel_initializer=keras.initializers.RandomNormal(0.0, 0.02), name="head")],
            name="discriminator",
        )
        self.generator = build_generator(params, shape)
        # The core report's embedding figure draws the features of `model` minus its "head".
        self.model = self.discriminator
        self.fdisc = functional.FunctionalModel(self.discriminator)
        self.fbackbone = functional.FunctionalModel(self.backbone)
        self.fgen = functional.FunctionalModel(self.generator)
        self._n_disc = len(self.fdisc.trainable_variables)
        self.seed_generator = keras.random.SeedGenerator(name="gan_noise")
        # Samples over training, from fixed noise, recorded inside the compiled step every `interval` steps.
        self.interval = max(1, math.ceil(max(int(task.total_steps), 1) / SNAPSHOTS))
        self.fixed_noise = np.random.default_rng(SAMPLE_SEED).standard_normal((SAMPLES, self.latent_dim)).astype(
            np.float32
        )
        self.steps_taken = keras.Variable(0, dtype="int64", trainable=False, name="steps_taken")
        self.snapshots = keras.Variable(np.zeros((SNAPSHOTS, SAMPLES, *shape), np.float32), trainable=False,
                                        name="sample_snapshots")
        self.snapshot_steps = keras.Variable(np.full((SNAPSHOTS,), -1, np.int64), trainable=False,
                                             name="snapshot_steps")
        # The discriminator's weights, then the generator's; the noise state and the report's samples are
        # checkpointed so that a resumed run draws the same noise and shows the same samples.
        self.track(self.discriminator, self.generator)
        self.keep(self.seed_generator.state, self.steps_taken, self.snapshots, self.snapshot_steps)

    def make_optimizer(self) -> keras.optimizers.Optimizer:
        """Returns Adam with the paper's learning rate 0.0002 and beta_1 = 0.5, for both players."""
        return keras.optimizers.Adam(learning_rate=self.learning_rate(), beta_1=self.config.beta_1)

    def generate(self, z: Any, *, training: bool = True) -> Any:
        """Generator images for noise ``z`` under the current weights (batch norm on the batch's statistics)."""
        return self.fgen(self.fgen.params(), ops.convert_to_tensor(z), training=training)

    def meta_gradients(self, batch: TaskBatch) -> tuple[list[Any], dict[str, Any]]:
        """Returns both players' gradients, each from its own loss, aligned with ``trainable_variables``.

        Also moves the batch-norm running moments, and every ``interval`` steps records generator samples of the
        fixed noise (the report's samples over training).

        Returns:
            The gradients and ``loss`` (the discriminator's: the features evaluated come from it),
            ``generator_loss`` and ``accuracy`` (the discriminator's real/fake accuracy on the step's batches).
        """
        dtype = self.discriminator.compute_dtype
        real = self.flat_inputs(batch, dtype)
        n = real.shape[0]
        z = keras.random.normal((n, self.latent_dim), dtype=dtype, seed=self.seed_generator)
        disc_params, gen_params = self.fdisc.params(), self.fgen.params()

        fake, gen_state = self.fgen.call_with_state(gen_params, z, training=True)
        fake = ops.stop_gradient(fake)

        def discriminator_loss(weights):
            real_logits, state = self.fdisc.call_with_state(weights, real, training=True)
            fake_logits, state = self.fdisc.call_with_state(weights, fake, training=True, state=state)
            hits = ops.concatenate([ops.cast(real_logits > 0, dtype), ops.cast(fake_logits <= 0, dtype)], axis=0)
            return _bce(real_logits, 1.0) + _bce(fake_logits, 0.0), (ops.mean(hits), state)

        def generator_loss(weights):
            images = self.fgen(weights, z, training=True)
            # The discriminator is held fixed here; its batch norm sees the fake batch alone, as in its own loss.
            return _bce(self.fdisc(functional.stop_gradient(disc_params), images, training=True), 1.0)

        (d_loss, (accuracy, disc_state)), d_grads = functional.value_and_grad(discriminator_loss, disc_params,
                                                                              has_aux=True)
        g_loss, g_grads = functional.value_and_grad(generator_loss, gen_params)
        self.fdisc.set_state(functional.stop_gradient(disc_state))
        self.fgen.set_state(functional.stop_gradient(gen_state))
        self._record_snapshot(gen_params)
        return list(d_grads) + list(g_grads), {"loss": d_loss, "generator_loss": g_loss, "accuracy": accuracy}

    def _record_snapshot(self, gen_params: list[Any]) -> None:
        # Written every step through a mask (no branch in the graph): cheap at SAMPLES images.
        step = ops.convert_to_tensor(self.steps_taken)
        slot = step // self.interval
        record = ops.logical_and(ops.equal(step % self.interval, 0), slot < SNAPSHOTS)
        mask = ops.logical_and(ops.equal(ops.arange(SNAPSHOTS, dtype="int64"), slot), record)
        samples = ops.stop_gradient(self.fgen(gen_params, ops.convert_to_tensor(self.fixed_noise), training=True))
        mask_images = ops.reshape(mask, (SNAPSHOTS,) + (1,) * (1 + len(self.input_shape)))
        # Variables read as tensors: JAX's ops refuse a Keras variable as an operand.
        snapshots = ops.convert_to_tensor(self.snapshots)
        self.snapshots.assign(ops.where(mask_images, ops.expand_dims(samples, 0), snapshots))
        self.snapshot_steps.assign(ops.where(mask, step, ops.convert_to_tensor(self.snapshot_steps)))
        self.steps_taken.assign_add(1)

    def features(self, x: Any) -> Any:
        """The discriminator's backbone features of ``x`` (inference mode, no gradient): the few-shot features."""
        weights = functional.stop_gradient(self.fbackbone.params())
        return ops.stop_gradient(self.fbackbone(weights, x, training=False, state=self.fbackbone.state()))

    def evaluate(self, batch: TaskBatch) -> dict[str, Any]:
        """Scores each episode by nearest class centroid on the discriminator's features.

        Returns:
            ``loss`` ``[T]``, ``accuracy`` ``[T]`` and ``predictions`` (query logits ``[T, queries, ways]``).
        """
        dtype = self.discriminator.compute_dtype
        sx = ops.convert_to_tensor(batch.support_x, dtype=dtype)
        qx = ops.convert_to_tensor(batch.query_x, dtype=dtype)
        sy = ops.convert_to_tensor(batch.support_y, dtype="int32")
        qy = ops.convert_to_tensor(batch.query_y, dtype="int32")
        ways = self.task.ways

        def one_task(arrays):
            tsx, tsy, tqx, tqy = arrays
            n_support = tsx.shape[0]
            features = self.features(ops.concatenate([tsx, tqx], axis=0))
            logits = prototype_logits(features[:n_support], tsy, features[n_support:], ways)
            labels = ops.cast(tqy, "int32")
            loss = ops.mean(ops.sparse_categorical_crossentropy(labels, logits, from_logits=True))
            hits = ops.equal(ops.cast(ops.argmax(logits, axis=-1), "int32"), labels)
            return loss, ops.mean(ops.cast(hits, logits.dtype)), logits

        losses, accuracies, predictions = ops.map(one_task, (sx, sy, qx, qy))
        return self.scores(losses, accuracies, predictions=predictions)

    def report_data(self) -> dict[str, Any]:
        """Generator samples of the fixed noise over training, and now, as small ``uint8`` arrays.

        Returns:
            ``{"input_shape", "steps" [k], "snapshots" [k, SAMPLES, ...] uint8}``: the recorded snapshots in
            order of step (the samples at the start of step ``s``, i.e. after ``s`` updates), then the final
            generator's samples labelled with the number of steps taken.
        """
        steps = np.asarray(ops.convert_to_numpy(self.snapshot_steps))
        images = np.asarray(ops.convert_to_numpy(self.snapshots))
        taken = int(ops.convert_to_numpy(self.steps_taken))
        kept = [i for i in np.argsort(steps) if steps[i] >= 0 and steps[i] != taken]
        final = np.asarray(ops.convert_to_numpy(self.generate(self.fixed_noise)))
        return {
            "input_shape": list(self.input_shape),
            "steps": [int(steps[i]) for i in kept] + [taken],
            "snapshots": to_uint8(np.concatenate([images[kept], final[None]], axis=0)),
        }
