"""Procedurally drawn glyphs whose classes are combinations of visual attributes (numpy and Pillow only).

Every class is one combination of six attributes: the outline's shape, filled or hollow, the number of strokes
drawn across it, the line thickness, the orientation and the size. Each image of a class draws that
combination with its own random jitter (position, angle, scale) and pixel noise, so classes must be told apart
by their attributes, not by a fixed picture. The classes are split at random between train, val and test: the
test classes are unseen combinations of attribute values that all occur in training, which is what zero-shot
learning from attributes needs.
"""

from __future__ import annotations

import itertools
import math

import numpy as np

from metalab.api import ClassificationDataset, ClassSplit

#: The attribute groups and their values; a class is one value per group, encoded one-hot per group.
ATTRIBUTES: dict[str, tuple] = {
    "shape": ("ellipse", "rectangle", "triangle"),
    "fill": ("hollow", "filled"),
    "strokes": (0, 1, 2, 3),
    "thickness": ("thin", "thick"),
    "orientation": (0, 45, 90, 135),
    "size": ("small", "large"),
}

#: Names of the attribute vector's entries, ``"<group>=<value>"``, in vector order.
ATTRIBUTE_NAMES: list[str] = [f"{group}={value}" for group, values in ATTRIBUTES.items() for value in values]

#: Rendering happens at this multiple of the output size, then a box filter antialiases it.
_SUPERSAMPLE = 4


def all_combinations() -> list[tuple]:
    """Every class as a tuple of one value per attribute group, in a fixed order."""
    return list(itertools.product(*ATTRIBUTES.values()))


def attribute_vector(combination: tuple) -> np.ndarray:
    """The class's attribute vector: one-hot per group, concatenated (``float32 [len(ATTRIBUTE_NAMES)]``)."""
    parts = []
    for values, value in zip(ATTRIBUTES.values(), combination):
        one_hot = np.zeros(len(values), dtype=np.float32)
        one_hot[values.index(value)] = 1.0
        parts.append(one_hot)
    return np.concatenate(parts)


def class_name(combination: tuple) -> str:
    """E.g. ``"ellipse/filled/strokes2/thick/rot45/large"``."""
    shape, fill, strokes, thickness, orientation, size = combination
    return f"{shape}/{fill}/strokes{strokes}/{thickness}/rot{orientation}/{size}"


def _outline(shape: str) -> np.ndarray:
    """The shape's polygon in local coordinates (long axis along x, extent about [-1, 1] x [-0.5, 0.5])."""
    if shape == "ellipse":
        t = np.linspace(0.0, 2.0 * math.pi, 40, endpoint=False)
        return np.stack([np.cos(t), 0.5 * np.sin(t)], axis=1)
    if shape == "rectangle":
        return np.array([[-1.0, -0.5], [1.0, -0.5], [1.0, 0.5], [-1.0, 0.5]])
    if shape == "triangle":
        return np.array([[1.0, 0.0], [-1.0, 0.6], [-1.0, -0.6]])
    raise ValueError(f"Unknown glyph shape. Received: shape={shape!r}")


def draw_glyph(combination: tuple, size: int, rng: np.random.Generator, noise: float) -> np.ndarray:
    """Draws one image of a class with random jitter.

    Args:
        combination: One value per attribute group (see :data:`ATTRIBUTES`).
        size: Height and width of the image in pixels.
        rng: Source of the jitter and noise.
        noise: Standard deviation of the Gaussian pixel noise, in units of full intensity.

    Returns:
        ``uint8 [size, size]``: a white glyph on black.
    """
    from PIL import Image, ImageDraw

    shape, fill, strokes, thickness, orientation, glyph_size = combination
    big = size * _SUPERSAMPLE
    canvas = Image.new("L", (big, big), 0)
    draw = ImageDraw.Draw(canvas)
    radius = (0.42 if glyph_size == "large" else 0.26) * big * rng.uniform(0.9, 1.1)
    angle = math.radians(orientation + rng.uniform(-8.0, 8.0))
    center = big / 2 + rng.uniform(-0.06, 0.06, size=2) * big
    rotation = np.array([[math.cos(angle), -math.sin(angle)], [math.sin(angle), math.cos(angle)]])

    def place(points: np.ndarray) -> list[tuple[float, float]]:
        # Image y grows downwards; flipping it keeps the orientation counter-clockwise as written.
        xy = points @ rotation.T * radius
        return [(float(center[0] + x), float(center[1] - y)) for x, y in xy]

    width = max(1, int(round((0.05 if thickness == "thin" else 0.13) * big)))
    polygon = place(_outline(shape))
    if fill == "filled":
        draw.polygon(polygon, fill=255)
    else:
        draw.line(polygon + polygon[:1], fill=255, width=width, joint="curve")
    # Strokes cross the shape across its long axis: cut out of a filled shape, drawn over a hollow one.
    stroke_colour = 0 if fill == "filled" else 255
    for x in (np.linspace(-0.5, 0.5, strokes) if strokes > 1 else [0.0] * strokes):
        draw.line(place(np.array([[x, -0.8], [x, 0.8]])), fill=stroke_colour, width=width)
    image = np.asarray(canvas.resize((size, size), Image.Resampling.BOX), dtype=np.float32) / 255.0
    image = image + rng.normal(0.0, noise, size=image.shape)
    return np.clip(np.rint(image * 255.0), 0, 255).astype(np.uint8)


def make_glyphs_dataset(size: int = 28, images_per_class: int = 20, val_classes: int = 48, test_classes: int = 96,
                        noise: float = 0.08, seed: int = 0) -> ClassificationDataset:
    """Draws the glyph dataset: every attribute combination is a class, split at random between train/val/test.

    Args:
        size: Image height and width.
        images_per_class: Images drawn per class.
        val_classes: Classes in the validation split.
        test_classes: Classes in the test split; the remaining classes train.
        noise: Standard deviation of the pixel noise (0..1).
        seed: Seed of the class split and of every image's jitter.

    Returns:
        A :class:`ClassificationDataset` of ``uint8 [n, size, size, 1]`` images; ``info["class_attributes"]`` is
        ``{split: float32 [classes, attributes]}`` (one-hot per attribute group, see ``info["attribute_names"]``).

    Raises:
        ValueError: If the counts leave fewer than one class for training.
    """
    combinations = all_combinations()
    total = len(combinations)
    if val_classes < 1 or test_classes < 1 or val_classes + test_classes >= total:
        raise ValueError(
            f"val_classes and test_classes must be >= 1 and leave training classes among the {total} glyph classes. "
            f"Received: val_classes={val_classes}, test_classes={test_classes}"
        )
    rng = np.random.default_rng(seed)
    order = rng.permutation(total)
    groups = {
        "test": np.sort(order[:test_classes]),
        "val": np.sort(order[test_classes:test_classes + val_classes]),
        "train": np.sort(order[test_classes + val_classes:]),
    }
    splits, attributes = {}, {}
    for name in ("train", "val", "test"):
        chosen = [combinations[i] for i in groups[name]]
        images = np.empty((len(chosen) * images_per_class, size, size, 1), dtype=np.uint8)
        for c, combination in enumerate(chosen):
            # One generator per class: a class draws the same images whichever split it falls in.
            class_rng = np.random.default_rng([seed, int(groups[name][c])])
            for i in range(images_per_class):
                images[c * images_per_class + i, ..., 0] = draw_glyph(combination, size, class_rng, noise)
        labels = np.repeat(np.arange(len(chosen), dtype=np.int64), images_per_class)
        splits[name] = ClassSplit(images=images, labels=labels, class_names=[class_name(c) for c in chosen])
        attributes[name] = np.stack([attribute_vector(c) for c in chosen]).astype(np.float32)
    return ClassificationDataset(
        splits=splits,
        input_shape=(size, size, 1),
        scale=255.0,
        info={
            "source": "procedurally drawn (metalab.zeroshot.glyphs)",
            "class_attributes": attributes,
            "attribute_names": list(ATTRIBUTE_NAMES),
            "images": {name: int(len(s.labels)) for name, s in splits.items()},
            "seed": int(seed),
        },
    )
