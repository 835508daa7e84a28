"""File helpers for dataset plugins: checked downloads and a cache of decoded arrays.

Downloads never run when the :class:`~metalab.core.plugin_api.DataContext` forbids them, and a missing file
always ends in a ``FileNotFoundError`` that says which file, which folder, and where to get it.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
import urllib.error
import urllib.request
import zipfile
from pathlib import Path
from typing import Callable, Mapping

import numpy as np

__all__ = ["download", "sha256_file", "cached_arrays", "cache_file", "fingerprint"]

_CHUNK = 1 << 20


def sha256_file(path: str | os.PathLike) -> str:
    """Returns the hex sha256 of a file, read in chunks.

    Args:
        path: The file.

    Returns:
        64 lowercase hex digits.
    """
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(_CHUNK), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _missing_message(dest: Path, url: str, reason: str) -> str:
    return (
        f"{dest.name} not found in {dest.parent}/ and {reason}. Download it from {url} and put it in that "
        f"folder (the folder is METALAB_DATA_DIR/{dest.parent.name}/). Received: file={str(dest)!r}"
    )


def download(url: str, dest: str | os.PathLike, sha256: str, *, allow_download: bool, timeout: float = 60.0) -> Path:
    """Downloads ``url`` to ``dest`` unless it is there already, and checks its sha256.

    The file is written to a temporary name beside ``dest`` and renamed only after its checksum matched, so
    an interrupted download never leaves a partial file under the final name.

    Args:
        url: Where the file lives.
        dest: The final path.
        sha256: The expected hex sha256 (required: unverified downloads are refused).
        allow_download: False: never touch the network; a missing file raises ``FileNotFoundError``.
        timeout: Seconds to wait for the server at each read.

    Returns:
        ``dest`` as a ``Path``.

    Raises:
        FileNotFoundError: ``dest`` is missing and downloads are off, or the server could not be reached.
        ValueError: The downloaded file (or the existing ``dest``) has another sha256, or ``sha256`` is not a
            64-digit hex string.
    """
    dest = Path(dest)
    expected = (sha256 or "").lower()
    if len(expected) != 64 or any(c not in "0123456789abcdef" for c in expected):
        raise ValueError(f"download needs the file's sha256 as 64 hex digits. Received: sha256={sha256!r}")
    if dest.exists():
        actual = sha256_file(dest)
        if actual != expected:
            raise ValueError(
                f"{dest} exists but its sha256 is {actual}, not the expected {expected} for {url}. Delete it to "
                f"download it again, or replace it with the right file. Received: dest={str(dest)!r}"
            )
        return dest
    if not allow_download:
        raise FileNotFoundError(_missing_message(dest, url, "downloads are off (METALAB_OFFLINE=1)"))
    try:
        dest.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp_name = tempfile.mkstemp(prefix=dest.name + ".", suffix=".part", dir=dest.parent)
    except OSError as exc:
        raise FileNotFoundError(_missing_message(dest, url, f"the folder is not writable ({exc})")) from exc
    digest = hashlib.sha256()
    try:
        with os.fdopen(fd, "wb") as out:
            try:
                with urllib.request.urlopen(url, timeout=timeout) as response:
                    for chunk in iter(lambda: response.read(_CHUNK), b""):
                        digest.update(chunk)
                        out.write(chunk)
            except (urllib.error.URLError, OSError, TimeoutError) as exc:
                raise FileNotFoundError(_missing_message(dest, url, f"the download failed ({exc})")) from exc
        actual = digest.hexdigest()
        if actual != expected:
            raise ValueError(
                f"The file downloaded from {url} has sha256 {actual}, but {expected} was expected; it was not "
                f"saved. Received: sha256={actual}"
            )
        os.replace(tmp_name, dest)
    finally:
        if os.path.exists(tmp_name):
            os.remove(tmp_name)
    return dest


def fingerprint(path: str | os.PathLike) -> str:
    """A short content fingerprint of a file (sha256) or a folder (names, sizes, mtimes), for cache names.

    Args:
        path: A file or a folder.

    Returns:
        16 hex digits.
    """
    path = Path(path)
    if path.is_file():
        return sha256_file(path)[:16]
    digest = hashlib.sha256()
    for root, dirs, files in os.walk(path):
        dirs.sort()
        for name in sorted(files):
            full = Path(root, name)
            st = full.stat()
            digest.update(f"{full.relative_to(path).as_posix()}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
    return digest.hexdigest()[:16]


def _writable(folder: Path) -> bool:
    probe = folder
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    return probe.is_dir() and os.access(probe, os.W_OK | os.X_OK)


def cache_file(cache_dir: str | os.PathLike, relative: str) -> Path:
    """Where a cache file lives: under ``cache_dir``, or under the user's cache folder if that is read-only.

    A read-only data folder (a shared mount) keeps a cache that is already there usable; a new cache goes to
    ``platformdirs.user_cache_dir("metalab")/arrays`` instead, so decoding still happens only once.

    Args:
        cache_dir: The preferred folder (``DataContext.cache_dir``).
        relative: The file's path relative to the cache folder, e.g. ``"omniglot/x.npz"``.

    Returns:
        The path to read from or write to.
    """
    preferred = Path(cache_dir) / relative
    if preferred.exists() or _writable(preferred.parent):
        return preferred
    import platformdirs

    return Path(platformdirs.user_cache_dir("metalab")) / "arrays" / relative


def cached_arrays(cache_path: str | os.PathLike, build_fn: Callable[[], Mapping[str, np.ndarray]]) -> dict[str, np.ndarray]:
    """Loads named arrays from an ``.npz`` cache, building and saving them first if the cache is absent.

    The file is written uncompressed and without pickles (fast to load, safe to read), to a temporary name
    first, so a crash never leaves a half-written cache. An unreadable cache is rebuilt.

    Args:
        cache_path: The ``.npz`` file. Its name should encode everything the arrays depend on (source file
            fingerprint, image size, format version).
        build_fn: Returns ``{name: array}`` (numeric or fixed-width string arrays; no objects).

    Returns:
        ``{name: array}``, loaded into memory.
    """
    cache_path = Path(cache_path)
    if cache_path.exists():
        try:
            with np.load(cache_path, allow_pickle=False) as data:
                return {name: data[name] for name in data.files}
        except (OSError, ValueError, zipfile.BadZipFile, EOFError):
            pass  # a damaged cache is rebuilt below
    arrays = {name: np.asarray(value) for name, value in build_fn().items()}
    try:
        cache_path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp_name = tempfile.mkstemp(prefix=cache_path.stem + ".", suffix=".tmp.npz", dir=cache_path.parent)
    except OSError:
        return arrays  # a read-only cache folder only costs speed
    try:
        with os.fdopen(fd, "wb") as f:
            np.savez(f, **arrays)
        os.chmod(tmp_name, 0o644)  # mkstemp makes 0600; the cache is shared like the data folder
        os.replace(tmp_name, cache_path)
    except OSError:
        pass  # a read-only cache folder only costs speed
    finally:
        if os.path.exists(tmp_name):
            os.remove(tmp_name)
    return arrays
