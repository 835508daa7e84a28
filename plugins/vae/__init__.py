"""Variational auto-encoder evaluated few-shot on its encoder means (registration only, no TensorFlow import)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from metalab.api import AlgorithmSpec, Params, ReportPanel, hookimpl

METALAB_PLUGIN_API = "1.4"


class VAEParams(Params):
    """The VAE's parameters; defaults follow Kingma and Welling 2014's MNIST experiments where they apply."""

    latent_dim: int = Field(20, ge=1, le=1024, description="Size of the latent code z (the paper tries 2 to 200).")
    decoder_hidden: int = Field(
        500, ge=1, le=8192, description="Hidden units of the decoder MLP (500 for MNIST in the paper)."
    )
    likelihood: Literal["bernoulli", "gaussian"] = Field(
        "bernoulli",
        description=(
            "Decoder likelihood p(x|z): Bernoulli on inputs in [0, 1] (the paper's, for binary-like images) or a "
            "unit-variance Gaussian."
        ),
    )
    batch_size: int = Field(100, ge=2, le=4096, description="Images per step (M = 100 in the paper).")
    lr: float = Field(
        1e-3, gt=0, le=1, description="Adam learning rate (the paper used Adagrad; Adam is today's usual choice)."
    )


SPEC = AlgorithmSpec(
    id="metalab.vae",
    title="Variational auto-encoder (VAE)",
    description=(
        "Unsupervised: the run's backbone encodes each training image to the mean and log-variance of a Gaussian "
        "code, a small decoder reconstructs the image, and both maximise the evidence lower bound (ELBO) with the "
        "reparameterisation trick. Few-shot episodes are scored by nearest class centroid on the encoder means. "
        "The report shows reconstructions of held-out images and samples from the prior."
    ),
    params=VAEParams,
    factory="metalab.plugins.vae.algorithm:VAE",
    paper="Kingma and Welling 2014, Auto-Encoding Variational Bayes (ICLR, arXiv:1312.6114)",
    task_kinds=("classification",),
)


@hookimpl
def metalab_register_algorithms() -> list[AlgorithmSpec]:
    return [SPEC]


@hookimpl
def metalab_report_panels(report_data: dict) -> list[ReportPanel]:
    """Reconstructions of held-out images and samples from the prior (VAE runs only)."""
    if not report_data.get(SPEC.id):  # stored at the end of training: none when the run stopped early
        return []
    from .panels import vae_panels

    return vae_panels(report_data[SPEC.id])
