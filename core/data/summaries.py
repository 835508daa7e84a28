"""What a loaded dataset holds, for the pages: counts and sample images per split, and the classes too small
for an episode shape (pure numpy, so a dataset is shown before anything trains)."""

from __future__ import annotations

from typing import Any

import numpy as np

from metalab.core.data.images import to_uint8

__all__ = ["summarize_dataset", "episode_problems"]


def _display_image(image: np.ndarray, scale: float) -> np.ndarray:
    return np.ascontiguousarray(to_uint8(image, scale))


def summarize_dataset(dataset: Any, *, sample_classes: int = 5, samples_per_class: int = 3, seed: int = 0) -> dict:
    """Counts per split and a few sample images of a loaded dataset, for the Train page's summary and sample grid.

    Args:
        dataset: A :class:`~metalab.core.contract.specs.ClassificationDataset` (a regression task family gets only
            its kind and input shape).
        sample_classes: Classes shown per split (picked with ``seed``).
        samples_per_class: Images shown per class (the first ones of the class).
        seed: Seed of the class pick.

    Returns:
        ``{"kind", "input_shape", "total_classes", "total_images", "splits": {split: {"classes", "images",
        "min_per_class", "max_per_class"}}, "samples": {split: [{"class": name, "images": [uint8 [H, W, C]]}]},
        "info": dataset.info}``. Sample images are scaled to 0..255 whatever the dataset's ``scale``; vector data
        has no samples. Everything but the sample arrays is JSON-serialisable.
    """
    kind = getattr(dataset, "kind", "classification")
    summary: dict[str, Any] = {"kind": kind, "input_shape": [int(s) for s in getattr(dataset, "input_shape", ())]}
    splits = getattr(dataset, "splits", None)
    if kind != "classification" or not isinstance(splits, dict):
        summary.update({"splits": {}, "samples": {}, "info": dict(getattr(dataset, "info", {}) or {})})
        return summary
    rng = np.random.default_rng(seed)
    image_data = len(summary["input_shape"]) == 3
    counts_out, samples_out = {}, {}
    total_classes = total_images = 0
    for name, split in splits.items():
        labels = np.asarray(split.labels, dtype=np.int64)
        counts = np.bincount(labels, minlength=split.num_classes)
        counts_out[name] = {
            "classes": int(split.num_classes),
            "images": int(labels.size),
            "min_per_class": int(counts.min()) if counts.size else 0,
            "max_per_class": int(counts.max()) if counts.size else 0,
        }
        total_classes += int(split.num_classes)
        total_images += int(labels.size)
        if not image_data or split.num_classes == 0:
            samples_out[name] = []
            continue
        chosen = np.sort(rng.choice(split.num_classes, size=min(sample_classes, split.num_classes), replace=False))
        shown = []
        for c in chosen:
            rows = np.flatnonzero(labels == c)[:samples_per_class]
            shown.append({
                "class": split.class_names[int(c)],
                "images": [_display_image(split.images[r], float(getattr(dataset, "scale", 255.0))) for r in rows],
            })
        samples_out[name] = shown
    summary.update({
        "total_classes": total_classes,
        "total_images": total_images,
        "splits": counts_out,
        "samples": samples_out,
        "info": dict(getattr(dataset, "info", {}) or {}),
    })
    return summary


def episode_problems(dataset: Any, ways: int, shots: int, queries: int) -> list[str]:
    """Every reason a dataset cannot serve ``ways``-way ``shots``-shot episodes with ``queries`` queries.

    Unlike the sampler, which stops at the first problem, this names every split with too few classes and every
    class with too few images, so a user can fix a folder of images in one go.

    Args:
        dataset: A :class:`~metalab.core.contract.specs.ClassificationDataset`.
        ways, shots, queries: The episode shape.

    Returns:
        One message per problem (empty when the shape fits every split).
    """
    problems = []
    need = int(shots) + int(queries)
    for name, split in getattr(dataset, "splits", {}).items():
        if split.num_classes < ways:
            problems.append(
                f"split {name!r} has {split.num_classes} classes but episodes need ways={ways}"
            )
        counts = np.bincount(np.asarray(split.labels, dtype=np.int64), minlength=split.num_classes)
        small = [f"{split.class_names[c]} ({int(counts[c])})" for c in np.flatnonzero(counts < need)]
        if small:
            problems.append(
                f"split {name!r}: {len(small)} classes have fewer than shots+queries={need} images: " + ", ".join(small)
            )
    return problems
