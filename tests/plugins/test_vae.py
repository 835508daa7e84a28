"""The VAE (Kingma and Welling 2014): the ELBO improves, the KL term is right, and the report shows images."""

import json

import numpy as np
import pytest

from metalab.core.authoring import testing
from metalab.core.contract.specs import TaskBatch, TaskSpec
from metalab.plugins.vae import SPEC, VAEParams, metalab_report_panels


def _task(shape=(8, 8, 1), ways=3):
    from metalab.plugins.backbones import MLP, MLPParams

    return TaskSpec(kind="classification", input_shape=shape, output_dim=ways, ways=ways, shots=2, queries=3,
                    total_steps=10, make_backbone=lambda: MLP.factory(MLPParams(hidden=[16]), shape),
                    num_train_classes=4)


def test_registration_follows_the_paper():
    assert SPEC.id == "metalab.vae" and SPEC.task_kinds == ("classification",)
    assert "Kingma" in SPEC.paper
    params = VAEParams()
    assert (params.batch_size, params.decoder_hidden, params.likelihood) == (100, 500, "bernoulli")


def test_kl_term_matches_the_closed_form_and_a_monte_carlo_estimate():
    from metalab.plugins.vae.algorithm import gaussian_kl

    mean = np.array([[0.0, 0.0], [1.0, -2.0]], np.float32)
    log_var = np.array([[0.0, 0.0], [np.log(0.25), np.log(4.0)]], np.float32)
    kl = np.asarray(gaussian_kl(mean, log_var))
    assert kl[0] == pytest.approx(0.0, abs=1e-6)
    rng = np.random.default_rng(0)
    z = mean[1] + np.exp(0.5 * log_var[1]) * rng.standard_normal((200_000, 2))
    log_q = -0.5 * np.sum((z - mean[1]) ** 2 / np.exp(log_var[1]) + log_var[1] + np.log(2 * np.pi), axis=1)
    log_p = -0.5 * np.sum(z**2 + np.log(2 * np.pi), axis=1)
    assert kl[1] == pytest.approx(np.mean(log_q - log_p), rel=0.02)


def test_elbo_improves_and_report_shows_reconstructions_and_samples(builtin_registry, tmp_path):
    # 200 steps: after 40 the reconstructions were no nearer their originals than other images (mean squared
    # distance 0.996 of the others' on seed 0; 0.983 / 0.998 on seeds 1-2); after 200: 0.914 / 0.895 / 0.889.
    result = testing.check_learns("metalab.vae", tmp_path, registry=builtin_registry, steps=200)
    # Negative ELBO per 8x8 image, in nats: it must fall clearly, not just by noise.
    assert result.last_loss < 0.85 * result.first_loss
    from metalab.core.store import RunStore

    store = RunStore(tmp_path / "runs.sqlite")
    data = json.loads((store.run_dir(result.run_id) / "report_data.json").read_text())["metalab.vae"]
    samples, originals, recon = (np.asarray(data[k]) for k in ("prior_samples", "originals", "reconstructions"))
    assert samples.shape == (16, 8, 8, 1) and originals.shape == recon.shape == (8, 8, 8, 1)
    assert samples.max() <= 255 and samples.min() >= 0
    # Reconstructions resemble their originals more than other held-out images.
    dist = ((originals[:, None].astype(float) - recon[None].astype(float)) ** 2).sum(axis=(2, 3, 4))
    assert np.mean(np.diag(dist)) < np.mean(dist[~np.eye(len(dist), dtype=bool)])
    panels = metalab_report_panels({"metalab.vae": data})
    assert [p.title for p in panels] == ["VAE reconstructions of held-out images", "VAE samples from the prior"]
    for panel in panels:
        panel.validate()


def test_trained_step_lowers_the_loss_on_the_same_batch():
    import keras

    from metalab.plugins.vae.algorithm import VAE

    keras.utils.set_random_seed(0)
    algo = VAE(VAEParams(latent_dim=4, decoder_hidden=32, batch_size=20), _task())
    optimizer = algo.make_optimizer()
    optimizer.build(algo.trainable_variables)
    rng = np.random.default_rng(0)
    x = rng.uniform(0, 1, (1, 10, 8, 8, 1)).astype(np.float32)
    y = np.zeros((1, 10), np.int32)
    batch = TaskBatch(x, y, x, y)
    losses = []
    for _ in range(30):
        grads, metrics = algo.meta_gradients(batch)
        assert len(grads) == len(algo.trainable_variables)
        optimizer.apply(grads, algo.trainable_variables)
        losses.append(float(metrics["loss"]))
    assert losses[-1] < losses[0] - 1.0


def test_vector_inputs_get_a_note_instead_of_images():
    panels = metalab_report_panels({"metalab.vae": {"input_shape": [64], "prior_samples": [[0] * 64]}})
    assert len(panels) == 1 and panels[0].figure is None and "not images" in panels[0].markdown
