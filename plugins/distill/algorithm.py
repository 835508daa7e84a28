"""Knowledge distillation (Hinton, Vinyals and Dean 2015, "Distilling the Knowledge in a Neural Network").

A student network is trained on the soft targets of a trained teacher. With logits ``z`` and temperature ``T``
the class probabilities are ``q_i = exp(z_i / T) / sum_j exp(z_j / T)`` (Section 2). The student minimises

    L = alpha * T^2 * KL(p_teacher^T || q_student^T) + (1 - alpha) * CE(y, q_student^1)

the cross-entropy to the teacher's softened distribution (written as the KL divergence, which has the same
gradient and is zero when the two agree) weighted by ``alpha``, plus the ordinary hard-label cross-entropy at
``T = 1``. The soft term is multiplied by ``T^2`` because its gradients scale as ``1/T^2`` (end of Section 2),
so the balance of the two terms does not change with the temperature.

In metalab the student is the run's backbone plus a linear classifier over all training classes, trained on the
runner's supervised mini-batches of the training split; it is evaluated few-shot like a metric learner, by the
nearest class centroid of its (frozen) backbone features on each episode's support set.

Where the soft targets come from (the teacher is a finished run, loaded through the task's ``load_run``):

* a teacher trained with a classifier over the same training classes (``batch_kind == "supervised"`` and a
  final layer named ``head`` with ``num_train_classes`` outputs: the Baseline, another distillation run) gives
  its classifier's logits on the very images of the student's batch;
* any other teacher (ProtoNet, MAML, Reptile, ... whose heads, if any, are per-episode ``ways``-way heads that
  mean nothing across the base classes) is distilled through its embedding: each training class gets a prototype,
  the mean teacher feature of ``prototype_shots`` of its training images, and the teacher's logits for an image
  are minus its squared Euclidean distances to all prototypes (ProtoNet's classifier, eq. 2 of Snell et al.
  2017, over every base class at once).

With no ``teacher_run`` the student trains on the hard labels alone (a plain supervised classifier; ``alpha`` is
ignored) and the run log says so: the conformance suite has no teacher to offer.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from typing import Any

import keras
import numpy as np
from keras import ops

from metalab.api import functional
from metalab.api.algorithms import MetaAlgorithm
from metalab.api.episodic import loss_and_metric, nearest_centroid_evaluate
from metalab.api import LoadedRun, TaskBatch, TaskSpec

logger = logging.getLogger(__name__)

#: Fixed test episodes on which report_data() scores teacher and student by the same nearest-centroid rule.
REPORT_EPISODES = 100
#: Images per forward pass when timing the teacher and the student.
SPEED_BATCH = 256
#: Seconds each speed measurement runs for (after a warm-up call).
SPEED_SECONDS = 0.5
#: Seed of the choice of training images averaged into teacher prototypes.
PROTOTYPE_SEED = 0


def _weight_count(weights: list[Any]) -> int:
    return int(sum(int(np.prod(w.shape)) for w in weights))


@dataclass
class Teacher:
    """A trained teacher (another run, loaded through ``TaskSpec.load_run``) and how it turns images into logits.

    Attributes:
        run: The teacher run as :class:`~metalab.api.LoadedRun`: its config, algorithm with the checkpoint loaded,
            dataset and recorded evaluations.
        mode: ``"head"`` (the teacher's classifier over the training classes) or ``"prototypes"`` (distances to
            class prototypes of its features).
        body: The layers computing the teacher's features (its model without the ``head`` layer).
        prototypes: ``[num_train_classes, d]`` class means of teacher features (``"prototypes"`` mode only).
        recorded: The teacher run's own stored test evaluation (its protocol, its episode shape), if any.
    """

    run: LoadedRun
    mode: str
    body: list[Any]
    prototypes: np.ndarray | None = None
    recorded: dict[str, Any] = field(default_factory=dict)

    @property
    def run_id(self) -> str:
        return self.run.id

    @property
    def algorithm(self) -> Any:
        return self.run.algorithm

    @property
    def dataset(self) -> Any:
        return self.run.dataset

    @property
    def model(self) -> Any:
        return self.run.algorithm.model

    def features(self, x: Any) -> Any:
        """Teacher features of ``x`` in inference mode (batch norm on its running moments)."""
        out = x
        for layer in self.body:
            out = layer(out, training=False)
        return out

    def logits(self, x: Any) -> Any:
        """Teacher logits ``[N, num_train_classes]`` of ``x`` (inference mode)."""
        if self.mode == "head":
            return self.model(x, training=False)
        features = self.features(x)
        prototypes = ops.convert_to_tensor(self.prototypes, dtype=features.dtype)
        diff = ops.expand_dims(features, 1) - ops.expand_dims(prototypes, 0)
        return -ops.sum(ops.square(diff), axis=-1)

    def weight_count(self) -> int:
        """Parameters of the part of the teacher that makes its logits (the whole model, or its feature body)."""
        if self.mode == "head":
            return _weight_count(self.model.weights)
        return _weight_count([w for layer in self.body for w in layer.weights])


def load_teacher(run_ref: str, task: TaskSpec, prototype_shots: int = 20) -> Teacher:
    """Loads a finished run as the teacher through ``task.load_run`` (plugin API 1.4), never the run store itself.

    Args:
        run_ref: The teacher run's id, or a unique prefix of it.
        task: The student's task; the teacher must have the same input shape and number of training classes.
        prototype_shots: Training images per class averaged into each prototype (``"prototypes"`` mode).

    Returns:
        The :class:`Teacher`.

    Raises:
        FileNotFoundError: If there is no run store or the run has no checkpoint.
        ValueError: If the task cannot load runs, the run is unknown or unfinished, is not a classification run,
            or does not match the student's inputs and training classes.
    """
    if task.load_run is None:
        raise ValueError(
            f"teacher_run {run_ref!r}: this task cannot load another run (its load_run is None; metalab fills it "
            f"from plugin API 1.4 on). Received: teacher_run={run_ref!r}"
        )
    try:
        run = task.load_run(run_ref)
    except FileNotFoundError as exc:
        raise FileNotFoundError(f"teacher_run {run_ref!r}: {exc}") from None
    except ValueError as exc:
        raise ValueError(f"teacher_run {run_ref!r}: {exc}") from None
    if run.task.kind != "classification":
        raise ValueError(
            f"teacher_run {run.id!r} is a {run.task.kind} run; distillation needs a classification teacher. "
            f"Received: teacher_run={run_ref!r}"
        )
    if tuple(run.task.input_shape) != tuple(task.input_shape) or run.task.num_train_classes != task.num_train_classes:
        raise ValueError(
            f"teacher_run {run.id!r} was trained on {run.dataset_id} with inputs {tuple(run.task.input_shape)} and "
            f"{run.task.num_train_classes} training classes, but the student sees inputs {tuple(task.input_shape)} "
            f"and {task.num_train_classes} training classes: train the student on the teacher's dataset. "
            f"Received: teacher_run={run_ref!r}"
        )
    algorithm = run.algorithm
    model = getattr(algorithm, "model", None)
    if model is None:
        raise ValueError(
            f"teacher_run {run.id!r}: its algorithm {run.algorithm_id!r} exposes no Keras `model` to take logits or "
            f"features from. Received: teacher_run={run_ref!r}"
        )
    layers = list(getattr(model, "layers", []))
    has_head = bool(layers) and layers[-1].name == "head"
    body = layers[:-1] if has_head else [model]
    try:
        outputs = int(model.output_shape[-1])
    except (AttributeError, TypeError, ValueError):
        outputs = -1
    supervised = getattr(algorithm, "batch_kind", "episodic") == "supervised"
    mode = "head" if has_head and supervised and outputs == task.num_train_classes else "prototypes"
    teacher = Teacher(run=run, mode=mode, body=body)
    if mode == "prototypes":
        teacher.prototypes = _class_prototypes(teacher, prototype_shots)
    # The teacher's headline score (its canonical protocol), never merely its newest evaluation.
    evaluation = getattr(run, "score", None)
    if evaluation is not None:
        teacher.recorded = {"accuracy": evaluation.get("accuracy"), "ci95": evaluation.get("ci95"),
                            "episodes": evaluation.get("episodes"), "ways": run.config.get("ways"),
                            "shots": run.config.get("shots")}
    return teacher


def _class_prototypes(teacher: Teacher, shots: int) -> np.ndarray:
    """Mean teacher feature of up to ``shots`` seeded training images of every training class."""
    split = teacher.dataset.splits["train"]
    labels = np.asarray(split.labels)
    rng = np.random.default_rng(PROTOTYPE_SEED)
    rows, owners = [], []
    for c in range(split.num_classes):
        idx = np.flatnonzero(labels == c)
        if len(idx) == 0:
            raise ValueError(f"Training class {c} of the teacher's dataset has no images. Received: class={c}")
        take = rng.choice(idx, size=min(shots, len(idx)), replace=False)
        rows.append(take)
        owners.append(np.full(len(take), c))
    rows_all, owners_all = np.concatenate(rows), np.concatenate(owners)
    features = []
    for start in range(0, len(rows_all), 512):
        x = teacher.dataset.to_float(split.images[rows_all[start:start + 512]])
        features.append(np.asarray(functional.to_numpy(teacher.features(x)), dtype=np.float64))
    feats = np.concatenate(features).reshape(len(rows_all), -1)
    sums = np.zeros((split.num_classes, feats.shape[1]))
    np.add.at(sums, owners_all, feats)
    return (sums / np.bincount(owners_all, minlength=split.num_classes)[:, None]).astype(np.float32)


def _soft_loss(student_logits: Any, teacher_logits: Any, temperature: float) -> Any:
    """``T^2 * KL(softmax(teacher / T) || softmax(student / T))``, averaged over the batch."""
    t = ops.convert_to_tensor(temperature, dtype=student_logits.dtype)
    log_p = ops.log_softmax(teacher_logits / t, axis=-1)
    log_q = ops.log_softmax(student_logits / t, axis=-1)
    kl = ops.sum(ops.exp(log_p) * (log_p - log_q), axis=-1)
    return t * t * ops.mean(kl)


class Distill(MetaAlgorithm):
    """A student classifier over the training classes distilled from a teacher run.

    Args:
        params: A validated ``DistillParams``.
        task: What the tasks look like; classification with ``num_train_classes >= 2``.
        teacher: An already loaded :class:`Teacher` (tests); by default loaded from ``params.teacher_run``.

    Raises:
        ValueError: If the number of training classes is unknown, or the teacher run is unknown, unfinished or
            does not match (see :func:`load_teacher`).
        FileNotFoundError: If the teacher's run store or checkpoint is missing.
    """

    #: Trained on mini-batches of the training split with global labels (plugin API 1.2).
    batch_kind = "supervised"

    def __init__(self, params: Any, task: TaskSpec, teacher: Teacher | None = None):
        if int(getattr(task, "num_train_classes", 0)) < 2:
            raise ValueError(
                "The student is a classifier over the training classes, so it needs task.num_train_classes >= 2. "
                f"Received: num_train_classes={getattr(task, 'num_train_classes', None)!r}"
            )
        super().__init__(params, task)
        # The student is built before the teacher is loaded: rebuilding the teacher run re-seeds Keras with the
        # teacher's seed, and the student's initialisation must depend on its own run's seed only.
        self.backbone = task.make_backbone()
        head = keras.layers.Dense(int(task.num_train_classes), name="head")
        self.model = keras.Sequential([keras.Input(tuple(task.input_shape)), self.backbone, head], name="student")
        self.fmodel = functional.FunctionalModel(self.model)
        self.fbackbone = functional.FunctionalModel(self.backbone)
        # The teacher's weights are not the run's: they are reloaded from the teacher run on every build. The
        # outer optimizer is the base class's Adam at lr.
        self.track(self.model)
        if teacher is None and params.teacher_run:
            teacher = load_teacher(params.teacher_run, task, params.prototype_shots)
        self.teacher = teacher
        if teacher is None:
            logger.warning(
                "metalab.distill: no teacher_run given, so there is nothing to distil: the student trains as a "
                "plain supervised classifier on the hard labels (alpha=%g is ignored).", params.alpha,
            )
        else:
            logger.warning(
                "metalab.distill: distilling from teacher run %s (%s on %s, soft targets from its %s) at "
                "temperature %g, alpha %g.", teacher.run_id, teacher.run.algorithm_id, teacher.run.dataset_id,
                "classifier over the training classes" if teacher.mode == "head" else "class-prototype distances",
                params.temperature, params.alpha,
            )

    def meta_gradients(self, batch: TaskBatch) -> tuple[list[Any], dict[str, Any]]:
        """Returns the gradient of the distillation loss over a supervised batch (both halves together).

        Metrics: ``loss``, ``accuracy`` (student, hard labels), ``hard_loss`` and, with a teacher, ``soft_loss``
        (``T^2`` times the KL divergence), ``agreement`` (student and teacher pick the same class) and
        ``teacher_accuracy`` on the batch.
        """
        dtype = self.model.compute_dtype
        x, y = self.flat_inputs(batch, dtype), self.flat_labels(batch)
        teacher_logits = None if self.teacher is None else ops.stop_gradient(self.teacher.logits(x))
        alpha = float(self.config.alpha)

        def loss_fn(weights):
            logits, state = self.fmodel.call_with_state(weights, x, training=True)
            hard, accuracy = loss_and_metric("classification", logits, y)
            if teacher_logits is None:
                return hard, (hard, hard, accuracy, logits, state)
            soft = _soft_loss(logits, teacher_logits, self.config.temperature)
            return alpha * soft + (1.0 - alpha) * hard, (hard, soft, accuracy, logits, state)

        (loss, (hard, soft, accuracy, logits, state)), grads = functional.value_and_grad(
            loss_fn, self.fmodel.params(), has_aux=True
        )
        self.fmodel.set_state(functional.stop_gradient(state))
        metrics = self.scores(loss, accuracy, hard_loss=hard)
        if teacher_logits is not None:
            teacher_pick = ops.argmax(teacher_logits, axis=-1)
            metrics["soft_loss"] = soft
            metrics["agreement"] = ops.mean(ops.cast(ops.equal(ops.argmax(logits, axis=-1), teacher_pick), dtype))
            metrics["teacher_accuracy"] = ops.mean(ops.cast(ops.equal(ops.cast(teacher_pick, "int32"), y), dtype))
        return grads, metrics

    def evaluate(self, batch: TaskBatch) -> dict[str, Any]:
        """Scores each episode by the nearest class centroid of the student's frozen backbone features.

        Returns:
            ``loss`` ``[T]``, ``accuracy`` ``[T]`` and ``predictions`` (query logits ``[T, queries, ways]``).
        """
        return nearest_centroid_evaluate(self.fbackbone, batch, self.task.ways)

    # -- report ----------------------------------------------------------------------------------------------

    def report_data(self) -> dict[str, Any]:
        """Teacher against student: parameters, images per second and (with a teacher) few-shot accuracy.

        Speed is the inference throughput of the logits (the student's classifier; the teacher's classifier or
        prototype distances), compiled, on ``SPEED_BATCH`` images at a time. Accuracy is the nearest-centroid
        rule on each model's features on the same ``REPORT_EPISODES`` fixed test episodes of the student's
        episode shape, so the two numbers are comparable; the teacher run's own recorded score (its protocol)
        is passed on as ``teacher.recorded``.

        Returns:
            ``{"teacher_run", "mode", "temperature", "alpha", "episode": {ways, shots, queries, episodes},
            "student": {"params", "images_per_s", "accuracy", "ci95"}, "teacher": {... , "algorithm",
            "backbone", "dataset", "recorded"} or None}``.
        """
        student_logits = functional.compile(lambda x: self.model(x, training=False))
        student_features = functional.compile(lambda x: self.backbone(x, training=False))
        data: dict[str, Any] = {
            "teacher_run": None if self.teacher is None else self.teacher.run_id,
            "mode": None if self.teacher is None else self.teacher.mode,
            "temperature": float(self.config.temperature), "alpha": float(self.config.alpha),
            "student": {"params": _weight_count(self.model.weights),
                        "images_per_s": images_per_second(student_logits, self.task.input_shape)},
            "teacher": None,
        }
        if self.teacher is None:
            return data
        teacher = self.teacher
        teacher_logits = functional.compile(teacher.logits)
        teacher_features = functional.compile(teacher.features)
        data["teacher"] = {
            "algorithm": teacher.run.algorithm_id, "backbone": teacher.run.config.get("backbone"),
            "dataset": teacher.run.dataset_id, "params": teacher.weight_count(),
            "images_per_s": images_per_second(teacher_logits, self.task.input_shape), "recorded": teacher.recorded,
        }
        episodes = self._report_episodes()
        if episodes is not None:
            data["episode"] = {"ways": self.task.ways, "shots": self.task.shots, "queries": self.task.queries,
                               "episodes": int(episodes.num_tasks)}
            for name, features in (("student", student_features), ("teacher", teacher_features)):
                accuracy, ci95 = nearest_centroid_accuracy(features, episodes, self.task.ways)
                data[name].update({"accuracy": accuracy, "ci95": ci95})
        return data

    def _report_episodes(self) -> TaskBatch | None:
        """The engine's fixed test episodes of the teacher's dataset, in the student's episode shape."""
        try:
            return self.teacher.run.fixed_episodes("test", self.task.ways, self.task.shots, self.task.queries,
                                                   REPORT_EPISODES)
        except ValueError:
            logger.exception("metalab.distill: no test episodes of the run's shape for the report")
            return None


def images_per_second(fn: Any, input_shape: tuple[int, ...], batch: int = SPEED_BATCH,
                      seconds: float = SPEED_SECONDS) -> float:
    """Throughput of ``fn`` on batches of ``batch`` random inputs, after a warm-up call (which traces it).

    Args:
        fn: A (compiled) function of an input batch ``[batch, *input_shape]``.
        input_shape: Shape of one input.
        batch: Inputs per call.
        seconds: How long to keep calling ``fn`` (at least three calls are timed).

    Returns:
        Inputs processed per second.
    """
    x = np.random.default_rng(0).uniform(size=(batch, *input_shape)).astype(np.float32)
    functional.to_numpy(fn(x))
    calls, start = 0, time.perf_counter()
    while calls < 3 or time.perf_counter() - start < seconds:
        functional.to_numpy(fn(x))
        calls += 1
    return calls * batch / (time.perf_counter() - start)


def nearest_centroid_accuracy(features_fn: Any, episodes: TaskBatch, ways: int) -> tuple[float, float]:
    """Mean query accuracy (and its 95% interval) of nearest-class-mean classification on ``features_fn``.

    Args:
        features_fn: Maps an input batch to ``[N, d]`` features.
        episodes: Classification episodes.
        ways: Classes per episode.

    Returns:
        ``(accuracy, ci95)``.
    """
    scores = []
    for t in range(episodes.num_tasks):
        sx, sy = np.asarray(episodes.support_x[t]), np.asarray(episodes.support_y[t]).astype(int)
        qx, qy = np.asarray(episodes.query_x[t]), np.asarray(episodes.query_y[t]).astype(int)
        feats = np.asarray(functional.to_numpy(features_fn(np.concatenate([sx, qx]))), dtype=np.float64)
        feats = feats.reshape(len(feats), -1)
        support, query = feats[: len(sx)], feats[len(sx):]
        prototypes = np.stack([support[sy == k].mean(axis=0) for k in range(ways)])
        distances = ((query[:, None, :] - prototypes[None]) ** 2).sum(axis=-1)
        scores.append(float(np.mean(distances.argmin(axis=1) == qy)))
    values = np.asarray(scores)
    ci95 = float(1.96 * values.std(ddof=1) / np.sqrt(len(values))) if len(values) > 1 else float("nan")
    return float(values.mean()), ci95
