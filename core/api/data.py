"""Data helpers for dataset plugins: checked downloads and caches, safe archives and pickles, images, splits."""

from __future__ import annotations

from metalab.core.contract.specs import DataContext
from metalab.core.data.files import __all__ as _file_names
from metalab.core.data.files import *  # noqa: F401,F403
from metalab.core.data.info import __all__ as _info_names
from metalab.core.data.info import *  # noqa: F401,F403
from metalab.core.engine.sampling import holdout_rows, supervised_splits

__all__ = [*_file_names, *_info_names, "holdout_rows", "supervised_splits", "default_context"]


def default_context() -> DataContext:
    """The data context of this installation's settings (``METALAB_DATA_DIR``, caches, download policy).

    A dataset factory called with ``context=None`` (from a notebook, say) uses this one.
    """
    from metalab.core.settings import load_settings

    return load_settings().data_context()
