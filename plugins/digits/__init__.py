"""scikit-learn's 8x8 handwritten digits as a tiny few-shot benchmark, registered as ``metalab.digits``.

Ten classes are too few for real meta-learning, but the set ships inside scikit-learn (no download) and
trains in seconds, which makes it the smoke test and demo dataset. The classes are split between train, val
and test by a seeded permutation; the defaults (4 / 3 / 3 classes, 3-way episodes) let every split hold a
full episode.

With ``mode="supervised"`` the images are divided instead, as for a plain classifier: a seeded, stratified
``test_fraction`` of each digit's images is the test split, ``val_fraction`` of the rest the val split, and every
split holds all ten digits (``ClassificationDataset.supervised`` is true).
"""

from __future__ import annotations

from typing import Literal

import pydantic
from pydantic import Field

from metalab.api import DatasetSpec, Params, hookimpl

METALAB_PLUGIN_API = "1.4"

NUM_CLASSES = 10
#: Images of each digit 0..9 in scikit-learn's load_digits (1797 in all), so split sizes need no data loaded.
IMAGES_PER_DIGIT = (178, 182, 177, 183, 181, 182, 181, 179, 174, 180)

PAPER = (
    "Alpaydin & Kaynak (1998). Optical Recognition of Handwritten Digits. UCI Machine Learning Repository "
    "(as shipped by scikit-learn's load_digits)."
)


class DigitsParams(Params):
    """How the digits are divided between the splits: by class (few-shot) or by image (supervised)."""

    mode: Literal["few_shot", "supervised"] = Field(
        "few_shot",
        description=(
            "few_shot: the digit classes are divided between train, val and test (meta-learning). supervised: "
            "every split holds all ten digits, the images divided by a seeded, stratified split (the supervised "
            "baseline; few-shot episodes then reuse training classes)."
        ),
    )
    train_classes: int = Field(4, ge=1, le=8, description="Few-shot mode: digit classes in the training split.")
    val_classes: int = Field(
        3, ge=1, le=8, description="Few-shot mode: digit classes in the validation split; the rest are test."
    )
    test_fraction: float = Field(
        0.25, gt=0, lt=1, description="Supervised mode: share of each digit's images in the test split."
    )
    val_fraction: float = Field(
        0.2, gt=0, lt=1,
        description="Supervised mode: share of each digit's remaining (non-test) images in the val split.",
    )
    seed: int = Field(
        0, ge=0, description="Seed of the permutation that assigns digits to splits (supervised: of the images)."
    )

    @pydantic.model_validator(mode="after")
    def _leaves_test_classes(self) -> "DigitsParams":
        if self.train_classes + self.val_classes > NUM_CLASSES - 1:
            raise ValueError(
                f"train_classes + val_classes must leave at least one of the {NUM_CLASSES} classes for test. "
                f"Received: train_classes={self.train_classes}, val_classes={self.val_classes}"
            )
        return self


def make_digits(params: DigitsParams | dict | None = None, context=None):
    """Builds the digits dataset (the dataset factory; ``context`` is unused: the data ships with scikit-learn).

    Args:
        params: A :class:`DigitsParams` (or a dict of its fields).
        context: The data context (ignored).

    Returns:
        A :class:`~metalab.api.ClassificationDataset` of ``uint8 [n, 8, 8, 1]`` images (scale 16).
    """
    from .loader import load_digits_dataset, load_digits_supervised

    if not isinstance(params, DigitsParams):
        params = DigitsParams.model_validate(params or {})
    if params.mode == "supervised":
        return load_digits_supervised(params.test_fraction, params.val_fraction, params.seed)
    return load_digits_dataset(params.train_classes, params.val_classes, params.seed)


def _held_out(n: int, fraction: float) -> int:
    # metalab.api.data.holdout_rows's count for a class of n images (at least one image stays behind).
    return max(min(n - 1, int(round(float(fraction) * n))), 0)


def digits_split_sizes(params: DigitsParams | dict | None = None) -> dict[str, dict[str, int]]:
    """The classes of each split and the images of its smallest class, without loading the images.

    Few-shot mode divides the digits by the same seeded permutation as the loader; supervised mode keeps every
    digit in every split and divides each digit's images as :func:`metalab.api.data.holdout_rows` does.

    Args:
        params: A :class:`DigitsParams` (or a dict of its fields).

    Returns:
        ``{split: {"classes": int, "min_per_class": int}}`` for ``train``, ``val`` and ``test``.
    """
    import numpy as np

    if not isinstance(params, DigitsParams):
        params = DigitsParams.model_validate(params or {})
    if params.mode == "supervised":
        test = [_held_out(n, params.test_fraction) for n in IMAGES_PER_DIGIT]
        rest = [n - t for n, t in zip(IMAGES_PER_DIGIT, test)]
        val = [_held_out(n, params.val_fraction) for n in rest]
        counts = {"train": [n - v for n, v in zip(rest, val)], "val": val, "test": test}
        return {name: {"classes": NUM_CLASSES, "min_per_class": min(c)} for name, c in counts.items()}
    order = np.random.default_rng(params.seed).permutation(NUM_CLASSES)
    cut = params.train_classes + params.val_classes
    groups = {"train": order[:params.train_classes], "val": order[params.train_classes:cut], "test": order[cut:]}
    return {name: {"classes": len(digits), "min_per_class": min(IMAGES_PER_DIGIT[d] for d in digits)}
            for name, digits in groups.items()}


@hookimpl
def metalab_register_datasets() -> list:
    return [
        DatasetSpec(
            id="metalab.digits",
            title="Digits (8x8, scikit-learn)",
            description=(
                "1797 handwritten digits, 8x8 pixels with 16 grey levels; the 10 classes are split 4 / 3 / 3 "
                "between train, val and test by default, or (supervised mode) every digit in every split with a "
                "seeded, stratified train/val/test division of the images. Works offline; a quick demo and smoke test."
            ),
            params=DigitsParams,
            factory=make_digits,
            kind="classification",
            paper=PAPER,
            # 8x8 inputs cannot go through conv-4's four poolings; the MLP flattens image inputs.
            default_backbone="metalab.mlp",
            episode_defaults={"ways": 3, "shots": 5, "queries": 10},
            split_sizes=digits_split_sizes,
            # The dashboard's first run on digits finishes in about a minute on two CPU cores.
            presets={
                "*": {"steps": 300, "val_every": 50, "log_every": 10, "checkpoint_every": 100, "test_episodes": 200},
                "metalab.maml": {"algorithm.meta_batch_size": 4},
            },
            # The conformance kit's classification task: embedded, no download, seconds on a CPU.
            tiny_task={"backbone": "metalab.mlp", "backbone_params": {"hidden": [32, 32]}, "ways": 3, "shots": 5,
                       "queries": 5},
        )
    ]
