"""Issue 22: MAML's meta-batch runs as one traced task in a loop, and meta-testing batches its episodes.

The compiled train step must not grow with the meta-batch (its trace and compile time is that of one task), give
the unrolled step's meta-gradients, and batched evaluation must score every episode as it would be scored alone.
"""

import keras
import numpy as np
import pytest

from metalab.core.authoring import testing
from metalab.core.contract.specs import TaskBatch, TaskSpec
from metalab.core.engine import functional
from metalab.core.engine.episodic import looped_task_gradients, prototype_logits
from metalab.plugins.backbones import CONV4, MLP, Conv4Params, MLPParams
from metalab.plugins.maml import SPEC as MAML_SPEC, MAMLParams
from metalab.plugins.protonet import SPEC as PROTONET_SPEC, ProtoNetParams

on_tensorflow = pytest.mark.skipif(keras.backend.backend() != "tensorflow", reason="the task loop is TensorFlow's")


def image_task(ways=3, shots=1, queries=2):
    return TaskSpec("classification", (8, 8, 1), ways, ways, shots, queries, 1000,
                    lambda: CONV4.factory(Conv4Params(filters=4, blocks=2), (8, 8, 1)))


def image_batch(seed, num_tasks, ways=3, shots=1, queries=2):
    rng = np.random.default_rng(seed)
    return TaskBatch(rng.normal(1.0, 1.0, size=(num_tasks, ways * shots, 8, 8, 1)).astype("float32"),
                     np.tile(np.repeat(np.arange(ways), shots), (num_tasks, 1)),
                     rng.normal(1.0, 1.0, size=(num_tasks, ways * queries, 8, 8, 1)).astype("float32"),
                     np.tile(np.repeat(np.arange(ways), queries), (num_tasks, 1)))


def maml(task_loop, meta_batch, task=None, **params):
    keras.utils.set_random_seed(0)
    return MAML_SPEC.factory(MAMLParams(meta_batch_size=meta_batch, task_loop=task_loop, inner_lr=0.1, **params),
                             task or image_task())


def vector_task():
    """A small MLP: the graph-size test counts nodes, which a conv-4 would only make slower to trace."""
    return TaskSpec("classification", (8, 8, 1), 3, 3, 1, 2, 1000,
                    lambda: MLP.factory(MLPParams(hidden=[8]), (8, 8, 1)))


def graph_nodes(algorithm, batch):
    """Nodes of the compiled meta-gradient step's graph, its function library (loop bodies) included."""
    compiled = functional.compile(lambda *arrays: algorithm.meta_gradients(TaskBatch(*arrays)))
    graph_def = compiled.get_concrete_function(*batch.as_tuple()).graph.as_graph_def()
    return len(graph_def.node) + sum(len(f.node_def) for f in graph_def.library.function)


# -- MAML: one traced task ---------------------------------------------------------------------------------


@on_tensorflow
def test_looped_step_graph_does_not_grow_with_the_meta_batch():
    looped = [graph_nodes(maml("auto", t, vector_task()), image_batch(0, t)) for t in (2, 8)]
    assert looped[0] == looped[1]
    # The unrolled step holds a copy of the inner loop per task: the growth this test guards against.
    unrolled = [graph_nodes(maml("unroll", t, vector_task()), image_batch(0, t)) for t in (2, 4)]
    assert unrolled[1] > 1.8 * unrolled[0] > 1.8 * looped[0] / 2


@on_tensorflow
@pytest.mark.parametrize("first_order", [False, True])
def test_looped_meta_gradients_equal_the_unrolled_ones(first_order):
    batch = image_batch(1, 3)
    results = {}
    for mode in ("loop", "unroll"):
        algorithm = maml(mode, 3, first_order=first_order)
        compiled = functional.compile(lambda *arrays, a=algorithm: a.meta_gradients(TaskBatch(*arrays)))
        results[mode] = functional.to_numpy(compiled(*batch.as_tuple()))
    (g_loop, m_loop), (g_unroll, m_unroll) = results["loop"], results["unroll"]
    for a, b in zip(g_loop, g_unroll):
        np.testing.assert_allclose(a, b, rtol=2e-4, atol=1e-6)
    for key in m_unroll:
        np.testing.assert_allclose(m_loop[key], m_unroll[key], rtol=1e-5)
    if not first_order:  # the loop keeps the second-order terms: first order gives another meta-gradient
        first = maml("loop", 3, first_order=True)
        compiled = functional.compile(lambda *arrays: first.meta_gradients(TaskBatch(*arrays)))
        g_first = functional.to_numpy(compiled(*batch.as_tuple()))[0]
        assert max(float(np.max(np.abs(a - b))) for a, b in zip(g_first, g_loop)) > 1e-4


@on_tensorflow
def test_looped_task_gradients_is_the_mean_of_each_tasks_gradient_float64():
    rng = np.random.default_rng(0)
    xs = rng.normal(size=(5, 4)).astype("float64")
    w = np.array([0.5, -1.0, 2.0, 0.25])

    def task(p, x):
        inner = functional.value_and_grad(lambda q: keras.ops.sum(keras.ops.sin(q * x)), p)[1]
        fast = p - 0.3 * inner  # a gradient inside: the outer gradient is second order
        value = keras.ops.sum(keras.ops.square(fast * x))
        return value, (value * 2.0, keras.ops.max(x))

    compiled = functional.compile(lambda p, x: looped_task_gradients(task, p, x, window=2, aux_like=(0.0, 0.0)))
    (value, (double, biggest)), grad = functional.to_numpy(compiled(w, xs))
    expected = [functional.value_and_grad(lambda p, x=x: task(p, x), w, has_aux=True) for x in xs]
    np.testing.assert_allclose(value, np.mean([float(v) for (v, _), _ in expected]), rtol=1e-12)
    np.testing.assert_allclose(double, 2 * value, rtol=1e-12)
    assert biggest == pytest.approx(xs.max(axis=1).mean(), rel=1e-12)
    np.testing.assert_allclose(grad, np.mean([functional.to_numpy(g) for _, g in expected], axis=0), rtol=1e-12)
    assert grad.dtype == np.float64


def test_looped_task_gradients_refuses_a_bad_window():
    with pytest.raises(ValueError, match="window"):
        looped_task_gradients(lambda p, x: (p, p), np.zeros(2), np.zeros((2, 2)), window=0)


# -- meta-testing: batched episodes score as one at a time -------------------------------------------------


def one_at_a_time(algorithm, batch):
    compiled = functional.compile(lambda *arrays: algorithm.evaluate(TaskBatch(*arrays)))  # one trace, T calls
    parts = [functional.to_numpy(compiled(*(a[t:t + 1] for a in batch.as_tuple()))) for t in range(batch.num_tasks)]
    return {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}


@pytest.mark.parametrize("distance", ["euclidean", "cosine"])
def test_protonet_batched_evaluation_scores_each_episode_as_alone(distance):
    keras.utils.set_random_seed(0)
    algorithm = PROTONET_SPEC.factory(ProtoNetParams(distance=distance), image_task(shots=2, queries=3))
    testing.train_steps(algorithm, lambda: image_batch(2, 1, shots=2, queries=3), 3)  # running moments move
    batch = image_batch(3, 6, shots=2, queries=3)
    assert algorithm._episodes_per_call(6, 15, 64) == 1  # the default: one episode per backbone call
    algorithm.eval_inputs_per_call = 2**20
    assert algorithm._episodes_per_call(6, 15, 64) == 6  # all six episodes share one backbone call
    batched = testing.evaluate_compiled(algorithm, batch)
    alone = one_at_a_time(algorithm, batch)
    np.testing.assert_array_equal(batched["accuracy"], alone["accuracy"])
    np.testing.assert_allclose(batched["loss"], alone["loss"], rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(batched["predictions"], alone["predictions"], rtol=1e-4, atol=1e-5)
    assert len(set(np.round(batched["loss"], 5))) == 6  # six different episodes, not one repeated


def test_protonet_groups_divide_the_episodes_and_respect_the_input_budget():
    algorithm = PROTONET_SPEC.factory(ProtoNetParams(), image_task())
    algorithm.eval_inputs_per_call = 4 * 100
    assert algorithm._episodes_per_call(16, 10, 10) == 4
    assert algorithm._episodes_per_call(6, 10, 10) == 3  # 4 does not divide 6
    assert algorithm._episodes_per_call(7, 10, 10) == 1  # a prime count: one episode per call
    assert algorithm._episodes_per_call(16, 100, 100) == 1  # one episode is over the budget: still scored


def test_batched_prototype_logits_equal_each_episodes():
    rng = np.random.default_rng(4)
    support, query = rng.normal(size=(3, 6, 5)), rng.normal(size=(3, 4, 5))
    labels = np.array([[0, 1, 2, 0, 1, 2], [2, 2, 1, 1, 0, 0], [0, 0, 0, 1, 1, 2]])
    for distance in ("euclidean", "cosine"):
        batched = functional.to_numpy(prototype_logits(support, labels, query, 3, distance))
        for t in range(3):
            alone = functional.to_numpy(prototype_logits(support[t], labels[t], query[t], 3, distance))
            np.testing.assert_allclose(batched[t], alone, rtol=1e-10)


def test_maml_mapped_evaluation_scores_each_episode_as_alone():
    algorithm = maml("auto", 2, eval_inner_steps=2)
    batch = image_batch(5, 5)
    mapped = testing.evaluate_compiled(algorithm, batch)
    alone = one_at_a_time(algorithm, batch)
    np.testing.assert_array_equal(mapped["accuracy"], alone["accuracy"])
    np.testing.assert_allclose(mapped["curve"], alone["curve"], rtol=1e-5)
    np.testing.assert_allclose(mapped["loss"], alone["loss"], rtol=1e-4, atol=1e-6)
    assert len(set(np.round(mapped["loss"], 5))) == 5
