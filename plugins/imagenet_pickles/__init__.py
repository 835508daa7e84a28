"""mini-ImageNet and tiered-ImageNet from the files the community shares, as ``metalab.mini_imagenet`` and
``metalab.tiered_imagenet``.

mini-ImageNet (Vinyals et al., 2016; Ravi & Larochelle's split: 64 / 16 / 20 classes of 600 images, 84x84) is read
from either

- the pickles ``mini-imagenet-cache-{train,val,test}.pkl``, each a dict with ``image_data`` (``uint8 [n, 84, 84,
  3]``) and ``class_dict`` (``{class: [row indices]}``); or
- an ``images/`` folder with the split files ``train.csv``, ``val.csv``, ``test.csv`` (header ``filename,label``).

tiered-ImageNet (Ren et al., 2018: 351 / 97 / 160 classes from 20 / 6 / 8 ImageNet categories, 84x84) is read from
``{train,val,test}_images_png.pkl`` (a list of PNG-encoded images, the authors' release) or
``{train,val,test}_images.npz`` (key ``images``, ``uint8 [n, 84, 84, 3]``), each with ``{split}_labels.pkl``
(a dict with ``label_specific`` and optionally ``label_specific_str``, ``label_general``, ``label_general_str``).

Files go in ``METALAB_DATA_DIR/mini_imagenet/`` and ``METALAB_DATA_DIR/tiered_imagenet/`` (any sub-folder), or
where the ``path`` parameter says; a ``url`` with its ``sha256`` is downloaded (and unpacked if an archive) into the
cache folder's ``downloads/<dataset>/``, where later loads find it.
Pickles are read with a restricted unpickler (no code runs). Registration is cheap: loaders are imported lazily.
"""

from __future__ import annotations

from pydantic import Field

from metalab.api import Checksum, DatasetSpec, DataPath, DownloadURL, Params, hookimpl

METALAB_PLUGIN_API = "1.3"

MINI_PAPER = (
    "Vinyals, Blundell, Lillicrap, Kavukcuoglu & Wierstra (2016). Matching Networks for One Shot Learning. NeurIPS. "
    "Split: Ravi & Larochelle (2017). Optimization as a Model for Few-Shot Learning. ICLR."
)
TIERED_PAPER = (
    "Ren, Triantafillou, Ravi, Snell, Swersky, Tenenbaum, Larochelle & Zemel (2018). Meta-Learning for "
    "Semi-Supervised Few-Shot Classification. ICLR."
)


class _PickleParams(Params):
    path: DataPath = Field(
        "", description="Folder holding the files (any sub-folder is searched). Empty: METALAB_DATA_DIR/<dataset>/."
    )
    url: DownloadURL = Field(
        "",
        description=(
            "Download URL of the files (a .pkl/.npz, or a .zip/.tar archive of them) when absent. Downloads land "
            "in the cache folder (downloads/<dataset>/)."
        ),
    )
    sha256: Checksum = Field("", description="sha256 of the file at url (required with url).")
    image_size: int = Field(84, ge=8, le=256, description="Side of the square images (the benchmark's is 84).")


class MiniImageNetParams(_PickleParams):
    """Where the mini-ImageNet files are and the image size."""


class TieredImageNetParams(_PickleParams):
    """Where the tiered-ImageNet files are and the image size."""


def _context(context):
    if context is None:
        from metalab.api.data import default_context

        return default_context()
    return context


def make_mini_imagenet(params: MiniImageNetParams | dict | None = None, context=None):
    """Builds mini-ImageNet (the dataset factory).

    Returns:
        A :class:`~metalab.api.ClassificationDataset` of ``uint8 [n, s, s, 3]`` images.

    Raises:
        FileNotFoundError: No pickles nor images + CSVs found; the message names the files and the folder.
    """
    from .loader import build_mini_imagenet

    if not isinstance(params, MiniImageNetParams):
        params = MiniImageNetParams.model_validate(params or {})
    return build_mini_imagenet(params, _context(context))


def make_tiered_imagenet(params: TieredImageNetParams | dict | None = None, context=None):
    """Builds tiered-ImageNet (the dataset factory).

    Returns:
        A :class:`~metalab.api.ClassificationDataset` of ``uint8 [n, s, s, 3]`` images.

    Raises:
        FileNotFoundError: The image and label files are absent; the message names them and the folder.
    """
    from .loader import build_tiered_imagenet

    if not isinstance(params, TieredImageNetParams):
        params = TieredImageNetParams.model_validate(params or {})
    return build_tiered_imagenet(params, _context(context))


@hookimpl
def metalab_register_datasets() -> list:
    return [
        DatasetSpec(
            id="metalab.mini_imagenet",
            title="mini-ImageNet",
            description=(
                "100 ImageNet classes of 600 colour images, 84x84: 64 train, 16 val, 20 test (Ravi & Larochelle's "
                "split). Reads mini-imagenet-cache-{train,val,test}.pkl or images/ with train/val/test.csv from "
                "METALAB_DATA_DIR/mini_imagenet/."
            ),
            params=MiniImageNetParams,
            factory=make_mini_imagenet,
            kind="classification",
            paper=MINI_PAPER,
            default_backbone="metalab.conv4",
            episode_defaults={"ways": 5, "shots": 1, "queries": 15},
        ),
        DatasetSpec(
            id="metalab.tiered_imagenet",
            title="tiered-ImageNet",
            description=(
                "608 ImageNet classes grouped by 34 categories, 84x84: 351 train, 97 val, 160 test classes from "
                "disjoint categories. Reads {split}_images_png.pkl (or {split}_images.npz) and {split}_labels.pkl "
                "from METALAB_DATA_DIR/tiered_imagenet/."
            ),
            params=TieredImageNetParams,
            factory=make_tiered_imagenet,
            kind="classification",
            paper=TIERED_PAPER,
            default_backbone="metalab.conv4",
            episode_defaults={"ways": 5, "shots": 1, "queries": 15},
        ),
    ]
