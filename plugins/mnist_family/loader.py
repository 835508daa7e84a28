"""Reads MNIST-format files (Keras's ``.npz`` or the IDX files, gzipped or not) and splits the classes."""

from __future__ import annotations

import gzip
import struct
from pathlib import Path
from typing import Any

import numpy as np

from metalab.core.datasets_info import assign_classes, keras_cache_dirs, make_class_splits
from metalab.core.plugin_api import ClassificationDataset, DataContext

__all__ = ["SOURCES", "read_idx", "find_files", "load_arrays", "build_dataset"]

FASHION_CLASSES = ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag",
                   "Ankle boot")
LETTERS = tuple(chr(ord("A") + i) for i in range(26))

_IDX = {
    "x_train": "train-images-idx3-ubyte",
    "y_train": "train-labels-idx1-ubyte",
    "x_test": "t10k-images-idx3-ubyte",
    "y_test": "t10k-labels-idx1-ubyte",
}
_EMNIST_IDX = {
    "x_train": "emnist-letters-train-images-idx3-ubyte",
    "y_train": "emnist-letters-train-labels-idx1-ubyte",
    "x_test": "emnist-letters-test-images-idx3-ubyte",
    "y_test": "emnist-letters-test-labels-idx1-ubyte",
}

#: For each dataset: its folder under METALAB_DATA_DIR, its .npz name, its IDX names, the Keras cache sub-folder
#: (``None``: Keras has no copy), and how IDX images are stored (EMNIST's are transposed).
SOURCES: dict[str, dict[str, Any]] = {
    "mnist": {"folder": "mnist", "npz": "mnist.npz", "idx": _IDX, "keras": "", "transposed": False},
    "fashion_mnist": {"folder": "fashion_mnist", "npz": "fashion-mnist.npz", "idx": _IDX, "keras": "fashion-mnist",
                      "transposed": False},
    "emnist_letters": {"folder": "emnist", "npz": "emnist-letters.npz", "idx": _EMNIST_IDX, "keras": None,
                       "transposed": True},
}


def read_idx(path: Path, expected_dims: int) -> np.ndarray:
    """Reads an IDX file (LeCun's MNIST format), gzipped or not, as a ``uint8`` array.

    Raises:
        ValueError: The header is not that of an unsigned-byte IDX file with ``expected_dims`` dimensions.
    """
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rb") as f:
        data = f.read()
    if len(data) < 4:
        raise ValueError(f"{path.name} is too short to be an IDX file. Received: bytes={len(data)}")
    zero, dtype, dims = struct.unpack(">HBB", data[:4])
    if zero != 0 or dtype != 0x08 or dims != expected_dims:
        raise ValueError(
            f"{path.name} is not an unsigned-byte IDX file with {expected_dims} dimensions (the MNIST format). "
            f"Received: magic=0x{int.from_bytes(data[:4], 'big'):08x}"
        )
    shape = struct.unpack(">" + "I" * dims, data[4:4 + 4 * dims])
    body = np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * dims)
    if body.size != int(np.prod(shape)):
        raise ValueError(f"{path.name}: the header says {shape} but the file holds {body.size} values. Received: shape={shape}")
    return body.reshape(shape)


def _places(which: str, params: Any, context: DataContext) -> list[Path]:
    source = SOURCES[which]
    places = []
    if params.path:
        places.append(Path(params.path).expanduser())
    else:
        places.append(Path(context.data_dir) / source["folder"])
        if source["keras"] is not None:
            places += [d / source["keras"] if source["keras"] else d for d in keras_cache_dirs()]
    return places


def find_files(which: str, params: Any, context: DataContext) -> tuple[str, dict[str, Path] | Path]:
    """Finds the files: ``("npz", path)`` or ``("idx", {array name: path})``.

    Raises:
        FileNotFoundError: Nothing complete at any of the places; the message names the files and places.
    """
    source = SOURCES[which]
    places = _places(which, params, context)
    for place in places:
        if place.is_file() and place.suffix == ".npz":
            return "npz", place
        if not place.is_dir():
            continue
        npz = place / source["npz"]
        if npz.is_file():
            return "npz", npz
        found = {}
        for key, stem in source["idx"].items():
            for candidate in (place / f"{stem}.gz", place / stem):
                if candidate.is_file():
                    found[key] = candidate
                    break
        if len(found) == len(source["idx"]):
            return "idx", found
    idx_names = ", ".join(f"{stem}.gz" for stem in source["idx"].values())
    home = Path(context.data_dir) / source["folder"]
    raise FileNotFoundError(
        f"{which} files not found. Put {source['npz']} or the four files {idx_names} in {home}/ "
        f"(METALAB_DATA_DIR/{source['folder']}/)"
        + (", or in the Keras cache" if source["keras"] is not None else "")
        + f", or set the dataset parameter path to them. Looked in: {', '.join(str(p) for p in places)}. "
        f"metalab never downloads these. Received: path={params.path!r}"
    )


def load_arrays(which: str, params: Any, context: DataContext) -> tuple[np.ndarray, np.ndarray, dict[str, Any]]:
    """Returns all images ``uint8 [n, 28, 28]`` (train then test), labels ``int64 [n]`` and facts on the source."""
    kind, found = find_files(which, params, context)
    if kind == "npz":
        with np.load(found, allow_pickle=False) as data:
            missing = [k for k in ("x_train", "y_train", "x_test", "y_test") if k not in data.files]
            if missing:
                raise ValueError(f"{found} lacks {', '.join(missing)} (Keras's mnist.npz layout). Received: keys={data.files}")
            parts = {k: np.asarray(data[k]) for k in ("x_train", "y_train", "x_test", "y_test")}
        sources = str(found)
    else:
        parts = {k: read_idx(p, 3 if k.startswith("x") else 1) for k, p in found.items()}
        if SOURCES[which]["transposed"]:
            # EMNIST's IDX images are stored column by column: transpose to upright.
            parts["x_train"] = parts["x_train"].transpose(0, 2, 1)
            parts["x_test"] = parts["x_test"].transpose(0, 2, 1)
        sources = {k: str(p) for k, p in found.items()}
    for split in ("train", "test"):
        if len(parts[f"x_{split}"]) != len(parts[f"y_{split}"]):
            raise ValueError(
                f"{which}: {len(parts[f'x_{split}'])} {split} images but {len(parts[f'y_{split}'])} labels. "
                f"Received: sources={sources}"
            )
    images = np.ascontiguousarray(np.concatenate([parts["x_train"], parts["x_test"]]).astype(np.uint8))
    labels = np.concatenate([parts["y_train"], parts["y_test"]]).astype(np.int64).reshape(-1)
    if images.ndim != 3:
        raise ValueError(f"{which}: images must be [n, 28, 28]. Received: shape={images.shape}")
    return images, labels, {"format": kind, "sources": sources,
                            "official_train_images": int(len(parts["x_train"]))}


def _class_names(which: str, labels: np.ndarray) -> tuple[list[str], np.ndarray]:
    if which == "mnist":
        return [f"digit_{d}" for d in range(10)], labels
    if which == "fashion_mnist":
        return list(FASHION_CLASSES), labels
    # EMNIST letters label A..Z as 1..26.
    return list(LETTERS), labels - 1


def build_dataset(which: str, params: Any, context: DataContext) -> ClassificationDataset:
    """Builds the few-shot version of ``which`` (``"mnist"``, ``"fashion_mnist"``, ``"emnist_letters"``).

    Raises:
        FileNotFoundError: The files are absent (never downloaded).
        ValueError: A file is not in the expected format, or labels fall outside the classes.
    """
    images, labels, facts = load_arrays(which, params, context)
    names, labels = _class_names(which, labels)
    if labels.size and (labels.min() < 0 or labels.max() >= len(names)):
        raise ValueError(
            f"{which}: labels must cover the {len(names)} classes. Received: labels in {labels.min()}..{labels.max()}"
        )
    total = len(names)
    counts = {"train": int(params.train_classes), "val": int(params.val_classes)}
    counts["test"] = total - counts["train"] - counts["val"]
    groups = assign_classes(total, counts, int(params.seed))
    splits = make_class_splits(images[..., None], labels, names, groups)
    info = {
        "dataset": which,
        **facts,
        "seed": int(params.seed),
        "invert": False,
        "split_classes": {name: list(s.class_names) for name, s in splits.items()},
        "classes": {name: s.num_classes for name, s in splits.items()},
        "images": {name: int(len(s.labels)) for name, s in splits.items()},
    }
    return ClassificationDataset(splits=splits, input_shape=(28, 28, 1), scale=255.0, info=info)
