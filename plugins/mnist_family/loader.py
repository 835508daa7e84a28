"""Reads MNIST-format files (Keras's ``.npz``, the IDX files gzipped or not, EMNIST's MATLAB ``.mat``) and builds
the few-shot split (classes divided between the splits) or the supervised one (images divided, official test set)."""

from __future__ import annotations

import gzip
import struct
from pathlib import Path
from typing import Any

import numpy as np

from metalab.api.data import assign_classes, keras_cache_dirs, make_class_splits
from metalab.api import ClassificationDataset, DataContext

__all__ = ["SOURCES", "read_idx", "read_emnist_mat", "find_files", "load_parts", "load_arrays", "build_dataset"]

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

#: For each dataset: its folder under METALAB_DATA_DIR, its .npz name, its IDX names, its MATLAB file name
#: (``None``: no such release), the Keras cache sub-folder (``None``: Keras has no copy), and how IDX images are
#: stored (EMNIST's are transposed).
SOURCES: dict[str, dict[str, Any]] = {
    "mnist": {"folder": "mnist", "npz": "mnist.npz", "idx": _IDX, "mat": None, "keras": "", "transposed": False},
    "fashion_mnist": {"folder": "fashion_mnist", "npz": "fashion-mnist.npz", "idx": _IDX, "mat": None,
                      "keras": "fashion-mnist", "transposed": False},
    "emnist_letters": {"folder": "emnist", "npz": "emnist-letters.npz", "idx": _EMNIST_IDX,
                       "mat": "emnist-letters.mat", "keras": None, "transposed": True},
}

_PARTS = ("x_train", "y_train", "x_test", "y_test")


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


def read_emnist_mat(path: Path) -> dict[str, np.ndarray]:
    """Reads NIST's EMNIST MATLAB file (e.g. ``emnist-letters.mat`` from ``matlab.zip``), images upright.

    The file holds a struct ``dataset`` with ``train`` and ``test``, each with ``images`` (``N x 784``, every row
    one image stored column by column, as MATLAB does) and ``labels`` (``N x 1``), plus ``mapping``.

    Returns:
        ``{"x_train": uint8 [n, 28, 28], "y_train": [n], "x_test": uint8 [m, 28, 28], "y_test": [m]}``.

    Raises:
        ValueError: The file is not a MATLAB file scipy reads, or lacks that structure.
    """
    from scipy.io import loadmat

    try:
        mat = loadmat(str(path), simplify_cells=True)
    except NotImplementedError as exc:  # MATLAB 7.3 files are HDF5, which loadmat does not read.
        raise ValueError(f"{path.name}: {exc}; use NIST's emnist-letters.mat as released. Received: path={str(path)!r}") from None
    except Exception as exc:  # noqa: BLE001 - scipy fails on a damaged file in many ways (IndexError, EOFError, ...)
        raise ValueError(f"{path.name} is not a MATLAB file scipy can read ({exc}). Received: path={str(path)!r}") from None
    dataset = mat.get("dataset")
    if not isinstance(dataset, dict) or not all(isinstance(dataset.get(p), dict) for p in ("train", "test")):
        raise ValueError(
            f"{path.name} must hold a struct 'dataset' with 'train' and 'test' (NIST's EMNIST .mat layout). "
            f"Received: variables={sorted(k for k in mat if not k.startswith('__'))}"
        )
    parts = {}
    for part in ("train", "test"):
        entry = dataset[part]
        if "images" not in entry or "labels" not in entry:
            raise ValueError(f"{path.name}: dataset.{part} needs 'images' and 'labels'. Received: fields={sorted(entry)}")
        images = np.asarray(entry["images"])
        if images.size % 784 or images.size and (images.min() < 0 or images.max() > 255):
            raise ValueError(
                f"{path.name}: dataset.{part}.images must be N x 784 values in 0..255 (28x28 images). "
                f"Received: shape={images.shape}"
            )
        # Each row is a 28x28 image in column-major order: row-major reshaping gives it transposed.
        parts[f"x_{part}"] = images.reshape(-1, 28, 28).transpose(0, 2, 1).astype(np.uint8)
        parts[f"y_{part}"] = np.asarray(entry["labels"]).reshape(-1)
    return parts


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
    """Finds the files: ``("npz", path)``, ``("idx", {array name: path})`` or (EMNIST) ``("mat", path)``.

    In a folder the ``.npz`` comes first, then the four IDX files, then the ``.mat`` file.

    Raises:
        FileNotFoundError: Nothing complete at any of the places; the message names the files and places.
    """
    source = SOURCES[which]
    places = _places(which, params, context)
    for place in places:
        if place.is_file() and place.suffix == ".npz":
            return "npz", place
        if place.is_file() and place.suffix == ".mat" and source["mat"]:
            return "mat", place
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
        if source["mat"] and (place / source["mat"]).is_file():
            return "mat", place / source["mat"]
    idx_names = ", ".join(f"{stem}.gz" for stem in source["idx"].values())
    home = Path(context.data_dir) / source["folder"]
    mat = f", {source['mat']} (NIST's matlab.zip)" if source["mat"] else ""
    raise FileNotFoundError(
        f"{which} files not found. Put {source['npz']}{mat} or the four files {idx_names} in {home}/ "
        f"(METALAB_DATA_DIR/{source['folder']}/)"
        + (", or in the Keras cache" if source["keras"] is not None else "")
        + f", or set the dataset parameter path to them. Looked in: {', '.join(str(p) for p in places)}. "
        f"metalab never downloads these. Received: path={params.path!r}"
    )


def load_parts(which: str, params: Any, context: DataContext) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    """Returns the official train and test parts, upright, and facts on the source.

    Returns:
        ``({"x_train": uint8 [n, 28, 28], "y_train": int64 [n], "x_test": ..., "y_test": ...}, facts)``; labels
        as the files give them (1..26 for EMNIST letters); facts hold ``format``, ``sources`` and the
        official image counts.

    Raises:
        FileNotFoundError: The files are absent (never downloaded).
        ValueError: A file is not in the expected format.
    """
    kind, found = find_files(which, params, context)
    if kind == "npz":
        with np.load(found, allow_pickle=False) as data:
            missing = [k for k in _PARTS if k not in data.files]
            if missing:
                raise ValueError(f"{found} lacks {', '.join(missing)} (Keras's mnist.npz layout). Received: keys={data.files}")
            parts = {k: np.asarray(data[k]) for k in _PARTS}
        sources = str(found)
    elif kind == "mat":
        parts = read_emnist_mat(found)
        sources = str(found)
    else:
        parts = {k: read_idx(p, 3 if k.startswith("x") else 1) for k, p in found.items()}
        if SOURCES[which]["transposed"]:
            # EMNIST's IDX images are stored column by column: transpose to upright.
            parts["x_train"] = parts["x_train"].transpose(0, 2, 1)
            parts["x_test"] = parts["x_test"].transpose(0, 2, 1)
        sources = {k: str(p) for k, p in found.items()}
    for split in ("train", "test"):
        x, y = parts[f"x_{split}"], parts[f"y_{split}"]
        if x.ndim != 3:
            raise ValueError(f"{which}: {split} images must be [n, 28, 28]. Received: shape={x.shape}")
        if len(x) != len(y):
            raise ValueError(f"{which}: {len(x)} {split} images but {len(y)} labels. Received: sources={sources}")
        parts[f"x_{split}"] = np.ascontiguousarray(x.astype(np.uint8))
        parts[f"y_{split}"] = np.asarray(y).astype(np.int64).reshape(-1)
    facts = {"format": kind, "sources": sources, "official_train_images": int(len(parts["x_train"])),
             "official_test_images": int(len(parts["x_test"]))}
    return parts, facts


def load_arrays(which: str, params: Any, context: DataContext) -> tuple[np.ndarray, np.ndarray, dict[str, Any]]:
    """Returns all images ``uint8 [n, 28, 28]`` (train then test), labels ``int64 [n]`` and facts on the source."""
    parts, facts = load_parts(which, params, context)
    images = np.concatenate([parts["x_train"], parts["x_test"]])
    labels = np.concatenate([parts["y_train"], parts["y_test"]])
    return images, labels, facts


def _class_names(which: str) -> list[str]:
    if which == "mnist":
        return [f"digit_{d}" for d in range(10)]
    return list(FASHION_CLASSES if which == "fashion_mnist" else LETTERS)


def _class_indices(which: str, labels: np.ndarray) -> np.ndarray:
    # EMNIST letters label A..Z as 1..26.
    return labels - 1 if which == "emnist_letters" else labels


def build_dataset(which: str, params: Any, context: DataContext) -> ClassificationDataset:
    """Builds ``which`` (``"mnist"``, ``"fashion_mnist"``, ``"emnist_letters"``) in the mode ``params.mode``.

    ``"few_shot"``: the official train and test images are pooled and the classes divided between the splits.
    ``"supervised"``: every split holds every class; ``train`` is the official train images less a seeded,
    stratified share ``params.val_fraction`` (``val``), and ``test`` the official test images.

    Raises:
        FileNotFoundError: The files are absent (never downloaded).
        ValueError: A file is not in the expected format, or labels fall outside the classes.
    """
    from metalab.api.data import supervised_splits

    parts, facts = load_parts(which, params, context)
    names = _class_names(which)
    for key in ("y_train", "y_test"):
        labels = _class_indices(which, parts[key])
        if labels.size and (labels.min() < 0 or labels.max() >= len(names)):
            raise ValueError(
                f"{which}: labels must cover the {len(names)} classes. Received: labels in {labels.min()}..{labels.max()}"
            )
        parts[key] = labels
    mode = getattr(params, "mode", "few_shot")
    if mode == "supervised":
        splits = supervised_splits(parts["x_train"][..., None], parts["y_train"], parts["x_test"][..., None],
                                   parts["y_test"], names, float(params.val_fraction), int(params.seed))
        extra = {"val_fraction": float(params.val_fraction)}
    else:
        images = np.concatenate([parts["x_train"], parts["x_test"]])
        labels = np.concatenate([parts["y_train"], parts["y_test"]])
        total = len(names)
        counts = {"train": int(params.train_classes), "val": int(params.val_classes)}
        counts["test"] = total - counts["train"] - counts["val"]
        groups = assign_classes(total, counts, int(params.seed))
        splits = make_class_splits(images[..., None], labels, names, groups)
        extra = {}
    info = {
        "dataset": which,
        "mode": mode,
        **facts,
        **extra,
        "seed": int(params.seed),
        "invert": False,
        "split_classes": {name: list(s.class_names) for name, s in splits.items()},
        "classes": {name: s.num_classes for name, s in splits.items()},
        "images": {name: int(len(s.labels)) for name, s in splits.items()},
    }
    return ClassificationDataset(splits=splits, input_shape=(28, 28, 1), scale=255.0, info=info,
                                 supervised=mode == "supervised")
