"""Loads scikit-learn's digits and splits the ten classes between the meta-splits (or the images, supervised)."""

from __future__ import annotations

from typing import Any

import numpy as np

from metalab.api import ClassificationDataset, ClassSplit

#: load_digits pixels are counts of set bits in 4x4 blocks of a 32x32 bitmap: 0..16.
GREY_LEVELS = 16


def load_digits_dataset(train_classes: int = 4, val_classes: int = 3, seed: int = 0) -> ClassificationDataset:
    """Returns the digits as a :class:`ClassificationDataset` with disjoint class splits.

    Args:
        train_classes: Number of digits in the train split.
        val_classes: Number of digits in the val split; the remaining digits form the test split.
        seed: Seed of the permutation of the ten digits.

    Returns:
        Images ``uint8 [n, 8, 8, 1]`` in 0..16 (``scale=16``); class names ``"digit_<d>"``.

    Raises:
        ValueError: If the counts leave no test class.
    """
    from sklearn.datasets import load_digits

    bunch = load_digits()
    images = np.rint(bunch.images).astype(np.uint8)[..., None]
    targets = bunch.target.astype(np.int64)
    num_classes = int(targets.max()) + 1
    if not (train_classes >= 1 and val_classes >= 1 and train_classes + val_classes < num_classes):
        raise ValueError(
            f"train_classes and val_classes must be >= 1 and leave at least one of {num_classes} classes for test. "
            f"Received: train_classes={train_classes}, val_classes={val_classes}"
        )
    order = np.random.default_rng(seed).permutation(num_classes)
    groups = {
        "train": np.sort(order[:train_classes]),
        "val": np.sort(order[train_classes:train_classes + val_classes]),
        "test": np.sort(order[train_classes + val_classes:]),
    }
    splits = {}
    for name, digits in groups.items():
        mask = np.isin(targets, digits)
        relabel = np.full(num_classes, -1, dtype=np.int64)
        relabel[digits] = np.arange(len(digits))
        splits[name] = ClassSplit(
            images=np.ascontiguousarray(images[mask]),
            labels=relabel[targets[mask]],
            class_names=[f"digit_{d}" for d in digits],
        )
    return _dataset(splits, "few_shot", {name: [int(d) for d in digits] for name, digits in groups.items()},
                    seed=int(seed))


def _dataset(splits: dict[str, ClassSplit], mode: str, split_digits: dict[str, list[int]],
             **info: Any) -> ClassificationDataset:
    """The digits' :class:`ClassificationDataset` (8x8x1, 0..16) with the info both loaders record."""
    return ClassificationDataset(
        splits=splits,
        input_shape=(8, 8, 1),
        scale=float(GREY_LEVELS),
        info={"source": "sklearn.datasets.load_digits", "mode": mode, "split_digits": split_digits,
              "images": {name: int(len(split.labels)) for name, split in splits.items()}, **info},
        supervised=mode == "supervised",
    )


def load_digits_supervised(test_fraction: float = 0.25, val_fraction: float = 0.2, seed: int = 0) -> ClassificationDataset:
    """Returns the digits divided by image for supervised learning: every split holds all ten digits.

    A seeded, stratified ``test_fraction`` of each digit's images forms ``test``; ``val_fraction`` of the rest
    forms ``val`` (:func:`metalab.api.data.supervised_splits`), the others ``train``.

    Args:
        test_fraction: Share of each digit's images in the test split, in ``(0, 1)``.
        val_fraction: Share of each digit's remaining images in the val split, in ``(0, 1)``.
        seed: Seed of both choices.

    Returns:
        A :class:`ClassificationDataset` with ``supervised=True``: images ``uint8 [n, 8, 8, 1]`` in 0..16
        (``scale=16``), class names ``"digit_0"`` .. ``"digit_9"`` in every split.

    Raises:
        ValueError: If a fraction lies outside ``(0, 1)``.
    """
    from sklearn.datasets import load_digits

    from metalab.api.data import holdout_rows, supervised_splits

    for name, value in (("test_fraction", test_fraction), ("val_fraction", val_fraction)):
        if not 0.0 < float(value) < 1.0:
            raise ValueError(f"{name} must lie in (0, 1). Received: {name}={value!r}")
    bunch = load_digits()
    images = np.rint(bunch.images).astype(np.uint8)[..., None]
    targets = bunch.target.astype(np.int64)
    test = holdout_rows(targets, test_fraction, seed, "supervised_test")
    train = np.setdiff1d(np.arange(len(targets)), test)
    names = [f"digit_{d}" for d in range(int(targets.max()) + 1)]
    splits = supervised_splits(images[train], targets[train], images[test], targets[test], names, val_fraction, seed)
    return _dataset(splits, "supervised", {name: list(range(len(names))) for name in splits},
                    test_fraction=float(test_fraction), val_fraction=float(val_fraction), seed=int(seed))
