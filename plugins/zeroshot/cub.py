"""Reads class attributes and images laid out as in Caltech-UCSD Birds-200-2011 (CUB), numpy and Pillow only.

The files read, relative to the dataset folder:

* ``classes.txt``: one line per class, ``<class id> <class folder name>`` (ids 1..C, e.g. ``1 001.Black_footed_Albatross``);
* ``attributes/class_attribute_labels_continuous.txt``: one line per class in the same order, the class's attribute
  values (CUB: 312 percentages in 0..100) separated by spaces;
* ``images/<class folder name>/*.jpg`` (any image Pillow reads);
* optionally ``attributes/attributes.txt`` or ``attributes.txt`` beside or above the folder: ``<id> <name>`` per
  attribute, used to name the vector's entries.

Classes are assigned to the splits in ``classes.txt`` order (CUB's zero-shot benchmarks split by class id), or at
random when a seed is given.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from metalab.api import ClassificationDataset, ClassSplit

ATTRIBUTES_FILE = Path("attributes") / "class_attribute_labels_continuous.txt"
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp")


def _read_classes(path: Path) -> list[str]:
    names = []
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        parts = line.split(maxsplit=1)
        if len(parts) != 2:
            raise ValueError(f"{path}: line {number} must be '<class id> <class folder name>'. Received: {line!r}")
        names.append(parts[1].strip())
    return names


def _read_attribute_names(root: Path, count: int) -> list[str]:
    for candidate in (root / "attributes" / "attributes.txt", root / "attributes.txt", root.parent / "attributes.txt"):
        if candidate.is_file():
            names = [line.split(maxsplit=1)[1].strip() for line in candidate.read_text(encoding="utf-8").splitlines()
                     if len(line.split(maxsplit=1)) == 2]
            if len(names) == count:
                return names
    return [f"attribute_{i + 1}" for i in range(count)]


def _load_image(path: Path, size: int) -> np.ndarray:
    from PIL import Image

    with Image.open(path) as image:
        return np.asarray(image.convert("RGB").resize((size, size), Image.Resampling.BILINEAR), dtype=np.uint8)


def load_cub_attributes(root: str | Path, image_size: int = 84, train_classes: float = 0.5, val_classes: float = 0.25,
                        max_images_per_class: int = 0, seed: int | None = None) -> ClassificationDataset:
    """Loads a CUB-format folder as a :class:`ClassificationDataset` with class attributes.

    Args:
        root: The folder holding ``classes.txt``, ``attributes/`` and ``images/``.
        image_size: Images are resized (bilinear, aspect ratio not kept) to ``image_size x image_size`` RGB.
        train_classes: Fraction of the classes in the train split (CUB's zero-shot split: 100 of 200).
        val_classes: Fraction in the val split (50 of 200); the rest are test.
        max_images_per_class: Read at most this many images per class (0: all), in file-name order.
        seed: ``None`` splits classes in ``classes.txt`` order; an integer shuffles them first.

    Returns:
        Images ``uint8 [n, image_size, image_size, 3]``; ``info["class_attributes"]`` is ``{split: float32
        [classes, attributes]}`` (CUB's percentages divided by 100), ``info["attribute_names"]`` their names.

    Raises:
        FileNotFoundError: If ``classes.txt``, the attribute file or a class's image folder is missing.
        ValueError: If the files disagree (row counts, numbers) or a split would get no class.
    """
    root = Path(root).expanduser()
    classes_file, attributes_file = root / "classes.txt", root / ATTRIBUTES_FILE
    missing = [str(p) for p in (classes_file, attributes_file, root / "images") if not p.exists()]
    if missing:
        raise FileNotFoundError(
            "A CUB-format dataset needs classes.txt, attributes/class_attribute_labels_continuous.txt and an images/ "
            f"folder of one sub-folder per class (CUB_200_2011 from the Caltech-UCSD Birds page has them). Missing: "
            f"{', '.join(missing)}. Received: cub_path={str(root)!r}"
        )
    names = _read_classes(classes_file)
    try:
        attributes = np.loadtxt(attributes_file, dtype=np.float64, ndmin=2)
    except ValueError as exc:
        raise ValueError(f"{attributes_file}: expected rows of numbers ({exc}). Received: file={str(attributes_file)!r}") from None
    if attributes.shape[0] != len(names):
        raise ValueError(
            f"{attributes_file} must hold one row per class of classes.txt ({len(names)}). "
            f"Received: rows={attributes.shape[0]}"
        )
    # CUB stores percentages; anything already in 0..1 is kept as it is.
    if attributes.max(initial=0.0) > 1.0:
        attributes = attributes / 100.0
    num_classes = len(names)
    n_train = int(round(train_classes * num_classes))
    n_val = int(round(val_classes * num_classes))
    if n_train < 1 or n_val < 1 or n_train + n_val >= num_classes:
        raise ValueError(
            f"train_classes and val_classes must give every split at least one of the {num_classes} classes. "
            f"Received: train_classes={train_classes}, val_classes={val_classes}"
        )
    order = np.arange(num_classes) if seed is None else np.random.default_rng(seed).permutation(num_classes)
    groups = {"train": order[:n_train], "val": order[n_train:n_train + n_val], "test": order[n_train + n_val:]}
    splits, class_attributes = {}, {}
    for split, members in groups.items():
        images, labels = [], []
        for label, c in enumerate(members):
            folder = root / "images" / names[c]
            if not folder.is_dir():
                raise FileNotFoundError(f"Class {names[c]!r} of classes.txt has no image folder. Received: missing={str(folder)!r}")
            files = sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
            if max_images_per_class:
                files = files[:max_images_per_class]
            images += [_load_image(p, image_size) for p in files]
            labels += [label] * len(files)
        splits[split] = ClassSplit(
            images=np.stack(images) if images else np.zeros((0, image_size, image_size, 3), np.uint8),
            labels=np.asarray(labels, dtype=np.int64), class_names=[names[c] for c in members],
        )
        class_attributes[split] = attributes[members].astype(np.float32)
    return ClassificationDataset(
        splits=splits,
        input_shape=(image_size, image_size, 3),
        scale=255.0,
        info={
            "source": str(root),
            "class_attributes": class_attributes,
            "attribute_names": _read_attribute_names(root, attributes.shape[1]),
            "images": {name: int(len(s.labels)) for name, s in splits.items()},
        },
    )
