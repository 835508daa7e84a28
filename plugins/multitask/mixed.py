"""Mixed modalities for multi-task learning: scikit-learn's digit images and the embedded intent texts in one
dataset (``metalab.digits_and_intents``), each example packed into one row with its modality flag.

NumPy only (the backbone that reads the rows is :mod:`.mixed_model`). A row of ``width = 1 + P + L`` floats is

    [ flag | P pixels in 0..1 (image rows; 0 for text rows) | L token ids (text rows; 0 for image rows) ]

with ``flag`` 0 for an image and 1 for a text, ``P = 8 * 8`` grey pixels of a digit row-major, and ``L`` hashed
word ids (``0`` pads), so one ``ClassificationDataset`` of input shape ``(width,)`` holds both modalities. The
training classes alternate between the modalities (class ``c`` is an image class when ``c`` is even, a text class
when odd), so multi-task learning's dealing of class ``c`` to task ``c mod K`` gives, for an even ``K``, tasks of
one modality each: ``K = 2`` is image classification (task 0) and text classification (task 1).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from metalab.api import ClassificationDataset, ClassSplit

__all__ = ["MixedLayout", "IMAGE", "TEXT", "make_digits_and_intents"]

#: The modality flags of a packed row (its first value).
IMAGE, TEXT = 0, 1
#: The digits are 8x8 grey images with 16 grey levels (scikit-learn's load_digits).
DIGIT_SHAPE = (8, 8, 1)
DIGIT_LEVELS = 16.0
NUM_DIGITS = 10


@dataclass(frozen=True)
class MixedLayout:
    """Where each part of a packed image-and-text row lies (see the module docstring).

    Attributes:
        image_shape: ``(height, width, channels)`` of the image part.
        max_tokens: ``L``, token ids per row.
    """

    image_shape: tuple[int, int, int]
    max_tokens: int

    @property
    def pixels(self) -> int:
        """``P``: values of the image part."""
        return int(np.prod(self.image_shape))

    @property
    def pixel_slice(self) -> tuple[int, int]:
        return 1, 1 + self.pixels

    @property
    def token_slice(self) -> tuple[int, int]:
        return 1 + self.pixels, 1 + self.pixels + self.max_tokens

    @property
    def width(self) -> int:
        """Values per row: the flag, the pixels and the token ids."""
        return 1 + self.pixels + self.max_tokens

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON: the shapes and where each part starts (a dataset's ``info["layout"]``)."""
        return {**asdict(self), "image_shape": list(self.image_shape), "flag": 0,
                "pixels": list(self.pixel_slice), "tokens": list(self.token_slice), "width": self.width}

    @classmethod
    def for_input(cls, input_shape: tuple[int, ...], image_shape: tuple[int, int, int], owner: str) -> "MixedLayout":
        """The layout of rows of ``input_shape`` whose image part has ``image_shape``.

        Raises:
            ValueError: If the rows are not flat or leave no room for a flag, the image and at least one token.
        """
        shape = tuple(int(s) for s in input_shape)
        pixels = int(np.prod(image_shape))
        if len(shape) != 1 or shape[0] < 2 + pixels:
            raise ValueError(
                f"{owner} needs packed image-and-text rows (input_shape (1 + {pixels} + max_tokens,): a modality "
                f"flag, {pixels} pixels of a {image_shape} image, then token ids), as metalab.digits_and_intents "
                f"makes. Received: input_shape={tuple(input_shape)}")
        return cls(tuple(int(s) for s in image_shape), shape[0] - 1 - pixels)


def _params(params: Any) -> Any:
    from . import DigitsAndIntentsParams

    return params if isinstance(params, DigitsAndIntentsParams) else DigitsAndIntentsParams.model_validate(params or {})


def _divide(names: list[str], params: Any, rng: np.random.Generator) -> dict[str, list[str]]:
    order = [names[i] for i in rng.permutation(len(names))]
    a, b, c = params.train_classes, params.val_classes, params.test_classes
    return {"train": order[:a], "val": order[a:a + b], "test": order[a + b:a + b + c]}


def make_digits_and_intents(params: Any = None, context: Any = None) -> ClassificationDataset:
    """Builds ``metalab.digits_and_intents`` (the dataset factory; ``context`` is unused, nothing is read).

    Args:
        params: A ``DigitsAndIntentsParams`` (or a dict of its fields).
        context: The data context (ignored: the digits ship with scikit-learn, the intents are generated).

    Returns:
        A :class:`ClassificationDataset` of ``float32 [n, width]`` packed rows (``scale=1``). The training split
        alternates image and text classes (``"image:digit_3"``, ``"text:cancel/flight"``); the val and test splits
        hold held-out classes of ``eval_modality`` only, so a few-shot episode never mixes modalities.
        ``info["layout"]`` is the row layout, ``info["class_modalities"][split]`` each class's modality and
        ``info["held_out"]`` the other modality's held-out classes (not used by the splits).
    """
    from sklearn.datasets import load_digits

    from metalab.plugins.text.intents import all_intents, generate_intents
    from metalab.plugins.text.tokenizer import HashingTokenizer

    params = _params(params)
    layout = MixedLayout(DIGIT_SHAPE, int(params.max_tokens))
    every = int(params.examples_per_class)
    rng = np.random.default_rng(params.seed)

    bunch = load_digits()
    pixels = (np.asarray(bunch.images, dtype=np.float32) / DIGIT_LEVELS).reshape(len(bunch.target), -1)
    targets = np.asarray(bunch.target, dtype=np.int64)
    digit_names = [f"digit_{d}" for d in range(NUM_DIGITS)]
    digits = _divide(digit_names, params, rng)
    image_rows: dict[str, np.ndarray] = {}
    for d in range(NUM_DIGITS):
        rows = np.flatnonzero(targets == d)
        packed = np.zeros((every, layout.width), dtype=np.float32)
        packed[:, 0] = IMAGE
        packed[:, slice(*layout.pixel_slice)] = pixels[np.sort(rng.permutation(rows)[:every])]
        image_rows[digit_names[d]] = packed

    intents = _divide(all_intents(), params, rng)
    tokenizer = HashingTokenizer(vocab_size=int(params.vocab_size), length=layout.max_tokens, unit="words")
    chosen = [n for names in intents.values() for n in names]
    texts = generate_intents(chosen, every, int(params.seed))
    text_rows: dict[str, np.ndarray] = {}
    for name in chosen:
        packed = np.zeros((every, layout.width), dtype=np.float32)
        packed[:, 0] = TEXT
        packed[:, slice(*layout.token_slice)] = tokenizer.encode(texts[name])
        text_rows[name] = packed

    def split(classes: list[tuple[str, np.ndarray]]) -> ClassSplit:
        return ClassSplit(images=np.concatenate([rows for _, rows in classes]),
                          labels=np.repeat(np.arange(len(classes), dtype=np.int64), every),
                          class_names=[name for name, _ in classes])

    # Alternating image and text classes: class c's modality is c mod 2 (see the module docstring).
    train = [pair for d, t in zip(digits["train"], intents["train"])
             for pair in ((f"image:{d}", image_rows[d]), (f"text:{t}", text_rows[t]))]
    if params.eval_modality == "image":
        held = {s: [(f"image:{d}", image_rows[d]) for d in digits[s]] for s in ("val", "test")}
        other = {s: [f"text:{t}" for t in intents[s]] for s in ("val", "test")}
    else:
        held = {s: [(f"text:{t}", text_rows[t]) for t in intents[s]] for s in ("val", "test")}
        other = {s: [f"image:{d}" for d in digits[s]] for s in ("val", "test")}
    splits = {"train": split(train), "val": split(held["val"]), "test": split(held["test"])}
    modality = {name: ("image" if name.startswith("image:") else "text")
                for s in splits.values() for name in s.class_names}
    return ClassificationDataset(
        splits=splits,
        input_shape=(layout.width,),
        scale=1.0,
        info={"modality": "image+text", "layout": layout.to_dict(), "tokenizer": tokenizer.config(),
              "eval_modality": params.eval_modality,
              "class_modalities": {s: [modality[n] for n in sp.class_names] for s, sp in splits.items()},
              "held_out": other, "examples_per_class": every, "seed": int(params.seed),
              "source": "sklearn.datasets.load_digits + embedded templates (metalab.text_intents)",
              "sample_texts": {name: texts[name][:3] for name in chosen}},
    )
