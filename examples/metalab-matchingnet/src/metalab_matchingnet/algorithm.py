"""Matching Networks (Vinyals et al. 2016) written against metalab's public plugin API and functional seam.

Given a support set ``S = {(x_i, y_i)}`` of ``k`` labelled examples, a query ``x`` is classified by attention
over ``S`` (eq. 1 and 2 of the paper)::

    P(y | x, S) = sum_i a(x, x_i) y_i,        a(x, x_i) = softmax_i( cos(f(x, S), g(x_i, S)) )

with ``y_i`` one-hot. Without full context embeddings (FCE), ``f = g = f'``: the run's backbone, one embedding
shared by queries and support. With FCE (section 2.1.2 and appendix A of the paper) the embeddings depend on the
whole support set:

    g(x_i, S) = h_fwd_i + h_bwd_i + g'(x_i)                  (a bidirectional LSTM over the support embeddings)
    f(x, S) = attLSTM(f'(x), g(S), K):                        K "processing" steps, h_0 = c_0 = 0,
        r_{k-1} = sum_i softmax_i(h_{k-1} . g(x_i, S)) g(x_i, S)
        h^_k, c_k = LSTM(f'(x), [h_{k-1}, r_{k-1}], c_{k-1})
        h_k = h^_k + f'(x)                                    and f(x, S) = h_K.

The loss is the query cross-entropy ``-log P(y | x, S)``, trained by Adam; there is no inner loop. The
support set is fed to the bidirectional LSTM in the order of the batch (class-major in metalab's episodes).
The episodes of a batch are embedded one at a time (batch norm sees one episode, as in ProtoNet), then the
context embeddings and the attention run on all of them at once, with a leading task axis.
"""

from __future__ import annotations

from typing import Any

import keras
from keras import ops

from metalab.api import functional
from metalab.api import TaskBatch, TaskSpec

__all__ = ["MatchingNet", "FullContextEmbedding", "class_log_probs"]


def _lstm_step(x: Any, h: Any, c: Any, kernel: Any, recurrent: Any, bias: Any) -> tuple[Any, Any]:
    """One LSTM step (gates in Keras's order: input, forget, cell, output); returns ``(h, c)``."""
    z = ops.matmul(x, kernel) + ops.matmul(h, recurrent) + bias
    i, f, g, o = ops.split(z, 4, axis=-1)
    c = ops.sigmoid(f) * c + ops.sigmoid(i) * ops.tanh(g)
    return ops.sigmoid(o) * ops.tanh(c), c


class FullContextEmbedding(keras.layers.Layer):
    """The paper's full context embeddings: a bidirectional LSTM for the support set, an attention LSTM for queries.

    Called on ``(support, query)``, backbone embeddings ``[T, k, dim]`` and ``[T, m, dim]`` of ``T`` episodes,
    it returns their context embeddings ``(g, f)`` of the same shapes; episodes do not interact.

    Args:
        dim: Size of the backbone's embeddings (the LSTMs' hidden size, as the skip connections need).
        processing_steps: ``K``, the attention LSTM's read steps.
        unroll_limit: Support sets of at most this many examples run the support LSTM as an unrolled loop;
            larger ones (or ones of unknown size) as a scan. Both compute the same function.

    Raises:
        ValueError: If ``dim`` or ``processing_steps`` is below 1.
    """

    def __init__(self, dim: int, processing_steps: int, unroll_limit: int = 32, **kwargs: Any):
        super().__init__(**kwargs)
        if dim < 1 or processing_steps < 1:
            raise ValueError(
                f"FullContextEmbedding needs dim >= 1 and processing_steps >= 1. "
                f"Received: dim={dim}, processing_steps={processing_steps}"
            )
        self.dim = int(dim)
        self.processing_steps = int(processing_steps)
        self.unroll_limit = int(unroll_limit)

    def _lstm_weights(self, name: str, recurrent_dim: int) -> tuple[Any, Any, Any]:
        d = self.dim

        def forget_bias_one(shape: Any, dtype: Any = None) -> Any:
            # As Keras's LSTM (unit_forget_bias): start by remembering, which eases learning early on.
            return ops.concatenate([ops.zeros((d,), dtype), ops.ones((d,), dtype), ops.zeros((2 * d,), dtype)])

        kernel = self.add_weight(shape=(d, 4 * d), initializer="glorot_uniform", name=f"{name}_kernel")
        recurrent = self.add_weight(shape=(recurrent_dim, 4 * d), initializer="orthogonal", name=f"{name}_recurrent")
        bias = self.add_weight(shape=(4 * d,), initializer=forget_bias_one, name=f"{name}_bias")
        return kernel, recurrent, bias

    def build(self, input_shape: Any = None) -> None:
        self.forward = self._lstm_weights("support_forward", self.dim)
        self.backward = self._lstm_weights("support_backward", self.dim)
        # The attention LSTM's previous "hidden state" is [h_{k-1}, r_{k-1}], twice the embedding size.
        self.attention = self._lstm_weights("query_attention", 2 * self.dim)
        self.built = True

    def _support_direction(self, support: Any, weights: tuple[Any, Any, Any], reverse: bool) -> Any:
        """Runs one direction of the support LSTM over ``[T, k, dim]``; returns its hidden states, same shape."""
        n = support.shape[1]
        zeros = ops.zeros_like(support[:, 0])
        if n is not None and n <= self.unroll_limit:
            # Unrolled: trains markedly faster than a scan on small episodes (measured 24 s instead of 40 s for
            # the 60-step conformance run; while loops cost more than they save at this size on a CPU).
            h, c = zeros, zeros
            outputs: list[Any] = [None] * n
            for i in reversed(range(n)) if reverse else range(n):
                h, c = _lstm_step(support[:, i], h, c, *weights)
                outputs[i] = h
            return ops.stack(outputs, axis=1)

        # A scan keeps the graph small (and its tracing short) for large support sets.
        def step(carry: tuple[Any, Any], x: Any) -> tuple[tuple[Any, Any], tuple[Any, Any]]:
            h, c = _lstm_step(x, carry[0], carry[1], *weights)
            # Keras's TensorFlow scan needs each step's output shaped like the carry, so emit the whole state.
            return (h, c), (h, c)

        _, (hs, _) = ops.scan(step, (zeros, zeros), ops.swapaxes(support, 0, 1), reverse=reverse)
        return ops.swapaxes(hs, 0, 1)

    def embed_support(self, support: Any) -> Any:
        """Returns ``g(x_i, S) = h_fwd_i + h_bwd_i + g'(x_i)`` for support embeddings ``g'`` ``[T, k, dim]``."""
        forward = self._support_direction(support, self.forward, reverse=False)
        backward = self._support_direction(support, self.backward, reverse=True)
        return forward + backward + support

    def embed_query(self, query: Any, support_context: Any) -> Any:
        """Returns ``f(x, S) = attLSTM(f'(x), g(S), K)`` for query embeddings ``f'`` ``[T, m, dim]``."""
        h = ops.zeros_like(query)
        c = ops.zeros_like(query)
        keys = ops.swapaxes(support_context, -1, -2)
        for _ in range(self.processing_steps):
            attention = ops.softmax(ops.matmul(h, keys), axis=-1)  # [T, m, k]: content-based, by dot product
            read = ops.matmul(attention, support_context)
            h_hat, c = _lstm_step(query, ops.concatenate([h, read], axis=-1), c, *self.attention)
            h = h_hat + query
        return h

    def call(self, inputs: Any, training: bool | None = None) -> tuple[Any, Any]:
        support, query = inputs
        context = self.embed_support(support)
        return context, self.embed_query(query, context)


def class_log_probs(query: Any, support: Any, support_y: Any, ways: int) -> Any:
    """Returns ``log P(y = c | x, S)``: attention over the support set by cosine similarity (eq. 1 and 2).

    ``P(y = c | x, S)`` sums the attention of the support examples of class ``c``, so its log is a log-sum-exp
    of their cosine similarities minus that of all of them (stable however peaked the attention is).

    Args:
        query: Query embeddings ``f(x, S)`` ``[..., m, dim]`` (any leading axes, e.g. tasks).
        support: Support embeddings ``g(x_i, S)`` ``[..., k, dim]``.
        support_y: Integer labels ``[..., k]`` in ``0..ways-1``.
        ways: Number of classes.

    Returns:
        ``[..., m, ways]`` log-probabilities.
    """
    similarity = ops.matmul(ops.normalize(query, axis=-1), ops.swapaxes(ops.normalize(support, axis=-1), -1, -2))
    in_class = ops.swapaxes(ops.one_hot(ops.cast(support_y, "int32"), ways, dtype="bool"), -1, -2)  # [..., ways, k]
    # A large finite negative, not -inf: a class without support examples must not turn gradients into NaN.
    masked = ops.where(ops.expand_dims(in_class, -3), ops.expand_dims(similarity, -2), -1e9)  # [..., m, ways, k]
    return ops.logsumexp(masked, axis=-1) - ops.logsumexp(similarity, axis=-1, keepdims=True)


class MatchingNet:
    """Matching Networks on the run's backbone, with optional full context embeddings.

    Args:
        params: A validated ``MatchingNetParams``.
        task: What the tasks look like; must be classification.

    Raises:
        ValueError: If ``task.kind`` is not classification.
    """

    def __init__(self, params: Any, task: TaskSpec):
        if task.kind != "classification":
            raise ValueError(f"Matching Networks need classification tasks. Received: task.kind={task.kind!r}")
        self.config = params
        self.task = task
        self.meta_batch_size = int(params.meta_batch_size)
        self.backbone = task.make_backbone()
        self.embedder = functional.FunctionalModel(self.backbone)
        self.fce = None
        if params.fce:
            dim = int(self.backbone(ops.zeros((1, *task.input_shape)), training=False).shape[-1])
            self.fce = FullContextEmbedding(dim, params.processing_steps, name="full_context_embedding")
            self.fce.build()
            self.context = functional.FunctionalModel(self.fce)

    @property
    def trainable_variables(self) -> list[Any]:
        extra = self.context.trainable_variables if self.fce is not None else []
        return self.embedder.trainable_variables + extra

    @property
    def variables(self) -> list[Any]:
        extra = list(self.fce.variables) if self.fce is not None else []
        return list(self.backbone.variables) + extra

    def make_optimizer(self) -> keras.optimizers.Optimizer:
        """Returns Adam at ``outer_lr`` (the paper trains with Adam)."""
        return keras.optimizers.Adam(learning_rate=self.config.outer_lr)

    def params(self) -> list[Any]:
        """Returns the current values of :attr:`trainable_variables` as tensors."""
        return self.embedder.params() + (self.context.params() if self.fce is not None else [])

    def episodes(self, weights: list[Any], batch: TaskBatch, *, training: bool, state: list[Any]):
        """Scores every episode of ``batch`` under ``weights``.

        Returns:
            ``(loss [T], accuracy [T], log_probs [T, queries, ways], new_backbone_state)``.
        """
        sx, sy, qx, qy, num_tasks = _batch_tensors(batch, self.backbone.compute_dtype)
        n_backbone = len(self.embedder.trainable_variables)
        n_support = sx.shape[1]
        supports, queries = [], []
        for t in range(num_tasks):
            # One backbone call per episode, support and query together, so batch norm sees one whole episode.
            embeddings, state = self.embedder.call_with_state(
                weights[:n_backbone], ops.concatenate([sx[t], qx[t]], axis=0), training=training, state=state
            )
            supports.append(embeddings[:n_support])
            queries.append(embeddings[n_support:])
        support, query = ops.stack(supports), ops.stack(queries)
        if self.fce is not None:
            support, query = self.context(weights[n_backbone:], (support, query), training=training)
        log_probs = class_log_probs(query, support, sy, self.task.ways)
        labels = ops.cast(qy, "int32")
        losses = ops.mean(ops.sparse_categorical_crossentropy(labels, log_probs, from_logits=True), axis=-1)
        hits = ops.equal(ops.cast(ops.argmax(log_probs, axis=-1), "int32"), labels)
        return losses, ops.mean(ops.cast(hits, log_probs.dtype), axis=-1), log_probs, state

    def meta_gradients(self, batch: TaskBatch) -> tuple[list[Any], dict[str, Any]]:
        """Returns the gradient of the mean query cross-entropy over the batch's episodes, and loss/accuracy.

        Also moves the backbone's batch-norm running moments, as a training-mode forward pass does.
        """

        def mean_loss(weights: list[Any]) -> tuple[Any, tuple[Any, list[Any]]]:
            losses, accuracies, _, state = self.episodes(weights, batch, training=True, state=self.embedder.state())
            return ops.mean(losses), (ops.mean(accuracies), state)

        (loss, (accuracy, state)), grads = functional.value_and_grad(mean_loss, self.params(), has_aux=True)
        self.embedder.set_state(functional.stop_gradient(state))
        return grads, {"loss": loss, "accuracy": accuracy}

    def evaluate(self, batch: TaskBatch) -> dict[str, Any]:
        """Classifies each episode's queries by attention over its support set (batch norm on running moments).

        Returns:
            ``loss`` ``[T]``, ``accuracy`` ``[T]`` and ``predictions`` (``log P(y | x, S)``, ``[T, queries, ways]``).
        """
        losses, accuracies, log_probs, _ = self.episodes(
            self.params(), batch, training=False, state=self.embedder.state()
        )
        return {"loss": losses, "accuracy": accuracies, "predictions": log_probs}


def _batch_tensors(batch: TaskBatch, dtype: str) -> tuple[Any, Any, Any, Any, int]:
    sx = ops.convert_to_tensor(batch.support_x, dtype=dtype)
    qx = ops.convert_to_tensor(batch.query_x, dtype=dtype)
    sy = ops.convert_to_tensor(batch.support_y, dtype="int32")
    qy = ops.convert_to_tensor(batch.query_y, dtype="int32")
    num_tasks = sx.shape[0]
    if num_tasks is None:
        raise ValueError(
            "The number of tasks in a batch must be static (the task loop is unrolled when compiled). "
            f"Received: support_x with shape={tuple(sx.shape)}"
        )
    return sx, sy, qx, qy, int(num_tasks)
