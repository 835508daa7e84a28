"""Reads a folder (or zip) of class sub-folders into cached arrays and divides its classes between the meta-splits.

Layout: ``<root>/<class name>/<any depth>/<image file>``. A zip may hold that layout at its top or inside one
folder (``photos.zip`` holding ``photos/<class>/...``): single wrapping folders are looked through. Files directly
in the root, hidden files (``.*``, ``__MACOSX/``, ``Thumbs.db``) and non-image files are ignored; files that look
like images but cannot be decoded are listed in ``info["unreadable"]``.
"""

from __future__ import annotations

import zipfile
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any, Callable

import numpy as np

from metalab.api.data import cache_file, cached_arrays, fingerprint
from metalab.api.data import (
    IMAGE_EXTENSIONS,
    UnreadableImageError,
    ZipLimits,
    assign_classes,
    checked_zip_members,
    decode_image,
    is_hidden,
    make_class_splits,
    read_zip_member,
    split_class_counts,
)
from metalab.api import ClassificationDataset, DataContext

__all__ = ["build_dataset", "resolve_source", "list_class_files", "decode_folder"]

# Bump when the decoded arrays change meaning, so old caches are not reused.
_CACHE_VERSION = 1
_UNREADABLE_SEP = "\t"


@dataclass
class _Entry:
    relative: str
    read: Callable[[], bytes]


def resolve_source(path: str, context: DataContext) -> Path:
    """Finds the folder or zip the ``path`` parameter names.

    Args:
        path: The parameter: empty for ``METALAB_DATA_DIR/imagefolder/``; absolute; or relative to the current
            folder, else to ``METALAB_DATA_DIR/imagefolder/``.
        context: The data context.

    Returns:
        An existing folder or zip file.

    Raises:
        FileNotFoundError: Nothing is there; the message names every place looked in.
    """
    default = Path(context.data_dir) / "imagefolder"
    if not path:
        candidates = [default]
    else:
        given = Path(path).expanduser()
        candidates = [given] if given.is_absolute() else [Path.cwd() / given, default / given]
    for candidate in candidates:
        if candidate.is_dir() or (candidate.is_file() and zipfile.is_zipfile(candidate)):
            return candidate
    for candidate in candidates:
        if candidate.is_file():
            raise FileNotFoundError(
                f"{candidate} is a file but not a zip archive. Give a folder with one sub-folder per class, or a "
                f".zip of such a folder. Received: path={path!r}"
            )
    looked = ", ".join(str(c) for c in candidates)
    raise FileNotFoundError(
        f"No image folder or zip found (looked in: {looked}). Put one sub-folder per class, each holding that "
        f"class's images (e.g. {default}/cats/001.jpg, {default}/dogs/001.jpg), there, or set the dataset "
        f"parameter path to such a folder or a .zip of it. Received: path={path!r}"
    )


def _entries(source: Path, limits: ZipLimits) -> tuple[list[_Entry], Any]:
    if source.is_dir():
        files = sorted(p for p in source.rglob("*") if p.is_file())
        entries = [
            _Entry(p.relative_to(source).as_posix(), (lambda p=p: p.read_bytes()))
            for p in files if not is_hidden(p.relative_to(source).as_posix())
        ]
        return entries, None
    zf = zipfile.ZipFile(source)
    infos = checked_zip_members(zf, limits, source.stat().st_size)
    entries = [_Entry(i.filename.replace("\\", "/"), (lambda i=i: read_zip_member(zf, i, limits))) for i in infos]
    return sorted(entries, key=lambda e: e.relative), zf


def _strip_wrappers(relatives: list[str]) -> int:
    """How many leading folders every path shares and that only wrap the class folders (``photos/<class>/x``)."""
    parts = [PurePosixPath(r).parts for r in relatives]
    depth = 0
    while parts and all(len(p) >= depth + 3 for p in parts) and len({p[depth] for p in parts}) == 1:
        depth += 1
    return depth


def list_class_files(source: Path, limits: ZipLimits = ZipLimits()) -> tuple[dict[str, list[_Entry]], list[str], Any]:
    """Groups a source's files by class folder.

    Returns:
        ``({class: [entries sorted by path]}, [ignored top-level files], open zip or None)``.
    """
    entries, handle = _entries(source, limits)
    depth = _strip_wrappers([e.relative for e in entries])
    classes: dict[str, list[_Entry]] = {}
    ignored: list[str] = []
    for entry in entries:
        parts = PurePosixPath(entry.relative).parts[depth:]
        if len(parts) < 2:
            ignored.append(entry.relative)
            continue
        classes.setdefault(parts[0], []).append(entry)
    return dict(sorted(classes.items())), ignored, handle


def decode_folder(source: Path, image_size: int, channels: int, fit: str, invert: bool) -> dict[str, np.ndarray]:
    """Decodes every image of a source (the function the array cache runs once).

    Returns:
        ``images`` ``uint8 [n, s, s, channels]``, ``labels`` ``int64 [n]``, ``class_names``, ``files`` (relative
        paths), ``unreadable`` (``"path<TAB>reason"``) and ``ignored`` (paths), the last three as string arrays.
    """
    classes, ignored, handle = list_class_files(source)
    images, labels, files, unreadable = [], [], [], []
    try:
        for label, (name, entries) in enumerate(classes.items()):
            for entry in entries:
                try:
                    array = decode_image(entry.read(), size=image_size, channels=channels, fit=fit, invert=invert)
                except UnreadableImageError as exc:
                    suffix = PurePosixPath(entry.relative).suffix.lower()
                    if suffix in IMAGE_EXTENSIONS or not suffix:
                        reason = str(exc).split(": ", 1)[-1]
                        unreadable.append(f"{entry.relative}{_UNREADABLE_SEP}{reason}")
                    else:
                        ignored.append(entry.relative)
                    continue
                images.append(array)
                labels.append(label)
                files.append(entry.relative)
    finally:
        if handle is not None:
            handle.close()
    stacked = (np.stack(images) if images
               else np.zeros((0, image_size, image_size, channels), dtype=np.uint8))
    return {
        "images": stacked,
        "labels": np.asarray(labels, dtype=np.int64),
        "class_names": np.asarray(list(classes), dtype=str),
        "files": np.asarray(files, dtype=str),
        "unreadable": np.asarray(unreadable, dtype=str),
        "ignored": np.asarray(ignored, dtype=str),
    }


def build_dataset(params: Any, context: DataContext) -> ClassificationDataset:
    """Builds the :class:`ClassificationDataset` of an image folder for the given parameters.

    Args:
        params: An ``ImageFolderParams`` (see :mod:`metalab.plugins.imagefolder`).
        context: The data context (where the default folder and the array cache are).

    Returns:
        The dataset; ``info`` holds the source, class counts, ``unreadable`` files with reasons, ``ignored``
        files, ``dropped_classes``, and the preprocessing (``invert``, ``fit``) that prediction repeats.

    Raises:
        FileNotFoundError: The source does not exist.
        ValueError: No class folder with images, fewer than 3 classes, or classes under ``min_images_per_class``
            (each named, with its count and its unreadable files) when ``small_classes="error"``.
    """
    source = resolve_source(params.path, context)
    size, channels = int(params.image_size), int(params.channels)
    key = (f"imagefolder/{source.name}-{fingerprint(source)}-s{size}-c{channels}-{params.fit}"
           f"-i{int(params.invert)}-v{_CACHE_VERSION}.npz")
    arrays = cached_arrays(cache_file(context.cache_dir, key),
                           lambda: decode_folder(source, size, channels, params.fit, bool(params.invert)))
    images, labels = arrays["images"], arrays["labels"].astype(np.int64)
    class_names = [str(n) for n in arrays["class_names"]]
    unreadable = [dict(zip(("file", "error"), u.split(_UNREADABLE_SEP, 1))) for u in arrays["unreadable"].tolist()]
    ignored = [str(i) for i in arrays["ignored"].tolist()]
    if not class_names:
        raise ValueError(
            f"{source} holds no class folders with files: expected one sub-folder per class, each holding images "
            f"(e.g. {source.name}/cats/001.jpg). Received: path={params.path!r}"
        )

    counts = np.bincount(labels, minlength=len(class_names))
    small = np.flatnonzero(counts < params.min_images_per_class)
    dropped: list[str] = []
    if small.size:
        if params.small_classes == "error":
            raise ValueError(_small_classes_message(source, class_names, counts, small, unreadable, params))
        dropped = [class_names[c] for c in small]
        keep = np.flatnonzero(counts >= params.min_images_per_class)
        remap = np.full(len(class_names), -1, dtype=np.int64)
        remap[keep] = np.arange(len(keep))
        rows = remap[labels] >= 0
        images, labels = images[rows], remap[labels[rows]]
        class_names = [class_names[c] for c in keep]
        counts = counts[keep]

    try:
        split_counts = split_class_counts(len(class_names), params.train_fraction, params.val_fraction)
    except ValueError as exc:
        dropped_note = f" ({len(dropped)} classes were dropped as too small)" if dropped else ""
        raise ValueError(f"{source}: {exc}{dropped_note}") from None
    groups = assign_classes(len(class_names), split_counts, params.seed)
    splits = make_class_splits(images, labels, class_names, groups)
    info: dict[str, Any] = {
        "dataset": "imagefolder",
        "source": str(source),
        "image_size": size,
        "channels": channels,
        "fit": params.fit,
        "invert": bool(params.invert),
        "seed": int(params.seed),
        "classes": {name: s.num_classes for name, s in splits.items()},
        "images": {name: int(len(s.labels)) for name, s in splits.items()},
        "split_classes": {name: list(s.class_names) for name, s in splits.items()},
        "images_per_class": {"min": int(counts.min()), "max": int(counts.max())},
        "unreadable": unreadable,
        "ignored": ignored,
        "dropped_classes": dropped,
    }
    return ClassificationDataset(splits=splits, input_shape=(size, size, channels), scale=255.0, info=info)


def _small_classes_message(source: Path, class_names: list[str], counts: np.ndarray, small: np.ndarray,
                           unreadable: list[dict], params: Any) -> str:
    listed = ", ".join(f"{class_names[c]} ({int(counts[c])})" for c in small[:20])
    more = f" and {small.size - 20} more" if small.size > 20 else ""
    text = (
        f"{source}: {small.size} of {len(class_names)} classes have fewer than min_images_per_class="
        f"{params.min_images_per_class} readable images: {listed}{more}. Add images to them, lower "
        f"min_images_per_class, or set small_classes=drop."
    )
    small_names = {class_names[c] for c in small}
    bad = [u for u in unreadable if PurePosixPath(u["file"]).parts and any(
        part in small_names for part in PurePosixPath(u["file"]).parts)]
    if bad:
        text += " Unreadable files there: " + "; ".join(f"{u['file']} ({u.get('error', '')})" for u in bad[:10])
    return text + f" Received: min_images_per_class={params.min_images_per_class}"
