"""DCGAN (Radford et al. 2016): both players get their own gradients, samples are kept over training."""

import json

import numpy as np
import pytest

from metalab.core.authoring import testing
from metalab.core.contract.specs import TaskBatch, TaskSpec
from metalab.plugins.gan import SPEC, GANParams, metalab_report_panels


def _task(shape=(8, 8, 1), total_steps=10):
    from metalab.plugins.backbones import MLP, MLPParams

    return TaskSpec(kind="classification", input_shape=shape, output_dim=3, ways=3, shots=2, queries=2,
                    total_steps=total_steps, make_backbone=lambda: MLP.factory(MLPParams(hidden=[16]), shape),
                    num_train_classes=4)


def test_registration_follows_the_paper():
    assert SPEC.id == "metalab.gan" and SPEC.task_kinds == ("classification",)
    assert "Radford" in SPEC.paper
    params = GANParams()
    assert (params.latent_dim, params.batch_size, params.lr, params.beta_1) == (100, 128, 2e-4, 0.5)


def test_optimizer_is_dcgan_adam():
    from metalab.plugins.gan.algorithm import DCGAN

    optimizer = DCGAN(GANParams(), _task()).make_optimizer()
    assert optimizer.beta_1 == 0.5 and float(optimizer.learning_rate) == pytest.approx(2e-4)


@pytest.mark.parametrize("shape,kind", [((8, 8, 1), "conv"), ((6, 6, 1), "dense"), ((12,), "dense")])
def test_generator_matches_the_input_shape(shape, kind):
    from metalab.plugins.gan.algorithm import build_generator

    generator = build_generator(GANParams(latent_dim=5, generator_filters=4), shape)
    out = np.asarray(generator(np.zeros((3, 5), np.float32)))
    assert out.shape == (3, *shape) and out.min() >= 0 and out.max() <= 1
    assert any(type(layer).__name__ == "Conv2DTranspose" for layer in generator.layers) == (kind == "conv")


def test_refuses_a_conv_generator_it_cannot_build():
    from metalab.plugins.gan.algorithm import build_generator

    with pytest.raises(ValueError, match="divisible by 4"):
        build_generator(GANParams(generator="conv"), (6, 6, 1))


def test_each_player_gets_the_gradient_of_its_own_loss():
    import keras

    from metalab.core.engine import functional
    from metalab.plugins.gan.algorithm import DCGAN, _bce

    keras.utils.set_random_seed(0)
    algo = DCGAN(GANParams(latent_dim=4, generator_filters=4, batch_size=8), _task())
    rng = np.random.default_rng(0)
    x = rng.uniform(0, 1, (1, 4, 8, 8, 1)).astype(np.float32)
    y = np.zeros((1, 4), np.int32)
    state = algo.seed_generator.state.numpy().copy()
    grads, metrics = algo.meta_gradients(TaskBatch(x, y, x, y))
    assert len(grads) == len(algo.trainable_variables)
    # Recompute both losses with the same noise and check the gradients against them.
    algo.seed_generator.state.assign(state)
    real = np.concatenate([x[0], x[0]])
    z = keras.random.normal((8, 4), seed=algo.seed_generator)
    disc, gen = algo.fdisc.params(), algo.fgen.params()
    fake = algo.fgen(gen, z)

    def d_loss(w):
        return _bce(algo.fdisc(w, real), 1.0) + _bce(algo.fdisc(w, fake), 0.0)

    def g_loss(w):
        return _bce(algo.fdisc(disc, algo.fgen(w, z)), 1.0)

    d_value, d_grads = functional.value_and_grad(d_loss, disc)
    g_value, g_grads = functional.value_and_grad(g_loss, gen)
    assert float(metrics["loss"]) == pytest.approx(float(d_value), rel=1e-5)
    assert float(metrics["generator_loss"]) == pytest.approx(float(g_value), rel=1e-5)
    for got, want in zip(grads, list(d_grads) + list(g_grads)):
        np.testing.assert_allclose(np.asarray(got), np.asarray(want), rtol=1e-4, atol=1e-6)


def test_snapshots_are_recorded_at_fixed_intervals_inside_the_compiled_step():
    from metalab.core.engine import functional
    from metalab.plugins.gan.algorithm import DCGAN, SNAPSHOTS

    algo = DCGAN(GANParams(latent_dim=4, generator_filters=4, batch_size=8), _task(total_steps=20))
    assert algo.interval == 3
    optimizer = algo.make_optimizer()
    optimizer.build(algo.trainable_variables)

    def step(sx, sy, qx, qy):
        grads, metrics = algo.meta_gradients(TaskBatch(sx, sy, qx, qy))
        optimizer.apply(grads, algo.trainable_variables)
        return metrics

    compiled = functional.compile(step)
    rng = np.random.default_rng(0)
    y = np.zeros((1, 4), np.int32)
    for _ in range(7):
        x = rng.uniform(0, 1, (1, 4, 8, 8, 1)).astype(np.float32)
        compiled(x, y, x, y)
    assert list(algo.snapshot_steps.numpy()) == [0, 3, 6] + [-1] * (SNAPSHOTS - 3)
    snaps = algo.snapshots.numpy()
    assert not np.allclose(snaps[0], snaps[2])  # the generator moved between the recorded steps
    data = algo.report_data()
    assert data["steps"] == [0, 3, 6, 7] and np.asarray(data["snapshots"]).shape == (4, 8, 8, 8, 1)


def test_learns_and_reports_samples_over_training(builtin_registry, tmp_path):
    result = testing.check_learns("metalab.gan", tmp_path, registry=builtin_registry, steps=60)
    from metalab.core.store import RunStore

    store = RunStore(tmp_path / "runs.sqlite")
    accuracy = [v for _, v in store.metrics(result.run_id, ["train/accuracy"])["train/accuracy"]]
    # The discriminator ends up telling real from generated images well above chance.
    assert accuracy[-1] > 0.7
    data = json.loads((store.run_dir(result.run_id) / "report_data.json").read_text())["metalab.gan"]
    assert data["steps"] == [0, 8, 16, 24, 32, 40, 48, 56, 60]
    panels = metalab_report_panels({"metalab.gan": data})
    assert len(panels) == 1
    panels[0].validate()
    assert panels[0].figure is not None
