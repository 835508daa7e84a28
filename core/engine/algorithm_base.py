"""The base class of algorithm implementations: variables, the outer optimizer and metrics, written once.

Part of the public plugin API as :class:`metalab.api.algorithms.MetaAlgorithm`. It imports Keras, so only an
implementation module (``algorithm.py``) imports it, never a plugin's registration module.
"""

from __future__ import annotations

from typing import Any

import keras
from keras import ops

from metalab.core.contract.specs import TaskBatch, TaskSpec
from metalab.core.engine.functional import read_now

__all__ = ["MetaAlgorithm"]


class MetaAlgorithm:
    """What every algorithm repeats, so that a subclass writes only its maths.

    A subclass calls ``super().__init__(params, task)``, builds its models, hands them to :meth:`track` (and any
    bookkeeping variables to :meth:`keep`), then implements ``meta_gradients`` and ``evaluate``. The task kind needs
    no check: the spec's factory refuses a task of a kind missing from ``AlgorithmSpec.task_kinds``.

    Attributes:
        config: The validated parameters (the spec's ``Params`` instance).
        task: The :class:`~metalab.api.TaskSpec` the algorithm was built for.
        meta_batch_size: The ``meta_batch_size`` parameter, or 1 when the algorithm has none.
        batch_size: The ``batch_size`` parameter, for ``batch_kind = "supervised"`` algorithms only.
        batch_kind: ``"episodic"`` (the default) or ``"supervised"`` (a class attribute, see the protocol).
        learning_rate_param: The parameter holding the outer optimizer's learning rate; ``None`` (the default)
            takes ``outer_lr``, else ``lr``.
        lr_decay_param: The parameter holding how many updates pass before the learning rate halves
            (``0``: never); absent from the parameters means no decay.

    Example:
        class Foo(MetaAlgorithm):
            def __init__(self, params, task):
                super().__init__(params, task)
                self.model = build_model(task, "foo")
                self.fmodel = functional.FunctionalModel(self.model)
                self.track(self.model)

            def meta_gradients(self, batch):
                ...
                return grads, self.scores(loss, accuracy)
    """

    batch_kind: str = "episodic"
    learning_rate_param: str | None = None
    lr_decay_param: str = "lr_decay_every"

    def __init__(self, params: Any, task: TaskSpec):
        self.config = params
        self.task = task
        self.meta_batch_size = int(getattr(params, "meta_batch_size", 1))
        if self.batch_kind == "supervised":
            self.batch_size = int(params.batch_size)
        self._parts: list[Any] = []
        self._kept: list[Any] = []

    # -- variables -------------------------------------------------------------------------------------------

    def track(self, *parts: Any) -> None:
        """Adds meta-learned parts, in order: models (or layers) and lists of Keras variables.

        A model contributes its ``trainable_variables`` to :attr:`trainable_variables` and all its ``variables``
        (batch-norm moments included) to :attr:`variables`; a list of variables contributes itself to both. The
        order of the calls is the order of the variables, which the gradients and the checkpoints follow.
        """
        self._parts.extend(parts)

    def keep(self, *variables: Any) -> None:
        """Adds variables to checkpoint that the optimizer does not update (counters, a noise generator's state)."""
        self._kept.extend(variables)

    @property
    def trainable_variables(self) -> list[Any]:
        """The meta-parameters the outer optimizer updates: the tracked parts' trainable variables, in order."""
        found: list[Any] = []
        for part in self._parts:
            found += list(part) if isinstance(part, (list, tuple)) else list(part.trainable_variables)
        return found

    @property
    def variables(self) -> list[Any]:
        """Every variable to checkpoint: the tracked parts' variables in order, then the kept ones."""
        found: list[Any] = []
        for part in self._parts:
            found += list(part) if isinstance(part, (list, tuple)) else list(part.variables)
        return found + list(self._kept)

    def params(self) -> list[Any]:
        """The current values of :attr:`trainable_variables` as tensors (read now, not references)."""
        return [read_now(v) for v in self.trainable_variables]

    # -- the outer optimizer ---------------------------------------------------------------------------------

    def learning_rate(self) -> Any:
        """The outer learning rate: the parameter's value, or a schedule halving it every ``lr_decay_every`` updates.

        Raises:
            ValueError: If the parameters hold no learning rate (name it with ``learning_rate_param``).
        """
        name = self.learning_rate_param or next((n for n in ("outer_lr", "lr") if hasattr(self.config, n)), None)
        if name is None or not hasattr(self.config, name):
            raise ValueError(
                f"{type(self).__name__} has no outer learning rate: its parameters have no 'outer_lr' or 'lr'; set "
                f"the class attribute learning_rate_param to the parameter's name. "
                f"Received: learning_rate_param={self.learning_rate_param!r}"
            )
        rate: Any = getattr(self.config, name)
        every = getattr(self.config, self.lr_decay_param, 0)
        if every and every > 0:
            rate = keras.optimizers.schedules.ExponentialDecay(rate, decay_steps=every, decay_rate=0.5, staircase=True)
        return rate

    def make_optimizer(self) -> keras.optimizers.Optimizer:
        """Returns Adam at :meth:`learning_rate`; the runner builds it on :attr:`trainable_variables`."""
        return keras.optimizers.Adam(learning_rate=self.learning_rate())

    # -- metrics and batches ---------------------------------------------------------------------------------

    def scores(self, loss: Any, metric: Any, **extra: Any) -> dict[str, Any]:
        """The metrics of a step or the results of an evaluation: ``loss``, ``accuracy`` and ``extra``.

        Args:
            loss: The loss (a scalar for ``meta_gradients``, ``[T]`` for ``evaluate``).
            metric: The accuracy, reported as ``accuracy`` on classification tasks; on regression tasks the metric
                is the MSE, the loss itself, and is left out.
            extra: Further entries (``curve``, ``predictions``, other metrics).
        """
        found = {"loss": loss}
        if self.task.kind == "classification":
            found["accuracy"] = metric
        found.update(extra)
        return found

    def flat_inputs(self, batch: TaskBatch, dtype: str) -> Any:
        """A supervised batch's inputs, both halves of every mini-batch, as one ``[N, *input_shape]`` tensor."""
        x = ops.concatenate([ops.convert_to_tensor(batch.support_x, dtype=dtype),
                             ops.convert_to_tensor(batch.query_x, dtype=dtype)], axis=1)
        return ops.reshape(x, (-1, *self.task.input_shape))

    def flat_labels(self, batch: TaskBatch) -> Any:
        """A supervised batch's labels (training-split class indices) as one ``int32 [N]`` tensor."""
        y = ops.concatenate([ops.convert_to_tensor(batch.support_y, dtype="int32"),
                             ops.convert_to_tensor(batch.query_y, dtype="int32")], axis=1)
        return ops.reshape(y, (-1,))
