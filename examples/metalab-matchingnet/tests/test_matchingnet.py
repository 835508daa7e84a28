"""Tests of the Matching Networks plugin, runnable from this package's own folder: ``pytest`` (metalab installed).

The unit tests check the paper's equations on tiny tensors; the conformance tests run metalab's suite
(``metalab.api.testing``) on the embedded digits dataset, as for any algorithm plugin.
"""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest

from metalab.api import TaskBatch, TaskSpec, testing

ALGORITHM = "metalab_matchingnet.matchingnet"
WAYS, SHOTS, QUERIES, FEATURES = 3, 2, 2, 8


@pytest.fixture(scope="module")
def registry():
    # Only metalab's built-ins (for the tiny datasets and the MLP backbone) and this plugin: other installed
    # plugins, broken or not, do not matter here.
    return testing.registry_for("metalab-matchingnet")


def make_algorithm(registry, **params):
    spec = registry.algorithm(ALGORITHM)
    mlp = registry.backbone("metalab.mlp")
    task = TaskSpec(
        kind="classification", input_shape=(FEATURES,), output_dim=WAYS, ways=WAYS, shots=SHOTS, queries=QUERIES,
        total_steps=10, make_backbone=lambda: mlp.factory(mlp.params(hidden=[16]), (FEATURES,)),
    )
    return spec.factory(spec.params(**params), task)


def random_batch(seed: int = 0, tasks: int = 1) -> TaskBatch:
    rng = np.random.default_rng(seed)
    labels = np.repeat(np.arange(WAYS, dtype=np.int32), SHOTS)
    return TaskBatch(
        support_x=rng.normal(size=(tasks, WAYS * SHOTS, FEATURES)).astype(np.float32),
        support_y=np.broadcast_to(labels, (tasks, WAYS * SHOTS)).copy(),
        query_x=rng.normal(size=(tasks, WAYS * QUERIES, FEATURES)).astype(np.float32),
        query_y=np.broadcast_to(np.repeat(np.arange(WAYS, dtype=np.int32), QUERIES), (tasks, WAYS * QUERIES)).copy(),
    )


def permuted_support(batch: TaskBatch, order: np.ndarray) -> TaskBatch:
    return TaskBatch(batch.support_x[:, order], batch.support_y[:, order], batch.query_x, batch.query_y)


# -- registration -----------------------------------------------------------------------------------------


def test_registered_under_the_distribution_namespace(registry):
    spec = registry.algorithm(ALGORITHM)
    record = registry.plugin_of(ALGORITHM)
    assert (record.package, record.namespace, record.api_version) == ("metalab-matchingnet", "metalab_matchingnet", "1.0")
    assert spec.task_kinds == ("classification",)
    assert spec.params().fce is False and spec.params(fce=True).processing_steps == 5
    with pytest.raises(ValueError):
        spec.params(processing_steps=0)


def test_registration_imports_no_deep_learning_framework():
    code = (
        "import sys, metalab_matchingnet; "
        "assert metalab_matchingnet.SPEC.id == 'metalab_matchingnet.matchingnet'; "
        "print(sorted(m for m in ('tensorflow', 'keras', 'jax', 'torch') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_refuses_regression_tasks(registry):
    spec = registry.algorithm(ALGORITHM)
    task = TaskSpec(kind="regression", input_shape=(1,), output_dim=1, ways=1, shots=5, queries=5, total_steps=1,
                    make_backbone=lambda: None)
    with pytest.raises(ValueError, match="Received: task.kind='regression'"):
        spec.factory(spec.params(), task)


# -- the paper's equations ------------------------------------------------------------------------------


def test_class_log_probs_is_attention_over_cosine_similarities():
    from metalab_matchingnet.algorithm import class_log_probs

    rng = np.random.default_rng(1)
    query = rng.normal(size=(4, 5)).astype(np.float32)
    support = rng.normal(size=(6, 5)).astype(np.float32)
    labels = np.array([0, 2, 1, 0, 2, 2], dtype=np.int32)

    cos = (query / np.linalg.norm(query, axis=1, keepdims=True)) @ (
        support / np.linalg.norm(support, axis=1, keepdims=True)
    ).T
    attention = np.exp(cos) / np.exp(cos).sum(axis=1, keepdims=True)
    expected = attention @ np.eye(3)[labels]  # eq. 1: sum_i a(x, x_i) y_i
    got = np.exp(np.asarray(class_log_probs(query, support, labels, 3)))
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(got.sum(axis=1), 1.0, rtol=1e-5)


def test_without_fce_the_support_order_does_not_matter(registry):
    algorithm = make_algorithm(registry)
    batch = random_batch()
    order = np.random.default_rng(2).permutation(WAYS * SHOTS)
    a = np.asarray(algorithm.evaluate(batch)["predictions"])
    b = np.asarray(algorithm.evaluate(permuted_support(batch, order))["predictions"])
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)


def test_with_fce_the_embeddings_depend_on_the_whole_support_set(registry):
    # The bidirectional LSTM reads the support set as a sequence (as in the paper), so the order matters.
    algorithm = make_algorithm(registry, fce=True, processing_steps=2)
    batch = random_batch()
    order = np.random.default_rng(2).permutation(WAYS * SHOTS)
    a = np.asarray(algorithm.evaluate(batch)["predictions"])
    b = np.asarray(algorithm.evaluate(permuted_support(batch, order))["predictions"])
    assert np.abs(a - b).max() > 1e-4
    np.testing.assert_allclose(np.exp(a).sum(axis=-1), 1.0, rtol=1e-5)


@pytest.mark.parametrize("fce", [False, True])
def test_episodes_of_a_batch_do_not_interact(registry, fce):
    algorithm = make_algorithm(registry, fce=fce)
    both = random_batch(tasks=2)
    together = np.asarray(algorithm.evaluate(both)["predictions"])
    for t in range(2):
        alone = TaskBatch(*(a[t : t + 1] for a in both.as_tuple()))
        np.testing.assert_allclose(together[t : t + 1], np.asarray(algorithm.evaluate(alone)["predictions"]),
                                   rtol=1e-5, atol=1e-6)


def test_fce_scan_and_unrolled_support_lstm_agree():
    from metalab_matchingnet.algorithm import FullContextEmbedding

    unrolled = FullContextEmbedding(4, 3, unroll_limit=100)
    scanned = FullContextEmbedding(4, 3, unroll_limit=0)
    unrolled.build()
    scanned.build()
    scanned.set_weights(unrolled.get_weights())
    rng = np.random.default_rng(3)
    support = rng.normal(size=(2, 7, 4)).astype(np.float32)
    query = rng.normal(size=(2, 5, 4)).astype(np.float32)
    for x, y in zip(unrolled((support, query)), scanned((support, query)), strict=True):
        assert tuple(x.shape) == tuple(y.shape)
        np.testing.assert_allclose(np.asarray(x), np.asarray(y), rtol=1e-5, atol=1e-6)


def test_fce_skip_connection_with_zero_lstms_is_the_identity():
    from metalab_matchingnet.algorithm import FullContextEmbedding

    # With every LSTM weight zero, h = 0.5 * tanh(0.5 * c) and c stays 0, so g = g' and f = f' exactly.
    layer = FullContextEmbedding(3, 2)
    layer.build()
    layer.set_weights([np.zeros_like(w) for w in layer.get_weights()])
    support = np.arange(12, dtype=np.float32).reshape(1, 4, 3)
    query = -np.arange(6, dtype=np.float32).reshape(1, 2, 3)
    g, f = layer((support, query))
    np.testing.assert_allclose(np.asarray(g), support, atol=1e-6)
    np.testing.assert_allclose(np.asarray(f), query, atol=1e-6)


@pytest.mark.parametrize("fce", [False, True])
def test_every_variable_gets_a_gradient(registry, fce):
    algorithm = make_algorithm(registry, fce=fce)
    grads, metrics = algorithm.meta_gradients(random_batch(tasks=2))
    assert len(grads) == len(algorithm.trainable_variables) == len(algorithm.variables)
    if fce:
        assert len(grads) == 2 + 9  # one Dense layer (kernel, bias) and three LSTMs (kernel, recurrent, bias)
    for variable, grad in zip(algorithm.trainable_variables, grads, strict=True):
        grad = np.asarray(grad)
        assert grad.shape == tuple(variable.shape)
        assert np.isfinite(grad).all() and np.abs(grad).max() > 0, variable.path
    assert set(metrics) == {"loss", "accuracy"}


# -- metalab's conformance suite --------------------------------------------------------------------------


def test_conforms(registry, tmp_path):
    """Learns, resumes exactly from a checkpoint, and is deterministic (about 30 s on two cores)."""
    testing.check_algorithm(ALGORITHM, tmp_path, registry=registry)


def test_learns_with_full_context_embeddings(registry, tmp_path):
    testing.check_learns(ALGORITHM, tmp_path, registry=registry, algorithm_params={"fce": True})


def test_resumes_with_full_context_embeddings(registry, tmp_path):
    testing.check_resume(ALGORITHM, tmp_path, registry=registry, algorithm_params={"fce": True})
