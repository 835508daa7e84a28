"""Dividing a dataset's classes between the meta-splits: how many each gets, which ones, and the split arrays."""

from __future__ import annotations

from typing import Iterable, Mapping, Sequence

import numpy as np

from metalab.core.contract.specs import SPLITS, ClassSplit

__all__ = ["split_class_counts", "assign_classes", "make_class_splits"]


def split_class_counts(num_classes: int, train_fraction: float, val_fraction: float) -> dict[str, int]:
    """How many classes each meta-split gets: val and test rounded from their fractions (at least one each).

    Args:
        num_classes: Classes in the dataset (at least 3).
        train_fraction: Share of classes for meta-training.
        val_fraction: Share for validation; the remaining share (``1 - train - val``) is the test share.

    Returns:
        ``{"train": n, "val": n, "test": n}`` summing to ``num_classes``, each at least 1.

    Raises:
        ValueError: Fewer than 3 classes, fractions outside (0, 1), or nothing left for training.
    """
    if num_classes < 3:
        raise ValueError(
            f"A few-shot dataset needs at least 3 classes (one or more for each of train, val and test). "
            f"Received: num_classes={num_classes}"
        )
    test_fraction = 1.0 - train_fraction - val_fraction
    if not (0 < train_fraction < 1 and 0 < val_fraction < 1 and test_fraction > 1e-9):
        raise ValueError(
            f"train_fraction and val_fraction must be in (0, 1) and leave a share for test. "
            f"Received: train_fraction={train_fraction}, val_fraction={val_fraction}"
        )
    n_val = max(1, int(round(num_classes * val_fraction)))
    n_test = max(1, int(round(num_classes * test_fraction)))
    n_train = num_classes - n_val - n_test
    if n_train < 1:
        raise ValueError(
            f"{num_classes} classes leave none for training with these fractions. "
            f"Received: train_fraction={train_fraction}, val_fraction={val_fraction}"
        )
    return {"train": n_train, "val": n_val, "test": n_test}


def assign_classes(num_classes: int, counts: Mapping[str, int], seed: int) -> dict[str, np.ndarray]:
    """Assigns class indices to the meta-splits with a seeded permutation (sorted within each split).

    Args:
        num_classes: Total classes.
        counts: Classes per split, summing to ``num_classes`` (from :func:`split_class_counts`).
        seed: Seed of the permutation.

    Returns:
        ``{split: int64 array of class indices}``.
    """
    if sum(counts.values()) != num_classes:
        raise ValueError(f"Split counts must add up to {num_classes}. Received: counts={dict(counts)}")
    order = np.random.default_rng(seed).permutation(num_classes)
    out, start = {}, 0
    for split in SPLITS:
        n = int(counts[split])
        out[split] = np.sort(order[start:start + n]).astype(np.int64)
        start += n
    return out


def make_class_splits(images: np.ndarray, labels: np.ndarray, class_names: Sequence[str],
                      groups: Mapping[str, Iterable[int]]) -> dict[str, ClassSplit]:
    """Builds one :class:`ClassSplit` per meta-split from pooled images and the classes assigned to each split.

    Args:
        images: ``[n, ...]`` all images.
        labels: ``[n]`` class indices into ``class_names``.
        class_names: Name of every class.
        groups: ``{split: class indices}``; within a split classes keep the order given and are relabelled 0..k-1.

    Returns:
        ``{split: ClassSplit}`` with contiguous image arrays.
    """
    labels = np.asarray(labels, dtype=np.int64)
    out = {}
    for split, members in groups.items():
        members = np.asarray(list(members), dtype=np.int64)
        relabel = np.full(len(class_names), -1, dtype=np.int64)
        relabel[members] = np.arange(len(members))
        mask = relabel[labels] >= 0
        rows = np.flatnonzero(mask)
        # Group rows by class so that a split's images lie class by class (cheaper episode gathers).
        rows = rows[np.argsort(relabel[labels[rows]], kind="stable")]
        out[split] = ClassSplit(
            images=np.ascontiguousarray(images[rows]),
            labels=relabel[labels[rows]],
            class_names=[str(class_names[c]) for c in members],
        )
    return out
