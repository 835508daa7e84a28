"""Reads the Omniglot zips (Lake et al., 2015), decodes them once into cached arrays and builds the meta-splits.

Sources are the files of the official repository (https://github.com/brendenlake/omniglot, folder
``python/``) or anything with the same inside layout (``<Alphabet>/characterNN/<id>_<nn>.png``): a zip whose
name starts like the official one (``images_background.repacked.zip``) or the extracted folder. A source is
accepted after counting its alphabets, characters and images, so repacked copies with other checksums work.

Images are 105x105 1-bit PNGs; they are resized on the grey-level image with a Lanczos filter and inverted, so
strokes are bright (255) on a dark (0) background, as in the MAML and Prototypical Networks code.
"""

from __future__ import annotations

import io
import re
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable

import numpy as np

from metalab.api.data import cache_file, cached_arrays, download, fingerprint
from metalab.api import Benchmark, ClassificationDataset, ClassSplit, DataContext, TaskBatch

__all__ = [
    "SOURCES",
    "RUNS_SOURCE",
    "CharacterSet",
    "OmniglotLayoutError",
    "load_characters",
    "load_oneshot_runs",
    "build_dataset",
    "omniglot_dir",
    "OFFICIAL_DOWNLOADS",
    "BACKGROUND_ALPHABETS",
    "MINIMAL_ALPHABETS",
    "split_sizes",
]

IMAGES_PER_CHARACTER = 20
NATIVE_SIZE = 105
ROTATIONS = (0, 90, 180, 270)
# raw.githubusercontent.com serves the files itself: github.com/.../raw/... answers with a redirect to that other
# host, which metalab's downloads refuse to follow.
_BASE_URL = "https://raw.githubusercontent.com/brendenlake/omniglot/master/python/"
# Bump when the decoded arrays change meaning (preprocessing, layout), so old caches are not reused.
_CACHE_VERSION = 1


@dataclass(frozen=True)
class SourceInfo:
    """One Omniglot source file: where to get it and what it must contain."""

    name: str
    official_file: str
    url: str
    sha256: str
    alphabets: int
    characters: int

    @property
    def stem(self) -> str:
        return self.official_file[: -len(".zip")]

    @property
    def images(self) -> int:
        return self.characters * IMAGES_PER_CHARACTER

    def matches(self, filename: str) -> bool:
        # images_background.zip or images_background.<anything>.zip, but not images_background_small1.zip.
        return re.fullmatch(re.escape(self.stem) + r"(\.[^/]+)?\.zip", filename) is not None


# sha256 of the official full sets: tensorflow-datasets' url_checksums/omniglot.txt (with their byte sizes
# 9464212 and 6462886); of the small subsets and all_runs.zip: ../shared/data/omniglot/SOURCE.md, where the
# small subsets' values also equal tensorflow-datasets'.
SOURCES: dict[str, SourceInfo] = {
    "background": SourceInfo(
        "background", "images_background.zip", _BASE_URL + "images_background.zip",
        "ad41ab679c8b5d90b271ef46be6987cc81211774a695c29dcc5367b2b26ee640", alphabets=30, characters=964,
    ),
    "evaluation": SourceInfo(
        "evaluation", "images_evaluation.zip", _BASE_URL + "images_evaluation.zip",
        "1f61a8f3366785b057fc117d9228e78a16e3d976c8953b2a10fcc74cf0609cee", alphabets=20, characters=659,
    ),
    "background_small1": SourceInfo(
        "background_small1", "images_background_small1.zip", _BASE_URL + "images_background_small1.zip",
        "f38eb80f801274ac2b4dff5b24289016bfaba4a7d5bb50deebf27104ad6cb8a4", alphabets=5, characters=136,
    ),
    "background_small2": SourceInfo(
        "background_small2", "images_background_small2.zip", _BASE_URL + "images_background_small2.zip",
        "3ccaa407515a8778e5d0861875af38b17e418f301ad5bb3b5a6b65d901a41c7f", alphabets=5, characters=156,
    ),
}

RUNS_SOURCE = SourceInfo(
    "runs", "all_runs.zip", _BASE_URL + "one-shot-classification/all_runs.zip",
    "437c1eeab0af8484112e1b4cc0f3d541ec727f7c47b9b202da738af9dfd6c325", alphabets=0, characters=0,
)
NUM_RUNS = 20
RUN_WAYS = 20

#: Characters of each alphabet of images_background (30 alphabets, 964 characters), as counted in the official
#: file; the split sizes are computed from them without reading any file.
BACKGROUND_ALPHABETS: dict[str, int] = {
    "Alphabet_of_the_Magi": 20, "Anglo-Saxon_Futhorc": 29, "Arcadian": 26, "Armenian": 41,
    "Asomtavruli_(Georgian)": 40, "Balinese": 24, "Bengali": 46, "Blackfoot_(Canadian_Aboriginal_Syllabics)": 14,
    "Braille": 26, "Burmese_(Myanmar)": 34, "Cyrillic": 33, "Early_Aramaic": 22, "Futurama": 26, "Grantha": 43,
    "Greek": 24, "Gujarati": 48, "Hebrew": 22, "Inuktitut_(Canadian_Aboriginal_Syllabics)": 16,
    "Japanese_(hiragana)": 52, "Japanese_(katakana)": 47, "Korean": 40, "Latin": 26, "Malay_(Jawi_-_Arabic)": 40,
    "Mkhedruli_(Georgian)": 41, "N_Ko": 33, "Ojibwe_(Canadian_Aboriginal_Syllabics)": 14, "Sanskrit": 42,
    "Syriac_(Estrangelo)": 23, "Tagalog": 17, "Tifinagh": 55,
}
#: The alphabets of images_background_small1 + small2 (242 distinct characters; each alphabet complete, Greek and
#: Latin in both).
MINIMAL_ALPHABETS = ("Balinese", "Early_Aramaic", "Greek", "Japanese_(katakana)", "Korean", "Latin", "Sanskrit",
                     "Tagalog")

#: The alphabets of each official small subset (Lake et al.'s minimal condition trains on each alone).
SMALL_ALPHABETS = {
    "background_small1": ("Balinese", "Early_Aramaic", "Greek", "Korean", "Latin"),
    "background_small2": ("Greek", "Japanese_(katakana)", "Latin", "Sanskrit", "Tagalog"),
}

#: Which sources each split option reads.
SPLIT_SOURCES = {
    "vinyals": ("background", "evaluation"),
    "background_evaluation": ("background", "evaluation"),
    "minimal": ("background_small1", "background_small2", "evaluation"),
    "minimal1": ("background_small1", "evaluation"),
    "minimal2": ("background_small2", "evaluation"),
}

#: The training source of each alphabet-split option, and how it reads in messages.
_TRAIN_SOURCES = {
    "background_evaluation": (("background",), "images_background"),
    "minimal": (("background_small1", "background_small2"), "images_background_small1 + small2"),
    "minimal1": (("background_small1",), "images_background_small1"),
    "minimal2": (("background_small2",), "images_background_small2"),
}


class OmniglotLayoutError(ValueError):
    """An Omniglot source exists but does not hold what the official file holds."""


@dataclass
class CharacterSet:
    """The decoded characters of one source.

    Attributes:
        images: ``uint8 [characters, 20, s, s]``, strokes 255 on 0.
        alphabets: Alphabet name of each character.
        characters: ``"<Alphabet>/characterNN"`` of each character.
        path: The file or folder read.
    """

    images: np.ndarray
    alphabets: list[str]
    characters: list[str]
    path: str = ""


#: Every official file and its sha256, as the dataset spec declares them (``DatasetSpec.downloads``).
OFFICIAL_DOWNLOADS: dict[str, str] = {info.url: info.sha256 for info in (*SOURCES.values(), RUNS_SOURCE)}


def omniglot_dir(context: DataContext) -> Path:
    """The folder holding the Omniglot files: ``<data_dir>/omniglot``."""
    return Path(context.data_dir) / "omniglot"


def _download_dir(context: DataContext) -> Path:
    """Where Omniglot downloads land and are found again: ``<cache_dir>/downloads/omniglot``."""
    return context.download_dir("omniglot")


# ----------------------------------------------------------------------------------------------------------
# Finding and reading sources
# ----------------------------------------------------------------------------------------------------------


def _find_source(folder: Path, info: SourceInfo) -> Path | None:
    """The official file if present, else another matching zip, else the extracted folder."""
    if not folder.is_dir():
        return None
    official = folder / info.official_file
    if official.is_file():
        return official
    others = sorted(p for p in folder.iterdir() if p.is_file() and info.matches(p.name))
    if others:
        return others[0]
    extracted = folder / info.stem
    if extracted.is_dir():
        return extracted
    return None


def _missing_error(folder: Path, infos: Iterable[SourceInfo], reason: str) -> FileNotFoundError:
    infos = list(infos)
    names = ", ".join(info.official_file for info in infos)
    urls = "; ".join(info.url for info in infos)
    return FileNotFoundError(
        f"Omniglot needs {names} in {folder}/ (that is METALAB_DATA_DIR/omniglot/), and {reason}. Put the "
        f"official files there (from {urls}), or zips with the same inside layout named like "
        f"{infos[0].stem}*.zip, or the extracted folders ({', '.join(i.stem + '/' for i in infos)}). "
        f"Received: data_dir={str(folder.parent)!r}"
    )


def _locate(context: DataContext, infos: Iterable[SourceInfo]) -> dict[str, Path]:
    """Finds each source in ``<data_dir>/omniglot``, then among earlier downloads, downloading the official file
    (sha256-checked) into the download folder when allowed and absent."""
    folder = omniglot_dir(context)
    downloads = _download_dir(context)
    infos = list(infos)
    found = {info.name: _find_source(folder, info) or _find_source(downloads, info) for info in infos}
    missing = [info for info in infos if found[info.name] is None]
    if missing and not context.allow_download:
        raise _missing_error(folder, missing, "downloads are off (METALAB_OFFLINE=1)")
    for info in missing:
        try:
            found[info.name] = download(info.url, downloads / info.official_file, info.sha256, allow_download=True,
                                        root=downloads)
        except FileNotFoundError as exc:
            raise _missing_error(folder, missing, f"downloading failed ({exc.__cause__ or exc})") from exc
    return found  # type: ignore[return-value]


class _Reader:
    """Lists and reads the PNG files of a zip or a folder by their relative POSIX paths."""

    def __init__(self, path: Path):
        self.path = path
        self._zip: zipfile.ZipFile | None = None
        if path.is_dir():
            self.names = sorted(
                p.relative_to(path).as_posix() for p in path.rglob("*") if p.is_file()
            )
        else:
            try:
                self._zip = zipfile.ZipFile(path)
            except (zipfile.BadZipFile, OSError) as exc:
                raise OmniglotLayoutError(f"{path} is not a readable zip file ({exc}). Received: path={str(path)!r}") from None
            self.names = sorted(n for n in self._zip.namelist() if not n.endswith("/"))
        # macOS archivers add resource forks that are not images.
        self.names = [n for n in self.names if not n.startswith("__MACOSX/") and "/._" not in "/" + n]

    def read(self, name: str) -> bytes:
        if self._zip is not None:
            return self._zip.read(name)
        return (self.path / name).read_bytes()

    def close(self) -> None:
        if self._zip is not None:
            self._zip.close()

    def __enter__(self) -> "_Reader":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


def _group_characters(reader: _Reader, info: SourceInfo) -> dict[tuple[str, str], list[str]]:
    """Groups PNG paths by (alphabet, character) and checks the counts against the official file."""
    groups: dict[tuple[str, str], list[str]] = {}
    stray = []
    for name in reader.names:
        parts = name.split("/")
        if not name.lower().endswith(".png") or len(parts) < 3:
            stray.append(name)
            continue
        groups.setdefault((parts[-3], parts[-2]), []).append(name)
    alphabets = {alphabet for alphabet, _ in groups}
    images = sum(len(v) for v in groups.values())
    uneven = [f"{a}/{c}: {len(v)}" for (a, c), v in sorted(groups.items()) if len(v) != IMAGES_PER_CHARACTER]
    if (len(alphabets), len(groups), images) != (info.alphabets, info.characters, info.images) or uneven:
        details = []
        if uneven:
            details.append(f"characters without {IMAGES_PER_CHARACTER} images: {', '.join(uneven[:5])}"
                           + (" ..." if len(uneven) > 5 else ""))
        if stray:
            details.append(f"{len(stray)} other files, e.g. {stray[0]!r}")
        raise OmniglotLayoutError(
            f"{reader.path.name} does not hold the Omniglot {info.stem} set: expected {info.alphabets} alphabets, "
            f"{info.characters} characters and {info.images} PNG images ({IMAGES_PER_CHARACTER} per character) "
            f"laid out as <Alphabet>/characterNN/<file>.png; found {len(alphabets)} alphabets, {len(groups)} "
            f"characters and {images} images" + (f" ({'; '.join(details)})" if details else "")
            + f". Replace it with the official {info.official_file} ({info.url}). Received: path={str(reader.path)!r}"
        )
    return {key: sorted(groups[key]) for key in sorted(groups)}


def _decode(data: bytes, image_size: int) -> np.ndarray:
    from PIL import Image

    with Image.open(io.BytesIO(data)) as image:
        grey = image.convert("L")
    if grey.size != (image_size, image_size):
        grey = grey.resize((image_size, image_size), resample=Image.Resampling.LANCZOS)
    return 255 - np.asarray(grey, dtype=np.uint8)


def _decode_all(reader: _Reader, names: list[str], image_size: int) -> np.ndarray:
    # One thread: Pillow holds the GIL for most of a small PNG's decode, so a thread pool was slower here
    # (measured), and the result is cached after the first time anyway.
    out = np.empty((len(names), image_size, image_size), dtype=np.uint8)
    for i, name in enumerate(names):
        out[i] = _decode(reader.read(name), image_size)
    return out


def _cache_path(context: DataContext, stem: str, source: Path, image_size: int) -> Path:
    return cache_file(context.cache_dir, f"omniglot/{stem}-{fingerprint(source)}-s{image_size}-v{_CACHE_VERSION}.npz")


def load_characters(context: DataContext, source: str, image_size: int = 28) -> CharacterSet:
    """Loads one Omniglot source as decoded characters, from the cache when it was decoded before.

    Args:
        context: Where to find the files (``<data_dir>/omniglot/``) and the cache (``<cache_dir>/omniglot/``).
        source: ``"background"``, ``"evaluation"``, ``"background_small1"`` or ``"background_small2"``.
        image_size: Side of the square output images.

    Returns:
        A :class:`CharacterSet` sorted by alphabet and character.

    Raises:
        FileNotFoundError: The source is absent and cannot be downloaded.
        OmniglotLayoutError: The file is not a zip or its contents differ from the official file's.
        ValueError: Unknown ``source``.
    """
    if source not in SOURCES:
        raise ValueError(f"Omniglot source must be one of {sorted(SOURCES)}. Received: source={source!r}")
    info = SOURCES[source]
    path = _locate(context, [info])[source]

    def build() -> dict[str, np.ndarray]:
        with _Reader(path) as reader:
            groups = _group_characters(reader, info)
            names = [n for files in groups.values() for n in files]
            images = _decode_all(reader, names, image_size)
        return {
            "images": images.reshape(len(groups), IMAGES_PER_CHARACTER, image_size, image_size),
            "alphabets": np.array([a for a, _ in groups]),
            "characters": np.array([f"{a}/{c}" for a, c in groups]),
        }

    arrays = cached_arrays(_cache_path(context, info.stem, path, image_size), build)
    return CharacterSet(
        images=arrays["images"],
        alphabets=[str(a) for a in arrays["alphabets"]],
        characters=[str(c) for c in arrays["characters"]],
        path=str(path),
    )


# ----------------------------------------------------------------------------------------------------------
# Meta-splits
# ----------------------------------------------------------------------------------------------------------


@dataclass
class _Pool:
    images: np.ndarray  # [C, 20, s, s]
    alphabets: list[str]
    characters: list[str]
    sources: dict[str, str] = field(default_factory=dict)

    def take(self, idx: np.ndarray) -> "_Pool":
        idx = np.asarray(idx, dtype=np.int64)
        return _Pool(self.images[idx], [self.alphabets[i] for i in idx], [self.characters[i] for i in idx])

    @staticmethod
    def concat(parts: list["_Pool"]) -> "_Pool":
        return _Pool(
            np.concatenate([p.images for p in parts]),
            [a for p in parts for a in p.alphabets],
            [c for p in parts for c in p.characters],
        )


def _as_pool(chars: CharacterSet) -> _Pool:
    return _Pool(chars.images, list(chars.alphabets), list(chars.characters))


def _to_split(pool: _Pool, rotations: bool) -> ClassSplit:
    """Makes a ClassSplit whose classes are the characters, or each character under each rotation."""
    num_chars, per_class, h, w = pool.images.shape
    if rotations:
        # Rotated copies are new classes (Santoro et al., 2016), kept next to their character.
        images = np.stack([np.rot90(pool.images, k, axes=(2, 3)) for k in range(len(ROTATIONS))], axis=1)
        names = [f"{c}/rot{deg}" for c in pool.characters for deg in ROTATIONS]
    else:
        images = pool.images[:, None]
        names = list(pool.characters)
    num_classes = len(names)
    images = np.ascontiguousarray(images.reshape(num_classes * per_class, h, w, 1))
    labels = np.repeat(np.arange(num_classes, dtype=np.int64), per_class)
    return ClassSplit(images=images, labels=labels, class_names=names)


def _hold_out_alphabets(pool: _Pool, count: int, seed: int, what: str) -> tuple[_Pool, _Pool, list[str]]:
    held = _held_alphabets(sorted(set(pool.alphabets)), count, seed, what)
    in_val = np.array([a in held for a in pool.alphabets])
    return pool.take(np.flatnonzero(~in_val)), pool.take(np.flatnonzero(in_val)), held


def _held_alphabets(alphabets: list[str], count: int, seed: int, what: str) -> list[str]:
    """The alphabets :func:`_hold_out_alphabets` moves to val: ``count`` of the sorted names, picked with ``seed``."""
    alphabets = sorted(alphabets)
    if count >= len(alphabets):
        raise ValueError(
            f"val_alphabets must be smaller than the {len(alphabets)} alphabets of {what}. Received: val_alphabets={count}"
        )
    rng = np.random.default_rng(seed)
    return sorted(alphabets[i] for i in rng.permutation(len(alphabets))[:count])


def split_sizes(params: Any) -> dict[str, dict[str, int]]:
    """The classes of each split and the images of its smallest class, from the split definitions alone.

    No file is read: the counts come from the official files' sizes (:data:`SOURCES`, :data:`BACKGROUND_ALPHABETS`)
    and the same seeded choices as :func:`build_dataset`. Every class has 20 images; rotations make four classes
    of each character.

    Args:
        params: An ``OmniglotParams``.

    Returns:
        ``{split: {"classes": int, "min_per_class": int}}`` for ``train``, ``val`` and ``test``.

    Raises:
        ValueError: The parameters leave a split empty (e.g. ``val_alphabets`` not below the alphabets there).
    """
    split = params.split
    if split not in SPLIT_SOURCES:
        raise ValueError(f"Omniglot split must be one of {sorted(SPLIT_SOURCES)}. Received: split={split!r}")
    evaluation = SOURCES["evaluation"].characters
    if split == "vinyals":
        total = SOURCES["background"].characters + evaluation
        n_train, n_val = int(params.train_characters), int(params.val_characters)
        if n_train + n_val >= total:
            raise ValueError(
                f"train_characters + val_characters must leave test characters out of {total}. "
                f"Received: train_characters={n_train}, val_characters={n_val}"
            )
        characters = {"train": n_train, "val": n_val, "test": total - n_train - n_val}
    else:
        sources, what = _TRAIN_SOURCES[split]
        if split == "background_evaluation":
            alphabets = list(BACKGROUND_ALPHABETS)
        else:
            alphabets = sorted({a for source in sources for a in SMALL_ALPHABETS[source]})
        held = _held_alphabets(alphabets, int(params.val_alphabets), int(params.seed), what)
        val = sum(BACKGROUND_ALPHABETS[a] for a in held)
        characters = {"train": sum(BACKGROUND_ALPHABETS[a] for a in alphabets) - val, "val": val, "test": evaluation}
    per_character = len(ROTATIONS) if params.rotations else 1
    return {name: {"classes": count * per_character, "min_per_class": IMAGES_PER_CHARACTER}
            for name, count in characters.items()}


def build_dataset(params: Any, context: DataContext) -> ClassificationDataset:
    """Builds the Omniglot :class:`ClassificationDataset` for the given parameters.

    Split options (``params.split``):

    - ``"vinyals"``: the 1623 characters of background and evaluation pooled and shuffled with ``seed``;
      ``train_characters`` (1100) train, ``val_characters`` (100) val, the remaining 423 test, as in Vinyals
      et al. (2016) and the MAML code (1200 training characters of which 100 are held out for validation).
    - ``"background_evaluation"``: Lake et al.'s split: the 30 background alphabets for training (``val_alphabets``
      of them, picked with ``seed``, held out for val) and the 20 evaluation alphabets (659 characters) for test.
    - ``"minimal1"`` / ``"minimal2"``: Lake et al.'s minimal condition: ``images_background_small1`` (136
      characters of 5 alphabets) or ``_small2`` (156 of 5) alone, ``val_alphabets`` of it held out for val;
      evaluation for test.
    - ``"minimal"``: the union of the two small sets (242 characters of 8 alphabets; ``val_alphabets`` held out
      for val); evaluation for test.

    With ``rotations`` every character under 0/90/180/270 degrees is a separate class, in every split.

    Args:
        params: An ``OmniglotParams`` (see :mod:`metalab.plugins.omniglot`).
        context: The data context.

    Returns:
        A :class:`ClassificationDataset` with ``uint8 [n, s, s, 1]`` images (``scale=255``).

    Raises:
        FileNotFoundError: Needed files are absent and cannot be downloaded.
        OmniglotLayoutError: A file's contents differ from the official file's.
    """
    split = params.split
    if split not in SPLIT_SOURCES:
        raise ValueError(f"Omniglot split must be one of {sorted(SPLIT_SOURCES)}. Received: split={split!r}")
    size = int(params.image_size)
    # Locate all needed files first, so one error names every missing file.
    paths = _locate(context, [SOURCES[name] for name in SPLIT_SOURCES[split]])
    loaded = {name: load_characters(context, name, size) for name in SPLIT_SOURCES[split]}
    info: dict[str, Any] = {
        "dataset": "omniglot",
        "split": split,
        "rotations": bool(params.rotations),
        "image_size": size,
        "seed": int(params.seed),
        # Source PNGs are dark strokes on white; they were inverted, and prediction inverts new images likewise.
        "invert": True,
        "sources": {name: str(path) for name, path in paths.items()},
    }

    if split == "vinyals":
        pool = _Pool.concat([_as_pool(loaded["background"]), _as_pool(loaded["evaluation"])])
        total = len(pool.characters)
        n_train, n_val = int(params.train_characters), int(params.val_characters)
        if n_train + n_val >= total:
            raise ValueError(
                f"train_characters + val_characters must leave test characters out of {total}. "
                f"Received: train_characters={n_train}, val_characters={n_val}"
            )
        order = np.random.default_rng(params.seed).permutation(total)
        parts = {
            "train": pool.take(order[:n_train]),
            "val": pool.take(order[n_train:n_train + n_val]),
            "test": pool.take(order[n_train + n_val:]),
        }
    else:
        sources, what = _TRAIN_SOURCES[split]
        if split == "minimal":
            small1, small2 = _as_pool(loaded["background_small1"]), _as_pool(loaded["background_small2"])
            # small1 and small2 share Greek and Latin: keep each character once.
            seen = set(small1.characters)
            extra = np.array([i for i, c in enumerate(small2.characters) if c not in seen], dtype=np.int64)
            train_pool = _Pool.concat([small1, small2.take(extra)])
        else:
            (source,) = sources
            train_pool = _as_pool(loaded[source])
        train, val, held = _hold_out_alphabets(train_pool, int(params.val_alphabets), int(params.seed), what)
        parts = {"train": train, "val": val, "test": _as_pool(loaded["evaluation"])}
        info["val_alphabets"] = held

    splits = {name: _to_split(part, bool(params.rotations)) for name, part in parts.items()}
    info["characters"] = {name: len(part.characters) for name, part in parts.items()}
    info["classes"] = {name: s.num_classes for name, s in splits.items()}
    info["images"] = {name: int(len(s.labels)) for name, s in splits.items()}
    dataset = ClassificationDataset(splits=splits, input_shape=(size, size, 1), scale=255.0, info=info)
    dataset.benchmarks["lake20"] = Benchmark(
        tasks=lambda: oneshot_task_batch(context, size, dataset),
        classes=lambda: oneshot_characters(context, size),
        title="Lake et al.'s 20 within-alphabet 20-way one-shot runs (drawn from the evaluation alphabets)",
        advice=("Score lake20 on a run trained with split=background_evaluation, minimal1 or minimal2, whose "
                "training and validation alphabets are all background alphabets"),
    )
    return dataset


def oneshot_characters(context: DataContext, image_size: int = 28) -> list[str]:
    """The evaluation characters (``"<Alphabet>/characterNN"``) that Lake et al.'s 20 one-shot runs draw from.

    ``all_runs.zip`` names no character, so each run image is matched to the evaluation image with the same
    pixels (SOURCE.md: every run PNG is one evaluation PNG re-saved).

    Raises:
        OmniglotLayoutError: A run image matches no evaluation image.
    """
    evaluation = load_characters(context, "evaluation", image_size)
    owner: dict[bytes, set[str]] = {}
    for character, drawings in zip(evaluation.characters, evaluation.images):
        for drawing in drawings:
            owner.setdefault(np.ascontiguousarray(drawing).tobytes(), set()).add(character)
    found: set[str] = set()
    unmatched = 0
    for run in load_oneshot_runs(context, image_size):
        for image in (*run["train_images"], *run["test_images"]):
            names = owner.get(np.ascontiguousarray(image[..., 0]).tobytes())
            if names:
                found |= names  # an ambiguous match keeps every candidate: the leak check stays conservative
            else:
                unmatched += 1
    if unmatched:
        raise OmniglotLayoutError(
            f"{RUNS_SOURCE.official_file}: {unmatched} run images match no image of {SOURCES['evaluation'].official_file}, "
            f"so the characters the runs use are unknown. Replace the files with the official ones. "
            f"Received: unmatched={unmatched}"
        )
    return sorted(found)


def oneshot_task_batch(context: DataContext, image_size: int, dataset: ClassificationDataset) -> TaskBatch:
    """Lake et al.'s 20 one-shot runs as 20 tasks of 20-way 1-shot with one query per class.

    Task ``r``: support = the run's 20 training images labelled 0..19; query = its 20 test images, each labelled
    with the index of the training image of its class (so a score of 1.0 is zero errors).
    """
    runs = load_oneshot_runs(context, image_size)
    support_y = np.tile(np.arange(RUN_WAYS, dtype=np.int32), (len(runs), 1))
    return TaskBatch(
        support_x=dataset.to_float(np.stack([r["train_images"] for r in runs])),
        support_y=support_y,
        query_x=dataset.to_float(np.stack([r["test_images"] for r in runs])),
        query_y=np.stack([r["answers"] for r in runs]).astype(np.int32),
    )


# ----------------------------------------------------------------------------------------------------------
# The 20 one-shot runs
# ----------------------------------------------------------------------------------------------------------

_RUN_FILE = re.compile(r"(run\d+)/(training/class|test/item)(\d+)\.png")


def load_oneshot_runs(context: DataContext, image_size: int = 28) -> list[dict]:
    """Reads Lake et al.'s 20 within-alphabet 20-way 1-shot runs from ``all_runs.zip``.

    Images get the dataset's preprocessing (resize, strokes 255 on 0).

    Args:
        context: Where to find ``<data_dir>/omniglot/all_runs.zip`` (or ``all_runs*.zip``, or the extracted
            ``all_runs/`` folder).
        image_size: Side of the output images.

    Returns:
        20 dicts, in run order, each with ``"run"`` (``"run01"``...), ``"train_images"`` ``uint8 [20, s, s, 1]``
        (``training/class01..20``), ``"test_images"`` ``uint8 [20, s, s, 1]`` (``test/item01..20``) and
        ``"answers"`` ``int64 [20]``: for each test item, the index of the training image of its class (from
        ``class_labels.txt``).

    Raises:
        FileNotFoundError: The file is absent and cannot be downloaded.
        OmniglotLayoutError: The file does not hold 20 runs of 20 training and 20 test images with labels.
    """
    path = _locate(context, [RUNS_SOURCE])["runs"]
    runs: dict[str, dict[str, Any]] = {}
    with _Reader(path) as reader:
        for name in reader.names:
            match = _RUN_FILE.search(name)
            if match:
                run, kind, number = match.group(1), match.group(2), int(match.group(3))
                slot = "train" if kind.startswith("training") else "test"
                runs.setdefault(run, {"train": {}, "test": {}, "labels": None})[slot][number] = name
            elif name.endswith("class_labels.txt"):
                run = name.split("/")[-2] if "/" in name else ""
                runs.setdefault(run, {"train": {}, "test": {}, "labels": None})["labels"] = name
        complete = {
            run: r for run, r in runs.items()
            if r["labels"] and sorted(r["train"]) == list(range(1, RUN_WAYS + 1))
            and sorted(r["test"]) == list(range(1, RUN_WAYS + 1))
        }
        if len(runs) != NUM_RUNS or len(complete) != NUM_RUNS:
            raise OmniglotLayoutError(
                f"{path.name} does not hold the {NUM_RUNS} one-shot runs (runNN/training/class01..20.png, "
                f"runNN/test/item01..20.png, runNN/class_labels.txt); found {len(runs)} runs, {len(complete)} "
                f"complete. Replace it with the official {RUNS_SOURCE.official_file} ({RUNS_SOURCE.url}). "
                f"Received: path={str(path)!r}"
            )
        out = []
        for run in sorted(complete):
            r = complete[run]
            train_names = [r["train"][i] for i in range(1, RUN_WAYS + 1)]
            test_names = [r["test"][i] for i in range(1, RUN_WAYS + 1)]
            answers = _parse_labels(reader.read(r["labels"]).decode("utf-8"), path, run)
            out.append({
                "run": run,
                "train_images": _decode_all(reader, train_names, image_size)[..., None],
                "test_images": _decode_all(reader, test_names, image_size)[..., None],
                "answers": answers,
            })
    return out


def _parse_labels(text: str, path: Path, run: str) -> np.ndarray:
    answers = np.full(RUN_WAYS, -1, dtype=np.int64)
    for line in text.splitlines():
        fields = line.split()
        if len(fields) != 2:
            continue
        item = re.search(r"item(\d+)\.png$", fields[0])
        cls = re.search(r"class(\d+)\.png$", fields[1])
        if item and cls and 1 <= int(item.group(1)) <= RUN_WAYS and 1 <= int(cls.group(1)) <= RUN_WAYS:
            answers[int(item.group(1)) - 1] = int(cls.group(1)) - 1
    if (answers < 0).any():
        raise OmniglotLayoutError(
            f"{path.name}: {run}/class_labels.txt must map each of test/item01..{RUN_WAYS} to a training class. "
            f"Received: {int((answers < 0).sum())} items without an answer"
        )
    return answers
