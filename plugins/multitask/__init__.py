"""Multi-task learning: a shared trunk with one head per task, trained jointly; and its mixed-modality demo, digit
images and intent texts in one dataset with a backbone of separate encoders and a shared trunk (registration
only, no TF)."""

from __future__ import annotations

from typing import Annotated, Literal

import pydantic
from pydantic import Field

from metalab.api import AlgorithmSpec, BackboneSpec, DatasetSpec, Params, ReportPanel, hookimpl

METALAB_PLUGIN_API = "1.4"


class MultiTaskParams(Params):
    """Multi-task parameters: the task split, the loss weights and the consistency objective."""

    num_tasks: int = Field(
        2, ge=1, le=256,
        description=(
            "Tasks K: the training classes are dealt into K groups (class c to task c mod K), each a classification "
            "task with its own head. Every task needs at least 2 classes."
        ),
    )
    task_weights: Literal["uniform"] | list[Annotated[float, Field(ge=0, le=1e6)]] = Field(
        "uniform",
        description=(
            "Loss weight of each task: 'uniform' (the plain average of the task losses) or K non-negative numbers, "
            "normalised to sum to 1."
        ),
    )
    consistency_weight: float = Field(
        1.0, ge=0, le=1000,
        description=(
            "Weight of the consistency (difference) objective: the mean squared distance between the trunk's "
            "features of an image and of the same image under a small random perturbation. 0 turns it off."
        ),
    )
    noise_std: float = Field(
        0.1, gt=0, le=10,
        description="Standard deviation of the Gaussian perturbation making the related input (pixels in 0..1).",
    )
    modalities: Literal["auto", "image_text"] = Field(
        "auto",
        description=(
            "auto: follow the backbone (a backbone declaring packed image-and-text rows, metalab.mixed_encoder, "
            "turns on image_text; any other perturbs the whole input with Gaussian noise). image_text: require such "
            "a backbone; images get Gaussian noise on their pixels, texts lose tokens (token_dropout), and num_tasks "
            "must be even so that each task holds one modality."
        ),
    )
    token_dropout: float = Field(
        0.15, ge=0, lt=1,
        description=(
            "Mixed modalities: probability that each real token of a text is dropped (set to padding) in the "
            "perturbed copy of the consistency objective (word dropout)."
        ),
    )
    batch_size: int = Field(64, ge=2, le=4096, description="Training mini-batch size (shared by all tasks).")
    lr: float = Field(1e-3, gt=0, le=1, description="Adam learning rate.")

    @pydantic.model_validator(mode="after")
    def _weights_match_tasks(self) -> "MultiTaskParams":
        if self.task_weights != "uniform":
            if len(self.task_weights) != self.num_tasks:
                raise ValueError(
                    f"task_weights needs one weight per task ({self.num_tasks}) or 'uniform'. "
                    f"Received: task_weights={self.task_weights!r}"
                )
            if sum(self.task_weights) <= 0:
                raise ValueError(f"task_weights must not all be zero. Received: task_weights={self.task_weights!r}")
        return self

    def weights(self) -> list[float]:
        """The task weights, normalised to sum to 1."""
        raw = [1.0] * self.num_tasks if self.task_weights == "uniform" else [float(w) for w in self.task_weights]
        total = sum(raw)
        return [w / total for w in raw]


SPEC = AlgorithmSpec(
    id="metalab.multitask",
    title="Multi-task learning (shared trunk)",
    description=(
        "Splits the training classes into K classification tasks and trains one shared trunk (the run's backbone) "
        "with a head per task, jointly: the weighted average of the task losses plus a consistency objective that "
        "keeps the trunk's features of an image and of a perturbed copy close. Evaluated few-shot by nearest class "
        "centroid on the trunk's features. The report draws each task's training curve."
    ),
    params=MultiTaskParams,
    factory="metalab.plugins.multitask.algorithm:MultiTask",
    paper=(
        "Caruana 1997, Multitask Learning (Machine Learning 28); consistency objective as in Laine and Aila 2017, "
        "Temporal Ensembling for Semi-Supervised Learning (ICLR), Pi-model"
    ),
    task_kinds=("classification",),
)


#: Digit classes in scikit-learn's load_digits, the bound of the mixed dataset's class counts.
_DIGITS = 10


class DigitsAndIntentsParams(Params):
    """How many digit and intent classes each split holds, and how the texts become ids."""

    train_classes: int = Field(
        4, ge=1, le=8,
        description="Training classes of each modality: this many digits and this many intents, alternating.")
    val_classes: int = Field(3, ge=1, le=8, description="Held-out classes of eval_modality in the validation split.")
    test_classes: int = Field(3, ge=1, le=8, description="Held-out classes of eval_modality in the test split.")
    eval_modality: Literal["text", "image"] = Field(
        "text",
        description="Which modality's held-out classes make the val and test splits (few-shot episodes then never "
                    "mix an image class with a text class).")
    examples_per_class: int = Field(
        100, ge=10, le=174,
        description="Examples of every class, digits and intents alike (the rarest digit has 174 images).")
    vocab_size: int = Field(1024, ge=2, le=65_536, description="Hashed word ids, padding included.")
    max_tokens: int = Field(16, ge=1, le=256, description="Token ids per text: longer texts are cut, shorter padded.")
    seed: int = Field(0, ge=0, description="Seed of the classes' division and of the examples and wording drawn.")

    @pydantic.model_validator(mode="after")
    def _fits_the_digits(self) -> "DigitsAndIntentsParams":
        total = self.train_classes + self.val_classes + self.test_classes
        if total > _DIGITS:
            raise ValueError(
                f"train_classes + val_classes + test_classes must not exceed the {_DIGITS} digits. Received: "
                f"train_classes={self.train_classes}, val_classes={self.val_classes}, test_classes={self.test_classes}")
        return self


def mixed_split_sizes(params: DigitsAndIntentsParams | dict | None = None) -> dict[str, dict[str, int]]:
    """Classes per split and examples of each, from the parameters alone (no data read)."""
    if not isinstance(params, DigitsAndIntentsParams):
        params = DigitsAndIntentsParams.model_validate(params or {})
    every = int(params.examples_per_class)
    return {"train": {"classes": 2 * params.train_classes, "min_per_class": every},
            "val": {"classes": params.val_classes, "min_per_class": every},
            "test": {"classes": params.test_classes, "min_per_class": every}}


class MixedEncoderParams(Params):
    """A small encoder per modality and the shared dense trunk."""

    image_size: int = Field(8, ge=2, le=64, description="Side of the square grey image part of each row.")
    image_filters: int = Field(16, ge=1, le=256, description="Filters of the image encoder's 3x3 convolution.")
    vocab_size: int = Field(1024, ge=2, le=65_536, description="Embedding rows; the dataset's vocab_size.")
    embedding_dim: int = Field(32, ge=1, le=1024, description="Width of each token's embedding.")
    encoder_width: int = Field(64, ge=1, le=4096, description="Features of each modality's encoder.")
    trunk: list[Annotated[int, Field(ge=1, le=4096)]] = Field(
        [64], min_length=1, max_length=8,
        description="Widths of the shared trunk's ReLU dense layers; the last is the feature size.")


DATASET = DatasetSpec(
    id="metalab.digits_and_intents",
    title="Digits and intents (images and texts)",
    description=(
        "Two modalities in one dataset, for multi-task learning across them: scikit-learn's 8x8 digits and the "
        "embedded intent requests, each example one packed row (modality flag, 64 pixels, 16 hashed word ids). "
        "The training split alternates digit and intent classes (4 + 4 by default), so multitask's two tasks are "
        "image and text classification; val and test hold held-out classes of one modality (text by default). "
        "Nothing to download."
    ),
    params=DigitsAndIntentsParams,
    factory="metalab.plugins.multitask.mixed:make_digits_and_intents",
    paper="Alpaydin & Kaynak 1998 (digits, via scikit-learn) and metalab's embedded intents (see metalab.text_intents)",
    default_backbone="metalab.mixed_encoder",
    episode_defaults={"ways": 3, "shots": 5, "queries": 5},
    algorithm_defaults={"metalab.multitask": {"modalities": "image_text", "batch_size": 32}},
    split_sizes=mixed_split_sizes,
    presets={"*": {"steps": 300, "val_every": 50, "log_every": 10, "checkpoint_every": 100, "test_episodes": 200}},
)

BACKBONE = BackboneSpec(
    id="metalab.mixed_encoder",
    title="Image and text encoders, shared trunk",
    description=(
        "For packed image-and-text rows (metalab.digits_and_intents): a 3x3 conv, 2x2 pool and dense layer for "
        "the pixels, a word embedding averaged over the real tokens and a dense layer for the texts, each row "
        "gated to its own modality's encoder, then a shared ReLU dense trunk (64 features)."
    ),
    params=MixedEncoderParams,
    factory="metalab.plugins.multitask.mixed_model:mixed_encoder",
    paper="Caruana 1997 (hard parameter sharing); Iyyer et al. 2015, Deep Unordered Composition Rivals Syntactic "
          "Methods for Text Classification (ACL) for the averaged embeddings",
    input_kinds=("vector",),
    has_batch_norm=False,
)


@hookimpl
def metalab_register_algorithms() -> list[AlgorithmSpec]:
    return [SPEC]


@hookimpl
def metalab_register_datasets() -> list[DatasetSpec]:
    return [DATASET]


@hookimpl
def metalab_register_backbones() -> list[BackboneSpec]:
    return [BACKBONE]


@hookimpl
def metalab_report_panels(report_data: dict, metrics: dict) -> list[ReportPanel]:
    """Per-task training curves (from the run's logged ``train/task<k>_*`` metrics) and the task split.

    Called for runs of this plugin's dataset and backbone too: a run of another algorithm on them (no multi-task
    data stored, no per-task metric) gets no panel.
    """
    from .panels import task_curves_panel

    data = report_data.get(SPEC.id) or {}
    if not data and not any(name.startswith("train/task") for name in metrics):
        return []
    return [task_curves_panel(data, metrics)]
