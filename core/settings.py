"""Where metalab keeps runs and data, read from environment variables once, at the edge."""

from __future__ import annotations

import os
from pathlib import Path

import platformdirs
from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

from .plugin_api import DataContext


class Settings(BaseSettings):
    """metalab's settings; each field reads the environment variable ``METALAB_<FIELD>``.

    Attributes:
        home: Run store and run artifacts (``METALAB_HOME``).
        data_dir: Dataset files (``METALAB_DATA_DIR``); may be read-only.
        cache_dir: Decoded dataset arrays (``METALAB_CACHE_DIR``), kept apart from the data files.
        offline: Never touch the network (``METALAB_OFFLINE=1``).
        disable_plugins: Comma-separated plugin names to block (``METALAB_DISABLE_PLUGINS``).
        strict_plugins: Turn any plugin failure into an error (``METALAB_STRICT_PLUGINS=1``).
        max_workers: Training runs allowed at once from the dashboard (``METALAB_MAX_WORKERS``).
        intra_op_threads: Threads inside one op in a training worker (``METALAB_INTRA_OP_THREADS``); 0 picks
            per run (see ``metalab.core.runner.thread_counts``).
        inter_op_threads: Ops run at once in a training worker (``METALAB_INTER_OP_THREADS``); 0 picks per run.
    """

    model_config = SettingsConfigDict(env_prefix="METALAB_", extra="ignore")

    home: Path = Field(default_factory=lambda: Path(platformdirs.user_data_dir("metalab")))
    data_dir: Path = Field(default_factory=lambda: Path(platformdirs.user_cache_dir("metalab")) / "data")
    cache_dir: Path = Field(default_factory=lambda: Path(platformdirs.user_cache_dir("metalab")) / "arrays")
    offline: bool = False
    disable_plugins: str = ""
    strict_plugins: bool = False
    max_workers: int = Field(2, ge=1, le=64)
    intra_op_threads: int = Field(0, ge=0, le=1024)
    inter_op_threads: int = Field(0, ge=0, le=1024)

    @property
    def disabled(self) -> set[str]:
        return {name.strip() for name in self.disable_plugins.split(",") if name.strip()}

    @property
    def store_path(self) -> Path:
        return self.home / "runs.sqlite"

    @property
    def runs_dir(self) -> Path:
        return self.home / "runs"

    def data_context(self) -> DataContext:
        return DataContext(
            data_dir=str(self.data_dir),
            cache_dir=str(self.cache_dir),
            allow_download=not self.offline,
        )


def load_settings(**overrides) -> Settings:
    """Reads the settings from the environment now (never cached: tests change the environment)."""
    return Settings(**overrides)


def ensure_dir(path: str | os.PathLike) -> Path:
    p = Path(path)
    p.mkdir(parents=True, exist_ok=True)
    return p
