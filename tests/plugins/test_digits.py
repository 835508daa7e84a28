"""Tests for the metalab.digits dataset plugin."""

from __future__ import annotations

import numpy as np
import pytest

import metalab.plugins.digits as digits_plugin
from metalab.core.contract.specs import ClassificationDataset
from metalab.core.engine.sampling import EpisodeSampler


def spec():
    (only,) = digits_plugin.metalab_register_datasets()
    return only


def test_spec_is_valid_and_light():
    s = spec()
    s.validate()
    assert s.id == "metalab.digits" and s.kind == "classification"
    assert s.default_backbone == "metalab.mlp"
    assert s.episode_defaults == {"ways": 3, "shots": 5, "queries": 10}
    assert digits_plugin.METALAB_PLUGIN_API == "1.4"  # presets and a tiny task: spec fields of 1.4


def test_default_split_is_disjoint_and_complete():
    ds = spec().factory(spec().params(), None)
    assert isinstance(ds, ClassificationDataset)
    names = {split: set(s.class_names) for split, s in ds.splits.items()}
    assert [len(names[s]) for s in ("train", "val", "test")] == [4, 3, 3]
    assert names["train"].isdisjoint(names["val"]) and names["train"].isdisjoint(names["test"])
    assert names["val"].isdisjoint(names["test"])
    assert set().union(*names.values()) == {f"digit_{d}" for d in range(10)}
    assert sum(len(s.labels) for s in ds.splits.values()) == 1797


def test_images_are_uint8_8x8_with_scale_16():
    ds = digits_plugin.make_digits({})
    train = ds.splits["train"]
    assert train.images.dtype == np.uint8 and train.images.shape[1:] == (8, 8, 1)
    assert train.images.max() == 16 and ds.scale == 16.0 and ds.input_shape == (8, 8, 1)
    floats = ds.to_float(train.images[:10])
    assert floats.dtype == np.float32 and 0.0 <= floats.min() and floats.max() <= 1.0


def test_labels_match_the_digit_of_each_image():
    from sklearn.datasets import load_digits

    bunch = load_digits()
    ds = digits_plugin.make_digits({"seed": 3})
    for split in ds.splits.values():
        for label, name in enumerate(split.class_names):
            digit = int(name.split("_")[1])
            mine = split.images[split.labels == label][..., 0].astype(np.float64)
            theirs = bunch.images[bunch.target == digit]
            np.testing.assert_array_equal(mine, theirs)


def test_seed_and_sizes_change_the_split():
    a = digits_plugin.make_digits({"seed": 0}).info["split_digits"]
    b = digits_plugin.make_digits({"seed": 1}).info["split_digits"]
    assert a != b
    c = digits_plugin.make_digits({"train_classes": 6, "val_classes": 2})
    assert [c.splits[s].num_classes for s in ("train", "val", "test")] == [6, 2, 2]


def test_params_leave_a_test_class():
    with pytest.raises(ValueError, match="Received: train_classes=6, val_classes=4"):
        digits_plugin.DigitsParams(train_classes=6, val_classes=4)


@pytest.mark.parametrize("split", ["train", "val", "test"])
def test_default_episodes_fit_every_split(split):
    ds = digits_plugin.make_digits({})
    e = spec().episode_defaults
    batch = EpisodeSampler(ds, split, e["ways"], e["shots"], e["queries"], seed=0).sample_batch(2)
    assert batch.support_x.shape == (2, 15, 8, 8, 1)


def test_supervised_mode_divides_images_stratified_and_seeded():
    from sklearn.datasets import load_digits

    bunch = load_digits()
    ds = digits_plugin.make_digits({"mode": "supervised"})
    assert ds.supervised is True and ds.info["mode"] == "supervised"
    names = [f"digit_{d}" for d in range(10)]
    assert all(split.class_names == names for split in ds.splits.values())
    per_digit = np.bincount(bunch.target)
    test = np.bincount(ds.splits["test"].labels, minlength=10)
    val = np.bincount(ds.splits["val"].labels, minlength=10)
    train = np.bincount(ds.splits["train"].labels, minlength=10)
    np.testing.assert_array_equal(test, np.round(0.25 * per_digit))  # stratified: a quarter of every digit
    np.testing.assert_array_equal(val, np.round(0.2 * (per_digit - test)))
    np.testing.assert_array_equal(train + val + test, per_digit)
    # Every image lands in exactly one split, with its own digit.
    seen = []
    for split in ds.splits.values():
        for label in range(10):
            seen += [(label, image.tobytes()) for image in split.images[split.labels == label]]
    expected = [(int(t), np.rint(img).astype(np.uint8)[..., None].tobytes()) for img, t in zip(bunch.images, bunch.target)]
    assert sorted(seen) == sorted(expected)
    same = digits_plugin.make_digits({"mode": "supervised"})
    other = digits_plugin.make_digits({"mode": "supervised", "seed": 1})
    np.testing.assert_array_equal(same.splits["test"].images, ds.splits["test"].images)
    assert not np.array_equal(other.splits["test"].images, ds.splits["test"].images)
    assert digits_plugin.make_digits({}).supervised is False


@pytest.mark.parametrize("split", ["train", "val", "test"])
def test_default_episodes_fit_every_split_in_supervised_mode(split):
    ds = digits_plugin.make_digits({"mode": "supervised"})
    e = spec().episode_defaults
    batch = EpisodeSampler(ds, split, e["ways"], e["shots"], e["queries"], seed=0).sample_batch(2)
    assert batch.support_x.shape == (2, 15, 8, 8, 1)


def test_supervised_fractions_are_checked():
    with pytest.raises(ValueError, match="test_fraction"):
        digits_plugin.DigitsParams(mode="supervised", test_fraction=1.0)
    with pytest.raises(ValueError, match="mode"):
        digits_plugin.DigitsParams(mode="tabular")
