"""Reads a prepared TFDS dataset from its folder (offline) into cached arrays and splits its classes."""

from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Any

import numpy as np

from metalab.api.data import cache_file, cached_arrays
from metalab.api.data import (
    assign_classes,
    make_class_splits,
    quick_fingerprint,
    resize_array,
    split_class_counts,
)
from metalab.api import ClassificationDataset, DataContext

__all__ = ["import_tfds", "data_dirs", "find_prepared", "build_dataset"]

_CACHE_VERSION = 1
_VERSION_RE = re.compile(r"^\d+\.\d+\.\d+$")
INSTALL_HINT = "pip install tensorflow-datasets importlib_resources"


def import_tfds() -> Any:
    """Imports ``tensorflow_datasets``, or raises ``ImportError`` saying how to install it."""
    try:
        import tensorflow_datasets as tfds
    except ImportError as exc:
        raise ImportError(
            f"metalab.tfds needs the tensorflow-datasets package, which is not installed: run `{INSTALL_HINT}` "
            f"(importlib_resources is a dependency tensorflow-datasets does not declare). Received: {exc}"
        ) from exc
    return tfds


def data_dirs(params: Any, context: DataContext) -> list[Path]:
    """The TFDS data folders looked in, in order."""
    if params.data_dir:
        return [Path(params.data_dir).expanduser()]
    dirs = [Path(context.data_dir) / "tfds"]
    if os.environ.get("TFDS_DATA_DIR"):
        dirs.append(Path(os.environ["TFDS_DATA_DIR"]).expanduser())
    dirs.append(Path("~/tensorflow_datasets").expanduser())
    return dirs


def _version_key(name: str) -> tuple[int, ...]:
    return tuple(int(p) for p in name.split("."))


def find_prepared(params: Any, context: DataContext) -> Path:
    """Finds ``<data_dir>/<name>/[<config>/]<version>/`` holding ``dataset_info.json`` (newest version by default).

    Raises:
        ValueError: ``name`` is empty.
        FileNotFoundError: Not prepared in any data folder; the message says where it is expected.
    """
    if not params.name.strip():
        raise ValueError("metalab.tfds needs the TFDS dataset name (param name, e.g. mnist). Received: name=''")
    name, _, version = params.name.strip().partition(":")
    looked = []
    for root in data_dirs(params, context):
        base = root / name
        looked.append(str(base))
        if version:
            candidate = base / version
            if (candidate / "dataset_info.json").is_file():
                return candidate
            continue
        if (base / "dataset_info.json").is_file():
            return base
        if base.is_dir():
            versions = sorted((d for d in base.iterdir() if d.is_dir() and _VERSION_RE.match(d.name)
                               and (d / "dataset_info.json").is_file()), key=lambda d: _version_key(d.name))
            if versions:
                return versions[-1]
    raise FileNotFoundError(
        f"TFDS dataset {params.name!r} is not prepared in {', '.join(looked)} (expected <data_dir>/{name}/"
        f"{version or '<version>'}/dataset_info.json with its record files). metalab never downloads through TFDS: "
        f"prepare it on a machine with network (`tfds build {name} --data_dir DIR` or tfds.load(..., data_dir=DIR)) "
        f"and copy DIR/{name}/ into METALAB_DATA_DIR/tfds/, or set the param data_dir. Received: name={params.name!r}"
    )


def _decode(folder: Path, params: Any) -> dict[str, np.ndarray]:
    tfds = import_tfds()
    builder = tfds.builder_from_directory(str(folder))
    features = builder.info.features
    for key in (params.image_key, params.label_key):
        if key not in features:
            raise ValueError(
                f"TFDS dataset {params.name!r} has no feature {key!r}; its features are {', '.join(features)}. "
                f"Set image_key and label_key. Received: feature={key!r}"
            )
    label_feature = features[params.label_key]
    names = list(getattr(label_feature, "names", None) or [])
    available = list(builder.info.splits)
    wanted = available if params.splits.strip() in ("", "all") else [s.strip() for s in params.splits.split(",") if s.strip()]
    unknown = [s for s in wanted if s not in available]
    if unknown:
        raise ValueError(f"TFDS dataset {params.name!r} has splits {', '.join(available)}. Received: splits={params.splits!r}")
    size = int(params.image_size)
    images, labels = [], []
    for split in wanted:
        for example in tfds.as_numpy(builder.as_dataset(split=split, shuffle_files=False)):
            image = np.asarray(example[params.image_key])
            if image.ndim == 2:
                image = image[..., None]
            if image.ndim != 3 or image.shape[-1] not in (1, 3, 4):
                raise ValueError(
                    f"Feature {params.image_key!r} must hold images [H, W, 1, 3 or 4]. Received: shape={image.shape}"
                )
            image = image[..., :3].astype(np.uint8)
            channels = int(params.channels) or (1 if image.shape[-1] == 1 else 3)
            if size or channels != image.shape[-1]:
                image = resize_array(image[None], size or image.shape[:2], channels=channels)[0]
            images.append(image)
            labels.append(int(example[params.label_key]))
    if not images:
        raise ValueError(f"TFDS dataset {params.name!r} has no examples in splits {wanted}. Received: splits={params.splits!r}")
    shapes = {im.shape for im in images}
    if len(shapes) > 1:
        raise ValueError(
            f"TFDS dataset {params.name!r} has images of several sizes ({', '.join(map(str, sorted(shapes)[:3]))}); "
            f"set image_size to resize them to one. Received: image_size={params.image_size}"
        )
    labels_arr = np.asarray(labels, dtype=np.int64)
    if not names:
        names = [str(i) for i in range(int(labels_arr.max()) + 1)]
    return {"images": np.stack(images), "labels": labels_arr, "class_names": np.asarray(names, dtype=str),
            "splits": np.asarray(wanted, dtype=str)}


def build_dataset(params: Any, context: DataContext) -> ClassificationDataset:
    """Builds the few-shot dataset from a prepared TFDS folder.

    Raises:
        ImportError: tensorflow-datasets is missing.
        FileNotFoundError: The dataset is not prepared locally.
        ValueError: Bad feature names or splits, images of several sizes without ``image_size``, too few classes.
    """
    folder = find_prepared(params, context)
    import_tfds()  # fail on a missing package before any cache lookup, with the install hint
    files = [p for p in folder.iterdir() if p.is_file()]
    key = (f"tfds/{params.name.replace('/', '_').replace(':', '-')}-{quick_fingerprint(files)}-"
           f"{params.splits.replace(',', '+')}-{params.image_key}-{params.label_key}-s{params.image_size}"
           f"-c{params.channels}-v{_CACHE_VERSION}.npz")
    arrays = cached_arrays(cache_file(context.cache_dir, key), lambda: _decode(folder, params))
    images, labels = arrays["images"], arrays["labels"]
    all_names = [str(n) for n in arrays["class_names"]]
    present = np.flatnonzero(np.bincount(labels, minlength=len(all_names)) > 0)
    counts = split_class_counts(len(present), params.train_fraction, params.val_fraction)
    chosen = assign_classes(len(present), counts, params.seed)
    groups = {split: present[idx] for split, idx in chosen.items()}
    splits = make_class_splits(images, labels, all_names, groups)
    info_json = json.loads((folder / "dataset_info.json").read_text(encoding="utf-8"))
    info = {
        "dataset": "tfds",
        "name": params.name,
        "folder": str(folder),
        "version": info_json.get("version"),
        "tfds_splits": [str(s) for s in arrays["splits"]],
        "seed": int(params.seed),
        "classes": {name: s.num_classes for name, s in splits.items()},
        "images": {name: int(len(s.labels)) for name, s in splits.items()},
    }
    return ClassificationDataset(splits=splits, input_shape=tuple(int(s) for s in images.shape[1:]), scale=255.0,
                                 info=info)
