"""Data helpers for dataset plugins: checked downloads and caches, safe archives and pickles, images, splits."""

from __future__ import annotations

from metalab.core.contract.specs import DataContext
from metalab.core.data.archives import (
    UnsafeArchiveError,
    ZipLimits,
    checked_zip_members,
    read_zip_member,
    safe_extract_zip,
    safe_unpack,
    safe_unpickle,
)
from metalab.core.data.files import (
    DownloadRefusedError,
    cache_file,
    cached_arrays,
    download,
    fingerprint,
    keras_cache_dirs,
    quick_fingerprint,
    sha256_file,
)
from metalab.core.data.images import (
    FIT_MODES,
    IMAGE_EXTENSIONS,
    UnreadableImageError,
    decode_image,
    is_hidden,
    resize_array,
    to_uint8,
)
from metalab.core.data.splits import assign_classes, make_class_splits, split_class_counts
from metalab.core.data.summaries import episode_problems, summarize_dataset
from metalab.core.engine.transforms import holdout_rows, supervised_splits

__all__ = [
    "download",
    "DownloadRefusedError",
    "sha256_file",
    "cached_arrays",
    "cache_file",
    "fingerprint",
    "quick_fingerprint",
    "keras_cache_dirs",
    "IMAGE_EXTENSIONS",
    "FIT_MODES",
    "UnreadableImageError",
    "decode_image",
    "resize_array",
    "is_hidden",
    "to_uint8",
    "UnsafeArchiveError",
    "ZipLimits",
    "checked_zip_members",
    "read_zip_member",
    "safe_extract_zip",
    "safe_unpack",
    "safe_unpickle",
    "split_class_counts",
    "assign_classes",
    "make_class_splits",
    "holdout_rows",
    "supervised_splits",
    "summarize_dataset",
    "episode_problems",
    "default_context",
]


def default_context() -> DataContext:
    """The data context of this installation's settings (``METALAB_DATA_DIR``, caches, download policy).

    A dataset factory called with ``context=None`` (from a notebook, say) uses this one.
    """
    from metalab.core.settings import load_settings

    return load_settings().data_context()
