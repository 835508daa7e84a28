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
from metalab.core.contract.specs import DataContext
from metalab.core.contract.manager import make_plugin_manager
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


# -- supervised mode: every class in every split, the official test images as test --------------------------


def write_sized_npz(path: Path, classes: int, train_per_class: int, test_per_class: int, first_label: int = 0) -> dict:
    path.parent.mkdir(parents=True, exist_ok=True)
    x_train, y_train = fake_split(classes, train_per_class, first_label, seed=0)
    x_test, y_test = fake_split(classes, test_per_class, first_label, seed=1)
    arrays = {"x_train": x_train, "y_train": y_train, "x_test": x_test, "y_test": y_test}
    np.savez(path, **arrays)
    return arrays


def test_supervised_mode_keeps_every_class_and_the_official_test_set(tmp_path, keras_home):
    official = write_sized_npz(keras_home / "datasets" / "mnist.npz", 10, train_per_class=20, test_per_class=4)
    ds = family.make_mnist({"mode": "supervised", "val_fraction": 0.25}, ctx(tmp_path))
    assert ds.supervised is True and ds.info["mode"] == "supervised"
    names = [f"digit_{d}" for d in range(10)]
    for split in ds.splits.values():
        assert split.class_names == names and split.images.shape[1:] == (28, 28, 1)
        # Each image carries its label in pixel (0, 0): labels follow the images.
        np.testing.assert_array_equal(split.images[:, 0, 0, 0], split.labels)
    # Test is exactly the official test set, in order.
    np.testing.assert_array_equal(ds.splits["test"].images[..., 0], official["x_test"])
    np.testing.assert_array_equal(ds.splits["test"].labels, official["y_test"])
    # Train and val divide the official train images: a stratified quarter of each class is val.
    assert np.bincount(ds.splits["val"].labels).tolist() == [5] * 10
    assert np.bincount(ds.splits["train"].labels).tolist() == [15] * 10
    pooled = np.concatenate([ds.splits["train"].images, ds.splits["val"].images])[..., 0]
    key = lambda a: sorted(map(bytes, a))  # noqa: E731 - order-free comparison of image sets
    assert key(pooled) == key(official["x_train"])
    assert ds.info["images"] == {"train": 150, "val": 50, "test": 40}
    assert ds.info["official_test_images"] == 40 and ds.info["split_classes"]["test"] == names
    # The seed picks the val images; the same seed, the same ones.
    again = family.make_mnist({"mode": "supervised", "val_fraction": 0.25}, ctx(tmp_path))
    other = family.make_mnist({"mode": "supervised", "val_fraction": 0.25, "seed": 1}, ctx(tmp_path))
    np.testing.assert_array_equal(again.splits["val"].images, ds.splits["val"].images)
    assert not np.array_equal(other.splits["val"].images, ds.splits["val"].images)
    # Few-shot mode is unchanged and says so.
    assert family.make_mnist({}, ctx(tmp_path)).supervised is False


def test_supervised_emnist_letters_has_all_26_letters_labelled_from_zero(tmp_path):
    official = write_sized_npz(tmp_path / "data" / "emnist" / "emnist-letters.npz", 26, 4, 2, first_label=1)
    ds = family.make_emnist_letters({"mode": "supervised", "val_fraction": 0.25}, ctx(tmp_path))
    letters = [chr(ord("A") + i) for i in range(26)]
    assert all(split.class_names == letters for split in ds.splits.values())
    np.testing.assert_array_equal(ds.splits["test"].labels, official["y_test"].astype(int) - 1)
    assert ds.splits["test"].num_classes == 26 and len(ds.splits["val"].labels) == 26


def test_few_shot_episodes_still_run_on_a_supervised_dataset(tmp_path, keras_home):
    from metalab.core.engine.fixed_tasks import fixed_episodes
    from metalab.core.engine.sampling import EpisodeSampler

    write_sized_npz(keras_home / "datasets" / "mnist.npz", 10, train_per_class=20, test_per_class=8)
    ds = family.make_mnist({"mode": "supervised", "val_fraction": 0.25}, ctx(tmp_path))
    batch = fixed_episodes(ds, "test", 5, 2, 3, n=4, seed=0).batch()
    assert batch.support_x.shape == (4, 10, 28, 28, 1) and batch.query_y.shape == (4, 15)
    EpisodeSampler(ds, "val", 10, 2, 3, seed=0).sample_batch(2)


def test_mlp_classifier_run_on_supervised_mnist_reports_official_test_accuracy(builtin_registry, tmp_path):
    import json

    from metalab.core.authoring import testing
    from metalab.core.engine.config import resolve_config
    from metalab.core.store import RunStore

    npz = tmp_path / "mine" / "mnist.npz"
    write_sized_npz(npz, 10, train_per_class=20, test_per_class=6)
    config = resolve_config(builtin_registry, {
        "dataset": "metalab.mnist", "algorithm": "metalab.mlp_classifier", "steps": 4, "val_every": 4,
        "val_episodes": 2, "test_episodes": 4, "ways": 5, "shots": 2, "queries": 3,
        "dataset_params": {"mode": "supervised", "val_fraction": 0.25, "path": str(npz)},
        "algorithm_params": {"hidden": [8], "batch_size": 16},
    })
    result = testing.run_tiny(builtin_registry, config, tmp_path, evaluate_before=False)
    assert result.after["episodes"] == 4  # the few-shot evaluation ran on the test split's classes
    store = RunStore(tmp_path / "runs.sqlite")
    data = json.loads((store.run_dir(result.run_id) / "report_data.json").read_text())["metalab.mlp_classifier"]
    assert "holdout" not in data  # the dataset's own val split is the held-out share
    test = data["test"]
    assert (test["images"], test["classes"], test["test_classes"]) == (60, 10, 10)
    assert len(test["per_class"]) == 10 and test["chance"] == 0.1


# -- EMNIST's MATLAB release ------------------------------------------------------------------------------------


def write_emnist_mat(path: Path, classes: int = 26) -> None:
    """NIST's layout: struct ``dataset`` with train/test images (N x 784, each row column-major) and labels."""
    from scipy.io import savemat

    def part(seed: int, per_class: int) -> dict:
        images, labels = fake_split(classes, per_class, first_label=1, seed=seed)
        rows = images.transpose(0, 2, 1).reshape(len(images), 784)  # row-major of the transpose = column-major
        return {"images": rows, "labels": labels.reshape(-1, 1), "writers": np.zeros((len(labels), 1))}

    path.parent.mkdir(parents=True, exist_ok=True)
    mapping = np.stack([np.arange(1, 27), np.arange(65, 91), np.arange(97, 123)], axis=1)
    savemat(str(path), {"dataset": {"train": part(0, 3), "test": part(1, 2), "mapping": mapping}})


def test_emnist_letters_mat_is_read_upright_like_the_gzip_files(tmp_path):
    write_emnist_mat(tmp_path / "data" / "emnist" / "emnist-letters.mat")
    from_mat = family.make_emnist_letters({}, ctx(tmp_path))
    assert from_mat.info["format"] == "mat"
    check(from_mat, [chr(ord("A") + i) for i in range(26)], (16, 5, 5), first_label=1)
    write_idx_set(tmp_path / "gz", EMNIST_IDX, 26, first_label=1, transpose=True)
    from_gzip = family.make_emnist_letters({"path": str(tmp_path / "gz")}, ctx(tmp_path))
    for name in ("train", "val", "test"):
        np.testing.assert_array_equal(from_mat.splits[name].images, from_gzip.splits[name].images)
        np.testing.assert_array_equal(from_mat.splits[name].labels, from_gzip.splits[name].labels)


def test_emnist_letters_mat_at_a_path_in_supervised_mode(tmp_path):
    path = tmp_path / "mine" / "letters.mat"
    write_emnist_mat(path)
    ds = family.make_emnist_letters({"path": str(path), "mode": "supervised", "val_fraction": 0.34}, ctx(tmp_path))
    assert ds.info["sources"] == str(path) and ds.info["official_test_images"] == 52
    assert len(ds.splits["test"].labels) == 52 and len(ds.splits["val"].labels) == 26
    assert (ds.splits["test"].images[:, 0, 1, 0] == 200).all() and (ds.splits["test"].images[:, 1, 0, 0] == 50).all()


def test_a_mat_file_of_another_layout_is_a_clear_error(tmp_path):
    from scipy.io import savemat

    path = tmp_path / "data" / "emnist" / "emnist-letters.mat"
    path.parent.mkdir(parents=True)
    savemat(str(path), {"images": np.zeros((2, 784), dtype=np.uint8)})
    with pytest.raises(ValueError, match="struct 'dataset' with 'train' and 'test'"):
        family.make_emnist_letters({}, ctx(tmp_path))
    path.write_bytes(b"not a MATLAB file at all")
    with pytest.raises(ValueError, match="emnist-letters.mat"):
        family.make_emnist_letters({}, ctx(tmp_path))


def test_missing_emnist_error_names_the_mat_file_in_either_mode(tmp_path):
    for mode in ("few_shot", "supervised"):
        with pytest.raises(FileNotFoundError, match=r"emnist-letters\.mat .*emnist-letters-train-images"):
            family.make_emnist_letters({"mode": mode}, ctx(tmp_path))
    with pytest.raises(FileNotFoundError, match="mnist.npz"):
        family.make_mnist({"mode": "supervised"}, ctx(tmp_path))
