"""Images as dataset loaders and prediction read them: one decoding of any file Pillow reads, and a pixel cap.

Pure numpy and Pillow. :func:`decode_image` gives a ``uint8 [H, W, C]`` array after one documented preprocessing
(orientation, transparency, grey or RGB, resize, optional inversion), the same for dataset loaders and for
:mod:`metalab.core.engine.predict`; images over the cap are refused from their header, before decoding.
"""

from __future__ import annotations

import io
import os
from pathlib import PurePosixPath
from typing import IO, Any, Literal, Sequence

import numpy as np

__all__ = [
    "IMAGE_EXTENSIONS",
    "FIT_MODES",
    "UnreadableImageError",
    "decode_image",
    "resize_array",
    "is_hidden",
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

_IGNORED_NAMES = frozenset({"thumbs.db", "desktop.ini", ".ds_store"})


class UnreadableImageError(ValueError):
    """A file could not be decoded as an image (or is too large to decode safely)."""


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


def is_hidden(relative: str) -> bool:
    """True for paths an archiver or OS adds that are not data: ``__MACOSX/``, dot files, ``Thumbs.db``."""
    parts = PurePosixPath(relative.replace("\\", "/")).parts
    return any(p.startswith(".") or p == "__MACOSX" for p in parts) or (
        bool(parts) and parts[-1].lower() in _IGNORED_NAMES
    )
