"""Omniglot (Lake et al., 2015) as the few-shot classification dataset ``metalab.omniglot``.

Registration is cheap: files are read by :mod:`metalab.plugins.omniglot.loader`, which the factory imports.
``load_oneshot_runs`` (Lake et al.'s 20 one-shot runs) is importable from here too; it loads the loader on
first use.
"""

from __future__ import annotations

from typing import Any, Literal

import pydantic
from pydantic import Field

from metalab.api import DatasetSpec, Params, hookimpl

METALAB_PLUGIN_API = "1.5"

TOTAL_CHARACTERS = 1623

PAPER = (
    "Lake, Salakhutdinov & Tenenbaum (2015). Human-level concept learning through probabilistic program "
    "induction. Science 350(6266):1332-1338. Split and rotations: Vinyals et al. (2016). Matching Networks "
    "for One Shot Learning. NeurIPS 2016; Santoro et al. (2016). Meta-Learning with Memory-Augmented Neural "
    "Networks. ICML 2016."
)


class OmniglotParams(Params):
    """Which meta-split, preprocessing and seed to use."""

    split: Literal["vinyals", "background_evaluation", "minimal", "minimal1", "minimal2"] = Field(
        "vinyals",
        description=(
            "vinyals: 1623 characters pooled and shuffled, 1100 train / 100 val / 423 test (Vinyals et al.; "
            "MAML). background_evaluation: background alphabets train (some held out for val), evaluation "
            "alphabets test (Lake et al.). minimal1 / minimal2: Lake et al.'s minimal condition, "
            "images_background_small1 or _small2 alone train (5 alphabets each), evaluation test. minimal: the "
            "union of the two small sets (8 alphabets)."
        ),
    )
    rotations: bool = Field(
        True, description="Each character rotated by 0/90/180/270 degrees is its own class, in every split."
    )
    image_size: int = Field(28, ge=8, le=105, description="Side of the square images (originals are 105).")
    seed: int = Field(0, ge=0, description="Seed of the character shuffle (vinyals) or of the held-out val alphabets.")
    train_characters: int = Field(1100, ge=1, le=TOTAL_CHARACTERS - 2, description="vinyals only: training characters.")
    val_characters: int = Field(100, ge=1, le=TOTAL_CHARACTERS - 2, description="vinyals only: validation characters; the rest are test.")
    val_alphabets: int = Field(
        2, ge=1, le=29,
        description="background_evaluation and minimal splits only: training alphabets held out for validation.",
    )

    @pydantic.model_validator(mode="after")
    def _leaves_test_characters(self) -> "OmniglotParams":
        if self.train_characters + self.val_characters >= TOTAL_CHARACTERS:
            raise ValueError(
                f"train_characters + val_characters must leave test characters out of {TOTAL_CHARACTERS}. "
                f"Received: train_characters={self.train_characters}, val_characters={self.val_characters}"
            )
        return self


def make_omniglot(params: OmniglotParams | dict | None = None, context=None):
    """Builds the Omniglot dataset (the dataset factory).

    Args:
        params: An :class:`OmniglotParams` (or a dict of its fields).
        context: A :class:`~metalab.api.DataContext`; ``None`` reads the settings
            (``METALAB_DATA_DIR``, ``METALAB_OFFLINE``).

    Returns:
        A :class:`~metalab.api.ClassificationDataset` of ``uint8 [n, s, s, 1]`` images.

    Raises:
        FileNotFoundError: Files are absent from ``METALAB_DATA_DIR/omniglot/`` and cannot be downloaded.
        ValueError: A file does not hold what the official file holds.
    """
    from .loader import build_dataset

    if not isinstance(params, OmniglotParams):
        params = OmniglotParams.model_validate(params or {})
    if context is None:
        from metalab.api.data import default_context

        context = default_context()
    return build_dataset(params, context)


def __getattr__(name: str) -> Any:
    # Lazy re-export: importing the plugin must not import Pillow or read files.
    if name == "load_oneshot_runs":
        from .loader import load_oneshot_runs

        return load_oneshot_runs
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


@hookimpl
def metalab_register_datasets() -> list:
    # The loader module is light to import (no Pillow, no file read); it holds the official URLs and checksums.
    from .loader import OFFICIAL_DOWNLOADS, split_sizes
    from .published import PUBLISHED_RESULTS

    return [
        DatasetSpec(
            id="metalab.omniglot",
            title="Omniglot",
            description=(
                "1623 handwritten characters from 50 alphabets, 20 drawings each, resized to 28x28. Reads the "
                "official zips (or copies with the same layout) from METALAB_DATA_DIR/omniglot/ and downloads "
                "them, checksum-verified, into the cache folder when allowed."
            ),
            params=OmniglotParams,
            factory=make_omniglot,
            kind="classification",
            paper=PAPER,
            default_backbone="metalab.conv4",
            episode_defaults={"ways": 5, "shots": 1, "queries": 15},
            downloads=dict(OFFICIAL_DOWNLOADS),
            split_sizes=split_sizes,
            published_results=PUBLISHED_RESULTS,
        )
    ]
