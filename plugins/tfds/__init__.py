"""Any image classification dataset already prepared in a local TensorFlow Datasets folder, as ``metalab.tfds``.

The dataset is read from its prepared folder (``<data_dir>/<name>/[<config>/]<version>/`` with its
``dataset_info.json`` and record files) through ``tfds.builder_from_directory``: nothing is downloaded and no
network is touched (prepare it elsewhere with ``tfds build`` or ``tfds.load``, then copy the folder). The images
of the chosen TFDS splits are pooled and their classes divided between train, val and test with a seed.

``tensorflow-datasets`` is optional (``pip install tensorflow-datasets``; it also needs ``importlib_resources``):
it is imported only when the dataset is built. Registration is cheap.
"""

from __future__ import annotations

import re

import pydantic
from pydantic import Field

from metalab.api import DataPath, DatasetSpec, Params, hookimpl

METALAB_PLUGIN_API = "1.3"

_NAME_RE = re.compile(r"[A-Za-z0-9_]+(/[A-Za-z0-9_+\-][A-Za-z0-9_.+\-]*)?(:\d+(\.\d+)*)?")


class TFDSParams(Params):
    """Which prepared TFDS dataset to read and how to turn it into a few-shot dataset."""

    name: str = Field(
        "", description="TFDS name, optionally with config and version: mnist, cifar100:3.0.2, my_set/config:1.0.0."
    )
    data_dir: DataPath = Field(
        "",
        description=(
            "The TFDS data folder holding the prepared dataset. Empty: METALAB_DATA_DIR/tfds/, then $TFDS_DATA_DIR, "
            "then ~/tensorflow_datasets/."
        ),
    )
    splits: str = Field("all", description="TFDS splits to pool, comma-separated (e.g. train,test), or all.")
    image_key: str = Field("image", description="The image feature.")
    label_key: str = Field("label", description="The class label feature (a ClassLabel).")
    image_size: int = Field(0, ge=0, le=512, description="Side of the square images; 0 keeps the dataset's own size.")
    channels: int = Field(0, ge=0, le=3, description="1 (grey) or 3 (RGB); 0 keeps the dataset's own channels.")
    train_fraction: float = Field(0.6, gt=0, lt=1, description="Share of the classes used for meta-training.")
    val_fraction: float = Field(0.2, gt=0, lt=1, description="Share of the classes for validation; the rest are test.")
    seed: int = Field(0, ge=0, description="Seed of the permutation that assigns classes to splits.")

    @pydantic.field_validator("name")
    @classmethod
    def _plain_name(cls, value: str) -> str:
        # The name becomes folders under the data folder: no "..", no absolute path, nothing but TFDS's characters.
        if value.strip() and (not _NAME_RE.fullmatch(value.strip()) or ".." in value):
            raise ValueError(
                "name must be a TFDS dataset name, optionally /config and :version (letters, digits, _ . + -), e.g. "
                f"mnist, cifar100:3.0.2, my_set/config:1.0.0. Received: name={value!r}"
            )
        return value

    @pydantic.model_validator(mode="after")
    def _check(self) -> "TFDSParams":
        if self.train_fraction + self.val_fraction >= 1:
            raise ValueError(
                f"train_fraction + val_fraction must leave a share of the classes for test. "
                f"Received: train_fraction={self.train_fraction}, val_fraction={self.val_fraction}"
            )
        if self.channels == 2:
            raise ValueError(f"channels must be 0 (keep), 1 or 3. Received: channels={self.channels}")
        return self


def make_tfds(params: TFDSParams | dict | None = None, context=None):
    """Builds the few-shot dataset from a prepared TFDS folder (the dataset factory).

    Returns:
        A :class:`~metalab.api.ClassificationDataset`.

    Raises:
        ImportError: tensorflow-datasets is not installed (the message says how to install it).
        FileNotFoundError: The prepared dataset folder is absent; the message says where it is expected.
        ValueError: ``name`` is empty, or the features are not an image and a class label.
    """
    from .loader import build_dataset

    if not isinstance(params, TFDSParams):
        params = TFDSParams.model_validate(params or {})
    if context is None:
        from metalab.api.data import default_context

        context = default_context()
    return build_dataset(params, context)


@hookimpl
def metalab_register_datasets() -> list:
    return [
        DatasetSpec(
            id="metalab.tfds",
            title="TensorFlow Datasets (local)",
            description=(
                "Any image classification dataset already prepared in a local TFDS data folder, split by class "
                "into train, val and test. Never downloads. Needs pip install tensorflow-datasets."
            ),
            params=TFDSParams,
            factory=make_tfds,
            kind="classification",
            default_backbone="metalab.conv4",
            episode_defaults={"ways": 5, "shots": 1, "queries": 5},
        )
    ]
