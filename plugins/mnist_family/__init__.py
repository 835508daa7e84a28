"""MNIST, Fashion-MNIST and EMNIST letters as few-shot datasets split by class, or as the supervised-baseline
datasets: ``metalab.mnist``, ``metalab.fashion_mnist`` and ``metalab.emnist_letters``.

All three are 28x28 grey images (bright strokes on black; 1 channel). The parameter ``mode`` picks the division:

``mode="few_shot"`` (the default): the official train and test images are pooled, then the classes are divided
between the meta-splits by a seeded permutation (:func:`metalab.api.data.assign_classes`);
``info["split_classes"]`` lists each split's classes. The defaults (seed 0) give:

- MNIST and Fashion-MNIST, 4 / 3 / 3 classes: train labels {2, 4, 6, 7}, val {3, 5, 9}, test {0, 1, 8} (for
  Fashion-MNIST: train Pullover, Coat, Shirt, Sneaker; val Dress, Sandal, Ankle boot; test T-shirt/top, Trouser, Bag);
- EMNIST letters, 16 / 5 / 5 classes: val F H N R S, test B J O P W, the other 16 letters train.

``mode="supervised"``: every split holds all classes (10, or 26 letters), as for a plain classifier: ``train`` is
the official train images less a seeded, stratified share ``val_fraction`` of each class, ``val`` that share,
``test`` the official test images (``ClassificationDataset.supervised`` is true). The MLP classifier
(``metalab.mlp_classifier``) then reports the standard test accuracy on the official test set. Few-shot
evaluation still runs (episodes from the test images), but on classes seen in training.

Files are never downloaded here (offline-safe); a missing file is a ``FileNotFoundError`` naming it and where to
put it:

- MNIST: ``mnist.npz`` (Keras's file: ``x_train``, ``y_train``, ``x_test``, ``y_test``), or the four IDX files
  ``train-images-idx3-ubyte.gz``, ``train-labels-idx1-ubyte.gz``, ``t10k-images-idx3-ubyte.gz``,
  ``t10k-labels-idx1-ubyte.gz``; looked for at ``path``, in ``METALAB_DATA_DIR/mnist/``, then in the Keras cache
  (``$KERAS_HOME/datasets/`` or ``~/.keras/datasets/``).
- Fashion-MNIST: the same four IDX file names (or a ``fashion-mnist.npz`` in Keras's layout) at ``path``, in
  ``METALAB_DATA_DIR/fashion_mnist/``, then in the Keras cache's ``datasets/fashion-mnist/``.
- EMNIST letters: ``emnist-letters-{train,test}-{images-idx3,labels-idx1}-ubyte.gz`` (from the ``gzip/`` folder of
  NIST's EMNIST ``gzip.zip``; stored transposed, so they are turned upright on load), ``emnist-letters.npz``
  with ``x_train``, ``y_train``, ``x_test``, ``y_test`` (upright images, labels 1..26 for A..Z), or NIST's MATLAB
  file ``emnist-letters.mat`` (from ``matlab.zip``; read with scipy); at ``path`` or in ``METALAB_DATA_DIR/emnist/``.
"""

from __future__ import annotations

from typing import Literal

import pydantic
from pydantic import Field

from metalab.api import DataPath, DatasetSpec, Params, hookimpl

METALAB_PLUGIN_API = "1.3"

MNIST_PAPER = "LeCun, Bottou, Bengio & Haffner (1998). Gradient-based learning applied to document recognition. Proc. IEEE."
FASHION_PAPER = (
    "Xiao, Rasul & Vollgraf (2017). Fashion-MNIST: a Novel Image Dataset for Benchmarking Machine Learning "
    "Algorithms. arXiv:1708.07747."
)
EMNIST_PAPER = (
    "Cohen, Afshar, Tapson & van Schaik (2017). EMNIST: an extension of MNIST to handwritten letters. IJCNN."
)


def _class_split_params(total: int, train: int, val: int, what: str) -> type[Params]:
    class SplitParams(Params):
        path: DataPath = Field("", description=f"A file or folder holding the {what} files (empty: the default places).")
        mode: Literal["few_shot", "supervised"] = Field(
            "few_shot",
            description=(
                "few_shot: the classes are divided between train, val and test (meta-learning). supervised: every "
                f"split holds all {total} classes; train is the official train images less val_fraction of them "
                "(val), test the official test images: the supervised baseline (few-shot episodes then reuse "
                "training classes)."
            ),
        )
        train_classes: int = Field(train, ge=1, le=total - 2, description="Few-shot mode: classes in the training split.")
        val_classes: int = Field(
            val, ge=1, le=total - 2, description="Few-shot mode: classes in the validation split; the rest are test."
        )
        val_fraction: float = Field(
            0.1, gt=0, lt=1,
            description="Supervised mode: share of each class's official train images held out as the val split.",
        )
        seed: int = Field(
            0, ge=0,
            description="Seed of the permutation that assigns classes to splits (supervised mode: of the val images).",
        )

        @pydantic.model_validator(mode="after")
        def _leaves_test_classes(self):
            if self.train_classes + self.val_classes > total - 1:
                raise ValueError(
                    f"train_classes + val_classes must leave at least one of the {total} classes for test. "
                    f"Received: train_classes={self.train_classes}, val_classes={self.val_classes}"
                )
            return self

    return SplitParams


class MNISTParams(_class_split_params(10, 4, 3, "MNIST")):
    """Where MNIST is and how its 10 classes are split."""


class FashionMNISTParams(_class_split_params(10, 4, 3, "Fashion-MNIST")):
    """Where Fashion-MNIST is and how its 10 classes are split."""


class EMNISTLettersParams(_class_split_params(26, 16, 5, "EMNIST letters")):
    """Where EMNIST letters is and how its 26 classes are split."""


def _factory(which: str, model: type[Params]):
    def factory(params=None, context=None):
        """Builds the dataset (the dataset factory).

        Returns:
            A :class:`~metalab.api.ClassificationDataset` of ``uint8 [n, 28, 28, 1]`` images.

        Raises:
            FileNotFoundError: The files are absent; the message names them and where to put them.
        """
        from .loader import build_dataset

        if not isinstance(params, model):
            params = model.model_validate(params or {})
        if context is None:
            from metalab.api.data import default_context

            context = default_context()
        return build_dataset(which, params, context)

    factory.__name__ = f"make_{which}"
    return factory


make_mnist = _factory("mnist", MNISTParams)
make_fashion_mnist = _factory("fashion_mnist", FashionMNISTParams)
make_emnist_letters = _factory("emnist_letters", EMNISTLettersParams)


@hookimpl
def metalab_register_datasets() -> list:
    return [
        DatasetSpec(
            id="metalab.mnist",
            title="MNIST",
            description=(
                "70,000 handwritten digits, 28x28. Few-shot mode (default): train and test pooled, the 10 classes "
                "split 4 / 3 / 3 between train, val and test. Supervised mode: all 10 classes, the official 60,000 "
                "train images (less a val share) and 10,000 test images. Reads mnist.npz from "
                "METALAB_DATA_DIR/mnist/ or the Keras cache; never downloads."
            ),
            params=MNISTParams,
            factory=make_mnist,
            paper=MNIST_PAPER,
            default_backbone="metalab.conv4",
            episode_defaults={"ways": 3, "shots": 5, "queries": 10},
        ),
        DatasetSpec(
            id="metalab.fashion_mnist",
            title="Fashion-MNIST",
            description=(
                "70,000 clothing images, 28x28. Few-shot mode (default): train and test pooled, the 10 classes split "
                "4 / 3 / 3. Supervised mode: all 10 classes, the official train (less a val share) and test images. "
                "Reads the four .gz files from METALAB_DATA_DIR/fashion_mnist/ or the Keras cache; never downloads."
            ),
            params=FashionMNISTParams,
            factory=make_fashion_mnist,
            paper=FASHION_PAPER,
            default_backbone="metalab.conv4",
            episode_defaults={"ways": 3, "shots": 5, "queries": 10},
        ),
        DatasetSpec(
            id="metalab.emnist_letters",
            title="EMNIST letters",
            description=(
                "145,600 handwritten letters (upper and lower case merged), 28x28. Few-shot mode (default): the 26 "
                "classes split 16 / 5 / 5. Supervised mode: all 26 letters, the official 124,800 train (less a val "
                "share) and 20,800 test images. Reads the emnist-letters .gz files, emnist-letters.npz or "
                "emnist-letters.mat from METALAB_DATA_DIR/emnist/."
            ),
            params=EMNISTLettersParams,
            factory=make_emnist_letters,
            paper=EMNIST_PAPER,
            default_backbone="metalab.conv4",
            episode_defaults={"ways": 5, "shots": 1, "queries": 15},
        ),
    ]
