"""Your own images as a few-shot dataset, registered as ``metalab.imagefolder``.

A folder with one sub-folder per class (any image format Pillow reads), or a zip of such a folder. Classes are
divided between train, val and test by a seeded permutation; images are resized and converted the same way for
training and for metalab's predictions. Registration is cheap: the loader is imported by the factory.
"""

from __future__ import annotations

from typing import Literal

import pydantic
from pydantic import Field

from metalab.api import DataPath, DatasetSpec, Params, hookimpl

METALAB_PLUGIN_API = "1.3"

#: The folder looked in when ``path`` is empty: ``METALAB_DATA_DIR/imagefolder/``.
DEFAULT_FOLDER = "imagefolder"


class ImageFolderParams(Params):
    """Where the images are, how they are preprocessed and how classes are divided between the splits."""

    path: DataPath = Field(
        "",
        description=(
            "A folder with one sub-folder per class, or a .zip of such a folder. Empty: METALAB_DATA_DIR/imagefolder/. "
            "A relative path is looked up in the current folder, then in METALAB_DATA_DIR/imagefolder/."
        ),
    )
    image_size: int = Field(
        28, ge=4, le=512, description="Side of the square images after resizing (84 for mini-ImageNet-like photos)."
    )
    channels: Literal[1, 3] = Field(3, description="1: grey (luma); 3: RGB.")
    fit: Literal["stretch", "crop"] = Field(
        "stretch", description="stretch: resize the whole image; crop: cut the centred square first (keeps proportions)."
    )
    invert: bool = Field(
        False, description="Invert grey levels (dark strokes on white paper become bright on black, as Omniglot)."
    )
    train_fraction: float = Field(0.6, gt=0, lt=1, description="Share of the classes used for meta-training.")
    val_fraction: float = Field(0.2, gt=0, lt=1, description="Share of the classes for validation; the rest are test classes.")
    seed: int = Field(0, ge=0, description="Seed of the permutation that assigns classes to splits.")
    min_images_per_class: int = Field(
        2, ge=1, le=10_000,
        description="Classes with fewer readable images are an error naming them (set it to the run's shots + queries).",
    )
    small_classes: Literal["error", "drop"] = Field(
        "error", description="error: refuse a dataset with small classes; drop: leave those classes out (listed in info)."
    )

    @pydantic.model_validator(mode="after")
    def _leaves_test_classes(self) -> "ImageFolderParams":
        if self.train_fraction + self.val_fraction >= 1:
            raise ValueError(
                f"train_fraction + val_fraction must leave a share of the classes for test. "
                f"Received: train_fraction={self.train_fraction}, val_fraction={self.val_fraction}"
            )
        return self


def make_imagefolder(params: ImageFolderParams | dict | None = None, context=None):
    """Builds the image-folder dataset (the dataset factory).

    Args:
        params: An :class:`ImageFolderParams` (or a dict of its fields).
        context: A :class:`~metalab.api.DataContext`; ``None`` reads the settings.

    Returns:
        A :class:`~metalab.api.ClassificationDataset` of ``uint8 [n, s, s, channels]`` images.

    Raises:
        FileNotFoundError: The folder or zip does not exist.
        ValueError: Too few classes, classes with too few images (named), or no readable image.
    """
    from .loader import build_dataset

    if not isinstance(params, ImageFolderParams):
        params = ImageFolderParams.model_validate(params or {})
    if context is None:
        from metalab.api.data import default_context

        context = default_context()
    return build_dataset(params, context)


@hookimpl
def metalab_register_datasets() -> list:
    return [
        DatasetSpec(
            id="metalab.imagefolder",
            title="Your image folder",
            description=(
                "Your own images: a folder (or a .zip) with one sub-folder per class, any format Pillow reads. "
                "Images are resized to a square and converted to grey or RGB; classes are split between train, "
                "val and test with a seed. Unreadable files are listed in the dataset's info."
            ),
            params=ImageFolderParams,
            factory=make_imagefolder,
            kind="classification",
            paper="",
            default_backbone="metalab.conv4",
            episode_defaults={"ways": 5, "shots": 1, "queries": 5},
        )
    ]
