"""Where metalab keeps runs and data, read from environment variables once, at the edge."""

from __future__ import annotations

import os
from pathlib import Path

import platformdirs
from typing import Literal

from pydantic import Field, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from metalab.core.contract.specs import DataContext


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
            per run (see ``metalab.core.engine.devices.thread_counts``).
        inter_op_threads: Ops run at once in a training worker (``METALAB_INTER_OP_THREADS``); 0 picks per run.
        cpu_devices: Split the CPU of a training worker into this many logical devices (``METALAB_CPU_DEVICES``;
            0: one), so a run with ``devices=N`` can split its tasks across them on a machine without GPUs. They
            share the same cores: for trying and testing ``devices``, not for speed.
        hosts: One run across several processes or hosts (``METALAB_HOSTS``): every process's ``host:port``,
            comma-separated, the chief first, the same on every process; read by ``metalab train`` only (its
            ``--hosts``), never by the dashboard's workers. Empty: one process.
        host_index: This process's place in ``hosts`` (``METALAB_HOST_INDEX``, ``--host-index``): 0 is the chief,
            which records the run. Checked with ``hosts`` (:func:`metalab.core.engine.parallel.parse_hosts`).
        mode: Who the dashboard serves (``METALAB_MODE``): ``private`` (one trusted user on this machine, the
            default), ``demo`` (anyone with the link; each browser session owns its runs and uploads) or ``team``
            (users signed in through OIDC with ``st.login``).
        admins: Comma-separated identities (team: e-mail addresses) allowed to cancel, delete and resume any run
            (``METALAB_ADMINS``).
        showcase_dir: A bundle written by ``metalab demo pack`` whose runs a dashboard serves read-only as its
            gallery (``METALAB_SHOWCASE_DIR``).

    Caps (each ``METALAB_<NAME>``; left unset, each takes its mode's default from :data:`MODE_CAPS`):
        max_runs_per_owner: Runs one owner may have queued or running at once.
        max_steps: Meta-training steps of one run.
        max_run_seconds: Wall time of one worker session; a run over it is stopped, checkpointed and marked
            interrupted (its owner may resume it). 0: no cap.
        max_probes_per_owner: Estimate probes one owner may run at once (probes count against ``max_workers``).
        max_uploads_per_owner: Uploaded image folders one owner may keep.
        max_upload_mb: Size of one uploaded file (a zip, or the query images together), in MB.
        max_unpacked_mb_per_owner: Unpacked size of all of one owner's uploaded folders together, in MB.
        max_archive_files: Members of one uploaded zip.
        max_image_pixels: Pixels of one image, checked from its header before anything is decoded.
        worker_memory_mb: Address-space limit of each worker process in MB (0: none); workers always run niced.
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
    cpu_devices: int = Field(0, ge=0, le=64)
    hosts: str = ""
    # Text, checked with hosts: a bad value gets parse_hosts's message naming it, not a settings traceback.
    host_index: str = "0"
    mode: Literal["private", "demo", "team"] = "private"
    admins: str = ""
    showcase_dir: Path | None = None
    max_runs_per_owner: int | None = Field(None, ge=1, le=1000)
    max_steps: int | None = Field(None, ge=1, le=10_000_000)
    max_run_seconds: int | None = Field(None, ge=0)
    max_probes_per_owner: int | None = Field(None, ge=1, le=64)
    max_uploads_per_owner: int | None = Field(None, ge=0, le=100_000)
    max_upload_mb: int | None = Field(None, ge=1, le=100_000)
    max_unpacked_mb_per_owner: int | None = Field(None, ge=1, le=10_000_000)
    max_archive_files: int | None = Field(None, ge=1, le=10_000_000)
    max_image_pixels: int | None = Field(None, ge=1, le=1_000_000_000)
    worker_memory_mb: int | None = Field(None, ge=0)
    worker_nice: int = Field(10, ge=0, le=19)

    @model_validator(mode="after")
    def _mode_caps(self) -> "Settings":
        # Caps left unset take the mode's defaults, so METALAB_MODE=demo alone is a safe configuration.
        for name, value in MODE_CAPS[self.mode].items():
            if getattr(self, name) is None:
                setattr(self, name, value)
        return self

    @property
    def admin_ids(self) -> set[str]:
        return {name.strip().lower() for name in self.admins.split(",") if name.strip()}

    @property
    def uploads_dir(self) -> Path:
        """Where uploaded image folders are extracted: ``METALAB_DATA_DIR/uploads/``."""
        return self.data_dir / "uploads"

    @property
    def predictions_dir(self) -> Path:
        """Where the Predict page stages uploaded support and query images: ``METALAB_HOME/predictions/``."""
        return self.home / "predictions"

    def caps(self) -> dict[str, int]:
        """Every cap in force, ``{name: value}`` (for the Sharing section of the dashboard and the docs)."""
        return {name: int(getattr(self, name)) for name in ("max_workers", *MODE_CAPS["private"])}

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


#: Each mode's caps; a cap set in the environment wins. ``private`` keeps today's limits (one trusted user).
MODE_CAPS: dict[str, dict[str, int]] = {
    "private": {"max_runs_per_owner": 64, "max_steps": 10_000_000, "max_run_seconds": 0, "max_probes_per_owner": 64,
                "max_uploads_per_owner": 100_000, "max_upload_mb": 200, "max_unpacked_mb_per_owner": 1_000_000,
                "max_archive_files": 200_000, "max_image_pixels": 50_000_000, "worker_memory_mb": 0},
    "demo": {"max_runs_per_owner": 1, "max_steps": 2_000, "max_run_seconds": 600, "max_probes_per_owner": 1,
             "max_uploads_per_owner": 3, "max_upload_mb": 20, "max_unpacked_mb_per_owner": 100,
             "max_archive_files": 2_000, "max_image_pixels": 4_000_000, "worker_memory_mb": 3_072},
    "team": {"max_runs_per_owner": 4, "max_steps": 1_000_000, "max_run_seconds": 4 * 3600, "max_probes_per_owner": 2,
             "max_uploads_per_owner": 50, "max_upload_mb": 200, "max_unpacked_mb_per_owner": 4_000,
             "max_archive_files": 50_000, "max_image_pixels": 25_000_000, "worker_memory_mb": 8_192},
}


def load_settings(**overrides) -> Settings:
    """Reads the settings from the environment now (never cached: tests change the environment)."""
    return Settings(**overrides)


def ensure_dir(path: str | os.PathLike) -> Path:
    p = Path(path)
    p.mkdir(parents=True, exist_ok=True)
    return p
