"""File helpers for dataset plugins: checked downloads, fingerprints, and caches of downloads and decoded arrays.

Downloads never run when the :class:`~metalab.core.contract.specs.DataContext` forbids them, and a missing file
always ends in a ``FileNotFoundError`` that says which file, which folder, and where to get it.
"""

from __future__ import annotations

import hashlib
import http.client
import os
import tempfile
import urllib.error
import urllib.parse
import urllib.request
import zipfile
from pathlib import Path
from typing import Callable, Iterable, Mapping

import numpy as np

__all__ = [
    "download",
    "DownloadRefusedError",
    "sha256_file",
    "cached_arrays",
    "cache_file",
    "fingerprint",
    "quick_fingerprint",
    "keras_cache_dirs",
]

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
        f"folder. Received: file={dest.name!r}"
    )


class DownloadRefusedError(ValueError):
    """A download that metalab's policy refuses: another scheme than https/http, a redirect to another host or
    from https to http, or a destination outside the download folder."""


_SCHEMES = ("https", "http")
_DEFAULT_PORTS = {"https": 443, "http": 80}


def _host_key(url: str) -> tuple[str, str, int | None]:
    parts = urllib.parse.urlsplit(url)
    scheme = parts.scheme.lower()
    try:
        port = parts.port
    except ValueError:
        port = -1  # a malformed port never equals a real one
    return scheme, (parts.hostname or "").lower(), port if port is not None else _DEFAULT_PORTS.get(scheme)


def _same_host(old_url: str, new_url: str) -> bool:
    """True when ``new_url`` is on ``old_url``'s host and port (an http->https upgrade on default ports counts)."""
    old_scheme, old_host, old_port = _host_key(old_url)
    new_scheme, new_host, new_port = _host_key(new_url)
    if not old_host or old_host != new_host:
        return False
    if old_port == new_port:
        return True
    return (old_scheme, old_port, new_scheme, new_port) == ("http", 80, "https", 443)


def _describe_host(url: str) -> str:
    _, host, port = _host_key(url)
    scheme = urllib.parse.urlsplit(url).scheme.lower()
    return host if port == _DEFAULT_PORTS.get(scheme) else f"{host}:{port}"


class _SameHostRedirects(urllib.request.HTTPRedirectHandler):
    """Follows a redirect only to the same host, and never from https down to http.

    A declared URL must not become a way to reach another machine (an internal address the server can see but
    the user cannot), so every hop is compared with the one before it.
    """

    def http_error_302(self, req, fp, code, msg, headers):  # noqa: D102 (urllib's signature)
        # urllib itself refuses file:// and the like with an HTTPError; refuse them as the policy they break.
        location = headers.get("location") or headers.get("uri") or ""
        scheme = urllib.parse.urlsplit(location).scheme.lower()
        if scheme and scheme not in _SCHEMES:
            fp.close()
            raise DownloadRefusedError(
                f"The download from {req.full_url} was redirected to a {scheme}:// URL; only https and http are "
                f"followed. Received: status={code}, redirect_scheme={scheme!r}"
            )
        return super().http_error_302(req, fp, code, msg, headers)

    http_error_301 = http_error_303 = http_error_307 = http_error_308 = http_error_302

    def redirect_request(self, req, fp, code, msg, headers, newurl):  # noqa: D102 (urllib's signature)
        old_scheme = urllib.parse.urlsplit(req.full_url).scheme.lower()
        new_scheme = urllib.parse.urlsplit(newurl).scheme.lower()
        problem = None
        if new_scheme not in _SCHEMES:
            problem = f"to a {new_scheme or 'relative'}:// URL; only https and http are followed"
        elif old_scheme == "https" and new_scheme == "http":
            problem = "from https down to http"
        elif not _same_host(req.full_url, newurl):
            problem = (f"from host {_describe_host(req.full_url)} to another host, {_describe_host(newurl)}; "
                       f"only redirects on the same host are followed")
        if problem:
            fp.close()
            raise DownloadRefusedError(
                f"The download from {req.full_url} was redirected {problem}. Download the file yourself if you trust "
                f"the new address. Received: status={code}, redirect_host={_describe_host(newurl)!r}"
            )
        return super().redirect_request(req, fp, code, msg, headers, newurl)


def _opener() -> urllib.request.OpenerDirector:
    # Built by hand so that no file://, ftp:// or data: handler exists at all, whatever a redirect says.
    opener = urllib.request.OpenerDirector()
    for handler in (
        urllib.request.ProxyHandler(),
        urllib.request.HTTPHandler(),
        urllib.request.HTTPSHandler(),
        urllib.request.HTTPDefaultErrorHandler(),
        urllib.request.HTTPErrorProcessor(),
        _SameHostRedirects(),
    ):
        opener.add_handler(handler)
    return opener


def _check_url(url: str) -> None:
    parts = urllib.parse.urlsplit(str(url))
    scheme = parts.scheme.lower()
    if scheme not in _SCHEMES:
        # The URL itself is not echoed: a file:// URL names a server path.
        raise DownloadRefusedError(
            f"Only https:// and http:// URLs are downloaded; a {scheme or 'scheme-less'} URL is refused. "
            f"Received: scheme={scheme!r}"
        )
    if not parts.hostname:
        raise DownloadRefusedError(f"A download URL needs a host name. Received: scheme={scheme!r}, host=''")


def _inside(dest: Path, root: Path) -> Path:
    """``dest`` resolved (symlinks included); refused unless it lies strictly inside ``root`` resolved."""
    real_root = root.expanduser().resolve()
    real_dest = dest.expanduser().resolve()
    if real_dest == real_root or not real_dest.is_relative_to(real_root):
        raise DownloadRefusedError(
            f"A download must land inside its download folder {root}/; {dest.name!r} resolves outside it. "
            f"Received: file={dest.name!r}"
        )
    return real_dest


def download(
    url: str,
    dest: str | os.PathLike,
    sha256: str,
    *,
    allow_download: bool,
    root: str | os.PathLike,
    timeout: float = 60.0,
) -> Path:
    """Downloads ``url`` to ``dest`` unless it is there already, and checks its sha256.

    Only ``https://`` and ``http://`` URLs are fetched; a redirect is followed only on the same host (and never
    from https to http). ``dest`` must lie inside ``root`` (``DataContext.download_dir(name)``), symlinks
    included, so a URL can never place a file where code would run it. The file is written to a temporary name
    beside ``dest`` and renamed only after its checksum matched, so an interrupted download never leaves a
    partial file under the final name. Messages never print a file's computed sha256.

    Args:
        url: Where the file lives (``https://`` or ``http://``).
        dest: The final path, inside ``root``.
        sha256: The expected hex sha256 (required: unverified downloads are refused).
        allow_download: False: never touch the network; a missing file raises ``FileNotFoundError``.
        root: The folder downloads must land in (``context.download_dir(name)``); created when absent.
        timeout: Seconds to wait for the server at each read.

    Returns:
        ``dest`` as a ``Path``.

    Raises:
        FileNotFoundError: ``dest`` is missing and downloads are off, or the server could not be reached.
        DownloadRefusedError: (a ``ValueError``) ``url`` is not https/http, a redirect leaves its host or goes
            from https to http, or ``dest`` resolves outside ``root``.
        ValueError: The downloaded file (or the existing ``dest``) does not match ``sha256``, or ``sha256`` is not
            a 64-digit hex string.

    Example:
        folder = context.download_dir("cifar100")
        archive = download(OFFICIAL_URL, folder / ARCHIVE, OFFICIAL_SHA256, allow_download=True, root=folder)
    """
    expected = (sha256 or "").lower() if isinstance(sha256, str) or sha256 is None else ""
    if len(expected) != 64 or any(c not in "0123456789abcdef" for c in expected):
        raise ValueError(f"download needs the file's sha256 as 64 hex digits. Received: sha256={sha256!r}")
    _check_url(url)
    dest = Path(dest)
    root = Path(root)
    real_dest = _inside(dest, root)
    if real_dest.exists():
        if not real_dest.is_file() or sha256_file(real_dest) != expected:
            raise ValueError(
                f"{dest.name} exists in {dest.parent}/ but does not match the pinned sha256 for {url}. Delete it to "
                f"download it again, or replace it with the right file. Received: file={dest.name!r}"
            )
        return dest
    if not allow_download:
        raise FileNotFoundError(_missing_message(dest, url, "downloads are off (METALAB_OFFLINE=1)"))
    try:
        real_dest.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp_name = tempfile.mkstemp(prefix=real_dest.name + ".", suffix=".part", dir=real_dest.parent)
    except OSError as exc:
        reason = f"the folder is not writable ({type(exc).__name__})"
        raise FileNotFoundError(_missing_message(dest, url, reason)) from exc
    digest = hashlib.sha256()
    try:
        with os.fdopen(fd, "wb") as out:
            try:
                with _opener().open(url, timeout=timeout) as response:
                    for chunk in iter(lambda: response.read(_CHUNK), b""):
                        digest.update(chunk)
                        out.write(chunk)
            except (urllib.error.URLError, OSError, TimeoutError, http.client.HTTPException) as exc:
                raise FileNotFoundError(_missing_message(dest, url, f"the download failed ({exc})")) from exc
        if digest.hexdigest() != expected:
            raise ValueError(
                f"The file downloaded from {url} does not match the pinned sha256; it was not saved. Check the URL "
                f"and the checksum. Received: url={url!r}"
            )
        os.replace(tmp_name, real_dest)
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
