"""Text examples grouped by split and class, turned into metalab's ClassificationDataset of token-id rows."""

from __future__ import annotations

from typing import Any, Mapping, Sequence

import numpy as np

from metalab.api import ClassificationDataset, ClassSplit

from .tokenizer import HashingTokenizer

__all__ = ["SAMPLES_PER_CLASS", "split_classes", "text_dataset"]

#: Sentences of each class kept in ``info["sample_texts"]`` for the pages and reports (the rest are tokens only).
SAMPLES_PER_CLASS = 3


def split_classes(names: Sequence[str], train: int, val: int, seed: int, owner: str) -> dict[str, list[str]]:
    """Divides class names between train, val and test by a seeded permutation of their sorted order.

    Args:
        names: Every class name (any order; duplicates are not allowed).
        train, val: Classes in the train and val splits; the rest (at least one) are test.
        seed: Seed of the permutation.
        owner: The dataset id, for messages.

    Returns:
        ``{"train": [...], "val": [...], "test": [...]}``, each sorted.

    Raises:
        ValueError: If the counts leave no test class.
    """
    names = sorted(names)
    if train < 1 or val < 1 or train + val >= len(names):
        raise ValueError(
            f"{owner}: train_classes and val_classes must be >= 1 and leave at least one of the {len(names)} "
            f"classes for test. Received: train_classes={train}, val_classes={val}"
        )
    order = [names[i] for i in np.random.default_rng(seed).permutation(len(names))]
    return {"train": sorted(order[:train]), "val": sorted(order[train:train + val]),
            "test": sorted(order[train + val:])}


def text_dataset(groups: Mapping[str, Mapping[str, Sequence[str]]], tokenizer: HashingTokenizer, *,
                 supervised: bool = False, **info: Any) -> ClassificationDataset:
    """Tokenises ``{split: {class name: [texts]}}`` into a :class:`ClassificationDataset`.

    Each split's ``images`` are ``int32 [n, length]`` token ids (``0`` pads) and ``scale`` is 1, so
    ``to_float`` gives the ids as ``float32`` (exact below 2**24) and the episode sampler needs nothing new; the
    text backbones cast them back to integers.

    Args:
        groups: The texts of each class of each split (``train``, ``val`` and ``test``).
        tokenizer: How texts become ids.
        supervised: Whether the splits share their classes (divided by example).
        **info: Further facts for ``info`` (source, files, seed).

    Returns:
        The dataset; its ``encode`` is ``tokenizer.encode`` (texts to predict on) and ``info`` holds
        ``"modality": "text"``, the tokenizer's settings, the examples per split and the first
        :data:`SAMPLES_PER_CLASS` sentences of every class (``info["sample_texts"][split][class]``), all
        JSON-serialisable.
    """
    splits, samples, counts = {}, {}, {}
    sentences: dict[bytes, str] = {}  # token row -> its sentence, for the report's gallery (describe)
    for split in ("train", "val", "test"):
        classes = groups[split]
        names = list(classes)
        texts = [t for name in names for t in classes[name]]
        labels = np.concatenate([np.full(len(classes[name]), i, dtype=np.int64) for i, name in enumerate(names)]) \
            if names else np.zeros(0, dtype=np.int64)
        rows = tokenizer.encode(texts)
        for row, text in zip(rows, texts):
            sentences.setdefault(np.asarray(row, dtype=np.int32).tobytes(), str(text))
        splits[split] = ClassSplit(images=rows, labels=labels, class_names=names)
        samples[split] = {name: [str(t) for t in classes[name][:SAMPLES_PER_CLASS]] for name in names}
        counts[split] = len(texts)
    return ClassificationDataset(
        splits=splits,
        input_shape=(tokenizer.length,),
        scale=1.0,
        info={"modality": "text", "tokenizer": tokenizer.config(), "examples": counts, "sample_texts": samples,
              **info},
        supervised=supervised,
        describe=_describer(sentences),
        encode=tokenizer.encode,  # texts to predict on, tokenized as this run's training texts were
    )


def _describer(sentences: dict[bytes, str]):
    """``describe(inputs) -> [sentence, ...]`` for token rows (as ``to_float`` gives them, float ids), from the
    sentences the dataset tokenized; a row it never made reads as its ids."""
    def describe(inputs: np.ndarray) -> list[str]:
        rows = np.rint(np.asarray(inputs, dtype=np.float64)).astype(np.int32)
        rows = rows.reshape(len(rows), -1)
        return [sentences.get(row.tobytes(), " ".join(str(i) for i in row if i)) for row in rows]

    return describe
