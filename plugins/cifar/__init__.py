"""CIFAR-FS and FC100, few-shot benchmarks cut from CIFAR-100, registered as ``metalab.cifar_fs`` and ``metalab.fc100``.

Both read the CIFAR-100 python archive (``cifar-100-python.tar.gz``, or its extracted ``cifar-100-python/`` folder
with the ``train``, ``test`` and ``meta`` pickles) and pool its 60,000 images (600 per class) before splitting by
class: CIFAR-FS with Bertinetto et al.'s 64 / 16 / 20 classes, FC100 with Oreshkin et al.'s 12 / 4 / 4 superclasses
(60 / 20 / 20 classes). Registration is cheap: the loader is imported by the factories.
"""

from __future__ import annotations

from pydantic import Field

from metalab.api import Checksum, DatasetSpec, DataPath, DownloadURL, Params, hookimpl

METALAB_PLUGIN_API = "1.3"

ARCHIVE = "cifar-100-python.tar.gz"
FOLDER = "cifar100"
OFFICIAL_URL = "https://www.cs.toronto.edu/~kriz/cifar-100-python.tar.gz"
#: sha256 of the official archive, as Keras's ``keras.datasets.cifar100`` checks it.
OFFICIAL_SHA256 = "85cd44d02ba6437773c5bbd22e183051d648de2e7d6b014e1ef29b855ba677a7"

CIFAR_FS_PAPER = (
    "Bertinetto, Henriques, Torr & Vedaldi (2019). Meta-learning with differentiable closed-form solvers. ICLR 2019. "
    "Images: Krizhevsky (2009). Learning Multiple Layers of Features from Tiny Images."
)
FC100_PAPER = (
    "Oreshkin, Rodriguez & Lacoste (2018). TADAM: Task dependent adaptive metric for improved few-shot learning. "
    "NeurIPS 2018. Images: Krizhevsky (2009). Learning Multiple Layers of Features from Tiny Images."
)


class CifarParams(Params):
    """Where the CIFAR-100 archive is and the image size."""

    path: DataPath = Field(
        "",
        description=(
            "cifar-100-python.tar.gz or its extracted cifar-100-python/ folder. Empty: look in "
            "METALAB_DATA_DIR/cifar100/, then in the download folder, then in the Keras cache ($KERAS_HOME/datasets "
            "or ~/.keras/datasets)."
        ),
    )
    url: DownloadURL = Field(
        "",
        description=(
            "Download URL used when the archive is absent (empty: the official CIFAR-100 URL). Downloads land in "
            "the cache folder (downloads/cifar100/)."
        ),
    )
    sha256: Checksum = Field("", description="sha256 of the file at url (required with a url of your own).")
    image_size: int = Field(32, ge=4, le=256, description="Side of the square images (CIFAR's own is 32).")


def _make(which: str):
    def factory(params: CifarParams | dict | None = None, context=None):
        """Builds the dataset (the dataset factory).

        Args:
            params: A :class:`CifarParams` (or a dict of its fields).
            context: A :class:`~metalab.api.DataContext`; ``None`` reads the settings.

        Returns:
            A :class:`~metalab.api.ClassificationDataset` of ``uint8 [n, s, s, 3]`` images.

        Raises:
            FileNotFoundError: The archive is absent and cannot be downloaded; the message says where to put it.
            ValueError: The files do not hold CIFAR-100.
        """
        from .loader import build_dataset

        if not isinstance(params, CifarParams):
            params = CifarParams.model_validate(params or {})
        if context is None:
            from metalab.api.data import default_context

            context = default_context()
        return build_dataset(which, params, context)

    factory.__name__ = f"make_{which}"
    return factory


make_cifar_fs = _make("cifar_fs")
make_fc100 = _make("fc100")


@hookimpl
def metalab_register_datasets() -> list:
    common = (
        " Reads cifar-100-python.tar.gz (or the extracted folder) from METALAB_DATA_DIR/cifar100/ or the Keras "
        "cache, or downloads it, checksum-verified, into the cache folder when allowed."
    )
    return [
        DatasetSpec(
            id="metalab.cifar_fs",
            title="CIFAR-FS",
            description="CIFAR-100 split by class for few-shot learning: 64 train, 16 val, 20 test classes, 600 "
                        "32x32 colour images each (Bertinetto et al.'s split)." + common,
            params=CifarParams,
            factory=make_cifar_fs,
            kind="classification",
            paper=CIFAR_FS_PAPER,
            default_backbone="metalab.conv4",
            episode_defaults={"ways": 5, "shots": 1, "queries": 15},
            downloads={OFFICIAL_URL: OFFICIAL_SHA256},
        ),
        DatasetSpec(
            id="metalab.fc100",
            title="FC100",
            description="CIFAR-100 split by superclass: 12 / 4 / 4 superclasses (60 / 20 / 20 classes) for train, "
                        "val and test, so test classes are far from training ones (Oreshkin et al.'s split)." + common,
            params=CifarParams,
            factory=make_fc100,
            kind="classification",
            paper=FC100_PAPER,
            default_backbone="metalab.conv4",
            episode_defaults={"ways": 5, "shots": 1, "queries": 15},
            downloads={OFFICIAL_URL: OFFICIAL_SHA256},
        ),
    ]
