"""Tests for metalab.mnist, metalab.fashion_mnist and metalab.emnist_letters on tiny files in the Keras/IDX formats."""

from __future__ import annotations

import gzip
import struct
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import metalab.plugins.mnist_family as family
from metalab.core.plugin_api import DataContext
from metalab.core.plugin_manager import make_plugin_manager
from metalab.core.settings import load_settings
from metalab.plugins.mnist_family.loader import read_idx


def ctx(tmp_path: Path) -> DataContext:
    return DataContext(data_dir=str(tmp_path / "data"), cache_dir=str(tmp_path / "cache"), allow_download=False)


@pytest.fixture(autouse=True)
def keras_home(monkeypatch, tmp_path) -> Path:
    home = tmp_path / "keras_home"
    monkeypatch.setenv("KERAS_HOME", str(home))
    return home


def fake_split(num_classes: int, per_class: int, first_label: int = 0, seed: int = 0):
    """Images whose pixel (0, 0) holds the label and pixel (0, 1) a marker that shows orientation."""
    rng = np.random.default_rng(seed)
    labels = np.repeat(np.arange(num_classes), per_class) + first_label
    images = rng.integers(0, 256, (len(labels), 28, 28), dtype=np.uint8)
    images[:, 0, 0] = labels
    images[:, 0, 1] = 200
    images[:, 1, 0] = 50
    return images, labels.astype(np.uint8)


def write_idx(path: Path, array: np.ndarray, gz: bool = True) -> None:
    header = struct.pack(">HBB", 0, 0x08, array.ndim) + struct.pack(">" + "I" * array.ndim, *array.shape)
    data = header + np.ascontiguousarray(array, dtype=np.uint8).tobytes()
    path.parent.mkdir(parents=True, exist_ok=True)
    if gz:
        with gzip.open(path, "wb") as f:
            f.write(data)
    else:
        path.write_bytes(data)


def write_npz(path: Path, classes: int, first_label: int = 0) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    x_train, y_train = fake_split(classes, 3, first_label, seed=0)
    x_test, y_test = fake_split(classes, 2, first_label, seed=1)
    np.savez(path, x_train=x_train, y_train=y_train, x_test=x_test, y_test=y_test)


def write_idx_set(folder: Path, names: dict[str, str], classes: int, first_label: int = 0, transpose: bool = False,
                  gz: bool = True) -> None:
    x_train, y_train = fake_split(classes, 3, first_label, seed=0)
    x_test, y_test = fake_split(classes, 2, first_label, seed=1)
    for key, array in (("x_train", x_train), ("y_train", y_train), ("x_test", x_test), ("y_test", y_test)):
        if transpose and key.startswith("x"):
            array = array.transpose(0, 2, 1)
        write_idx(folder / (names[key] + (".gz" if gz else "")), array, gz)


MNIST_IDX = {"x_train": "train-images-idx3-ubyte", "y_train": "train-labels-idx1-ubyte",
             "x_test": "t10k-images-idx3-ubyte", "y_test": "t10k-labels-idx1-ubyte"}
EMNIST_IDX = {"x_train": "emnist-letters-train-images-idx3-ubyte", "y_train": "emnist-letters-train-labels-idx1-ubyte",
              "x_test": "emnist-letters-test-images-idx3-ubyte", "y_test": "emnist-letters-test-labels-idx1-ubyte"}


def check(ds, names_by_label: list[str], counts: tuple[int, int, int], first_label: int = 0) -> None:
    assert [ds.splits[s].num_classes for s in ("train", "val", "test")] == list(counts)
    seen = set()
    for split in ds.splits.values():
        assert split.images.shape[1:] == (28, 28, 1) and split.images.dtype == np.uint8
        # Upright: the marker at (0, 1) stays there (EMNIST's transposed files are turned back).
        assert (split.images[:, 0, 1, 0] == 200).all() and (split.images[:, 1, 0, 0] == 50).all()
        for image, label in zip(split.images, split.labels):
            assert names_by_label[int(image[0, 0, 0]) - first_label] == split.class_names[label]
        seen |= set(split.class_names)
    assert seen == set(names_by_label)
    assert ds.input_shape == (28, 28, 1) and ds.info["invert"] is False


def test_specs_are_valid_light_and_registered():
    specs = family.metalab_register_datasets()
    assert [s.id for s in specs] == ["metalab.mnist", "metalab.fashion_mnist", "metalab.emnist_letters"]
    for s in specs:
        s.validate()
    code = ("import sys, metalab.plugins.mnist_family as m; m.metalab_register_datasets(); "
            "print([x for x in ('tensorflow', 'keras', 'PIL') if x in sys.modules])")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.stdout.strip() == "[]", out.stderr
    registry = make_plugin_manager(distributions={"metalab"}, settings=load_settings(disable_plugins=""), strict=False)
    if "metalab.mnist" not in registry.datasets:
        registry = make_plugin_manager(distributions={"metalab"}, plugins=[("metalab", family)],
                                       settings=load_settings(disable_plugins=""), strict=False)
    assert {"metalab.mnist", "metalab.fashion_mnist", "metalab.emnist_letters"} <= set(registry.datasets)


def test_mnist_from_the_keras_cache_with_the_documented_split(tmp_path, keras_home):
    write_npz(keras_home / "datasets" / "mnist.npz", 10)
    ds = family.make_mnist({}, ctx(tmp_path))
    check(ds, [f"digit_{d}" for d in range(10)], (4, 3, 3))
    assert ds.info["split_classes"] == {"train": ["digit_2", "digit_4", "digit_6", "digit_7"],
                                        "val": ["digit_3", "digit_5", "digit_9"],
                                        "test": ["digit_0", "digit_1", "digit_8"]}
    assert sum(len(s.labels) for s in ds.splits.values()) == 50  # train and test pooled
    assert ds.info["format"] == "npz" and ds.info["official_train_images"] == 30


def test_mnist_idx_files_in_the_data_dir_take_precedence_and_params_change_the_split(tmp_path, keras_home):
    write_npz(keras_home / "datasets" / "mnist.npz", 10)
    write_idx_set(tmp_path / "data" / "mnist", MNIST_IDX, 10, gz=False)
    ds = family.make_mnist({"train_classes": 6, "val_classes": 2, "seed": 3}, ctx(tmp_path))
    assert ds.info["format"] == "idx"
    check(ds, [f"digit_{d}" for d in range(10)], (6, 2, 2))


def test_fashion_mnist_from_the_keras_cache_layout(tmp_path, keras_home):
    write_idx_set(keras_home / "datasets" / "fashion-mnist", MNIST_IDX, 10)
    ds = family.make_fashion_mnist({}, ctx(tmp_path))
    from metalab.plugins.mnist_family.loader import FASHION_CLASSES

    check(ds, list(FASHION_CLASSES), (4, 3, 3))
    assert ds.info["split_classes"]["test"] == ["T-shirt/top", "Trouser", "Bag"]


def test_emnist_letters_idx_files_are_turned_upright(tmp_path):
    write_idx_set(tmp_path / "data" / "emnist", EMNIST_IDX, 26, first_label=1, transpose=True)
    ds = family.make_emnist_letters({}, ctx(tmp_path))
    check(ds, [chr(ord("A") + i) for i in range(26)], (16, 5, 5), first_label=1)
    assert ds.info["split_classes"]["test"] == ["B", "J", "O", "P", "W"]


def test_emnist_letters_npz_at_a_path(tmp_path):
    write_npz(tmp_path / "mine" / "letters.npz", 26, first_label=1)
    ds = family.make_emnist_letters({"path": str(tmp_path / "mine" / "letters.npz")}, ctx(tmp_path))
    check(ds, [chr(ord("A") + i) for i in range(26)], (16, 5, 5), first_label=1)


@pytest.mark.parametrize("maker, names", [
    (family.make_mnist, ["mnist.npz", "train-images-idx3-ubyte.gz", "mnist/"]),
    (family.make_fashion_mnist, ["t10k-labels-idx1-ubyte.gz", "fashion_mnist/", "fashion-mnist"]),
    (family.make_emnist_letters, ["emnist-letters-train-images-idx3-ubyte.gz", "emnist-letters.npz", "emnist/"]),
])
def test_missing_files_fail_at_once_naming_files_and_places(tmp_path, maker, names):
    with pytest.raises(FileNotFoundError) as info:
        maker({}, ctx(tmp_path))
    message = str(info.value)
    for name in names:
        assert name in message
    assert "never downloads" in message


def test_bad_files_are_clear_errors(tmp_path):
    bad = tmp_path / "data" / "mnist"
    write_idx_set(bad, MNIST_IDX, 10)
    write_idx(bad / "train-labels-idx1-ubyte.gz", np.zeros((2, 2), dtype=np.uint8))
    with pytest.raises(ValueError, match="1 dimensions"):
        family.make_mnist({}, ctx(tmp_path))
    with pytest.raises(ValueError, match="leave at least one"):
        family.make_mnist({"train_classes": 8, "val_classes": 2}, ctx(tmp_path))


def test_read_idx_round_trip(tmp_path):
    array = np.arange(24, dtype=np.uint8).reshape(2, 3, 4)
    write_idx(tmp_path / "a.gz", array)
    np.testing.assert_array_equal(read_idx(tmp_path / "a.gz", 3), array)
