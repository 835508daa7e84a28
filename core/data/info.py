"""Dataset helpers shared by dataset plugins, prediction and the dashboard: safe reading of user files and summaries.

Pure numpy and Pillow (no TensorFlow, no Streamlit), so the dashboard can show a dataset before anything trains:

- images: :func:`decode_image` turns any file Pillow reads into a ``uint8 [H, W, C]`` array with one documented
  preprocessing (orientation, transparency, grey or RGB, resize, optional inversion), the same for dataset loaders
  and for :mod:`metalab.core.engine.predict`;
- archives: :func:`safe_extract_zip` and :func:`checked_zip_members` guard against zip-slip paths, links, zip
  bombs and oversized uploads; :func:`safe_unpickle` reads dataset pickles without running code;
- splits: :func:`split_class_counts`, :func:`assign_classes` and :func:`make_class_splits` divide classes
  between the meta-splits;
- summaries: :func:`summarize_dataset` (class/image counts per split and a few sample images) and
  :func:`episode_problems` (every class too small for an episode shape).
"""

from __future__ import annotations

import io
import os
import hashlib
import pickle
import shutil
import stat
import tarfile
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import IO, Any, Iterable, Literal, Mapping, Sequence

import numpy as np

from metalab.core.contract.specs import SPLITS, ClassSplit

__all__ = [
    "IMAGE_EXTENSIONS",
    "FIT_MODES",
    "UnreadableImageError",
    "UnsafeArchiveError",
    "ZipLimits",
    "decode_image",
    "resize_array",
    "is_hidden",
    "checked_zip_members",
    "read_zip_member",
    "safe_extract_zip",
    "safe_unpack",
    "safe_unpickle",
    "quick_fingerprint",
    "keras_cache_dirs",
    "split_class_counts",
    "assign_classes",
    "make_class_splits",
    "summarize_dataset",
    "episode_problems",
    "to_uint8",
]

#: File suffixes taken for images: a file with one of these that Pillow cannot read is reported as unreadable;
#: a file with another suffix that Pillow cannot read is ignored (a README, a CSV).
IMAGE_EXTENSIONS = frozenset({
    ".png", ".jpg", ".jpeg", ".jpe", ".jfif", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm", ".pbm",
    ".pnm", ".tga", ".ico", ".jp2", ".j2k", ".pcx", ".sgi", ".ras", ".im", ".dib", ".eps", ".heic", ".avif",
})

#: How an image is brought to the target size: ``"stretch"`` resizes it whole (aspect ratio not kept, as the
#: mini-ImageNet preprocessing does); ``"crop"`` cuts the largest centred region of the target's aspect ratio first.
FIT_MODES = ("stretch", "crop")

#: Images with more pixels are refused before decoding (a decompression bomb in a small file).
DEFAULT_MAX_PIXELS = 64_000_000
_PIXEL_CAP = [DEFAULT_MAX_PIXELS]


def configure_pixel_cap(max_pixels: int) -> None:
    """Sets this process's cap on image pixels (``METALAB_MAX_IMAGE_PIXELS``; the mode's default otherwise).

    :func:`decode_image` and :func:`check_image_header` refuse larger images from their header, before the
    decoder allocates; the run store's services and the training worker set it from their settings.
    """
    _PIXEL_CAP[0] = max(1, int(max_pixels))


def pixel_cap() -> int:
    """The cap :func:`configure_pixel_cap` set."""
    return _PIXEL_CAP[0]


def check_image_header(source: str | os.PathLike | bytes | IO[bytes], name: str, max_pixels: int | None = None,
                       ) -> tuple[int, int]:
    """Reads only an image's header and refuses it when it has more than ``max_pixels`` pixels.

    Args:
        source: A path, the file's bytes, or a binary file object.
        name: The file's name for messages (never a server path).
        max_pixels: The cap; ``None`` for :func:`pixel_cap`.

    Returns:
        ``(width, height)``.

    Raises:
        UnreadableImageError: Not an image Pillow recognises, or over the cap (the message names both numbers).
    """
    from PIL import Image, UnidentifiedImageError

    cap = pixel_cap() if max_pixels is None else int(max_pixels)
    if isinstance(source, (bytes, bytearray, memoryview)):
        source = io.BytesIO(bytes(source))
    try:
        with Image.open(source) as image:  # the header only: nothing is decoded here
            width, height = image.size
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError, Image.DecompressionBombError) as exc:
        raise UnreadableImageError(f"{name}: not a readable image ({type(exc).__name__}).") from None
    if width * height > cap:
        raise UnreadableImageError(
            f"{name}: {width}x{height} is {width * height:,} pixels, more than the {cap:,} allowed here "
            f"(METALAB_MAX_IMAGE_PIXELS); shrink it first. Received: pixels={width * height}"
        )
    return width, height

_IGNORED_NAMES = frozenset({"thumbs.db", "desktop.ini", ".ds_store"})


class UnreadableImageError(ValueError):
    """A file could not be decoded as an image (or is too large to decode safely)."""


class UnsafeArchiveError(ValueError):
    """A zip archive is malformed, too large, or has members that would escape the target folder."""


# ----------------------------------------------------------------------------------------------------------
# Images
# ----------------------------------------------------------------------------------------------------------


def _size_tuple(size: int | Sequence[int] | None) -> tuple[int, int] | None:
    if size is None:
        return None
    if isinstance(size, (int, np.integer)):
        height = width = int(size)
    else:
        height, width = (int(s) for s in size)
    if height < 1 or width < 1:
        raise ValueError(f"Image size must be positive. Received: size={size!r}")
    return height, width


def _flatten_transparency(image: Any) -> Any:
    """Composites an image with an alpha channel onto white: transparent backgrounds read as paper."""
    from PIL import Image

    has_alpha = image.mode in ("RGBA", "LA", "PA") or (image.mode == "P" and "transparency" in image.info)
    if not has_alpha:
        return image
    rgba = image.convert("RGBA")
    background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
    return Image.alpha_composite(background, rgba).convert("RGB")


def _to_mode(image: Any, channels: int) -> Any:
    from PIL import Image

    if image.mode in ("I;16", "I;16L", "I;16B", "I;16N", "I"):
        # Pillow clips 16-bit grey to 0..255 when converting to "L"; scale it instead.
        array = np.asarray(image, dtype=np.float64)
        top = 65535.0 if image.mode.startswith("I;16") or array.max() > 255 else 255.0
        image = Image.fromarray(np.clip(np.rint(array * (255.0 / top)), 0, 255).astype(np.uint8), "L")
    elif image.mode == "F":
        array = np.asarray(image, dtype=np.float64)
        top = 1.0 if array.max() <= 1.0 else 255.0
        image = Image.fromarray(np.clip(np.rint(array * (255.0 / top)), 0, 255).astype(np.uint8), "L")
    image = _flatten_transparency(image)
    return image.convert("L" if channels == 1 else "RGB")


def _fit(image: Any, size: tuple[int, int] | None, fit: str) -> Any:
    from PIL import Image

    if size is None:
        return image
    height, width = size
    if fit == "crop":
        src_w, src_h = image.size
        target = width / height
        if src_w / src_h > target:
            new_w = max(1, round(src_h * target))
            left = (src_w - new_w) // 2
            image = image.crop((left, 0, left + new_w, src_h))
        elif src_w / src_h < target:
            new_h = max(1, round(src_w / target))
            top = (src_h - new_h) // 2
            image = image.crop((0, top, src_w, top + new_h))
    elif fit != "stretch":
        raise ValueError(f"fit must be one of {', '.join(FIT_MODES)}. Received: fit={fit!r}")
    if image.size != (width, height):
        image = image.resize((width, height), Image.Resampling.LANCZOS)
    return image


def decode_image(
    source: str | os.PathLike | bytes | IO[bytes],
    *,
    size: int | Sequence[int] | None = None,
    channels: Literal[1, 3] = 3,
    fit: str = "stretch",
    invert: bool = False,
    max_pixels: int | None = None,
) -> np.ndarray:
    """Decodes one image file into the array a dataset stores: ``uint8 [H, W, channels]``.

    The preprocessing, in order: apply the EXIF orientation; composite transparency onto white; convert to grey
    (``channels=1``, ITU-R 601-2 luma, Pillow's ``"L"``) or RGB (``channels=3``); crop (``fit="crop"``) and resize
    with a Lanczos filter to ``size``; invert (``255 - x``) when ``invert``. Every dataset plugin that reads image
    files and :func:`metalab.core.engine.predict.predict` use this function, so a model meets new images exactly as it
    met its training images.

    Args:
        source: A path, the file's bytes, or a binary file object.
        size: ``(height, width)`` or one side for a square; ``None`` keeps the image's own size.
        channels: 1 (grey) or 3 (RGB).
        fit: One of :data:`FIT_MODES`.
        invert: Make dark-on-light images light-on-dark (as Omniglot's loader does).
        max_pixels: Refuse images with more pixels than this before decoding them; ``None``: :func:`pixel_cap`.

    Returns:
        ``uint8`` array ``[H, W, channels]``.

    Raises:
        UnreadableImageError: Pillow cannot read the file, or it has more than ``max_pixels`` pixels.
        ValueError: ``channels``, ``size`` or ``fit`` is invalid.
    """
    from PIL import Image, ImageOps, UnidentifiedImageError

    if channels not in (1, 3):
        raise ValueError(f"channels must be 1 (grey) or 3 (RGB). Received: channels={channels!r}")
    if fit not in FIT_MODES:
        raise ValueError(f"fit must be one of {', '.join(FIT_MODES)}. Received: fit={fit!r}")
    target = _size_tuple(size)
    max_pixels = pixel_cap() if max_pixels is None else int(max_pixels)
    name = str(source) if isinstance(source, (str, os.PathLike)) else "<bytes>"
    if isinstance(source, (bytes, bytearray, memoryview)):
        source = io.BytesIO(bytes(source))
    try:
        with Image.open(source) as image:
            width, height = image.size
            if width * height > max_pixels:
                raise UnreadableImageError(
                    f"{name}: {width}x{height} pixels is more than the {max_pixels} allowed (a decompression bomb "
                    f"or a very large photo; shrink it first). Received: pixels={width * height}"
                )
            image.load()
            image = ImageOps.exif_transpose(image) or image
            image = _to_mode(image, channels)
            image = _fit(image, target, fit)
            array = np.asarray(image, dtype=np.uint8)
    except UnreadableImageError:
        raise
    except UnidentifiedImageError:
        raise UnreadableImageError(f"{name}: not a readable image (Pillow does not recognise its format)") from None
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as exc:
        raise UnreadableImageError(f"{name}: not a readable image ({type(exc).__name__}: {exc})") from None
    if array.ndim == 2:
        array = array[..., None]
    if invert:
        array = 255 - array
    return np.ascontiguousarray(array)


def resize_array(images: np.ndarray, size: int | Sequence[int], *, channels: Literal[1, 3] | None = None,
                 fit: str = "stretch") -> np.ndarray:
    """Resizes (and optionally converts) a stack of decoded images, as :func:`decode_image` would.

    Args:
        images: ``uint8 [n, H, W, C]`` with ``C`` 1 or 3.
        size: Target ``(height, width)`` or one side.
        channels: 1 or 3 to convert (grey uses Pillow's luma); ``None`` keeps ``C``.
        fit: One of :data:`FIT_MODES`.

    Returns:
        ``uint8 [n, h, w, channels]``; ``images`` itself when nothing changes.
    """
    from PIL import Image

    images = np.asarray(images)
    if images.ndim != 4 or images.shape[-1] not in (1, 3):
        raise ValueError(f"resize_array expects uint8 [n, H, W, 1 or 3]. Received: shape={images.shape}")
    target = _size_tuple(size)
    out_channels = images.shape[-1] if channels is None else int(channels)
    if images.shape[1:3] == target and out_channels == images.shape[-1]:
        return images
    out = np.empty((len(images), *target, out_channels), dtype=np.uint8)
    mode = "L" if images.shape[-1] == 1 else "RGB"
    for i, array in enumerate(images):
        image = Image.fromarray(array[..., 0] if mode == "L" else array, mode)
        image = _fit(image.convert("L" if out_channels == 1 else "RGB"), target, fit)
        decoded = np.asarray(image, dtype=np.uint8)
        out[i] = decoded[..., None] if decoded.ndim == 2 else decoded
    return out


def is_hidden(relative: str) -> bool:
    """True for paths an archiver or OS adds that are not data: ``__MACOSX/``, dot files, ``Thumbs.db``."""
    parts = PurePosixPath(relative.replace("\\", "/")).parts
    return any(p.startswith(".") or p == "__MACOSX" for p in parts) or (
        bool(parts) and parts[-1].lower() in _IGNORED_NAMES
    )


# ----------------------------------------------------------------------------------------------------------
# Zip archives
# ----------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ZipLimits:
    """Caps that make an archive safe to read or extract.

    Attributes:
        max_archive_bytes: Size of the archive file itself (an upload cap).
        max_total_bytes: Sum of the members' uncompressed sizes.
        max_file_bytes: Uncompressed size of any one member.
        max_files: Number of members.
        max_ratio: Largest uncompressed/compressed ratio, for the whole archive and for any member over 1 MiB
            (images compress little; a zip bomb compresses a thousandfold).
    """

    max_archive_bytes: int = 1 << 30
    max_total_bytes: int = 4 << 30
    max_file_bytes: int = 256 << 20
    max_files: int = 200_000
    max_ratio: float = 200.0


_RATIO_MIN_BYTES = 1 << 20


def _member_problem(info: zipfile.ZipInfo) -> str | None:
    name = info.filename
    if "\x00" in name:
        return "has a NUL character in its name"
    posix = name.replace("\\", "/")
    if posix.startswith("/") or (len(posix) > 1 and posix[1] == ":") or posix.startswith("//"):
        return "has an absolute path"
    if any(part == ".." for part in posix.split("/")):
        return "would be written outside the target folder ('..' in its path)"
    # Unix modes live in the high 16 bits; archivers that set no file type leave S_IFMT empty.
    file_type = stat.S_IFMT(info.external_attr >> 16)
    if file_type == stat.S_IFLNK:
        return "is a symbolic link"
    if file_type and file_type not in (stat.S_IFREG, stat.S_IFDIR):
        return "is not a regular file"
    if info.flag_bits & 0x1:
        return "is encrypted"
    return None


def checked_zip_members(zf: zipfile.ZipFile, limits: ZipLimits = ZipLimits(), archive_bytes: int | None = None,
                        ) -> list[zipfile.ZipInfo]:
    """Validates every member of an open archive and returns the file members that hold data.

    Directory entries and hidden members (``__MACOSX/``, dot files) are left out of the result.

    Args:
        zf: The open archive.
        limits: The caps to enforce.
        archive_bytes: The archive's size on disk (for the overall ratio); ``None`` skips that check.

    Returns:
        The :class:`zipfile.ZipInfo` of each data file, in archive order.

    Raises:
        UnsafeArchiveError: A member has an absolute or ``..`` path, is a link, a device or encrypted; or a
            cap of ``limits`` is exceeded. The message names the member and the cap.
    """
    infos = zf.infolist()
    if len(infos) > limits.max_files:
        raise UnsafeArchiveError(
            f"The archive has {len(infos)} members; at most {limits.max_files} are allowed. Received: members={len(infos)}"
        )
    total = 0
    kept = []
    for info in infos:
        problem = _member_problem(info)
        if problem:
            raise UnsafeArchiveError(
                f"Refusing the archive: member {info.filename!r} {problem}. Received: member={info.filename!r}"
            )
        if info.is_dir():
            continue
        if info.file_size > limits.max_file_bytes:
            raise UnsafeArchiveError(
                f"Member {info.filename!r} unpacks to {info.file_size} bytes; at most {limits.max_file_bytes} are "
                f"allowed per file. Received: file_size={info.file_size}"
            )
        if info.file_size >= _RATIO_MIN_BYTES and info.file_size > limits.max_ratio * max(info.compress_size, 1):
            raise UnsafeArchiveError(
                f"Member {info.filename!r} expands {info.file_size / max(info.compress_size, 1):.0f}-fold (a zip "
                f"bomb?); at most {limits.max_ratio:.0f}-fold is allowed. Received: file_size={info.file_size}, "
                f"compress_size={info.compress_size}"
            )
        total += info.file_size
        if total > limits.max_total_bytes:
            raise UnsafeArchiveError(
                f"The archive unpacks to more than {limits.max_total_bytes} bytes (the cap). Received: "
                f"total_bytes>={total}"
            )
        if not is_hidden(info.filename):
            kept.append(info)
    if archive_bytes is not None and total >= _RATIO_MIN_BYTES and total > limits.max_ratio * max(archive_bytes, 1):
        raise UnsafeArchiveError(
            f"The archive expands {total / max(archive_bytes, 1):.0f}-fold (a zip bomb?); at most "
            f"{limits.max_ratio:.0f}-fold is allowed. Received: archive_bytes={archive_bytes}, total_bytes={total}"
        )
    return kept


def read_zip_member(zf: zipfile.ZipFile, info: zipfile.ZipInfo, limits: ZipLimits = ZipLimits()) -> bytes:
    """Reads one member, never more than its declared size nor ``limits.max_file_bytes``.

    Raises:
        UnsafeArchiveError: The member yields more bytes than allowed, or its data is corrupt.
    """
    cap = min(info.file_size, limits.max_file_bytes)
    try:
        with zf.open(info) as member:
            data = member.read(cap + 1)
    except (zipfile.BadZipFile, OSError, EOFError, NotImplementedError, RuntimeError) as exc:
        raise UnsafeArchiveError(
            f"Member {info.filename!r} cannot be read ({exc}). Received: member={info.filename!r}"
        ) from None
    if len(data) > cap:
        raise UnsafeArchiveError(
            f"Member {info.filename!r} yields more than its declared {info.file_size} bytes. Received: member={info.filename!r}"
        )
    return data


def safe_extract_zip(source: str | os.PathLike | IO[bytes], dest: str | os.PathLike,
                     limits: ZipLimits = ZipLimits()) -> list[Path]:
    """Extracts a zip archive into a new folder, refusing zip-slip paths, links, zip bombs and oversized input.

    Every member is checked before anything is written; files are written to a temporary folder beside ``dest``
    and moved into place only when all of them were extracted, so a refused or broken archive leaves nothing.
    Hidden members (``__MACOSX/``, dot files) are skipped.

    Args:
        source: The archive: a path or a binary file object (e.g. an uploaded file).
        dest: The folder to create; it must not exist, or be empty.
        limits: The caps (the dashboard passes its upload limits).

    Returns:
        The extracted files, in archive order.

    Raises:
        UnsafeArchiveError: The archive is not a zip, exceeds a cap, or has an unsafe member (the message names it).
        FileExistsError: ``dest`` exists and is not an empty folder.
    """
    dest = Path(dest)
    if dest.exists() and (not dest.is_dir() or any(dest.iterdir())):
        raise FileExistsError(f"safe_extract_zip extracts into a new or empty folder. Received: dest={str(dest)!r}")
    archive_bytes = _archive_size(source)
    if archive_bytes is not None and archive_bytes > limits.max_archive_bytes:
        raise UnsafeArchiveError(
            f"The archive is {archive_bytes} bytes; at most {limits.max_archive_bytes} are allowed. "
            f"Received: archive_bytes={archive_bytes}"
        )
    try:
        zf = zipfile.ZipFile(source)
    except (zipfile.BadZipFile, OSError) as exc:
        raise UnsafeArchiveError(f"Not a readable zip archive ({exc}). Received: source={_name(source)!r}") from None
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{dest.name}.", dir=dest.parent))
    written: list[Path] = []
    try:
        with zf:
            members = checked_zip_members(zf, limits, archive_bytes)
            root = tmp.resolve()
            for info in members:
                relative = PurePosixPath(info.filename.replace("\\", "/"))
                target = (tmp / Path(*relative.parts)).resolve()
                if root not in target.parents:
                    raise UnsafeArchiveError(
                        f"Member {info.filename!r} would be written outside {dest}. Received: member={info.filename!r}"
                    )
                target.parent.mkdir(parents=True, exist_ok=True)
                target.write_bytes(read_zip_member(zf, info, limits))
                written.append(relative)
        if dest.exists():
            dest.rmdir()
        os.replace(tmp, dest)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return [dest / Path(*p.parts) for p in written]


def safe_unpack(archive: str | os.PathLike, dest: str | os.PathLike, limits: ZipLimits = ZipLimits()) -> Path:
    """Unpacks a ``.zip`` or a tar archive (``.tar``, ``.tar.gz``, ``.tgz``, ...) into a new folder, safely.

    Zips go through :func:`safe_extract_zip`; tars are checked against the same caps and extracted with the
    standard library's ``"data"`` filter (no absolute paths, no ``..``, no links out, no devices).

    Args:
        archive: The archive file.
        dest: The folder to create (must not exist, or be empty).
        limits: The caps.

    Returns:
        ``dest``.

    Raises:
        UnsafeArchiveError: Not an archive, over a cap, or an unsafe member.
    """
    archive, dest = Path(archive), Path(dest)
    if zipfile.is_zipfile(archive):
        safe_extract_zip(archive, dest, limits)
        return dest
    if not tarfile.is_tarfile(archive):
        raise UnsafeArchiveError(f"{archive.name} is neither a zip nor a tar archive. Received: archive={str(archive)!r}")
    if archive.stat().st_size > limits.max_archive_bytes:
        raise UnsafeArchiveError(
            f"The archive is {archive.stat().st_size} bytes; at most {limits.max_archive_bytes} are allowed. "
            f"Received: archive={str(archive)!r}"
        )
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{dest.name}.", dir=dest.parent))
    try:
        with tarfile.open(archive) as tar:
            members = tar.getmembers()
            if len(members) > limits.max_files:
                raise UnsafeArchiveError(
                    f"The archive has {len(members)} members; at most {limits.max_files} are allowed. "
                    f"Received: members={len(members)}"
                )
            total = 0
            for member in members:
                if member.size > limits.max_file_bytes:
                    raise UnsafeArchiveError(
                        f"Member {member.name!r} is {member.size} bytes; at most {limits.max_file_bytes} are allowed. "
                        f"Received: size={member.size}"
                    )
                total += member.size
            if total > limits.max_total_bytes:
                raise UnsafeArchiveError(
                    f"The archive unpacks to {total} bytes; at most {limits.max_total_bytes} are allowed. "
                    f"Received: total_bytes={total}"
                )
            try:
                tar.extractall(tmp, filter="data")
            except tarfile.FilterError as exc:
                raise UnsafeArchiveError(f"Refusing the archive: {exc}. Received: archive={str(archive)!r}") from None
        if dest.exists():
            dest.rmdir()
        os.replace(tmp, dest)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return dest


def quick_fingerprint(paths: Iterable[str | os.PathLike]) -> str:
    """A fingerprint of files from their names, sizes and modification times (no reading: for multi-GB pickles).

    Args:
        paths: Files (or folders, taken by their own metadata only).

    Returns:
        16 hex digits.
    """
    digest = hashlib.sha256()
    for path in sorted(str(p) for p in paths):
        st = os.stat(path)
        digest.update(f"{os.path.basename(path)}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
    return digest.hexdigest()[:16]


def keras_cache_dirs() -> list[Path]:
    """Where Keras keeps downloaded datasets, without importing Keras: ``$KERAS_HOME/datasets`` when set, else
    ``~/.keras/datasets`` and ``/tmp/.keras/datasets`` (Keras's fallback when the home folder is read-only)."""
    if os.environ.get("KERAS_HOME"):
        return [Path(os.environ["KERAS_HOME"]).expanduser() / "datasets"]
    return [Path("~/.keras/datasets").expanduser(), Path(tempfile.gettempdir()) / ".keras" / "datasets"]


def _archive_size(source: Any) -> int | None:
    if isinstance(source, (str, os.PathLike)):
        return os.path.getsize(source)
    try:
        position = source.tell()
        source.seek(0, os.SEEK_END)
        size = source.tell()
        source.seek(position)
        return int(size)
    except (AttributeError, OSError):
        return None


def _name(source: Any) -> str:
    return str(source) if isinstance(source, (str, os.PathLike)) else getattr(source, "name", "<file object>")


# ----------------------------------------------------------------------------------------------------------
# Pickles
# ----------------------------------------------------------------------------------------------------------

# What dataset pickles (CIFAR, mini-/tiered-ImageNet) are made of: containers, numpy arrays and scalars.
_PICKLE_ALLOWED = {
    ("builtins", name) for name in ("dict", "list", "tuple", "set", "frozenset", "bytearray", "bytes", "str",
                                     "int", "float", "complex", "bool", "slice", "range")
} | {
    ("collections", "OrderedDict"), ("collections", "defaultdict"), ("_codecs", "encode"), ("codecs", "encode"),
    ("copy_reg", "_reconstructor"), ("copyreg", "_reconstructor"), ("__builtin__", "object"), ("builtins", "object"),
    ("numpy", "ndarray"), ("numpy", "dtype"),
    ("numpy.core.multiarray", "_reconstruct"), ("numpy.core.multiarray", "scalar"),
    ("numpy._core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "scalar"),
    ("numpy.core.numeric", "_frombuffer"), ("numpy._core.numeric", "_frombuffer"),
}


class _RestrictedUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str) -> Any:
        if (module, name) in _PICKLE_ALLOWED:
            if module == "copy_reg":
                module = "copyreg"
            elif module == "__builtin__":
                module = "builtins"
            return super().find_class(module, name)
        raise pickle.UnpicklingError(
            f"the pickle asks for {module}.{name}, which a dataset file has no need of (only containers, numpy "
            f"arrays and scalars are allowed). Received: global={module}.{name}"
        )


def safe_unpickle(source: str | os.PathLike | IO[bytes], *, encoding: str = "latin1") -> Any:
    """Loads a dataset pickle without letting it run code: only containers, numpy arrays and scalars load.

    ``encoding="latin1"`` reads the Python 2 pickles many benchmarks still ship (CIFAR, mini-ImageNet), whose
    numpy arrays were written as byte strings.

    Args:
        source: A path or a binary file object.
        encoding: Passed to :class:`pickle.Unpickler`.

    Returns:
        The unpickled object.

    Raises:
        pickle.UnpicklingError: The pickle refers to anything else (the message names it) or is corrupt.
    """
    if isinstance(source, (str, os.PathLike)):
        with open(source, "rb") as f:
            return _RestrictedUnpickler(f, encoding=encoding).load()
    return _RestrictedUnpickler(source, encoding=encoding).load()


# ----------------------------------------------------------------------------------------------------------
# Class splits
# ----------------------------------------------------------------------------------------------------------


def split_class_counts(num_classes: int, train_fraction: float, val_fraction: float) -> dict[str, int]:
    """How many classes each meta-split gets: val and test rounded from their fractions (at least one each).

    Args:
        num_classes: Classes in the dataset (at least 3).
        train_fraction: Share of classes for meta-training.
        val_fraction: Share for validation; the remaining share (``1 - train - val``) is the test share.

    Returns:
        ``{"train": n, "val": n, "test": n}`` summing to ``num_classes``, each at least 1.

    Raises:
        ValueError: Fewer than 3 classes, fractions outside (0, 1), or nothing left for training.
    """
    if num_classes < 3:
        raise ValueError(
            f"A few-shot dataset needs at least 3 classes (one or more for each of train, val and test). "
            f"Received: num_classes={num_classes}"
        )
    test_fraction = 1.0 - train_fraction - val_fraction
    if not (0 < train_fraction < 1 and 0 < val_fraction < 1 and test_fraction > 1e-9):
        raise ValueError(
            f"train_fraction and val_fraction must be in (0, 1) and leave a share for test. "
            f"Received: train_fraction={train_fraction}, val_fraction={val_fraction}"
        )
    n_val = max(1, int(round(num_classes * val_fraction)))
    n_test = max(1, int(round(num_classes * test_fraction)))
    n_train = num_classes - n_val - n_test
    if n_train < 1:
        raise ValueError(
            f"{num_classes} classes leave none for training with these fractions. "
            f"Received: train_fraction={train_fraction}, val_fraction={val_fraction}"
        )
    return {"train": n_train, "val": n_val, "test": n_test}


def assign_classes(num_classes: int, counts: Mapping[str, int], seed: int) -> dict[str, np.ndarray]:
    """Assigns class indices to the meta-splits with a seeded permutation (sorted within each split).

    Args:
        num_classes: Total classes.
        counts: Classes per split, summing to ``num_classes`` (from :func:`split_class_counts`).
        seed: Seed of the permutation.

    Returns:
        ``{split: int64 array of class indices}``.
    """
    if sum(counts.values()) != num_classes:
        raise ValueError(f"Split counts must add up to {num_classes}. Received: counts={dict(counts)}")
    order = np.random.default_rng(seed).permutation(num_classes)
    out, start = {}, 0
    for split in SPLITS:
        n = int(counts[split])
        out[split] = np.sort(order[start:start + n]).astype(np.int64)
        start += n
    return out


def make_class_splits(images: np.ndarray, labels: np.ndarray, class_names: Sequence[str],
                      groups: Mapping[str, Iterable[int]]) -> dict[str, ClassSplit]:
    """Builds one :class:`ClassSplit` per meta-split from pooled images and the classes assigned to each split.

    Args:
        images: ``[n, ...]`` all images.
        labels: ``[n]`` class indices into ``class_names``.
        class_names: Name of every class.
        groups: ``{split: class indices}``; within a split classes keep the order given and are relabelled 0..k-1.

    Returns:
        ``{split: ClassSplit}`` with contiguous image arrays.
    """
    labels = np.asarray(labels, dtype=np.int64)
    out = {}
    for split, members in groups.items():
        members = np.asarray(list(members), dtype=np.int64)
        relabel = np.full(len(class_names), -1, dtype=np.int64)
        relabel[members] = np.arange(len(members))
        mask = relabel[labels] >= 0
        rows = np.flatnonzero(mask)
        # Group rows by class so that a split's images lie class by class (cheaper episode gathers).
        rows = rows[np.argsort(relabel[labels[rows]], kind="stable")]
        out[split] = ClassSplit(
            images=np.ascontiguousarray(images[rows]),
            labels=relabel[labels[rows]],
            class_names=[str(class_names[c]) for c in members],
        )
    return out


# ----------------------------------------------------------------------------------------------------------
# Summaries
# ----------------------------------------------------------------------------------------------------------


def to_uint8(images: Any, scale: float = 1.0) -> np.ndarray:
    """Maps values in ``[0, scale]`` to ``uint8`` 0..255, rounded and clipped (for pictures in reports and pages).

    Args:
        images: Any array of pixel values.
        scale: The value that becomes 255 (1 for images in [0, 1], a dataset's ``scale`` for its stored pixels).
    """
    images = np.asarray(images)
    if scale == 255.0 and images.dtype == np.uint8:
        return np.ascontiguousarray(images)
    return np.clip(np.rint(images.astype(np.float64) * (255.0 / float(scale))), 0, 255).astype(np.uint8)


def _display_image(image: np.ndarray, scale: float) -> np.ndarray:
    return np.ascontiguousarray(to_uint8(image, scale))


def summarize_dataset(dataset: Any, *, sample_classes: int = 5, samples_per_class: int = 3, seed: int = 0) -> dict:
    """Counts per split and a few sample images of a loaded dataset, for the Train page's summary and sample grid.

    Args:
        dataset: A :class:`~metalab.core.contract.specs.ClassificationDataset` (a regression task family gets only
            its kind and input shape).
        sample_classes: Classes shown per split (picked with ``seed``).
        samples_per_class: Images shown per class (the first ones of the class).
        seed: Seed of the class pick.

    Returns:
        ``{"kind", "input_shape", "total_classes", "total_images", "splits": {split: {"classes", "images",
        "min_per_class", "max_per_class"}}, "samples": {split: [{"class": name, "images": [uint8 [H, W, C]]}]},
        "info": dataset.info}``. Sample images are scaled to 0..255 whatever the dataset's ``scale``; vector data
        has no samples. Everything but the sample arrays is JSON-serialisable.
    """
    kind = getattr(dataset, "kind", "classification")
    summary: dict[str, Any] = {"kind": kind, "input_shape": [int(s) for s in getattr(dataset, "input_shape", ())]}
    splits = getattr(dataset, "splits", None)
    if kind != "classification" or not isinstance(splits, dict):
        summary.update({"splits": {}, "samples": {}, "info": dict(getattr(dataset, "info", {}) or {})})
        return summary
    rng = np.random.default_rng(seed)
    image_data = len(summary["input_shape"]) == 3
    counts_out, samples_out = {}, {}
    total_classes = total_images = 0
    for name, split in splits.items():
        labels = np.asarray(split.labels, dtype=np.int64)
        counts = np.bincount(labels, minlength=split.num_classes)
        counts_out[name] = {
            "classes": int(split.num_classes),
            "images": int(labels.size),
            "min_per_class": int(counts.min()) if counts.size else 0,
            "max_per_class": int(counts.max()) if counts.size else 0,
        }
        total_classes += int(split.num_classes)
        total_images += int(labels.size)
        if not image_data or split.num_classes == 0:
            samples_out[name] = []
            continue
        chosen = np.sort(rng.choice(split.num_classes, size=min(sample_classes, split.num_classes), replace=False))
        shown = []
        for c in chosen:
            rows = np.flatnonzero(labels == c)[:samples_per_class]
            shown.append({
                "class": split.class_names[int(c)],
                "images": [_display_image(split.images[r], float(getattr(dataset, "scale", 255.0))) for r in rows],
            })
        samples_out[name] = shown
    summary.update({
        "total_classes": total_classes,
        "total_images": total_images,
        "splits": counts_out,
        "samples": samples_out,
        "info": dict(getattr(dataset, "info", {}) or {}),
    })
    return summary


def episode_problems(dataset: Any, ways: int, shots: int, queries: int) -> list[str]:
    """Every reason a dataset cannot serve ``ways``-way ``shots``-shot episodes with ``queries`` queries.

    Unlike the sampler, which stops at the first problem, this names every split with too few classes and every
    class with too few images, so a user can fix a folder of images in one go.

    Args:
        dataset: A :class:`~metalab.core.contract.specs.ClassificationDataset`.
        ways, shots, queries: The episode shape.

    Returns:
        One message per problem (empty when the shape fits every split).
    """
    problems = []
    need = int(shots) + int(queries)
    for name, split in getattr(dataset, "splits", {}).items():
        if split.num_classes < ways:
            problems.append(
                f"split {name!r} has {split.num_classes} classes but episodes need ways={ways}"
            )
        counts = np.bincount(np.asarray(split.labels, dtype=np.int64), minlength=split.num_classes)
        small = [f"{split.class_names[c]} ({int(counts[c])})" for c in np.flatnonzero(counts < need)]
        if small:
            problems.append(
                f"split {name!r}: {len(small)} classes have fewer than shots+queries={need} images: " + ", ".join(small)
            )
    return problems
