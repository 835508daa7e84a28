"""Finds, decodes and caches the mini-ImageNet and tiered-ImageNet files; each split keeps its own classes."""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Any, Callable

import numpy as np

from metalab.api.data import cache_file, cached_arrays, download
from metalab.api.data import (
    UnreadableImageError,
    decode_image,
    quick_fingerprint,
    resize_array,
    safe_unpack,
    safe_unpickle,
)
from metalab.api import SPLITS, ClassificationDataset, ClassSplit, DataContext

__all__ = ["MINI_PICKLES", "MINI_CSVS", "TIERED_FILES", "build_mini_imagenet", "build_tiered_imagenet"]

_CACHE_VERSION = 1
_SEARCH_DEPTH = 3
_ARCHIVE_SUFFIXES = (".zip", ".tar", ".tar.gz", ".tgz", ".tar.bz2", ".tbz2", ".tar.xz", ".txz")

MINI_PICKLES = {split: f"mini-imagenet-cache-{split}.pkl" for split in SPLITS}
MINI_CSVS = {split: f"{split}.csv" for split in SPLITS}
TIERED_FILES = {
    split: {"png": f"{split}_images_png.pkl", "npz": f"{split}_images.npz", "labels": f"{split}_labels.pkl"}
    for split in SPLITS
}


def _root(params: Any, context: DataContext, folder: str) -> Path:
    return Path(params.path).expanduser() if params.path else Path(context.data_dir) / folder


def _search(root: Path, names: set[str]) -> dict[str, Path]:
    """The shallowest file with each name under ``root`` (at most a few folders deep)."""
    found: dict[str, Path] = {}
    level = [root] if root.is_dir() else []
    for _ in range(_SEARCH_DEPTH + 1):
        following = []
        for folder in sorted(level):
            try:
                children = sorted(folder.iterdir())
            except OSError:
                continue
            for child in children:
                if child.is_file() and child.name in names and child.name not in found:
                    found[child.name] = child
                elif child.is_dir() and not child.name.startswith("."):
                    following.append(child)
        level = following
        if len(found) == len(names) or not level:
            break
    return found


def _fetch(params: Any, context: DataContext, folder: str) -> bool:
    """Downloads ``params.url`` into ``context.download_dir(folder)`` (unpacking an archive there); True if there is
    something new to search."""
    if not params.url:
        return False
    if not params.sha256:
        raise ValueError(f"A download url needs the file's sha256 (param sha256). Received: url={params.url!r}")
    downloads = context.download_dir(folder)
    name = Path(params.url.split("?", 1)[0].split("#", 1)[0]).name
    if name in ("", ".", ".."):
        name = "download"
    target = download(params.url, downloads / name, params.sha256, allow_download=context.allow_download,
                      root=downloads)
    if name.lower().endswith(_ARCHIVE_SUFFIXES):
        unpacked = downloads / (name.split(".", 1)[0] + "_unpacked")
        if not unpacked.exists():
            safe_unpack(target, unpacked)
    return True


def _locate(params: Any, context: DataContext, folder: str, find: Callable[[Path], Any], missing_message: str) -> Any:
    """Finds the files in ``path`` (or ``METALAB_DATA_DIR/<folder>/``), then among earlier downloads, then downloads
    ``url`` into the download folder (never into the data folder or ``path``)."""
    root = _root(params, context, folder)
    downloads = context.download_dir(folder)
    found = find(root)
    # A path of one's own is not silently replaced by an earlier download, unless a url was given with it.
    if found is None and (not params.path or params.url):
        found = find(downloads)
    if found is None and _fetch(params, context, folder):
        found = find(downloads)
    if found is None:
        raise FileNotFoundError(missing_message.format(root=root) + f" Received: path={params.path!r}, url={params.url!r}")
    return found


def _to_size(images: np.ndarray, size: int) -> np.ndarray:
    images = np.asarray(images, dtype=np.uint8)
    if images.ndim == 3:
        images = images[..., None]
    if images.shape[-1] == 1:
        images = np.repeat(images, 3, axis=-1)
    return resize_array(images, size) if images.shape[1:3] != (size, size) else images


def _dataset(arrays: dict[str, np.ndarray], size: int, info: dict[str, Any]) -> ClassificationDataset:
    images, labels = arrays["images"], arrays["labels"].astype(np.int64)
    names = [str(n) for n in arrays["class_names"]]
    split_of_class = arrays["split_of_class"].astype(np.int64)
    splits = {}
    for s, split in enumerate(SPLITS):
        members = np.flatnonzero(split_of_class == s)
        relabel = np.full(len(names), -1, dtype=np.int64)
        relabel[members] = np.arange(len(members))
        rows = np.flatnonzero(relabel[labels] >= 0)
        splits[split] = ClassSplit(images=images[rows], labels=relabel[labels[rows]],
                                   class_names=[names[c] for c in members])
    info["classes"] = {name: s.num_classes for name, s in splits.items()}
    info["images"] = {name: int(len(s.labels)) for name, s in splits.items()}
    return ClassificationDataset(splits=splits, input_shape=(size, size, 3), scale=255.0, info=info)


def _stack_splits(parts: list[tuple[np.ndarray, np.ndarray, list[str]]]) -> dict[str, np.ndarray]:
    images, labels, names, split_of_class = [], [], [], []
    for s, (split_images, split_labels, split_names) in enumerate(parts):
        images.append(split_images)
        labels.append(np.asarray(split_labels, dtype=np.int64) + len(names))
        names += split_names
        split_of_class += [s] * len(split_names)
    return {
        "images": np.ascontiguousarray(np.concatenate(images)),
        "labels": np.concatenate(labels),
        "class_names": np.asarray(names, dtype=str),
        "split_of_class": np.asarray(split_of_class, dtype=np.int64),
    }


# ----------------------------------------------------------------------------------------------------------
# mini-ImageNet
# ----------------------------------------------------------------------------------------------------------


def _find_mini(root: Path) -> tuple[str, dict[str, Path]] | None:
    pickles = _search(root, set(MINI_PICKLES.values()))
    if len(pickles) == len(MINI_PICKLES):
        return "pickle", {split: pickles[name] for split, name in MINI_PICKLES.items()}
    csvs = _search(root, set(MINI_CSVS.values()))
    if len(csvs) == len(MINI_CSVS):
        return "csv", {split: csvs[name] for split, name in MINI_CSVS.items()}
    return None


def _read_mini_pickle(path: Path, size: int) -> tuple[np.ndarray, np.ndarray, list[str]]:
    data = safe_unpickle(path)
    if not isinstance(data, dict) or "image_data" not in data or "class_dict" not in data:
        raise ValueError(
            f"{path.name} is not a mini-ImageNet cache pickle: expected a dict with image_data [n, 84, 84, 3] and "
            f"class_dict {{class: [indices]}}. Received: {type(data).__name__} with keys "
            f"{sorted(map(str, data)) if isinstance(data, dict) else []}"
        )
    images = np.asarray(data["image_data"], dtype=np.uint8)
    names = sorted(str(k) for k in data["class_dict"])
    by_name = {str(k): v for k, v in data["class_dict"].items()}
    rows, labels = [], []
    for label, name in enumerate(names):
        indices = np.asarray(list(by_name[name]), dtype=np.int64)
        rows.append(indices)
        labels.append(np.full(len(indices), label, dtype=np.int64))
    order = np.concatenate(rows)
    return _to_size(images[order], size), np.concatenate(labels), names


def _read_mini_csv(path: Path, size: int, files: dict[str, Path]) -> tuple[np.ndarray, np.ndarray, list[str]]:
    with open(path, newline="", encoding="utf-8") as f:
        rows = [row for row in csv.reader(f) if row]
    if rows and rows[0][:2] == ["filename", "label"]:
        rows = rows[1:]
    names = sorted({row[1] for row in rows})
    index = {name: i for i, name in enumerate(names)}
    images, labels, missing = [], [], []
    for row in rows:
        filename, label = row[0], row[1]
        file = files.get(filename)
        if file is None:
            missing.append(filename)
            continue
        try:
            images.append(decode_image(file, size=size, channels=3))
        except UnreadableImageError as exc:
            raise ValueError(f"mini-ImageNet image cannot be read: {exc}. Received: file={str(file)!r}") from None
        labels.append(index[label])
    if missing:
        raise FileNotFoundError(
            f"{len(missing)} images listed in {path.name} are missing (e.g. {', '.join(missing[:3])}); put them in "
            f"an images/ folder beside {path.name} ({path.parent}/images/). Received: csv={str(path)!r}"
        )
    return np.stack(images), np.asarray(labels, dtype=np.int64), names


def _decode_mini(kind: str, paths: dict[str, Path], size: int) -> dict[str, np.ndarray]:
    if kind == "pickle":
        return _stack_splits([_read_mini_pickle(paths[split], size) for split in SPLITS])
    root = paths["train"].parent
    files = {p.name: p for p in root.rglob("*") if p.is_file() and p.suffix.lower() in (".jpg", ".jpeg", ".png")}
    return _stack_splits([_read_mini_csv(paths[split], size, files) for split in SPLITS])


def build_mini_imagenet(params: Any, context: DataContext) -> ClassificationDataset:
    """Builds mini-ImageNet from its pickles or from images + split CSVs (see :mod:`metalab.plugins.imagenet_pickles`).

    Raises:
        FileNotFoundError: No complete set of files; the message names them and the folder.
        ValueError: A file does not have the expected structure.
    """
    message = (
        "mini-ImageNet not found in {root}/ (METALAB_DATA_DIR/mini_imagenet/ by default; sub-folders are searched). "
        f"Put {', '.join(MINI_PICKLES.values())} there, or an images/ folder with {', '.join(MINI_CSVS.values())} "
        "(lines filename,label; Ravi & Larochelle's split), or give url and sha256 to download them."
    )
    kind, paths = _locate(params, context, "mini_imagenet", _find_mini, message)
    size = int(params.image_size)
    fp = quick_fingerprint(list(paths.values()) + ([paths["train"].parent] if kind == "csv" else []))
    key = f"mini_imagenet/{kind}-{fp}-s{size}-v{_CACHE_VERSION}.npz"
    arrays = cached_arrays(cache_file(context.cache_dir, key), lambda: _decode_mini(kind, paths, size))
    info = {"dataset": "mini_imagenet", "format": kind, "sources": {s: str(p) for s, p in paths.items()},
            "image_size": size}
    dataset = _dataset(arrays, size, info)
    info["standard_split"] = [dataset.splits[s].num_classes for s in SPLITS] == [64, 16, 20]
    return dataset


# ----------------------------------------------------------------------------------------------------------
# tiered-ImageNet
# ----------------------------------------------------------------------------------------------------------


def _find_tiered(root: Path) -> dict[str, dict[str, Path]] | None:
    names = {name for files in TIERED_FILES.values() for name in files.values()}
    found = _search(root, names)
    out = {}
    for split, files in TIERED_FILES.items():
        images = found.get(files["png"]) or found.get(files["npz"])
        labels = found.get(files["labels"])
        if images is None or labels is None:
            return None
        out[split] = {"images": images, "labels": labels}
    return out


def _read_tiered(images_path: Path, labels_path: Path, size: int) -> tuple[np.ndarray, np.ndarray, list[str], list[str]]:
    labels_data = safe_unpickle(labels_path)
    if not isinstance(labels_data, dict) or not ({"label_specific", "labels"} & set(map(str, labels_data))):
        raise ValueError(
            f"{labels_path.name} must be a dict with label_specific (and optionally label_specific_str, "
            f"label_general, label_general_str). Received: {type(labels_data).__name__}"
        )
    labels_data = {str(k): v for k, v in labels_data.items()}
    labels = np.asarray(labels_data.get("label_specific", labels_data.get("labels")), dtype=np.int64)
    num = int(labels.max()) + 1 if labels.size else 0
    names_given = labels_data.get("label_specific_str")
    names = ([n.decode() if isinstance(n, bytes) else str(n) for n in names_given]
             if names_given is not None and len(names_given) >= num else [f"class_{i:03d}" for i in range(num)])
    general = labels_data.get("label_general")
    general_names = labels_data.get("label_general_str")
    categories: list[str] = []
    if general is not None:
        general = np.asarray(general, dtype=np.int64)
        for c in range(num):
            g = general[labels == c]
            g0 = int(g[0]) if g.size else -1
            categories.append(str(general_names[g0]) if general_names is not None and 0 <= g0 < len(general_names)
                              else str(g0))
    if images_path.suffix == ".npz":
        with np.load(images_path, allow_pickle=False) as data:
            key = "images" if "images" in data.files else data.files[0]
            images = _to_size(data[key], size)
    else:
        encoded = safe_unpickle(images_path)
        images = np.empty((len(encoded), size, size, 3), dtype=np.uint8)
        for i, item in enumerate(encoded):
            try:
                images[i] = decode_image(np.asarray(item, dtype=np.uint8).tobytes(), size=size, channels=3)
            except UnreadableImageError as exc:
                raise ValueError(f"{images_path.name}: image {i} cannot be decoded ({exc}).") from None
    if len(images) != len(labels):
        raise ValueError(
            f"{images_path.name} holds {len(images)} images but {labels_path.name} {len(labels)} labels. "
            f"Received: images={len(images)}, labels={len(labels)}"
        )
    return images, labels, names[:num], categories


def _decode_tiered(paths: dict[str, dict[str, Path]], size: int) -> dict[str, np.ndarray]:
    parts, categories = [], []
    for split in SPLITS:
        images, labels, names, cats = _read_tiered(paths[split]["images"], paths[split]["labels"], size)
        parts.append((images, labels, names))
        categories += cats if cats else [""] * len(names)
    arrays = _stack_splits(parts)
    arrays["categories"] = np.asarray(categories, dtype=str)
    return arrays


def build_tiered_imagenet(params: Any, context: DataContext) -> ClassificationDataset:
    """Builds tiered-ImageNet from its pickles (see :mod:`metalab.plugins.imagenet_pickles`).

    Raises:
        FileNotFoundError: A split's image or label file is absent; the message names the files and the folder.
        ValueError: A file does not have the expected structure.
    """
    wanted = "; ".join(f"{f['png']} (or {f['npz']}) and {f['labels']}" for f in TIERED_FILES.values())
    message = (
        "tiered-ImageNet not found in {root}/ (METALAB_DATA_DIR/tiered_imagenet/ by default; sub-folders are "
        f"searched). Put {wanted} there, or give url and sha256 to download them."
    )
    paths = _locate(params, context, "tiered_imagenet", _find_tiered, message)
    size = int(params.image_size)
    fp = quick_fingerprint([p for files in paths.values() for p in files.values()])
    key = f"tiered_imagenet/{fp}-s{size}-v{_CACHE_VERSION}.npz"
    arrays = cached_arrays(cache_file(context.cache_dir, key), lambda: _decode_tiered(paths, size))
    info: dict[str, Any] = {
        "dataset": "tiered_imagenet",
        "sources": {s: {k: str(p) for k, p in files.items()} for s, files in paths.items()},
        "image_size": size,
    }
    dataset = _dataset(arrays, size, info)
    categories = arrays["categories"]
    split_of_class = arrays["split_of_class"]
    info["categories"] = {split: len({c for c in categories[split_of_class == s] if c}) for s, split in enumerate(SPLITS)}
    return dataset
