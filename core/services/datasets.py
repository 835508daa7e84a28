"""The Services section over datasets: summaries, and uploaded image folders (numpy and Pillow only, no TensorFlow)."""

from __future__ import annotations

import contextlib
import os
from pathlib import Path
from typing import Any

from metalab.core.services.access import CapError

#: The largest upload the dashboard accepts by default (Streamlit's own ``server.maxUploadSize`` default).
DEFAULT_MAX_UPLOAD_BYTES = 200 << 20


class DatasetsMixin:
    """The dataset and upload methods of :class:`~metalab.core.services.Services`, uploads within their caps."""

    def check_dataset_params(self, dataset_id: str, params: dict[str, Any] | None) -> None:
        """Raises :class:`AccessError` when the caller may not load ``dataset_id`` with ``params`` (pages call it
        before using a cached summary, which another caller may have made)."""
        spec = self.registry.dataset(dataset_id)
        self.policy.check_params(self.actor, "dataset", spec, dict(params or {}), run_owner=self._run_owner)

    def dataset_param_problems(self, dataset_id: str, params: dict[str, Any] | None) -> list[str]:
        """Every problem of ``params`` for ``dataset_id``'s schema at once, each naming the field, the rule and the
        value received (empty when they are valid); the pages show them before anything is loaded."""
        from metalab.core.engine.config import ConfigError, validate_params

        spec = self.registry.dataset(dataset_id)
        try:
            validate_params(spec.params, dict(params or {}), "dataset")
        except ConfigError as exc:
            return str(exc).splitlines()
        return []

    def dataset_summary(self, dataset_id: str, params: dict[str, Any] | None = None, *,
                        episode: tuple[int, int, int] | None = None, sample_classes: int = 5,
                        samples_per_class: int = 3, seed: int = 0) -> dict[str, Any]:
        """Loads a dataset in this process and summarises it: counts per split, sample images, its info.

        Dataset factories read files with numpy and Pillow, so this never imports TensorFlow; a large dataset
        does cost this process its memory while it is summarised.

        Args:
            dataset_id: A loaded dataset id.
            params: The dataset's parameters (validated here; missing ones take their defaults).
            episode: ``(ways, shots, queries)`` to check the dataset against (see ``problems`` below).
            sample_classes, samples_per_class, seed: As :func:`~metalab.core.data.summaries.summarize_dataset`.

        Returns:
            :func:`~metalab.core.data.summaries.summarize_dataset`'s dict plus ``"id"``, ``"params"`` (every
            parameter, validated) and ``"problems"`` (every reason the dataset cannot serve ``episode``; empty
            when it can or when no ``episode`` is given).

        Raises:
            UnknownPluginError: No loaded plugin provides ``dataset_id``.
            pydantic.ValidationError: A parameter is invalid (a ``ValueError``).
            FileNotFoundError: The dataset's files are missing (the plugin's message names them and where to
                put them).
            ValueError: The files are there but unusable (the plugin says why).
        """
        from metalab.core.contract.manager import check_factory_result
        from metalab.core.data.summaries import episode_problems, summarize_dataset

        spec = self.registry.dataset(dataset_id)
        self.policy.check_params(self.actor, "dataset", spec, dict(params or {}), run_owner=self._run_owner)
        validated = spec.params(**(params or {}))
        dataset = check_factory_result(spec, spec.factory(validated, self.settings.data_context()),
                                       registry=self.registry)
        summary = summarize_dataset(dataset, sample_classes=sample_classes, samples_per_class=samples_per_class,
                                    seed=seed)
        problems: list[str] = []
        if episode is not None and summary["kind"] == "classification":
            problems = episode_problems(dataset, *(int(v) for v in episode))
        summary.update({"id": spec.id, "params": validated.model_dump(mode="json"), "problems": problems})
        return summary

    @property
    def uploads_dir(self) -> Path:
        """Where uploaded image folders are extracted: ``METALAB_DATA_DIR/uploads/``."""
        return Path(self.settings.uploads_dir)

    def upload_caps(self) -> dict[str, int]:
        """What the caller may still upload: ``{"max_bytes", "uploads_left", "unpacked_bytes_left", "max_files"}``."""
        mine = self.store.upload_records(owner=self.actor.id)
        used = sum(int(r["unpacked_bytes"]) for r in mine)
        return {"max_bytes": int(self.settings.max_upload_mb) << 20,
                "uploads_left": max(int(self.settings.max_uploads_per_owner) - len(mine), 0),
                "unpacked_bytes_left": max((int(self.settings.max_unpacked_mb_per_owner) << 20) - used, 0),
                "max_files": int(self.settings.max_archive_files)}

    def upload_dataset(self, archive: bytes | Any, name: str, *, max_bytes: int | None = None) -> dict[str, Any]:
        """Extracts an uploaded zip of class sub-folders into ``METALAB_DATA_DIR/uploads/<name>/``, safely.

        Every member is checked before anything is written (see
        :func:`~metalab.core.data.archives.safe_extract_zip`): absolute or ``..`` paths, links and encrypted
        members are refused, and so are archives over ``max_bytes``, unpacking to more than
        :func:`upload_limits` allow, or expanding like a zip bomb. A refused archive leaves nothing behind.

        Args:
            archive: The zip's bytes, or a binary file object (e.g. Streamlit's ``UploadedFile``).
            name: A name for the folder (the upload's file name will do): reduced to letters, digits, ``-`` and
                ``_``; a suffix ``-2``, ``-3``, ... is added when the name is taken.
            max_bytes: The largest archive accepted; ``None`` for :data:`DEFAULT_MAX_UPLOAD_BYTES`.

        Returns:
            :meth:`upload_info` of the new folder.

        Raises:
            UnsafeArchiveError: Not a zip, over a cap, or an unsafe member (a ``ValueError`` naming it).
        """
        import io

        from metalab.core.data.archives import UnsafeArchiveError, ZipLimits, safe_extract_zip

        self.policy.require_actor(self.actor, "upload")
        caps = self.upload_caps()
        max_bytes = caps["max_bytes"] if max_bytes is None else min(int(max_bytes), caps["max_bytes"])
        if caps["uploads_left"] <= 0:
            raise CapError(f"You have {self.settings.max_uploads_per_owner} uploaded folders, the most allowed here "
                           "(METALAB_MAX_UPLOADS_PER_OWNER); delete one first. "
                           f"Received: uploads={self.settings.max_uploads_per_owner}")
        if isinstance(archive, (bytes, bytearray, memoryview)):
            archive = io.BytesIO(bytes(archive))
        base = _upload_slug(name)
        self.uploads_dir.mkdir(parents=True, exist_ok=True)
        limits = upload_limits(max_bytes)
        limits = ZipLimits(max_archive_bytes=limits.max_archive_bytes,
                           max_total_bytes=min(limits.max_total_bytes, caps["unpacked_bytes_left"]),
                           max_file_bytes=limits.max_file_bytes, max_files=caps["max_files"], max_ratio=limits.max_ratio)
        with self._lock:  # two uploads of the same name in two sessions must not pick the same folder
            folder, n = base, 1
            while (self.uploads_dir / folder).exists() or self.store.upload_record(folder) is not None:
                n += 1
                folder = f"{base}-{n}"
            (self.uploads_dir / folder).mkdir(parents=True)
        try:
            written = safe_extract_zip(archive, self.uploads_dir / folder, limits)
            self._check_image_headers(written, self.uploads_dir / folder)
        except BaseException as exc:
            import shutil

            shutil.rmtree(self.uploads_dir / folder, ignore_errors=True)
            if isinstance(exc, UnsafeArchiveError):
                raise UnsafeArchiveError(self.redact(str(exc))) from None
            raise
        with contextlib.suppress(AttributeError, OSError, ValueError):
            archive.seek(0, os.SEEK_END)
        archive_bytes = int(getattr(archive, "tell", lambda: 0)() or 0)
        self.store.add_upload(folder, self.actor.id, archive_bytes=archive_bytes,
                              unpacked_bytes=sum(p.stat().st_size for p in written if p.is_file()), files=len(written))
        return self.upload_info(folder)

    def _check_image_headers(self, files: list[Path], root: Path) -> None:
        """Refuses an upload holding an image over ``max_image_pixels`` (read from its header: nothing is decoded)."""
        from metalab.core.data.archives import UnsafeArchiveError
        from metalab.core.data.images import IMAGE_EXTENSIONS, UnreadableImageError, check_image_header

        cap = int(self.settings.max_image_pixels)
        for path in files:
            if path.suffix.lower() in IMAGE_EXTENSIONS and path.is_file():
                name = path.relative_to(root).as_posix()
                try:
                    check_image_header(path, name, cap)
                except UnreadableImageError as exc:
                    if "more than the" in str(exc):
                        raise UnsafeArchiveError(f"The zip holds an image that is too large: {exc}") from None

    def uploads(self) -> list[dict[str, Any]]:
        """Every uploaded image folder, newest first: :meth:`upload_info` of each."""
        if not self.uploads_dir.is_dir():
            return []
        folders = [p for p in self.uploads_dir.iterdir() if p.is_dir() and not p.name.startswith(".")]
        folders = [p for p in folders if self.policy.can_see(self.actor, self._upload_owner(p.name))]
        folders.sort(key=lambda p: (p.stat().st_mtime, p.name), reverse=True)
        return [self.upload_info(p.name) for p in folders]

    def _upload_owner(self, name: str) -> str:
        # Folders made before owners were recorded belong to this machine's user.
        return (self.store.upload_record(name) or {}).get("owner") or "local"

    def upload_info(self, name: str) -> dict[str, Any]:
        """Class folders and image counts of an uploaded image folder (read from the file names, not decoded).

        Args:
            name: The folder's name under :attr:`uploads_dir`.

        Returns:
            ``{"name", "path" (the folder), "root" (the folder holding the class folders: a single wrapping
            folder such as ``photos/`` is looked through, as the image-folder dataset does), "classes": {class:
            image files}, "images" (their sum), "other_files": [paths of files that are not images or not in a
            class folder]}``.

        Raises:
            ValueError: ``name`` is not a plain folder name.
            FileNotFoundError: No such upload.
        """
        from pathlib import PurePosixPath

        from metalab.core.data.images import IMAGE_EXTENSIONS, is_hidden

        if not name or name != Path(name).name or name in (".", ".."):
            raise ValueError(f"An upload is named by its folder name alone. Received: name={name!r}")
        path = self.uploads_dir / name
        if not path.is_dir() or path.is_symlink() or not self.policy.can_see(self.actor, self._upload_owner(name)):
            raise FileNotFoundError(f"No uploaded image folder {name!r}. Received: name={name!r}")
        files = sorted(p.relative_to(path).as_posix() for p in path.rglob("*") if p.is_file())
        files = [f for f in files if not is_hidden(f)]
        parts = [PurePosixPath(f).parts for f in files]
        depth = 0
        # As the image-folder loader: leading folders shared by every file only wrap the class folders.
        while parts and all(len(p) >= depth + 3 for p in parts) and len({p[depth] for p in parts}) == 1:
            depth += 1
        classes: dict[str, int] = {}
        other: list[str] = []
        for relative, p in zip(files, parts):
            rest = p[depth:]
            if len(rest) < 2 or PurePosixPath(relative).suffix.lower() not in IMAGE_EXTENSIONS:
                other.append(relative)
                continue
            classes[rest[0]] = classes.get(rest[0], 0) + 1
        root = path.joinpath(*parts[0][:depth]) if parts and depth else path
        return {"name": name, "path": str(path), "root": str(root), "classes": dict(sorted(classes.items())),
                "images": sum(classes.values()), "other_files": other}

    def delete_upload(self, name: str) -> None:
        """Deletes an uploaded image folder (the dataset's cached arrays are left to the cache)."""
        import shutil

        info = self.upload_info(name)
        self.policy.require_modify(self.actor, self._upload_owner(name), f"upload {name}: delete")
        shutil.rmtree(info["path"])
        self.store.delete_upload_record(name)


def upload_limits(max_bytes: int = DEFAULT_MAX_UPLOAD_BYTES) -> Any:
    """The zip caps of an upload of at most ``max_bytes``: it may unpack to 10 times that (4 GiB at most).

    Images barely compress, so a larger expansion means a zip bomb; the per-member and whole-archive ratio
    caps of :class:`~metalab.core.data.archives.ZipLimits` stay at their defaults.
    """
    from metalab.core.data.archives import ZipLimits

    return ZipLimits(max_archive_bytes=int(max_bytes), max_total_bytes=min(10 * int(max_bytes), 4 << 30),
                     max_file_bytes=min(int(max_bytes), 256 << 20))


def _upload_slug(name: str) -> str:
    """A folder name from an upload's file name: ``"My photos (2).zip"`` gives ``"My-photos-2"``."""
    import re

    stem = Path(str(name).replace("\\", "/")).name
    for suffix in (".zip", ".ZIP"):
        stem = stem.removesuffix(suffix)
    slug = re.sub(r"[^A-Za-z0-9_-]+", "-", stem).strip("-_")[:64]
    return slug or "upload"
