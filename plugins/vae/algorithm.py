"""The variational auto-encoder (Kingma and Welling 2014, "Auto-Encoding Variational Bayes"), evaluated few-shot.

The encoder ``q_phi(z|x) = N(z; mu, diag(sigma^2))`` is the run's backbone followed by a dense layer giving ``mu``
and ``log sigma^2``; the decoder ``p_theta(x|z)`` is an MLP (``decoder_hidden`` tanh units, as the paper's) with one
output per input value, reshaped to the input's shape: Bernoulli logits or a unit-variance Gaussian's mean.
Training maximises the SGVB estimator of the evidence lower bound with one sample per image (eq. 10):

    L(theta, phi; x) = -KL(q_phi(z|x) || N(0, I)) + log p_theta(x | z),   z = mu + sigma * eps,  eps ~ N(0, I),
    -KL = 1/2 sum_j (1 + log sigma_j^2 - mu_j^2 - sigma_j^2)                                   (Appendix B)

averaged over the batch (the loss logged is the negative ELBO per image, in nats). The class labels of the
training batches are ignored.

Few-shot evaluation: each episode is scored by nearest class centroid (squared Euclidean, as ProtoNets) on the
encoder means ``mu(x)`` (batch norm on its running moments).
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

#: Held-out images kept from the latest evaluation, and reconstructed in the report.
RECONSTRUCTIONS = 8
#: Samples from the prior shown in the report.
PRIOR_SAMPLES = 16
#: Seed of the prior samples in the report (the same codes for every run of a latent size).
REPORT_SEED = 2014


def gaussian_kl(mean: Any, log_var: Any) -> Any:
    """``KL(N(mean, exp(log_var)) || N(0, I))`` per row, summed over the last axis (Appendix B of the paper)."""
    return -0.5 * ops.sum(1.0 + log_var - ops.square(mean) - ops.exp(log_var), axis=-1)


class VAE(MetaAlgorithm):
    """A VAE whose encoder is the run's backbone, trained on the training split's images without labels.

    Args:
        params: A validated ``VAEParams``.
        task: What the tasks look like (the spec declares classification only: evaluation is few-shot).
    """

    #: Trained on mini-batches of the training split (plugin API 1.2); the class labels are not used.
    batch_kind = "supervised"

    def __init__(self, params: Any, task: TaskSpec):
        super().__init__(params, task)
        self.latent_dim = int(params.latent_dim)
        shape = tuple(int(s) for s in task.input_shape)
        self.input_shape = shape
        self.backbone = task.make_backbone()
        # Named "head" so that the core report's embedding figure shows the backbone's features.
        self.encoder = keras.Sequential(
            [keras.Input(shape), self.backbone, keras.layers.Dense(2 * self.latent_dim, name="head")], name="encoder"
        )
        self.decoder = keras.Sequential(
            [
                keras.Input((self.latent_dim,)),
                keras.layers.Dense(int(params.decoder_hidden), activation="tanh", name="hidden"),
                keras.layers.Dense(math.prod(shape), name="output"),
                keras.layers.Reshape(shape, name="reshape"),
            ],
            name="decoder",
        )
        self.model = self.encoder
        self.fencoder = functional.FunctionalModel(self.encoder)
        self.fdecoder = functional.FunctionalModel(self.decoder)
        self._n_encoder = len(self.fencoder.trainable_variables)
        self.seed_generator = keras.random.SeedGenerator(name="vae_noise")
        # The latest evaluated episode's first images: not training state, so not checkpointed.
        self._held_out_count = min(RECONSTRUCTIONS, task.ways * task.queries)
        self.held_out = keras.Variable(np.zeros((self._held_out_count, *shape), np.float32), trainable=False,
                                       name="held_out_images")
        self.held_out_filled = keras.Variable(False, dtype="bool", trainable=False, name="held_out_filled")
        # The encoder's weights, then the decoder's, trained by the base class's Adam at lr; the noise generator's
        # state is checkpointed so that a resumed run draws the same noise.
        self.track(self.encoder, self.decoder)
        self.keep(self.seed_generator.state)

    def split_code(self, encoded: Any) -> tuple[Any, Any]:
        """Splits the encoder's output into ``(mean, log_var)``."""
        return encoded[..., : self.latent_dim], encoded[..., self.latent_dim :]

    def negative_log_likelihood(self, decoded: Any, x: Any) -> Any:
        """``-log p(x|z)`` per image, summed over the input's values (nats)."""
        axes = tuple(range(1, len(decoded.shape)))
        if self.config.likelihood == "bernoulli":
            # Stable Bernoulli cross-entropy with logits, valid for targets anywhere in [0, 1].
            nll = ops.maximum(decoded, 0.0) - decoded * x + ops.log1p(ops.exp(-ops.abs(decoded)))
            return ops.sum(nll, axis=axes)
        return ops.sum(0.5 * ops.square(x - decoded) + 0.5 * math.log(2 * math.pi), axis=axes)

    def decode_mean(self, z: Any) -> Any:
        """The decoder's mean image ``E[x|z]`` (sigmoid of the logits for a Bernoulli likelihood)."""
        decoded = self.fdecoder(self.fdecoder.params(), z, training=False)
        return ops.sigmoid(decoded) if self.config.likelihood == "bernoulli" else decoded

    def meta_gradients(self, batch: TaskBatch) -> tuple[list[Any], dict[str, Any]]:
        """Returns the gradient of the negative ELBO (one reparameterised sample per image) on the batch's images.

        Returns:
            The gradients and ``loss`` (negative ELBO per image), ``reconstruction`` (``-log p(x|z)``) and ``kl``.
        """
        dtype = self.encoder.compute_dtype
        x = self.flat_inputs(batch, dtype)
        eps = keras.random.normal((x.shape[0], self.latent_dim), dtype=dtype, seed=self.seed_generator)

        def loss_fn(params):
            encoder_params, decoder_params = params[: self._n_encoder], params[self._n_encoder :]
            encoded, state = self.fencoder.call_with_state(encoder_params, x, training=True)
            mean, log_var = self.split_code(encoded)
            z = mean + ops.exp(0.5 * log_var) * eps
            reconstruction = ops.mean(self.negative_log_likelihood(self.fdecoder(decoder_params, z), x))
            kl = ops.mean(gaussian_kl(mean, log_var))
            return reconstruction + kl, (reconstruction, kl, state)

        params = self.fencoder.params() + self.fdecoder.params()
        (loss, (reconstruction, kl, state)), grads = functional.value_and_grad(loss_fn, params, has_aux=True)
        self.fencoder.set_state(functional.stop_gradient(state))
        return grads, {"loss": loss, "reconstruction": reconstruction, "kl": kl}

    def encode_mean(self, x: Any) -> Any:
        """The encoder means ``mu(x)`` (inference mode, no gradient): the few-shot features."""
        weights = functional.stop_gradient(self.fencoder.params())
        encoded = self.fencoder(weights, x, training=False, state=self.fencoder.state())
        return ops.stop_gradient(self.split_code(encoded)[0])

    def evaluate(self, batch: TaskBatch) -> dict[str, Any]:
        """Scores each episode by nearest class centroid on the encoder means.

        Also keeps the first episode's first query images for the report's reconstructions.

        Returns:
            ``loss`` ``[T]``, ``accuracy`` ``[T]`` and ``predictions`` (query logits ``[T, queries, ways]``).
        """
        dtype = self.encoder.compute_dtype
        sx = ops.convert_to_tensor(batch.support_x, dtype=dtype)
        qx = ops.convert_to_tensor(batch.query_x, dtype=dtype)
        sy = ops.convert_to_tensor(batch.support_y, dtype="int32")
        qy = ops.convert_to_tensor(batch.query_y, dtype="int32")
        self.held_out.assign(qx[0, : self._held_out_count])
        self.held_out_filled.assign(True)
        ways = self.task.ways

        def one_task(arrays):
            tsx, tsy, tqx, tqy = arrays
            n_support = tsx.shape[0]
            features = self.encode_mean(ops.concatenate([tsx, tqx], axis=0))
            logits = prototype_logits(features[:n_support], tsy, features[n_support:], ways)
            labels = ops.cast(tqy, "int32")
            loss = ops.mean(ops.sparse_categorical_crossentropy(labels, logits, from_logits=True))
            hits = ops.equal(ops.cast(ops.argmax(logits, axis=-1), "int32"), labels)
            return loss, ops.mean(ops.cast(hits, logits.dtype)), logits

        losses, accuracies, predictions = ops.map(one_task, (sx, sy, qx, qy))
        return {"loss": losses, "accuracy": accuracies, "predictions": predictions}

    # -- report --------------------------------------------------------------------------------------------

    def prior_samples(self, n: int = PRIOR_SAMPLES, seed: int = REPORT_SEED) -> np.ndarray:
        """Mean images ``E[x|z]`` of ``n`` codes drawn from the prior ``N(0, I)`` with a fixed seed."""
        z = np.random.default_rng(seed).standard_normal((n, self.latent_dim)).astype(np.float32)
        return np.asarray(ops.convert_to_numpy(self.decode_mean(z)))

    def reconstruct(self, x: Any) -> np.ndarray:
        """Mean reconstructions ``E[x | z = mu(x)]`` of ``x``."""
        return np.asarray(ops.convert_to_numpy(self.decode_mean(self.encode_mean(ops.convert_to_tensor(x)))))

    def report_data(self) -> dict[str, Any]:
        """Reconstructions of held-out images and samples from the prior, as small ``uint8`` arrays.

        Returns:
            ``{"input_shape", "likelihood", "prior_samples" [n, ...] uint8, "originals" and "reconstructions"
            [m, ...] uint8 (empty when nothing was evaluated yet)}``; pixel values are the model's inputs
            (in [0, 1] for images) times 255. The held-out images are the latest evaluated episode's first queries
            (meta-test classes when the run evaluates at the end).
        """
        data: dict[str, Any] = {
            "input_shape": list(self.input_shape), "likelihood": self.config.likelihood,
            "prior_samples": to_uint8(self.prior_samples()), "originals": [], "reconstructions": [],
        }
        if bool(ops.convert_to_numpy(self.held_out_filled)):
            originals = np.asarray(ops.convert_to_numpy(self.held_out))
            data["originals"] = to_uint8(originals)
            data["reconstructions"] = to_uint8(self.reconstruct(originals))
        return data
