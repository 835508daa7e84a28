"""DCGAN evaluated few-shot on its discriminator's features (registration only, no TensorFlow import)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from metalab.api import AlgorithmSpec, Params, ReportPanel, hookimpl

METALAB_PLUGIN_API = "1.4"


class GANParams(Params):
    """DCGAN's parameters; defaults follow Radford, Metz and Chintala 2016 (Section 4)."""

    latent_dim: int = Field(100, ge=1, le=1024, description="Size of the noise vector z (100 in the paper).")
    generator: Literal["auto", "conv", "dense"] = Field(
        "auto",
        description=(
            "Generator: 'conv' (DCGAN's: dense projection, then two stride-2 transposed convolutions with batch "
            "norm and ReLU; needs image sides divisible by 4), 'dense' (an MLP) or 'auto' (conv when possible)."
        ),
    )
    generator_filters: int = Field(
        64, ge=1, le=1024, description="Channels of the generator's last hidden layer (doubled before it)."
    )
    batch_size: int = Field(128, ge=2, le=4096, description="Real images per step (128 in the paper).")
    lr: float = Field(2e-4, gt=0, le=1, description="Adam learning rate (0.0002 in the paper).")
    beta_1: float = Field(0.5, ge=0, lt=1, description="Adam's beta_1 (0.5 in the paper, for stability).")


SPEC = AlgorithmSpec(
    id="metalab.gan",
    title="DCGAN (discriminator features)",
    description=(
        "Unsupervised: a generator and a discriminator (the run's backbone plus a real/fake unit) play the GAN "
        "game on the training images, both updated at every step by one Adam optimizer; few-shot episodes are "
        "then scored by nearest class centroid on the discriminator's features. The report shows generator "
        "samples over training."
    ),
    params=GANParams,
    factory="metalab.plugins.gan.algorithm:DCGAN",
    paper=(
        "Radford, Metz and Chintala 2016, Unsupervised Representation Learning with Deep Convolutional "
        "Generative Adversarial Networks (ICLR, arXiv:1511.06434)"
    ),
    task_kinds=("classification",),
)


@hookimpl
def metalab_register_algorithms() -> list[AlgorithmSpec]:
    return [SPEC]


@hookimpl
def metalab_report_panels(report_data: dict) -> list[ReportPanel]:
    """Generator samples from fixed noise at intervals over training (GAN runs only)."""
    if not report_data.get(SPEC.id):  # stored at the end of training: none when the run stopped early
        return []
    from .panels import samples_panel

    return [samples_panel(report_data[SPEC.id])]
