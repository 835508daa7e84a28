"""Dataset transforms made before any sampling: rows held out of training, a supervised division of images between
the splits (dataset plugins build theirs with it), and images resized for a cross-domain meta-test."""

from __future__ import annotations

from typing import Any

import numpy as np

from metalab.core.contract.specs import ClassificationDataset, ClassSplit
from metalab.core.engine.sampling import _SALT_HOLDOUT, _check_int, _derive_rng

__all__ = ["holdout_rows", "supervised_splits", "resize_images"]


def holdout_rows(labels: Any, fraction: float, seed: int, split: str = "train") -> np.ndarray:
    """A fixed, seeded, per-class random choice of about ``fraction`` of a split's rows, to hold out of training.

    Each class gives ``round(fraction * n_c)`` of its ``n_c`` rows, at most ``n_c - 1`` so that every class
    keeps a row to train on. The same labels, fraction, seed and split always give the same rows.

    Args:
        labels: The split's class labels ``[n]`` (integers).
        fraction: In ``[0, 1)``; 0 holds out nothing.
        seed: Non-negative integer (the run's seed).
        split: The split's name (part of the seed, like every stream here).

    Returns:
        Sorted row indices, ``int64 [m]``.

    Raises:
        ValueError: If ``fraction`` is outside ``[0, 1)`` or ``seed`` is not a non-negative integer.
    """
    owner = "holdout_rows"
    if isinstance(fraction, bool) or not 0.0 <= float(fraction) < 1.0:
        raise ValueError(f"{owner}: fraction must lie in [0, 1). Received: fraction={fraction!r}")
    seed = _check_int("seed", seed, 0, owner)
    labels = np.asarray(labels).reshape(-1)
    rng = _derive_rng(seed, split, _SALT_HOLDOUT)
    chosen = []
    for label in np.unique(labels):
        rows = np.flatnonzero(labels == label)
        take = min(len(rows) - 1, int(round(float(fraction) * len(rows))))
        if take > 0:
            chosen.append(rng.choice(rows, size=take, replace=False))
    if not chosen:
        return np.zeros(0, dtype=np.int64)
    return np.sort(np.concatenate(chosen)).astype(np.int64)


def supervised_splits(train_images: np.ndarray, train_labels: Any, test_images: np.ndarray, test_labels: Any,
                      class_names: list[str], val_fraction: float, seed: int) -> dict[str, ClassSplit]:
    """Divides images, not classes, between the splits: the supervised train/validation/test division.

    Every split holds every class (the same ``class_names``): ``val`` is a seeded, stratified share
    ``val_fraction`` of each class's training images (:func:`holdout_rows`), ``train`` the other training
    images and ``test`` the test images as given (e.g. MNIST's official test set). Use it for a
    :class:`ClassificationDataset` with ``supervised=True``.

    Args:
        train_images: Training images ``[n, ...]`` as the dataset stores them.
        train_labels: Their class indices ``[n]`` into ``class_names``.
        test_images: Test images ``[m, ...]``.
        test_labels: Their class indices ``[m]``.
        class_names: The names of all classes.
        val_fraction: In ``[0, 1)``: the share of each class's training images moved to ``val``.
        seed: Non-negative integer choosing the ``val`` images.

    Returns:
        ``{"train": ClassSplit, "val": ClassSplit, "test": ClassSplit}``.

    Raises:
        ValueError: If images and labels differ in length, a label lies outside ``class_names``, or
            ``val_fraction`` or ``seed`` is out of range.
    """
    owner = "supervised_splits"
    names = list(class_names)
    parts = {}
    for part, images, labels in (("train", train_images, train_labels), ("test", test_images, test_labels)):
        labels = np.asarray(labels).reshape(-1).astype(np.int64)
        if len(images) != len(labels):
            raise ValueError(f"{owner}: {len(images)} {part} images but {len(labels)} labels. "
                             f"Received: len(labels)={len(labels)}")
        if labels.size and (labels.min() < 0 or labels.max() >= len(names)):
            raise ValueError(f"{owner}: {part} labels must lie in 0..{len(names) - 1} (one per class name). "
                             f"Received: labels in {labels.min()}..{labels.max()}")
        parts[part] = (images, labels)
    images, labels = parts["train"]
    val = holdout_rows(labels, val_fraction, seed, "supervised_val")
    keep = np.setdiff1d(np.arange(len(labels)), val)
    return {
        "train": ClassSplit(images=np.ascontiguousarray(images[keep]), labels=labels[keep], class_names=list(names)),
        "val": ClassSplit(images=np.ascontiguousarray(images[val]), labels=labels[val], class_names=list(names)),
        "test": ClassSplit(images=np.ascontiguousarray(parts["test"][0]), labels=parts["test"][1],
                           class_names=list(names)),
    }


def resize_images(dataset: ClassificationDataset, size: tuple[int, int],
                  splits: tuple[str, ...] | None = None) -> ClassificationDataset:
    """Returns a copy of an image dataset resized (bilinear) to ``size = (height, width)``, 8-bit, scale 255.

    Used to meta-test a model on a dataset of another image size (cross-domain transfer). Pixels are taken to
    ``[0, 1]`` by the dataset's own ``to_float`` first, so datasets of any ``scale`` end up comparable.

    Args:
        dataset: A :class:`ClassificationDataset` of ``[n, H, W, C]`` images.
        size: The new ``(height, width)``.
        splits: The splits to keep (and resize); all by default.

    Returns:
        A new :class:`ClassificationDataset` with ``input_shape (height, width, C)`` and ``scale 255``; ``info``
        gains ``resized_from``.

    Raises:
        ValueError: If the dataset's inputs are not ``(H, W, C)`` images.
    """
    from PIL import Image

    shape = tuple(int(s) for s in dataset.input_shape)
    if len(shape) != 3:
        raise ValueError(f"resize_images needs (height, width, channels) images. Received: input_shape={shape}")
    height, width = (int(s) for s in size)
    kept = {}
    for name, split in dataset.splits.items():
        if splits is not None and name not in splits:
            continue
        images = np.clip(np.asarray(dataset.to_float(split.images), dtype=np.float32), 0.0, 1.0)
        out = np.empty((len(images), height, width, shape[2]), dtype=np.uint8)
        for i, image in enumerate(images):
            for c in range(shape[2]):
                # A float32 array becomes a mode "F" image: floats are interpolated, not 8-bit rounded values.
                channel = Image.fromarray(np.ascontiguousarray(image[..., c]))
                resized = np.asarray(channel.resize((width, height), Image.Resampling.BILINEAR))
                out[i, ..., c] = np.clip(np.rint(resized * 255.0), 0, 255).astype(np.uint8)
        kept[name] = ClassSplit(images=out, labels=np.asarray(split.labels), class_names=list(split.class_names))
    info = {**dict(dataset.info), "resized_from": list(shape)}
    return ClassificationDataset(splits=kept, input_shape=(height, width, shape[2]), scale=255.0, info=info)
