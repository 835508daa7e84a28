"""Tests for metalab.tfds: a tiny TFDS dataset prepared here, read offline; clear errors without the package."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

import metalab.plugins.tfds as tfds_plugin
from metalab.core.contract.specs import DataContext
from metalab.core.contract.manager import make_plugin_manager
from metalab.core.settings import load_settings

NUM_CLASSES = 6


def ctx(tmp_path: Path) -> DataContext:
    return DataContext(data_dir=str(tmp_path / "data"), cache_dir=str(tmp_path / "cache"), allow_download=False)


def test_spec_is_valid_and_registered_without_tfds_imported():
    (spec,) = tfds_plugin.metalab_register_datasets()
    spec.validate()
    assert spec.id == "metalab.tfds" and tfds_plugin.METALAB_PLUGIN_API == "1.3"
    registry = make_plugin_manager(distributions={"metalab"}, settings=load_settings(disable_plugins=""), strict=False)
    if "metalab.tfds" not in registry.datasets:
        registry = make_plugin_manager(distributions={"metalab"}, plugins=[("metalab", tfds_plugin)],
                                       settings=load_settings(disable_plugins=""), strict=False)
    assert "metalab.tfds" in registry.datasets


def test_missing_package_names_the_pip_command(tmp_path, monkeypatch):
    prepared = tmp_path / "data" / "tfds" / "tiny" / "1.0.0"
    prepared.mkdir(parents=True)
    (prepared / "dataset_info.json").write_text("{}")
    monkeypatch.setitem(sys.modules, "tensorflow_datasets", None)  # makes the import fail
    with pytest.raises(ImportError, match="pip install tensorflow-datasets"):
        tfds_plugin.make_tfds({"name": "tiny"}, ctx(tmp_path))


def test_unprepared_dataset_fails_at_once_saying_where(tmp_path):
    with pytest.raises(FileNotFoundError) as info:
        tfds_plugin.make_tfds({"name": "mnist"}, ctx(tmp_path))
    message = str(info.value)
    assert str(tmp_path / "data" / "tfds" / "mnist") in message and "never downloads" in message
    with pytest.raises(ValueError, match="needs the TFDS dataset name"):
        tfds_plugin.make_tfds({}, ctx(tmp_path))


@pytest.mark.parametrize("name", ["../../etc", "/etc/passwd", "mnist/../../x", "a/b/c", "mnist:../1.0.0"])
def test_a_name_cannot_leave_the_data_folder(tmp_path, name):
    # The name becomes folders under the TFDS data folder, so it must stay a plain TFDS name.
    with pytest.raises(ValueError, match="must be a TFDS dataset name") as info:
        tfds_plugin.make_tfds({"name": name}, ctx(tmp_path))
    assert f"Received: name={name!r}" in str(info.value)
    for good in ("mnist", "cifar100:3.0.2", "my_set/config:1.0.0", "wmt14_translate/de-en"):
        assert tfds_plugin.TFDSParams(name=good).name == good


@pytest.fixture(scope="module")
def prepared(tmp_path_factory) -> Path:
    """A tiny image classification dataset prepared by TFDS itself (no network: examples are generated)."""
    tfds = pytest.importorskip("tensorflow_datasets", reason="tensorflow-datasets is not installed")
    data_dir = tmp_path_factory.mktemp("tfds_data")

    class TinyShapes(tfds.core.GeneratorBasedBuilder):
        VERSION = tfds.core.Version("1.0.0")

        def _info(self):
            return tfds.core.DatasetInfo(
                builder=self,
                features=tfds.features.FeaturesDict({
                    "image": tfds.features.Image(shape=(12, 12, 1)),
                    "label": tfds.features.ClassLabel(names=[f"shape{i}" for i in range(NUM_CLASSES)]),
                }),
            )

        def _split_generators(self, dl_manager):
            return {"train": self._generate_examples(0, 4), "test": self._generate_examples(1, 2)}

        def _generate_examples(self, seed, per_class):
            rng = np.random.default_rng(seed)
            for c in range(NUM_CLASSES):
                for i in range(per_class):
                    image = rng.integers(0, 256, (12, 12, 1), dtype=np.uint8)
                    image[0, 0, 0] = c  # the label, to check the mapping
                    yield f"{seed}-{c}-{i}", {"image": image, "label": c}

    builder = TinyShapes(data_dir=str(data_dir))
    builder.download_and_prepare(download_config=tfds.download.DownloadConfig(try_download_gcs=False))
    return data_dir


def test_prepared_dataset_becomes_a_few_shot_dataset(tmp_path, prepared):
    params = {"name": "tiny_shapes", "data_dir": str(prepared)}  # 0.6 / 0.2 / 0.2 of 6 classes
    ds = tfds_plugin.make_tfds(params, ctx(tmp_path))
    assert [ds.splits[s].num_classes for s in ("train", "val", "test")] == [4, 1, 1]
    assert ds.input_shape == (12, 12, 1)
    for split in ds.splits.values():
        assert len(split.labels) == 6 * split.num_classes  # train and test pooled
        for image, label in zip(split.images, split.labels):
            assert split.class_names[label] == f"shape{image[0, 0, 0]}"
    assert ds.info["version"] == "1.0.0" and sorted(ds.info["tfds_splits"]) == ["test", "train"]


def test_options_resize_convert_and_choose_splits(tmp_path, prepared):
    ds = tfds_plugin.make_tfds({"name": "tiny_shapes:1.0.0", "data_dir": str(prepared), "splits": "test",
                                "image_size": 8, "channels": 3}, ctx(tmp_path))
    assert ds.input_shape == (8, 8, 3)
    assert sum(len(s.labels) for s in ds.splits.values()) == 2 * NUM_CLASSES
    with pytest.raises(ValueError, match="has no feature 'img'"):
        tfds_plugin.make_tfds({"name": "tiny_shapes", "data_dir": str(prepared), "image_key": "img"}, ctx(tmp_path))
