"""Zero-shot learning from class attributes: the algorithm, a glyph dataset and a CUB-format loader (no TF import).

**Class attributes.** A classification dataset gives its classes side information by storing
``ClassificationDataset.info["class_attributes"]`` as ``{split: float array [classes, attributes]}``: row ``c`` of
``info["class_attributes"]["test"]`` describes class ``c`` of the test split (``class_names[c]``), and every split
has the same number of attributes. metalab's episode sampler then hands each batch the attributes of its
episodes' classes as ``TaskBatch.extras["class_attributes"]`` ``float32 [T, ways, A]`` (row ``i`` for label
``i``). ``info["attribute_names"]`` may name the entries. Both datasets here follow this convention.

* ``metalab.zeroshot``: Prototypical Networks' zero-shot variant (Snell et al. 2017, Sections 2.3 and 3.3):
  prototypes embedded from the classes' attribute vectors, no support images. Without attributes it is few-shot
  Prototypical Networks on the same backbone (prototypes from the support images).
* ``metalab.glyphs``: procedurally drawn glyphs, one class per combination of six attributes; no download.
* ``metalab.cub_attributes``: images and continuous class attributes laid out as in CUB-200-2011.
"""

from __future__ import annotations

from typing import Annotated, Any

import pydantic
from pydantic import Field

from metalab.api import AlgorithmSpec, DataPath, DatasetSpec, Params, ReportPanel, hookimpl

METALAB_PLUGIN_API = "1.4"

#: Attributes of a glyph class (one-hot per group; see ``glyphs.ATTRIBUTE_NAMES``).
GLYPH_ATTRIBUTES = 17
#: Glyph classes: every combination of the attribute values (3 shapes x 2 fills x 4 strokes x 2 x 4 x 2).
GLYPH_CLASSES = 384
#: Attributes of a CUB-200-2011 class.
CUB_ATTRIBUTES = 312

PAPER = "Snell, Swersky and Zemel 2017, Prototypical Networks for Few-shot Learning (NeurIPS), Sections 2.3 and 3.3"


class ZeroShotParams(Params):
    """Zero-shot Prototypical Networks' parameters; defaults follow Snell et al. 2017 where the paper gives them."""

    attribute_dim: int = Field(
        GLYPH_ATTRIBUTES, ge=1, le=100_000,
        description="Length of a class's attribute vector (the datasets here set it: 17 for glyphs, 312 for CUB).",
    )
    attribute_hidden: list[Annotated[int, Field(ge=1, le=8192)]] = Field(
        [], title="Attribute-embedding hidden layers",
        description="Hidden ReLU layers of the attribute embedding g; empty gives the paper's linear map.",
    )
    unit_prototypes: bool = Field(
        True, description="Scale the attribute prototypes to unit length (the paper's choice for CUB)."
    )
    outer_lr: float = Field(1e-3, gt=0, le=1, description="Adam learning rate.")
    meta_batch_size: int = Field(1, ge=1, le=1024, description="Episodes per update (one in the paper).")
    lr_decay_every: int = Field(
        2000, ge=0, le=10_000_000, description="Halve the learning rate every this many updates (0: never)."
    )


SPEC = AlgorithmSpec(
    id="metalab.zeroshot",
    title="Zero-shot Prototypical Networks",
    description=(
        "Classifies unseen classes from their attribute vectors alone: each class's prototype is an embedding of "
        "its attributes, and a query image goes to the nearest prototype. On datasets without class attributes "
        "it falls back to few-shot prototypes from the support images."
    ),
    params=ZeroShotParams,
    factory="metalab.plugins.zeroshot.algorithm:ZeroShotProtoNet",
    paper=PAPER,
    task_kinds=("classification",),
)


class GlyphsParams(Params):
    """How the glyph dataset is drawn and split."""

    size: int = Field(28, ge=12, le=128, description="Image height and width in pixels.")
    images_per_class: int = Field(20, ge=2, le=1000, description="Images drawn per class (each with its own jitter).")
    val_classes: int = Field(48, ge=1, le=200, description="Classes (attribute combinations) in the validation split.")
    test_classes: int = Field(96, ge=1, le=200, description="Classes in the test split; the other classes train.")
    noise: float = Field(0.08, ge=0, le=1, description="Standard deviation of the Gaussian pixel noise.")
    seed: int = Field(0, ge=0, description="Seed of the class split and of the images' jitter.")

    @pydantic.model_validator(mode="after")
    def _leaves_training_classes(self) -> "GlyphsParams":
        if self.val_classes + self.test_classes > GLYPH_CLASSES - 2:
            raise ValueError(
                f"val_classes + test_classes must leave at least 2 of the {GLYPH_CLASSES} glyph classes for training. "
                f"Received: val_classes={self.val_classes}, test_classes={self.test_classes}"
            )
        return self


def make_glyphs(params: GlyphsParams | dict | None = None, context: Any = None) -> Any:
    """Draws the glyph dataset (the dataset factory; ``context`` is unused: nothing is read or downloaded).

    Args:
        params: A :class:`GlyphsParams` (or a dict of its fields).
        context: The data context (ignored).

    Returns:
        A :class:`~metalab.api.ClassificationDataset` with ``info["class_attributes"]``.
    """
    from .glyphs import make_glyphs_dataset

    if not isinstance(params, GlyphsParams):
        params = GlyphsParams.model_validate(params or {})
    return make_glyphs_dataset(**params.model_dump())


class CubAttributesParams(Params):
    """Where a CUB-format folder is and how it is split."""

    cub_path: DataPath = Field(
        "", description="Folder with classes.txt, attributes/ and images/ (default: METALAB_DATA_DIR/CUB_200_2011)."
    )
    image_size: int = Field(84, ge=8, le=512, description="Images are resized to image_size x image_size RGB.")
    train_classes: float = Field(0.5, gt=0, lt=1, description="Fraction of classes for training (100 of CUB's 200).")
    val_classes: float = Field(0.25, gt=0, lt=1, description="Fraction of classes for validation (50 of 200).")
    max_images_per_class: int = Field(0, ge=0, le=100_000, description="Read at most this many images per class (0: all).")


def make_cub_attributes(params: CubAttributesParams | dict | None = None, context: Any = None) -> Any:
    """Loads a CUB-format folder (the dataset factory).

    Args:
        params: A :class:`CubAttributesParams` (or a dict of its fields).
        context: A :class:`~metalab.api.DataContext`; its ``data_dir`` holds ``CUB_200_2011/`` when
            ``cub_path`` is empty (``None`` reads the settings).

    Returns:
        A :class:`~metalab.api.ClassificationDataset` with ``info["class_attributes"]``.

    Raises:
        FileNotFoundError: If the folder lacks ``classes.txt``, the attribute file or ``images/``.
    """
    from pathlib import Path

    from .cub import load_cub_attributes

    if not isinstance(params, CubAttributesParams):
        params = CubAttributesParams.model_validate(params or {})
    root = params.cub_path
    if not root:
        if context is None:
            from metalab.api.data import default_context

            context = default_context()
        root = str(Path(context.data_dir) / "CUB_200_2011")
    return load_cub_attributes(root, image_size=params.image_size, train_classes=params.train_classes,
                               val_classes=params.val_classes, max_images_per_class=params.max_images_per_class)


@hookimpl
def metalab_register_algorithms() -> list[AlgorithmSpec]:
    return [SPEC]


@hookimpl
def metalab_register_datasets() -> list[DatasetSpec]:
    return [
        DatasetSpec(
            id="metalab.glyphs",
            title="Glyphs with attributes (procedural)",
            description=(
                "Drawn shapes whose 384 classes are combinations of six attributes (shape, filled or hollow, number "
                "of strokes, thickness, orientation, size), with random jitter and noise; disjoint train/val/test "
                "classes and their attribute vectors for zero-shot learning. Nothing to download."
            ),
            params=GlyphsParams,
            factory=make_glyphs,
            kind="classification",
            paper="metalab's own procedural dataset (after the attribute-based classes of Lampert et al. 2009)",
            default_backbone="metalab.conv4",
            episode_defaults={"ways": 5, "shots": 1, "queries": 15},
            algorithm_defaults={SPEC.id: {"attribute_dim": GLYPH_ATTRIBUTES}},
        ),
        DatasetSpec(
            id="metalab.cub_attributes",
            title="CUB-format images with class attributes",
            description=(
                "Caltech-UCSD Birds-200-2011 (or any folder in its layout): images per class and each class's "
                "continuous attribute vector (312 attributes in CUB), for zero-shot learning. Not downloaded: "
                "put CUB_200_2011 under METALAB_DATA_DIR or set cub_path."
            ),
            params=CubAttributesParams,
            factory=make_cub_attributes,
            kind="classification",
            paper="Wah, Branson, Welinder, Perona and Belongie 2011, The Caltech-UCSD Birds-200-2011 Dataset",
            default_backbone="metalab.conv4",
            episode_defaults={"ways": 5, "shots": 1, "queries": 15},
            algorithm_defaults={SPEC.id: {"attribute_dim": CUB_ATTRIBUTES}},
        ),
    ]


@hookimpl
def metalab_report_panels(report_data: dict) -> list[ReportPanel]:
    """Image embeddings and attribute prototypes of a meta-test episode (zero-shot runs only)."""
    # Its datasets bring other algorithms' runs here too; only its own algorithm stores this.
    if not report_data.get(SPEC.id):
        return []
    from .panels import projection_panel

    return [projection_panel(report_data[SPEC.id])]
