"""Figure data that needs the trained model, computed by the training loop (in the worker) when a run completes.

The dashboard never imports TensorFlow, so whatever a report shows of the model itself (fits of 1-D regression
tasks before and after adaptation, a test episode's predictions, query embeddings) is computed here, at the end
of training, and stored as the run's ``report_data.json`` artifact. :mod:`metalab.core.reports.figures` draws it
from the store; this module lives in the engine because it needs the model, and the reports never import it.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Any

import numpy as np

from metalab.core.data.images import to_uint8
from metalab.core.contract.specs import TaskBatch

logger = logging.getLogger(__name__)

#: Seed of the tasks shown in reports (the same for every run, so reports of one dataset are comparable).
REPORT_SEED = 2017
#: Inner steps after which the regression fits are drawn (the MAML paper's figure: pre-update, 1 and 10 steps).
FIT_STEPS = (0, 1, 10)
#: Query images kept for the episode gallery at most: every query of an ordinary episode (20-way with 15 queries
#: a class is 300); beyond it, the same number of each class (the gallery scores only the queries it keeps).
GALLERY_QUERIES = 600


def write_report_data(store: Any, run_id: str, session: Any, registry: Any) -> Path | None:
    """Computes the run's report data and records it as the ``report_data`` artifact.

    Never raises: a report figure must not fail a run that trained well; a problem is logged and ``None``
    returned.

    Args:
        store: The :class:`~metalab.core.store.RunStore`.
        run_id: The run.
        session: The run's :class:`~metalab.core.engine.session.Session` holding the trained algorithm.
        registry: The plugin registry (to build algorithm variants with other inner-step counts).

    Returns:
        The path of ``report_data.json``, or ``None`` when nothing could be computed.
    """
    try:
        data = compute_report_data(session, registry)
        if not data:
            return None
        path = store.run_dir(run_id) / "report_data.json"
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(data), encoding="utf-8")
        os.replace(tmp, path)
        store.add_artifact(run_id, "report_data", "json", path)
        return path
    except Exception:  # noqa: BLE001 - report figures are best effort
        logger.exception("Report data of run %s could not be computed", run_id)
        return None


def compute_report_data(session: Any, registry: Any) -> dict[str, Any]:
    """Returns ``{"sinusoid": ...}`` for 1-D regression, ``{"episode": ..., "embedding": ...}`` for images.

    An algorithm with a ``report_data()`` method (plugin API 1.2) adds what it returns under its id, e.g.
    ``{"metalab_foo.foo": {...}}``.

    Args:
        session: The run's session (config, dataset, trained algorithm, task spec).
        registry: The plugin registry.

    Returns:
        A JSON-serialisable dict (empty when the dataset has no figure of its own).
    """
    data: dict[str, Any] = {}
    algorithm_data = algorithm_report_data(session.algorithm)
    if algorithm_data:
        # Keyed by the algorithm's id, where the algorithm's plugin finds it (metalab_report_panels hook).
        data[session.config.algorithm] = algorithm_data
    if session.task.kind == "regression":
        if tuple(session.task.input_shape) == (1,) and session.task.output_dim == 1:
            data["sinusoid"] = regression_fits(session, registry)
    elif session.task.kind == "environment":
        data.update(environment_report_data(session, registry))
    else:
        episode, embedding = classification_episode(session)
        if episode:
            data["episode"] = episode
        if embedding:
            data["embedding"] = embedding
    return data


def algorithm_report_data(algorithm: Any) -> dict[str, Any] | None:
    """What the algorithm's optional ``report_data()`` returns, as plain JSON types; ``None`` when it has none.

    Never raises: a failing method is logged and ignored, so the dataset's figures are still written.

    Args:
        algorithm: The trained algorithm object.

    Returns:
        A JSON-serialisable dict (NumPy arrays and scalars converted), or ``None``.
    """
    method = getattr(algorithm, "report_data", None)
    if not callable(method):
        return None
    try:
        result = method()
        if result is None:
            return None
        if not isinstance(result, dict):
            raise TypeError(f"report_data() must return a dict. Received: {type(result).__name__}")
        plain = _plain(result)
        json.dumps(plain)
        return plain
    except Exception:  # noqa: BLE001 - a plugin's report data is best effort
        logger.exception("report_data() of %s failed", type(algorithm).__name__)
        return None


def _plain(value: Any) -> Any:
    """``value`` with NumPy arrays and scalars (and tensors) turned into lists and Python numbers."""
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, (str, bool, int, float)) or value is None:
        return value
    if isinstance(value, np.generic):
        return value.item()
    if hasattr(value, "shape") or isinstance(value, np.ndarray):
        return np.asarray(value).tolist()
    return value

def _algorithm_variant(session: Any, registry: Any, inner_steps: int) -> Any | None:
    """The run's algorithm rebuilt with ``eval_inner_steps=inner_steps`` and the trained weights, if it has one."""
    spec = registry.algorithm(session.config.algorithm)
    if "eval_inner_steps" not in spec.params.model_fields:
        return None
    values = {**session.config.algorithm_params, "eval_inner_steps": int(inner_steps)}
    from metalab.core.contract.manager import check_factory_result

    variant = check_factory_result(spec, spec.factory(spec.params(**values), session.task), registry=registry)
    if len(variant.variables) != len(session.algorithm.variables):
        return None
    for target, source in zip(variant.variables, session.algorithm.variables):
        target.assign(source)
    return variant


def _numpy(value: Any) -> np.ndarray:
    from metalab.core.engine import functional

    return np.asarray(functional.to_numpy(value))


def regression_fits(session: Any, registry: Any, num_tasks: int = 3, grid_points: int = 100) -> dict[str, Any]:
    """Model output on a grid for a few tasks, before adaptation and after 1 and 10 inner steps."""
    family = session.dataset
    rng = np.random.default_rng(REPORT_SEED)
    x_range = getattr(family, "x_range", None)
    if x_range is None:
        probe, _ = family.sample_points(family.sample_task(rng), 1000, rng)
        x_range = (float(probe.min()), float(probe.max()))
    grid = np.linspace(float(x_range[0]), float(x_range[1]), grid_points, dtype=np.float32).reshape(-1, 1)
    shots = int(session.config.shots)
    tasks, sx, sy, qy = [], [], [], []
    for _ in range(num_tasks):
        task = family.sample_task(rng)
        x, y = family.sample_points(task, shots, rng)
        tasks.append(task)
        sx.append(x)
        sy.append(y)
        qy.append(np.asarray(family.evaluate(task, grid), dtype=np.float32).reshape(grid_points, 1))
    batch = TaskBatch(np.stack(sx), np.stack(sy), np.repeat(grid[None], num_tasks, axis=0), np.stack(qy))
    predictions: dict[str, np.ndarray] = {}
    for steps in FIT_STEPS:
        algorithm = _algorithm_variant(session, registry, steps)
        if algorithm is None:
            break
        predictions[str(steps)] = _numpy(algorithm.evaluate(batch)["predictions"])
    if not predictions:
        out = session.algorithm.evaluate(batch)
        if "predictions" in out:
            predictions["adapted"] = _numpy(out["predictions"])
    rows = []
    for i, task in enumerate(tasks):
        rows.append({
            "amplitude": float(getattr(task, "amplitude", float("nan"))),
            "phase": float(getattr(task, "phase", float("nan"))),
            "true": qy[i][:, 0].round(5).tolist(),
            "support_x": sx[i][:, 0].round(5).tolist(),
            "support_y": sy[i][:, 0].round(5).tolist(),
            "predictions": {k: v[i].reshape(-1).round(5).tolist() for k, v in predictions.items()},
        })
    return {"x": grid[:, 0].round(5).tolist(), "tasks": rows}


def _to_uint8(images: np.ndarray) -> list:
    images = np.asarray(images, dtype=np.float32)
    if images.ndim == 4 and images.shape[-1] != 3:  # colour images stay colour; others show their first channel
        images = images[..., 0]
    return to_uint8(images).tolist()


def _features(algorithm: Any, x: np.ndarray) -> tuple[np.ndarray, str] | None:
    """Backbone features of ``x``: the model minus its ``head`` layer, or the model when it is an embedding."""
    model = getattr(algorithm, "model", None)
    if model is None:
        return None
    layers = list(getattr(model, "layers", []))
    if layers and layers[-1].name == "head":
        body = layers[:-1]
        out = x
        for layer in body:
            out = layer(out, training=True)
        return _numpy(out), "PCA of backbone features at the meta-learned initialisation"
    return _numpy(model(x, training=True)), "PCA of embeddings"


def gallery_queries(labels: np.ndarray, limit: int) -> np.ndarray:
    """Indices of the queries the gallery keeps: all of them up to ``limit``, else the first ``limit // classes``
    of each class (keeping the first ``limit`` in episode order left most classes out of a 20-way gallery)."""
    labels = np.asarray(labels)
    if len(labels) <= limit:
        return np.arange(len(labels))
    classes = np.unique(labels)
    per_class = max(1, limit // len(classes))
    return np.sort(np.concatenate([np.flatnonzero(labels == c)[:per_class] for c in classes]))


def classification_episode(session: Any) -> tuple[dict[str, Any] | None, dict[str, Any] | None]:
    """One fixed test episode with predicted labels, and a 2-D PCA of its query embeddings."""
    from metalab.core.engine.evaluation import fixed_batch

    batch = fixed_batch(session, "test", 1, seed=REPORT_SEED)
    out = session.algorithm.evaluate(batch)
    if "predictions" not in out:
        return None, None
    predicted = _numpy(out["predictions"])[0].argmax(axis=-1).astype(int)
    labels = np.asarray(batch.query_y)[0].astype(int)
    support_x, query_x = np.asarray(batch.support_x)[0], np.asarray(batch.query_x)[0]
    episode = None
    describe = getattr(session.dataset, "describe", None)
    if describe is not None and support_x.ndim == 2:
        # Inputs a person reads as text (API 1.6): the gallery shows the sentences where it shows pictures.
        keep = gallery_queries(labels, GALLERY_QUERIES)
        episode = {
            "ways": int(session.task.ways), "shots": int(session.config.shots),
            "accuracy": float(np.mean(predicted[keep] == labels[keep])),
            "episode_accuracy": float(np.mean(predicted == labels)), "episode_queries": int(len(labels)),
            "support_texts": [str(t) for t in describe(support_x)],
            "support_labels": np.asarray(batch.support_y)[0].astype(int).tolist(),
            "query_texts": [str(t) for t in describe(query_x[keep])], "query_labels": labels[keep].tolist(),
            "query_predictions": predicted[keep].tolist(),
        }
    elif support_x.ndim in (3, 4):
        keep = gallery_queries(labels, GALLERY_QUERIES)
        episode = {
            "ways": int(session.task.ways), "shots": int(session.config.shots),
            # Over the queries kept, which the gallery shows: its title's score is what the page shows.
            "accuracy": float(np.mean(predicted[keep] == labels[keep])),
            "episode_accuracy": float(np.mean(predicted == labels)), "episode_queries": int(len(labels)),
            "support_images": _to_uint8(support_x), "support_labels": np.asarray(batch.support_y)[0].astype(int).tolist(),
            "query_images": _to_uint8(query_x[keep]), "query_labels": labels[keep].tolist(),
            "query_predictions": predicted[keep].tolist(),
        }
    embedding = None
    features = _features(session.algorithm, query_x)
    if features is not None:
        feats, method = features
        feats = feats.reshape(len(feats), -1).astype(np.float64)
        feats -= feats.mean(axis=0)
        # PCA through the SVD: the top two right-singular vectors span the projection.
        _, _, vt = np.linalg.svd(feats, full_matrices=False)
        points = feats @ vt[:2].T if vt.shape[0] >= 2 else np.pad(feats @ vt.T, ((0, 0), (0, 1)))
        embedding = {"points": points.round(5).tolist(), "labels": labels.tolist(),
                     "correct": (predicted == labels).tolist(), "method": method}
    return episode, embedding


#: Test tasks the report's random-initialisation comparison and trajectory plots adapt to.
REPORT_ENV_TASKS = 10


def environment_report_data(session: Any, registry: Any) -> dict[str, Any]:
    """An environment run's adaptation against a random initialisation, and where its agent went.

    ``"adaptation"``: the average return after 0..steps adaptation steps of the trained policy and of a new,
    untrained one of the same algorithm and settings, on the first :data:`REPORT_ENV_TASKS` fixed test tasks with
    the same episodes' seed. ``"trajectories"`` (a family with ``plot_xy`` and an algorithm with
    ``adapted_trajectories``): for two test tasks, the goal and a few paths after each adaptation step.
    """
    import keras

    from metalab.core.engine.evaluation import eval_steps, evaluate_environment
    from metalab.core.engine.fixed_tasks import EVAL_SEED
    from metalab.core.engine.rollouts import Rollouts, fixed_environment_tasks, trajectory_paths

    family, algorithm, config = session.dataset, session.algorithm, session.config
    steps = eval_steps(algorithm)
    fixed = fixed_environment_tasks(family, "test", min(REPORT_ENV_TASKS, int(config.test_episodes)), EVAL_SEED)
    spec = registry.algorithm(config.algorithm)
    keras.utils.set_random_seed(int(config.seed) + 1)
    fresh = spec.factory(spec.params(**config.algorithm_params), session.task)
    curves = {}
    for name, agent in (("trained", algorithm), ("random initialisation", fresh)):
        result = evaluate_environment(family, agent, fixed, steps)
        curves[name] = {"curve": result["curve"], "curve_ci95": result["curve_ci95"]}
    data: dict[str, Any] = {"adaptation": {"tasks": fixed.n, "steps": steps, "curves": curves}}
    trajectories = getattr(algorithm, "adapted_trajectories", None)
    if callable(getattr(family, "plot_xy", None)) and callable(trajectories):
        rows = []
        for i, task in enumerate(fixed.tasks[:2]):
            runs = trajectories(task, Rollouts(family, np.random.default_rng([EVAL_SEED, 7, i])), steps)
            goal, paths = trajectory_paths(family, task, runs)
            rows.append({"task": family.describe_task(task), "goal": goal, "paths": paths})
        data["trajectories"] = rows
    return data
