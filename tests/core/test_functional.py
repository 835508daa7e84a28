"""The functional seam: explicit-weight model calls and (nested) gradients."""

import keras
import numpy as np
import pytest
from keras import ops

from metalab.core.engine import functional
from metalab.core.engine.layers import MetaBatchNorm


def _small_model(input_dim: int = 3) -> keras.Model:
    return keras.Sequential(
        [keras.Input((input_dim,)), keras.layers.Dense(4), MetaBatchNorm(momentum=0.5), keras.layers.Dense(2)]
    )


def test_value_and_grad_of_a_scalar_function():
    x = np.array([1.0, -2.0, 0.5], dtype="float64")
    value, grad = functional.value_and_grad(lambda p: ops.sum(p**3), x)
    np.testing.assert_allclose(functional.to_numpy(value), np.sum(x**3))
    np.testing.assert_allclose(functional.to_numpy(grad), 3 * x**2)


def test_nested_value_and_grad_gives_the_analytic_second_derivative():
    x = np.array([1.0, -2.0, 0.5], dtype="float64")
    c = np.array([0.3, 0.7, -1.1], dtype="float64")

    def weighted_gradient(p):
        _, g = functional.value_and_grad(lambda q: ops.sum(q**3), p)
        return ops.sum(g * c)

    _, hessian_times_c = functional.value_and_grad(weighted_gradient, x)
    np.testing.assert_allclose(functional.to_numpy(hessian_times_c), 6 * x * c, rtol=1e-12)


@pytest.mark.parametrize("first_order", [False, True])
def test_one_maml_step_on_a_cubic_matches_the_closed_form(first_order):
    # L(t) = phi^2 with phi = t - a * f'(t), f(t) = t^3: dL/dt = 2 phi (1 - 6 a t), or 2 phi to first order.
    a, t = 0.1, 0.8

    def meta_loss(theta):
        _, g = functional.value_and_grad(lambda p: p**3, theta)
        if first_order:
            g = functional.stop_gradient(g)
        return (theta - a * g) ** 2

    value, grad = functional.value_and_grad(meta_loss, np.float64(t))
    phi = t - 3 * a * t**2
    expected = 2 * phi * (1.0 if first_order else 1 - 6 * a * t)
    np.testing.assert_allclose(functional.to_numpy(value), phi**2, rtol=1e-12)
    np.testing.assert_allclose(functional.to_numpy(grad), expected, rtol=1e-12)


def test_value_and_grad_keeps_structure_returns_aux_and_zero_for_unused_params():
    params = {"w": np.array([2.0, 3.0]), "unused": np.array([1.0])}
    (value, aux), grads = functional.value_and_grad(
        lambda p, k: (k * ops.sum(p["w"] ** 2), {"norm": ops.sqrt(ops.sum(p["w"] ** 2))}), params, 0.5, has_aux=True
    )
    assert set(grads) == {"w", "unused"}
    np.testing.assert_allclose(functional.to_numpy(value), 6.5)
    np.testing.assert_allclose(functional.to_numpy(aux["norm"]), np.sqrt(13.0))
    np.testing.assert_allclose(functional.to_numpy(grads["w"]), [2.0, 3.0])
    np.testing.assert_array_equal(functional.to_numpy(grads["unused"]), [0.0])


def test_value_and_grad_refuses_a_non_scalar_value():
    with pytest.raises(ValueError, match="scalar"):
        functional.value_and_grad(lambda p: p * 2, np.ones(3))


def test_stop_gradient_blocks_every_leaf():
    def f(p):
        held = functional.stop_gradient({"a": p, "b": [p * 2]})
        return ops.sum(held["a"] * p) + ops.sum(held["b"][0])

    _, grad = functional.value_and_grad(f, np.array([1.0, 2.0]))
    np.testing.assert_allclose(functional.to_numpy(grad), [1.0, 2.0])  # only the unstopped factor p


def test_functional_model_needs_a_built_model():
    with pytest.raises(ValueError, match="built"):
        functional.FunctionalModel(keras.Sequential([keras.layers.Dense(2)]))


def test_functional_model_calls_with_explicit_weights_without_side_effects():
    keras.utils.set_random_seed(1)
    model = _small_model()
    fmodel = functional.FunctionalModel(model)
    x = np.random.default_rng(0).normal(size=(5, 3)).astype("float32")
    before = [v.numpy().copy() for v in model.variables]

    np.testing.assert_allclose(
        functional.to_numpy(fmodel(fmodel.params(), x)), functional.to_numpy(model(x, training=True)), rtol=1e-5
    )
    for v, b in zip(model.variables, before):  # the call above through the model moved the running moments
        if v.trainable:
            np.testing.assert_array_equal(v.numpy(), b)
    snapshot = [v.numpy().copy() for v in model.variables]
    doubled = [2 * p for p in fmodel.params()]
    out_doubled = functional.to_numpy(fmodel(doubled, x))
    assert not np.allclose(out_doubled, functional.to_numpy(fmodel(fmodel.params(), x)))
    for v, s in zip(model.variables, snapshot):
        np.testing.assert_array_equal(v.numpy(), s)


def test_call_with_state_returns_new_running_moments_and_set_state_keeps_them():
    model = _small_model()
    fmodel = functional.FunctionalModel(model)
    x = np.random.default_rng(0).normal(size=(8, 3)).astype("float32")
    assert [v.path for v in fmodel.non_trainable_variables] == [v.path for v in model.non_trainable_variables]
    old_state = functional.to_numpy(fmodel.state())

    _, new_state = fmodel.call_with_state(fmodel.params(), x, training=True)
    assert not np.allclose(functional.to_numpy(new_state[0]), old_state[0])
    np.testing.assert_array_equal(functional.to_numpy(fmodel.state()[0]), old_state[0])  # nothing assigned

    fmodel.set_state(new_state)
    np.testing.assert_allclose(functional.to_numpy(fmodel.state()[0]), functional.to_numpy(new_state[0]))
    with pytest.raises(ValueError, match="non-trainable"):
        fmodel.set_state(new_state[:1])


def test_explicit_state_is_used_in_inference_mode():
    model = _small_model()
    fmodel = functional.FunctionalModel(model)
    x = np.random.default_rng(0).normal(size=(4, 3)).astype("float32")
    state = fmodel.state()
    shifted = [s + 1.0 for s in state]
    a = functional.to_numpy(fmodel(fmodel.params(), x, training=False, state=state))
    b = functional.to_numpy(fmodel(fmodel.params(), x, training=False, state=shifted))
    assert not np.allclose(a, b)


def test_compiled_nested_gradients_match_eager():
    keras.utils.set_random_seed(2)
    model = _small_model()
    fmodel = functional.FunctionalModel(model)
    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(6, 3)).astype("float32"), rng.normal(size=(6, 2)).astype("float32")

    def loss(params, xb, yb):
        return ops.mean(ops.square(fmodel(params, xb) - yb))

    def meta(xb, yb):
        def outer(theta):
            _, g = functional.value_and_grad(loss, theta, xb, yb)
            return loss([t - 0.1 * gi for t, gi in zip(theta, g)], xb, yb)

        return functional.value_and_grad(outer, fmodel.params())

    eager_value, eager_grads = meta(x, y)
    compiled_value, compiled_grads = functional.compile(meta)(x, y)
    np.testing.assert_allclose(functional.to_numpy(compiled_value), functional.to_numpy(eager_value), rtol=1e-5)
    for c, e in zip(compiled_grads, eager_grads):
        np.testing.assert_allclose(functional.to_numpy(c), functional.to_numpy(e), rtol=1e-4, atol=1e-6)


def test_to_numpy_converts_nested_structures():
    out = functional.to_numpy({"a": ops.ones((2,)), "b": [keras.Variable(np.zeros(3))]})
    assert isinstance(out["a"], np.ndarray) and isinstance(out["b"][0], np.ndarray)
    assert out["b"][0].shape == (3,)


def test_map_tasks_applies_fn_per_task_and_stacks_structures():
    x = np.arange(6.0).reshape(3, 2)
    y = np.array([10.0, 20.0, 30.0])
    sums, pairs = functional.map_tasks(lambda a, b: (ops.sum(a) + b, {"first": a[0], "b": b}), x, y)
    np.testing.assert_allclose(functional.to_numpy(sums), [11.0, 25.0, 39.0])
    np.testing.assert_allclose(functional.to_numpy(pairs["first"]), [0.0, 2.0, 4.0])
    # Differentiable through the tasks, closing over the outer parameter.
    _, grad = functional.value_and_grad(lambda w: ops.sum(functional.map_tasks(lambda a: ops.sum(w * a), x)),
                                        np.array([1.0, 1.0]))
    np.testing.assert_allclose(functional.to_numpy(grad), x.sum(axis=0))


def test_map_tasks_refuses_mismatched_tasks_and_vectorize_off_jax():
    with pytest.raises(ValueError, match=r"same leading \(task\) dimension. Received: \[3, 2\]"):
        functional.map_tasks(lambda a, b: a, np.zeros((3, 1)), np.zeros((2, 1)))
    with pytest.raises(ValueError, match="at least one tensor"):
        functional.map_tasks(lambda: 0.0)
    if keras.backend.backend() != "jax":
        with pytest.raises(ValueError, match="needs the JAX backend.*backend='tensorflow'"):
            functional.map_tasks(lambda a: a, np.zeros((3, 1)), vectorize=True)
        # "auto" vectorizes on JAX accelerators only: here it loops.
        out = functional.map_tasks(lambda a: a * 2.0, np.ones((3, 1)), vectorize="auto")
        np.testing.assert_allclose(functional.to_numpy(out), np.full((3, 1), 2.0))


def _task_loss(w, x):
    """A second-order task: one inner gradient step on the task's data, then a loss at the adapted weights."""
    _, g = functional.value_and_grad(lambda v: ops.sum(ops.tanh(v * x) ** 2), w)
    fast = w - 0.3 * g
    loss = ops.sum(ops.sin(fast * x))
    return loss, {"fast_norm": ops.sum(fast**2)}


@pytest.mark.parametrize("window", [None, 1, 2, "auto", 7])
def test_mean_task_gradients_is_the_gradient_of_the_mean_with_any_window(window):
    x = np.random.default_rng(0).normal(size=(5, 3))
    w = np.array([0.2, -0.4, 0.9])

    def mean_loss(p):
        losses, aux = functional.map_tasks(lambda xt: _task_loss(p, xt), x)
        return ops.mean(losses), {"fast_norm": ops.mean(aux["fast_norm"])}

    (value, aux), grads = functional.value_and_grad(mean_loss, w, has_aux=True)
    (v2, aux2), g2 = functional.mean_task_gradients(_task_loss, w, x, window=window)
    np.testing.assert_allclose(functional.to_numpy(v2), functional.to_numpy(value), rtol=1e-12)
    np.testing.assert_allclose(functional.to_numpy(aux2["fast_norm"]), functional.to_numpy(aux["fast_norm"]),
                               rtol=1e-12)
    np.testing.assert_allclose(functional.to_numpy(g2), functional.to_numpy(grads), rtol=1e-12)


def test_mean_task_gradients_refuses_bad_windows_and_tasks():
    for bad in (0, -1, 1.5, True, "two"):
        with pytest.raises(ValueError, match=f"window to be a positive integer, 'auto' or None. Received: window={bad!r}"):
            functional.mean_task_gradients(_task_loss, np.ones(3), np.ones((2, 3)), window=bad)
    with pytest.raises(ValueError, match=r"same leading \(task\) dimension. Received: \[2, 3\]"):
        functional.mean_task_gradients(lambda w, a, b: _task_loss(w, a), np.ones(3), np.ones((2, 3)), np.ones((3, 3)))


@pytest.mark.skipif(keras.backend.backend() != "tensorflow", reason="the window is TensorFlow's executor's")
def test_a_task_window_makes_each_task_wait_for_the_one_window_places_before():
    import tensorflow as tf

    x = tf.constant(np.ones((5, 3)))
    graph = tf.function(lambda w, x: functional.mean_task_gradients(_task_loss, w, x, window=2)).get_concrete_function(
        tf.constant(np.ones(3)), x).graph
    waits = {}
    for op in graph.get_operations():
        if op.type == "Identity" and op.control_inputs and op.name.startswith("task"):
            task = int(op.name.split("/")[0][4:])
            waits.setdefault(task, set()).update(c.name for c in op.control_inputs)
    # Tasks 0 and 1 start at once; task t waits on task t-2's value and aux and on the running sum after it
    # (task 0's gradient itself for task 2, the sums outside the tasks for the later ones).
    assert sorted(waits) == [2, 3, 4]
    for task, names in waits.items():
        assert any(n.startswith(f"task{task - 2}/") for n in names), (task, names)
        assert task == 2 or any(not n.startswith("task") for n in names), (task, names)


@pytest.mark.skipif(keras.backend.backend() != "tensorflow", reason="the window is TensorFlow's executor's")
def test_a_window_of_one_keeps_eight_tasks_at_the_memory_of_one(tmp_path):
    # Each task keeps two 4 MB activations for its backward pass. The allocator's peak (exact with the BFC
    # allocator, in a fresh process with two inter-op threads) of 8 tasks in a window of one stays near one
    # task's, while without a window the executor runs tasks side by side.
    import json
    import os
    import subprocess
    import sys
    import textwrap

    script = tmp_path / "peak.py"
    script.write_text(textwrap.dedent("""
        import json
        import numpy as np
        import tensorflow as tf
        tf.config.threading.set_inter_op_parallelism_threads(2)
        tf.config.threading.set_intra_op_parallelism_threads(1)
        from keras import ops
        from metalab.core.engine import functional

        def task(w, x):
            a = ops.tanh(x[:, None] * w[None, :])
            b = ops.tanh(a * 1.5 + 0.1)
            return ops.sum(b * b) / 1e6, ops.mean(a)

        def peak(tasks, window):
            x = tf.constant(np.random.default_rng(0).random((tasks, 1024), dtype=np.float32))
            w = tf.constant(np.ones(1024, np.float32))
            f = tf.function(lambda w, x: functional.mean_task_gradients(task, w, x, window=window))
            f(w, x)
            peaks = []
            for _ in range(3):
                tf.config.experimental.reset_memory_stats("CPU:0")
                f(w, x)[1].numpy()
                peaks.append(tf.config.experimental.get_memory_info("CPU:0")["peak"])
            return max(peaks)

        print(json.dumps({"one": peak(1, None), "windowed": peak(8, 1), "free": peak(8, None)}))
    """))
    env = {**os.environ, "TF_CPU_ALLOCATOR_USE_BFC": "true", "TF_CPP_MIN_LOG_LEVEL": "3"}
    done = subprocess.run([sys.executable, str(script)], env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    got = json.loads(done.stdout.strip().splitlines()[-1])
    assert got["windowed"] < 1.4 * got["one"], got
    assert got["free"] > got["windowed"], got


def test_embedding_gradient_is_dense_and_takes_python_arithmetic():
    table = keras.Variable(np.arange(12, dtype="float32").reshape(6, 2))
    ids = np.array([1, 1, 4], dtype="int32")
    def loss(params):
        return keras.ops.sum(keras.ops.take(params[0], ids, axis=0) ** 2)
    value, (grad,) = functional.value_and_grad(loss, [table])
    stepped = table - 0.5 * grad  # IndexedSlices refused a python float times it
    expected = np.zeros((6, 2), "float32"); expected[1] = 2 * 2 * np.array([2, 3]); expected[4] = 2 * np.array([8, 9])
    np.testing.assert_allclose(functional.to_numpy(grad), expected)
    assert stepped.shape == (6, 2)


def test_params_and_state_are_the_values_read_when_called_not_references_read_at_use():
    # A compiled step that writes a variable after taking params() must go on computing with the value it took
    # (a GAN step that read its weights by reference drifted between reruns of one seed: rerun_drift.py).
    import keras
    import tensorflow as tf

    from metalab.core.engine.functional import FunctionalModel

    model = keras.Sequential([keras.Input((2,)), keras.layers.Dense(1, use_bias=False),
                              keras.layers.BatchNormalization()])
    model.layers[0].kernel.assign([[1.0], [2.0]])
    fmodel = FunctionalModel(model)

    @tf.function
    def step():
        params, state = fmodel.params(), fmodel.state()
        for variable in [*fmodel.trainable_variables, *fmodel.non_trainable_variables]:
            variable.assign(variable + 10.0)
        return params, state

    params, state = step()
    assert np.allclose(params[0].numpy(), [[1.0], [2.0]])
    assert np.allclose(state[0].numpy(), 0.0) and np.allclose(state[1].numpy(), 1.0)  # moving mean, variance
    assert np.allclose(fmodel.trainable_variables[0].numpy(), [[11.0], [12.0]])

    # The algorithms' own params() (MetaAlgorithm's) reads the same way.
    from types import SimpleNamespace

    from metalab.core.engine.algorithm_base import MetaAlgorithm

    algorithm = MetaAlgorithm(SimpleNamespace(), task=None)
    algorithm.track(model)

    @tf.function
    def algorithm_step():
        params = algorithm.params()
        model.layers[0].kernel.assign(model.layers[0].kernel - 5.0)
        return params

    assert np.allclose(algorithm_step()[0].numpy(), [[11.0], [12.0]])
