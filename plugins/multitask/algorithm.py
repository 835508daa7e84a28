"""Multi-task learning with a shared trunk (Caruana 1997, "Multitask Learning"; hard parameter sharing).

The ``C`` training classes are dealt into ``K`` tasks: class ``c`` belongs to task ``k = c mod K`` and is class
``c div K`` of that task's head. One trunk ``f_theta`` (the run's backbone) feeds ``K`` linear heads ``h_k``; each
example of a mini-batch is scored by the head of its own task. With ``L_k`` the mean cross-entropy of task ``k``
over its examples in the batch and weights ``w_k`` (normalised to sum to 1), the objective is

    L = sum_k w_k L_k + lambda * 1/(N d) sum_i || f_theta(x_i) - f_theta(x~_i) ||^2

the weighted average of the task losses (the plain average for uniform weights) plus a consistency
("difference") term between related inputs: ``x~_i = x_i + eps_i``, ``eps_i ~ N(0, noise_std^2)``, the same
image under a small random perturbation, whose trunk features must stay close (the Pi-model's consistency
loss, Laine and Aila 2017, eq. in Section 2.1, here on the shared features). Gradients of the consistency term
flow through both branches, as in the Pi-model.

**Mixed modalities.** With a backbone that declares packed image-and-text rows (``modality_layout``, as
``metalab.mixed_encoder`` on ``metalab.digits_and_intents``: a flag, the pixels, the token ids), the related input
is made per modality: an image's pixels get the Gaussian noise above, a text loses each real token with
probability ``p = token_dropout`` (set to padding: word dropout, Iyyer et al. 2015, Section 3.1, used here as the
perturbation of the consistency term in the way Xie et al. 2020, "Unsupervised Data Augmentation for Consistency
Training", perturb texts by word replacement), and the flag is kept. The training classes alternate between the
modalities (class ``c``'s modality is ``c mod 2``), so with an even ``K`` every task holds one modality and the
weighted average runs across image and text tasks; the trunk's shared layers then get gradients from both, each
encoder from its own. The metrics add ``consistency_image``, ``consistency_text`` (the term over each modality's
rows) and ``modality_mismatch`` (the share of examples whose flag is not their class's modality; 0 on a
well-formed dataset).

Each task's loss and accuracy are returned as the metrics ``task<k>_loss`` and ``task<k>_accuracy``, which the
runner stores as ``train/task<k>_loss``: the report draws them as per-task curves. Few-shot evaluation scores each
episode by nearest class centroid on the frozen trunk's features.
"""

from __future__ import annotations

from typing import Any

import keras
import numpy as np
from keras import ops

from metalab.api import functional
from metalab.api.algorithms import MetaAlgorithm
from metalab.api.episodic import nearest_centroid_evaluate
from metalab.api import TaskBatch, TaskSpec


def task_groups(num_classes: int, num_tasks: int) -> list[list[int]]:
    """The training classes of each task: class ``c`` goes to task ``c % num_tasks``.

    Args:
        num_classes: Training classes ``C``.
        num_tasks: Tasks ``K``.

    Returns:
        ``K`` lists of global class ids; position ``j`` of list ``k`` is class ``j`` of task ``k``'s head.

    Raises:
        ValueError: If a task would get fewer than 2 classes.
    """
    if num_classes < 2 * num_tasks:
        raise ValueError(
            f"Multi-task learning deals the {num_classes} training classes into {num_tasks} tasks of at least 2 "
            f"classes each, so it needs num_tasks <= {num_classes // 2}. Received: num_tasks={num_tasks}"
        )
    return [list(range(k, num_classes, num_tasks)) for k in range(num_tasks)]


class MultiTask(MetaAlgorithm):
    """A shared trunk with one classification head per task, trained jointly on supervised mini-batches.

    Args:
        params: A validated ``MultiTaskParams``.
        task: What the tasks look like; ``num_train_classes >= 2 * num_tasks``.

    Raises:
        ValueError: If there are too few training classes for the tasks.
    """

    #: Trained on mini-batches of the training split with global labels (plugin API 1.2).
    batch_kind = "supervised"

    def __init__(self, params: Any, task: TaskSpec):
        super().__init__(params, task)
        self.groups = task_groups(int(getattr(task, "num_train_classes", 0)), int(params.num_tasks))
        self.num_tasks = len(self.groups)
        self.task_weights = params.weights()
        # The trunk is what report_data's embedding figure and few-shot evaluation look at.
        self.model = task.make_backbone()
        #: Where a packed image-and-text row's parts lie, or None (one modality).
        self.layout = getattr(self.model, "modality_layout", None)
        if params.modalities == "image_text" and self.layout is None:
            raise ValueError(
                f"MultiTask with modalities='image_text' needs a backbone with separate image and text encoders that "
                f"declares its packed input (modality_layout), such as metalab.mixed_encoder on "
                f"metalab.digits_and_intents. Received: modalities='image_text', backbone={self.model.name!r}"
            )
        if self.layout is not None and self.num_tasks % 2:
            raise ValueError(
                f"With mixed modalities the training classes alternate image, text, image, ..., and task k takes "
                f"classes c with c mod num_tasks = k, so num_tasks must be even for every task to hold one modality. "
                f"Received: num_tasks={self.num_tasks}"
            )
        inputs = keras.Input(tuple(task.input_shape))
        features = self.model(inputs)
        self.heads = [keras.layers.Dense(len(g), name=f"head{k}") for k, g in enumerate(self.groups)]
        self.network = keras.Model(inputs, [features, *[head(features) for head in self.heads]], name="multitask")
        self.fnetwork = functional.FunctionalModel(self.network)
        self.ftrunk = functional.FunctionalModel(self.model)
        # Seeded from Keras's global seed (set from the run's seed); its state is checkpointed with the weights,
        # so a resumed run draws the same perturbations.
        self.noise_seed = keras.random.SeedGenerator(name="consistency_noise")
        self.track(self.network)  # trained by the base class's Adam at lr
        self.keep(self.noise_seed.state)

    def task_losses(self, head_logits: list[Any], y: Any) -> tuple[list[Any], list[Any], Any]:
        """Per-task mean cross-entropy and accuracy over each task's examples, and the overall accuracy.

        Args:
            head_logits: ``K`` arrays ``[N, classes of task k]``: every head applied to every example.
            y: ``[N]`` global training-class labels.

        Returns:
            ``(losses [K scalars], accuracies [K scalars], accuracy)``; a task with no example in the batch
            scores 0 and adds nothing to the objective.
        """
        y = ops.cast(y, "int32")
        owner, local = y % self.num_tasks, y // self.num_tasks
        dtype = head_logits[0].dtype
        losses, accuracies, hits_all = [], [], ops.zeros_like(ops.cast(y, dtype))
        for k, logits in enumerate(head_logits):
            mask = ops.cast(ops.equal(owner, k), dtype)
            labels = ops.where(ops.equal(owner, k), local, ops.zeros_like(local))
            count = ops.maximum(ops.sum(mask), ops.cast(1, dtype))
            cross_entropy = ops.sparse_categorical_crossentropy(labels, logits, from_logits=True)
            hits = ops.cast(ops.equal(ops.cast(ops.argmax(logits, axis=-1), "int32"), labels), dtype) * mask
            losses.append(ops.sum(cross_entropy * mask) / count)
            accuracies.append(ops.sum(hits) / count)
            hits_all = hits_all + hits
        return losses, accuracies, ops.mean(hits_all)

    def meta_gradients(self, batch: TaskBatch) -> tuple[list[Any], dict[str, Any]]:
        """Returns the gradient of the weighted task losses plus the consistency term over a supervised batch.

        Metrics: ``loss`` (the objective), ``accuracy`` (each example scored by its task's head),
        ``average_loss`` (the weighted task-loss average), ``consistency_loss`` and ``task<k>_loss`` /
        ``task<k>_accuracy`` for every task.
        """
        dtype = self.network.compute_dtype
        x, y = self.flat_inputs(batch, dtype), self.flat_labels(batch)
        n = x.shape[0]
        use_consistency = self.config.consistency_weight > 0
        if use_consistency:
            if self.layout is None:
                noise = keras.random.normal(ops.shape(x), stddev=self.config.noise_std, dtype=dtype,
                                            seed=self.noise_seed)
                x = ops.concatenate([x, x + noise], axis=0)
            else:
                x = ops.concatenate([x, self.perturb(x)], axis=0)
        weights = [ops.convert_to_tensor(w, dtype=dtype) for w in self.task_weights]  # not cast: via float32 on TF

        def loss_fn(params):
            (features, *head_logits), state = self.fnetwork.call_with_state(params, x, training=True)
            losses, accuracies, accuracy = self.task_losses([h[:n] for h in head_logits], y)
            average = sum(w * loss for w, loss in zip(weights, losses))
            by_modality = {}
            if use_consistency and self.layout is not None:
                distance = ops.mean(ops.square(features[:n] - features[n:]), axis=-1)
                consistency = ops.mean(distance)
                by_modality = self.modality_means(distance, x[:n])
            elif use_consistency:
                consistency = ops.mean(ops.square(features[:n] - features[n:]))
            else:
                consistency = ops.zeros((), dtype=dtype)
            total = average + ops.convert_to_tensor(self.config.consistency_weight, dtype=dtype) * consistency
            return total, (average, consistency, by_modality, losses, accuracies, accuracy, state)

        (loss, (average, consistency, by_modality, losses, accuracies, accuracy, state)), grads = \
            functional.value_and_grad(loss_fn, self.fnetwork.params(), has_aux=True)
        self.fnetwork.set_state(functional.stop_gradient(state))
        metrics = self.scores(loss, accuracy, average_loss=average, consistency_loss=consistency)
        if self.layout is not None:
            metrics.update({f"consistency_{name}": value for name, value in by_modality.items()})
            flag = ops.cast(ops.round(x[:n, 0]), "int32")
            metrics["modality_mismatch"] = ops.mean(ops.cast(ops.not_equal(flag, y % 2), dtype))
        for k, (task_loss, task_accuracy) in enumerate(zip(losses, accuracies)):
            metrics[f"task{k}_loss"] = task_loss
            metrics[f"task{k}_accuracy"] = task_accuracy
        return grads, metrics

    def perturb(self, x: Any, seed: Any = None) -> Any:
        """The related input of packed image-and-text rows: pixel noise for images, word dropout for texts.

        Args:
            x: ``[N, width]`` rows (:class:`~metalab.plugins.multitask.mixed.MixedLayout`).
            seed: A ``keras.random.SeedGenerator`` (by default the algorithm's checkpointed one).

        Returns:
            ``[N, width]``: the same flags; image rows' pixels plus ``N(0, noise_std^2)`` noise; text rows' real
            tokens each set to padding (0) with probability ``token_dropout``; every other value unchanged.
        """
        seed = self.noise_seed if seed is None else seed
        layout, dtype = self.layout, x.dtype
        p0, p1 = layout.pixel_slice
        t0, t1 = layout.token_slice
        flag, pixels, tokens = x[:, :1], x[:, p0:p1], x[:, t0:t1]
        noise = keras.random.normal(ops.shape(pixels), stddev=self.config.noise_std, dtype=dtype, seed=seed)
        pixels = pixels + noise * (ops.cast(1, dtype) - flag)
        keep = keras.random.uniform(ops.shape(tokens), dtype=dtype, seed=seed) >= self.config.token_dropout
        tokens = ops.where(keep, tokens, ops.zeros_like(tokens))
        return ops.concatenate([flag, pixels, tokens, x[:, t1:]], axis=1)

    def modality_means(self, values: Any, x: Any) -> dict[str, Any]:
        """The mean of per-row ``values`` over the image rows and over the text rows of ``x`` (0 when none)."""
        text = ops.cast(x[:, 0], values.dtype)
        image = ops.cast(1, values.dtype) - text
        one = ops.cast(1, values.dtype)
        return {"image": ops.sum(values * image) / ops.maximum(ops.sum(image), one),
                "text": ops.sum(values * text) / ops.maximum(ops.sum(text), one)}

    def consistency_distances(self, x: Any, seed: int = 0) -> dict[str, float]:
        """The consistency term of the trunk in inference mode, per modality, under one seeded perturbation.

        Args:
            x: ``[N, width]`` packed rows.
            seed: Seed of the perturbation (the training stream's generator is left alone).

        Returns:
            ``{"image": float, "text": float}``: the mean squared feature distance of each modality's rows.
        """
        x = ops.convert_to_tensor(x, dtype=self.model.compute_dtype)
        related = self.perturb(x, keras.random.SeedGenerator(seed))
        distance = ops.mean(ops.square(self.model(x, training=False) - self.model(related, training=False)), axis=-1)
        return {name: float(value) for name, value in self.modality_means(distance, x).items()}

    def evaluate(self, batch: TaskBatch) -> dict[str, Any]:
        """Scores each episode by the nearest class centroid of the frozen trunk's features.

        Returns:
            ``loss`` ``[T]``, ``accuracy`` ``[T]`` and ``predictions`` (query logits ``[T, queries, ways]``).
        """
        return nearest_centroid_evaluate(self.ftrunk, batch, self.task.ways)

    def report_data(self) -> dict[str, Any]:
        """The task split and weights, for the report's per-task panel (the curves come from the run store).

        Returns:
            ``{"num_tasks", "task_classes" (global class ids per task), "task_weights" (normalised),
            "consistency_weight", "noise_std", "head_params" (per task), "trunk_params"}``.
        """
        return {
            "num_tasks": self.num_tasks,
            "task_classes": self.groups,
            "task_weights": list(self.task_weights),
            "consistency_weight": float(self.config.consistency_weight),
            "noise_std": float(self.config.noise_std),
            **({} if self.layout is None else {
                "task_modalities": ["image" if k % 2 == 0 else "text" for k in range(self.num_tasks)],
                "token_dropout": float(self.config.token_dropout)}),
            "head_params": [int(sum(np.prod(w.shape) for w in head.weights)) for head in self.heads],
            "trunk_params": int(sum(np.prod(w.shape) for w in self.model.weights)),
        }
