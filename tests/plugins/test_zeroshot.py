"""Zero-shot Prototypical Networks, the glyph dataset, the CUB-format loader and class attributes in TaskBatch.extras."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from metalab.core.authoring import testing
from metalab.core.engine.config import resolve_config
from metalab.core.contract.specs import TaskBatch
from metalab.core.engine.fixed_tasks import fixed_episodes
from metalab.core.engine.sampling import EpisodeSampler
from metalab.plugins import zeroshot
from metalab.plugins.zeroshot import cub, glyphs

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")


@pytest.fixture(scope="module")
def small_glyphs():
    return glyphs.make_glyphs_dataset(size=20, images_per_class=8, val_classes=20, test_classes=40, seed=1)


# -- the glyph dataset ---------------------------------------------------------------------------------


def test_glyph_classes_are_disjoint_attribute_combinations(small_glyphs):
    splits = small_glyphs.splits
    names = [set(splits[s].class_names) for s in ("train", "val", "test")]
    assert not (names[0] & names[1] or names[0] & names[2] or names[1] & names[2])
    assert sum(len(n) for n in names) == len(glyphs.all_combinations()) == zeroshot.GLYPH_CLASSES == 384
    assert len(glyphs.ATTRIBUTE_NAMES) == zeroshot.GLYPH_ATTRIBUTES
    for split in ("train", "val", "test"):
        table = small_glyphs.info["class_attributes"][split]
        assert table.shape == (splits[split].num_classes, zeroshot.GLYPH_ATTRIBUTES) and table.dtype == np.float32
        # Each row is one-hot per group and decodes to the class's own name.
        for row, name in zip(table, splits[split].class_names):
            on = [glyphs.ATTRIBUTE_NAMES[i] for i in np.flatnonzero(row)]
            assert len(on) == len(glyphs.ATTRIBUTES)
            values = dict(item.split("=") for item in on)
            assert name == f"{values['shape']}/{values['fill']}/strokes{values['strokes']}/{values['thickness']}/" \
                           f"rot{values['orientation']}/{values['size']}"
    # Zero-shot needs every attribute value of the test classes to occur among the training classes.
    assert np.all(small_glyphs.info["class_attributes"]["train"].sum(axis=0) > 0)


def test_glyphs_are_seeded_and_jittered(small_glyphs):
    again = glyphs.make_glyphs_dataset(size=20, images_per_class=8, val_classes=20, test_classes=40, seed=1)
    np.testing.assert_array_equal(again.splits["test"].images, small_glyphs.splits["test"].images)
    other = glyphs.make_glyphs_dataset(size=20, images_per_class=8, val_classes=20, test_classes=40, seed=2)
    assert other.splits["test"].class_names != small_glyphs.splits["test"].class_names
    first_class = small_glyphs.splits["train"].images[:8].astype(np.float32)
    assert np.abs(first_class[0] - first_class[1]).mean() > 1.0  # two images of a class differ
    assert small_glyphs.input_shape == (20, 20, 1)


def test_glyph_split_sizes_are_checked():
    with pytest.raises(ValueError, match="val_classes"):
        glyphs.make_glyphs_dataset(size=12, images_per_class=2, val_classes=200, test_classes=200)


# -- class attributes in the episodes ------------------------------------------------------------------


def test_sampler_hands_each_episode_its_class_attributes(small_glyphs):
    sampler = EpisodeSampler(small_glyphs, "test", ways=5, shots=1, queries=3, seed=0)
    batch = sampler.sample_batch(4)
    attributes = batch.extras["class_attributes"]
    assert attributes.shape == (4, 5, zeroshot.GLYPH_ATTRIBUTES) and attributes.dtype == np.float32
    np.testing.assert_array_equal(attributes, small_glyphs.info["class_attributes"]["test"][sampler.last_classes])
    fixed = fixed_episodes(small_glyphs, "val", 5, 1, 3, n=6, seed=3)
    np.testing.assert_array_equal(fixed.batch(2, 5).extras["class_attributes"],
                                  small_glyphs.info["class_attributes"]["val"][fixed.classes[2:5]])


def test_datasets_without_attributes_give_no_extras(builtin_registry):
    spec = builtin_registry.dataset("metalab.digits")
    digits = spec.factory(spec.params(), None)
    assert EpisodeSampler(digits, "train", 3, 1, 2, seed=0).sample_batch(2).extras is None


def test_malformed_attribute_tables_are_refused(small_glyphs):
    broken = type(small_glyphs)(splits=small_glyphs.splits, input_shape=small_glyphs.input_shape,
                                info={"class_attributes": {"test": np.zeros((3, 4))}})
    with pytest.raises(ValueError, match="one row per class"):
        EpisodeSampler(broken, "test", 5, 1, 1, seed=0).sample_batch(1)


# -- the algorithm ---------------------------------------------------------------------------------------


def _algorithm(**overrides):
    import keras

    from metalab.plugins.backbones.models import mlp
    from metalab.plugins.backbones import MLPParams
    from metalab.plugins.zeroshot.algorithm import ZeroShotProtoNet
    from metalab.core.contract.specs import TaskSpec

    keras.utils.set_random_seed(0)
    task = TaskSpec(kind="classification", input_shape=(20, 20, 1), output_dim=5, ways=5, shots=1, queries=3,
                    total_steps=10, make_backbone=lambda: mlp(MLPParams(hidden=[16]), (20, 20, 1)))
    return ZeroShotProtoNet(zeroshot.ZeroShotParams(**overrides), task)


def test_zero_shot_ignores_the_support_images(small_glyphs):
    algorithm = _algorithm()
    batch = EpisodeSampler(small_glyphs, "test", 5, 1, 3, seed=0).sample_batch(2)
    noisy = TaskBatch(np.random.default_rng(0).random(batch.support_x.shape, dtype=np.float32), batch.support_y,
                      batch.query_x, batch.query_y, batch.extras)
    a, b = algorithm.evaluate(batch), algorithm.evaluate(noisy)
    np.testing.assert_allclose(np.asarray(a["predictions"]), np.asarray(b["predictions"]), rtol=1e-6)
    assert np.asarray(a["predictions"]).shape == (2, 15, 5)
    # Without attributes the support images make the prototypes.
    plain = TaskBatch(*batch.as_tuple())
    noisy_plain = TaskBatch(*noisy.as_tuple())
    assert not np.allclose(np.asarray(algorithm.evaluate(plain)["predictions"]),
                           np.asarray(algorithm.evaluate(noisy_plain)["predictions"]))


def test_wrong_attribute_count_is_a_clear_error(small_glyphs):
    algorithm = _algorithm(attribute_dim=5)
    batch = EpisodeSampler(small_glyphs, "test", 5, 1, 3, seed=0).sample_batch(1)
    with pytest.raises(ValueError, match="attribute_dim to 17"):
        algorithm.evaluate(batch)


def test_zero_shot_recognises_unseen_glyph_classes(builtin_registry, tmp_path):
    from metalab.core.engine.checkpoints import checkpoint_path, load_checkpoint
    from metalab.core.engine.evaluation import fixed_batch
    from metalab.core.engine.session import build_session
    from metalab.core.store import RunStore

    raw = {
        "dataset": "metalab.glyphs", "dataset_params": {"size": 20, "images_per_class": 10},
        "algorithm": "metalab.zeroshot", "algorithm_params": {"meta_batch_size": 4},
        "backbone": "metalab.mlp", "backbone_params": {"hidden": [64, 64]},
        "ways": 5, "shots": 1, "queries": 5, "steps": 120, "seed": 0, "val_every": 120, "val_episodes": 10,
        "test_episodes": 60, "checkpoint_every": 120, "log_every": 10,
    }
    config = resolve_config(builtin_registry, raw)
    assert config.algorithm_params["attribute_dim"] == zeroshot.GLYPH_ATTRIBUTES  # the dataset's default
    result = testing.run_tiny(builtin_registry, config, tmp_path)
    chance = 1 / 5
    assert result.before["accuracy"] < chance + 0.1
    assert result.after["accuracy"] > chance + 0.35, result.after  # measured 0.87 on unseen test classes

    # The classes' attributes, not the images alone, carry it: give each label another class's attributes.
    session = build_session(builtin_registry, config)
    store = RunStore(tmp_path / "runs.sqlite")
    load_checkpoint(checkpoint_path(store, result.run_id), session.algorithm)
    batch = fixed_batch(session, "test", 40)
    shifted = TaskBatch(*batch.as_tuple(), extras={"class_attributes": np.roll(batch.extras["class_attributes"], 1, axis=1)})
    right = float(np.mean(np.asarray(session.algorithm.evaluate(batch)["accuracy"])))
    wrong = float(np.mean(np.asarray(session.algorithm.evaluate(shifted)["accuracy"])))
    assert right > chance + 0.35 and wrong < chance, (right, wrong)

    # The report: the worker stored a projection of a zero-shot test episode, and the plugin draws it.
    data = json.loads((store.run_dir(result.run_id) / "report_data.json").read_text())["metalab.zeroshot"]
    assert data["mode"] == "zero-shot" and len(data["prototype_points"]) == 5 and len(data["query_points"]) == 25
    assert len(data["class_attributes"]) == 5
    panels = zeroshot.metalab_report_panels(report_data={"metalab.zeroshot": data})
    assert len(panels) == 1
    panels[0].validate()
    assert "attribute" in panels[0].markdown and len(panels[0].figure["data"]) == 10
    # A protonet run on the zero-shot datasets reaches the hook (they are the plugin's) and gets no panel.
    assert zeroshot.metalab_report_panels(report_data={"metalab.protonet": {}}) == []


# -- the CUB-format loader -------------------------------------------------------------------------------


def _write_cub(root: Path, classes: int = 6, images: int = 3, attributes: int = 5) -> np.ndarray:
    from PIL import Image

    rng = np.random.default_rng(0)
    names = [f"{i + 1:03d}.Bird_{i}" for i in range(classes)]
    (root / "attributes").mkdir(parents=True)
    (root / "classes.txt").write_text("".join(f"{i + 1} {n}\n" for i, n in enumerate(names)))
    values = rng.uniform(0, 100, size=(classes, attributes)).round(2)
    np.savetxt(root / "attributes" / "class_attribute_labels_continuous.txt", values, fmt="%.2f")
    (root / "attributes" / "attributes.txt").write_text("".join(f"{j + 1} has_part::{j}\n" for j in range(attributes)))
    for c, name in enumerate(names):
        folder = root / "images" / name
        folder.mkdir(parents=True)
        for i in range(images):
            pixels = np.full((10, 14, 3), 20 * c + i, dtype=np.uint8)
            Image.fromarray(pixels).save(folder / f"{name}_{i}.jpg" if i % 2 else folder / f"{name}_{i}.png")
    return values


def test_cub_format_loader_reads_attributes_and_images(tmp_path):
    values = _write_cub(tmp_path / "CUB_200_2011")
    dataset = zeroshot.make_cub_attributes({"cub_path": str(tmp_path / "CUB_200_2011"), "image_size": 8}, None)
    assert dataset.input_shape == (8, 8, 3)
    sizes = {s: dataset.splits[s].num_classes for s in ("train", "val", "test")}
    assert sizes == {"train": 3, "val": 2, "test": 1}
    assert dataset.splits["train"].class_names == ["001.Bird_0", "002.Bird_1", "003.Bird_2"]
    np.testing.assert_allclose(dataset.info["class_attributes"]["val"], values[3:5] / 100, rtol=1e-5)
    assert dataset.info["attribute_names"][0] == "has_part::0"
    train = dataset.splits["train"]
    assert train.images.shape == (9, 8, 8, 3) and list(np.bincount(train.labels)) == [3, 3, 3]
    # Pixels follow the class (the files are flat colours 20*c + i).
    assert abs(int(train.images[train.labels == 2].mean()) - 41) <= 2
    batch = EpisodeSampler(dataset, "train", 3, 1, 2, seed=0).sample_batch(2)
    assert batch.extras["class_attributes"].shape == (2, 3, 5)


def test_cub_loader_uses_the_data_dir_and_names_missing_files(tmp_path):
    from metalab.core.contract.specs import DataContext

    context = DataContext(data_dir=str(tmp_path), cache_dir=str(tmp_path / ".cache"), allow_download=False)
    with pytest.raises(FileNotFoundError, match="class_attribute_labels_continuous.txt"):
        zeroshot.make_cub_attributes({}, context)
    _write_cub(tmp_path / "CUB_200_2011", classes=4)
    assert zeroshot.make_cub_attributes({"image_size": 8}, context).splits["test"].num_classes == 1


def test_cub_loader_refuses_mismatched_files(tmp_path):
    _write_cub(tmp_path, classes=4)
    (tmp_path / "classes.txt").write_text("1 001.Bird_0\n2 002.Bird_1\n3 003.Bird_2\n")
    with pytest.raises(ValueError, match="one row per class"):
        cub.load_cub_attributes(tmp_path, image_size=8)
