"""Reads the CIFAR-100 python archive once into cached arrays and cuts CIFAR-FS or FC100 out of it.

The archive holds ``cifar-100-python/{train,test,meta}``: Python pickles of dicts whose ``data`` is ``uint8
[n, 3072]`` (the red, green and blue planes of 32x32 images), with ``fine_labels`` and ``coarse_labels``; ``meta``
names the 100 classes and 20 superclasses. They are read with a restricted unpickler (no code runs).
"""

from __future__ import annotations

import tarfile
from pathlib import Path
from typing import Any

import numpy as np

from metalab.api.data import cache_file, cached_arrays, download, fingerprint
from metalab.api.data import keras_cache_dirs, make_class_splits, resize_array, safe_unpickle
from metalab.api import ClassificationDataset, DataContext

from . import ARCHIVE, FOLDER, OFFICIAL_SHA256, OFFICIAL_URL
from .splits import CIFAR_FS, FC100

__all__ = ["locate", "read_cifar100", "build_dataset"]

_CACHE_VERSION = 1
_PARTS = ("train", "test", "meta")


def _is_folder(path: Path) -> bool:
    return path.is_dir() and all((path / part).is_file() for part in _PARTS)


def _download_plan(params: Any) -> tuple[str, str, str]:
    """``(url, sha256, file name)`` of the download to try: the user's url, else the official one (no ``path``).

    The official URL given as ``url`` keeps its pinned sha256 (outside private mode no other checksum is taken).
    """
    if params.url:
        name = Path(params.url.split("?", 1)[0].split("#", 1)[0]).name
        sha256 = params.sha256 or (OFFICIAL_SHA256 if params.url == OFFICIAL_URL else "")
        return params.url, sha256, name if name not in ("", ".", "..") else ARCHIVE
    if params.path:
        return "", "", ARCHIVE
    return OFFICIAL_URL, OFFICIAL_SHA256, ARCHIVE


def _candidates(params: Any, context: DataContext) -> list[Path]:
    if params.path:
        given = Path(params.path).expanduser()
        return [given, given / "cifar-100-python"]
    home = Path(context.data_dir) / FOLDER
    downloads = context.download_dir(FOLDER)
    out = [home / ARCHIVE, home / "cifar-100-python", home]
    out += [downloads / name for name in dict.fromkeys([ARCHIVE, _download_plan(params)[2]])]
    for keras_dir in keras_cache_dirs():
        out += [
            keras_dir / "cifar-100-python",
            keras_dir / "cifar-100-python-target" / "cifar-100-python",  # Keras 3 extracts here
            keras_dir / ARCHIVE,
            keras_dir / "cifar-100-python-target_archive",  # and keeps the archive under this name
        ]
    return out


def locate(params: Any, context: DataContext) -> Path:
    """Finds the CIFAR-100 archive or folder, downloading it (sha256-checked) when absent and allowed.

    Downloads land in ``context.download_dir("cifar100")`` (under the cache folder), never in the data folder or
    the ``path`` given, and are found there on the next load.

    Returns:
        The ``.tar.gz`` archive or the folder holding ``train``, ``test`` and ``meta``.

    Raises:
        FileNotFoundError: Not found and not downloadable; the message names the places looked in.
        ValueError: A user ``url`` without its ``sha256``, or a download refused or not matching its sha256.
    """
    candidates = _candidates(params, context)
    for path in candidates:
        if _is_folder(path) or (path.is_file() and tarfile.is_tarfile(path)):
            return path
    home = Path(context.data_dir) / FOLDER
    url, sha256, name = _download_plan(params)
    folder = context.download_dir(FOLDER)
    # An earlier download is reused offline too (download() checks it against its sha256 without the network).
    if url and (context.allow_download or (folder / name).is_file()):
        if not sha256:
            raise ValueError(f"A download url needs the file's sha256 (param sha256). Received: url={params.url!r}")
        return download(url, folder / name, sha256, allow_download=context.allow_download, root=folder)
    looked = "\n  ".join(str(p) for p in candidates)
    why = "downloads are off (METALAB_OFFLINE=1)" if url else "the path given does not hold it"
    raise FileNotFoundError(
        f"CIFAR-100 not found, and {why}. Put {ARCHIVE} (from {OFFICIAL_URL}, sha256 {OFFICIAL_SHA256}) or its "
        f"extracted cifar-100-python/ folder (train, test, meta) in {home}/ (METALAB_DATA_DIR/{FOLDER}/), or set "
        f"the dataset parameter path to it. Looked in:\n  {looked}\nReceived: path={params.path!r}"
    )


def _text(value: Any) -> str:
    return value.decode("utf-8") if isinstance(value, (bytes, bytearray)) else str(value)


def _normalise(d: Any, what: str, source: Path) -> dict[str, Any]:
    if not isinstance(d, dict):
        raise ValueError(f"{source}: {what} is not a CIFAR-100 pickle (expected a dict). Received: type={type(d).__name__}")
    return {_text(k): v for k, v in d.items()}


def _read_parts(source: Path) -> dict[str, dict[str, Any]]:
    parts: dict[str, dict[str, Any]] = {}
    if source.is_dir():
        for part in _PARTS:
            parts[part] = _normalise(safe_unpickle(source / part), part, source)
        return parts
    with tarfile.open(source) as tar:
        members = {m.name.rsplit("/", 1)[-1]: m for m in tar.getmembers() if m.isfile()}
        missing = [p for p in _PARTS if p not in members]
        if missing:
            raise ValueError(
                f"{source} is not the CIFAR-100 python archive: it lacks {', '.join(missing)} (expected "
                f"cifar-100-python/train, test and meta). Received: path={str(source)!r}"
            )
        for part in _PARTS:
            with tar.extractfile(members[part]) as f:  # type: ignore[union-attr]
                parts[part] = _normalise(safe_unpickle(f), part, source)
    return parts


def read_cifar100(source: Path, image_size: int) -> dict[str, np.ndarray]:
    """Decodes CIFAR-100 (train and test pooled) into arrays (the function the cache runs once).

    Returns:
        ``images`` ``uint8 [60000, s, s, 3]``, ``fine`` and ``coarse`` ``int64 [60000]``, ``fine_names``,
        ``coarse_names``.

    Raises:
        ValueError: The files do not have CIFAR-100's structure.
    """
    parts = _read_parts(source)
    images, fine, coarse = [], [], []
    for part in ("train", "test"):
        d = parts[part]
        try:
            data = np.asarray(d["data"], dtype=np.uint8)
            images.append(data.reshape(len(data), 3, 32, 32).transpose(0, 2, 3, 1))
            fine.append(np.asarray(d["fine_labels"], dtype=np.int64))
            coarse.append(np.asarray(d["coarse_labels"], dtype=np.int64))
        except (KeyError, ValueError) as exc:
            raise ValueError(
                f"{source}: {part} is not a CIFAR-100 pickle (needs data [n, 3072], fine_labels, coarse_labels; "
                f"{type(exc).__name__}: {exc}). Received: keys={sorted(d)}"
            ) from None
    meta = parts["meta"]
    try:
        fine_names = [_text(n) for n in meta["fine_label_names"]]
        coarse_names = [_text(n) for n in meta["coarse_label_names"]]
    except KeyError:
        raise ValueError(
            f"{source}: meta must hold fine_label_names and coarse_label_names. Received: keys={sorted(meta)}"
        ) from None
    pooled = np.ascontiguousarray(np.concatenate(images))
    if image_size != 32:
        pooled = resize_array(pooled, image_size)
    return {
        "images": pooled,
        "fine": np.concatenate(fine),
        "coarse": np.concatenate(coarse),
        "fine_names": np.asarray(fine_names, dtype=str),
        "coarse_names": np.asarray(coarse_names, dtype=str),
    }


def _fine_to_coarse(fine: np.ndarray, coarse: np.ndarray, num_fine: int) -> np.ndarray:
    mapping = np.full(num_fine, -1, dtype=np.int64)
    mapping[fine] = coarse
    return mapping


def build_dataset(which: str, params: Any, context: DataContext) -> ClassificationDataset:
    """Builds CIFAR-FS (``which="cifar_fs"``) or FC100 (``"fc100"``) from CIFAR-100.

    Args:
        which: ``"cifar_fs"`` or ``"fc100"``.
        params: A ``CifarParams``.
        context: The data context.

    Returns:
        The dataset: ``uint8 [n, s, s, 3]`` images, classes named by their CIFAR-100 fine names.

    Raises:
        FileNotFoundError: The archive is absent and cannot be downloaded.
        ValueError: The files do not hold CIFAR-100's classes.
    """
    source = locate(params, context)
    size = int(params.image_size)
    key = f"{FOLDER}/{source.name}-{fingerprint(source)}-s{size}-v{_CACHE_VERSION}.npz"
    arrays = cached_arrays(cache_file(context.cache_dir, key), lambda: read_cifar100(source, size))
    fine_names = [str(n) for n in arrays["fine_names"]]
    coarse_names = [str(n) for n in arrays["coarse_names"]]
    fine, coarse = arrays["fine"], arrays["coarse"]
    index = {name: i for i, name in enumerate(fine_names)}
    info: dict[str, Any] = {"dataset": which, "source": str(source), "image_size": size}

    if which == "cifar_fs":
        wanted = {split: [name for _, name in pairs] for split, pairs in CIFAR_FS.items()}
        missing = sorted(n for names in wanted.values() for n in names if n not in index)
        if missing:
            raise ValueError(
                f"{source} does not hold CIFAR-100's fine classes (missing {', '.join(missing[:5])}"
                f"{' ...' if len(missing) > 5 else ''}). Received: fine_label_names={fine_names[:5]}..."
            )
        groups = {split: [index[n] for n in names] for split, names in wanted.items()}
        info["split"] = "bertinetto"
    elif which == "fc100":
        coarse_index = {name: i for i, name in enumerate(coarse_names)}
        missing = sorted(n for names in FC100.values() for n in names if n not in coarse_index)
        if missing:
            raise ValueError(
                f"{source} does not hold CIFAR-100's superclasses (missing {', '.join(missing[:5])}). "
                f"Received: coarse_label_names={coarse_names[:5]}..."
            )
        parent = _fine_to_coarse(fine, coarse, len(fine_names))
        groups = {
            split: [int(c) for c in np.flatnonzero(np.isin(parent, [coarse_index[n] for n in names]))]
            for split, names in FC100.items()
        }
        info["split"] = "oreshkin"
        info["superclasses"] = {split: list(names) for split, names in FC100.items()}
    else:
        raise ValueError(f"which must be 'cifar_fs' or 'fc100'. Received: which={which!r}")

    splits = make_class_splits(arrays["images"], fine, fine_names, groups)
    info["classes"] = {name: s.num_classes for name, s in splits.items()}
    info["images"] = {name: int(len(s.labels)) for name, s in splits.items()}
    return ClassificationDataset(splits=splits, input_shape=(size, size, 3), scale=255.0, info=info)
