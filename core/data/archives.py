"""Safe reading of the archives and pickles users and dataset sources supply.

:func:`safe_extract_zip`, :func:`checked_zip_members` and :func:`safe_unpack` guard against zip-slip paths, links,
zip bombs and oversized uploads; :func:`safe_unpickle` reads dataset pickles without running code.
"""

from __future__ import annotations

import os
import pickle
import shutil
import stat
import tarfile
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import IO, Any

from metalab.core.data.images import is_hidden

__all__ = [
    "UnsafeArchiveError",
    "ZipLimits",
    "checked_zip_members",
    "read_zip_member",
    "safe_extract_zip",
    "safe_unpack",
    "safe_unpickle",
]


class UnsafeArchiveError(ValueError):
    """A zip archive is malformed, too large, or has members that would escape the target folder."""


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
