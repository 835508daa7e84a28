"""Tests for the metalab.imagefolder dataset plugin, on folders and zips of drawn shapes made here."""

from __future__ import annotations

import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageDraw

import metalab.plugins.imagefolder as imagefolder
from metalab.core.data.images import decode_image
from metalab.core.contract.specs import DataContext
from metalab.core.contract.manager import make_plugin_manager
from metalab.core.settings import load_settings
from metalab.core.engine.sampling import EpisodeSampler

SHAPES = ("circle", "square", "triangle", "cross", "hline", "vline")


def draw(shape: str, rng: np.random.Generator, size=(40, 30)) -> Image.Image:
    image = Image.new("RGB", size, "white")
    pen = ImageDraw.Draw(image)
    x, y = (int(v) for v in rng.integers(4, 12, 2))
    r = int(rng.integers(10, 16))
    colour = tuple(int(c) for c in rng.integers(0, 120, 3))
    if shape == "circle":
        pen.ellipse([x, y, x + r, y + r], outline=colour, width=2)
    elif shape == "square":
        pen.rectangle([x, y, x + r, y + r], outline=colour, width=2)
    elif shape == "triangle":
        pen.polygon([(x, y + r), (x + r, y + r), (x + r // 2, y)], outline=colour)
    elif shape == "cross":
        pen.line([x, y, x + r, y + r], fill=colour, width=2)
        pen.line([x + r, y, x, y + r], fill=colour, width=2)
    elif shape == "hline":
        pen.line([x, y + r // 2, x + r, y + r // 2], fill=colour, width=3)
    else:
        pen.line([x + r // 2, y, x + r // 2, y + r], fill=colour, width=3)
    return image


def make_folder(root: Path, per_class: int = 5, shapes=SHAPES, seed: int = 0) -> Path:
    rng = np.random.default_rng(seed)
    for shape in shapes:
        (root / shape).mkdir(parents=True)
        for i in range(per_class):
            fmt = ("png", "jpg", "bmp")[i % 3]
            draw(shape, rng).save(root / shape / f"{i}.{fmt}")
    return root


def context(tmp_path: Path) -> DataContext:
    return DataContext(data_dir=str(tmp_path / "data"), cache_dir=str(tmp_path / "cache"), allow_download=False)


def spec():
    (only,) = imagefolder.metalab_register_datasets()
    return only


def build(tmp_path: Path, **params):
    return imagefolder.make_imagefolder({"image_size": 16, **params}, context(tmp_path))


def test_spec_is_valid_and_registration_imports_nothing_heavy():
    s = spec()
    s.validate()
    assert s.id == "metalab.imagefolder" and s.kind == "classification" and imagefolder.METALAB_PLUGIN_API == "1.3"
    code = ("import sys, metalab.plugins.imagefolder as m; m.metalab_register_datasets(); "
            "print([x for x in ('tensorflow', 'keras', 'PIL') if x in sys.modules])")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"


def test_registers_through_the_plugin_manager():
    registry = make_plugin_manager(distributions={"metalab"}, settings=load_settings(disable_plugins=""), strict=False)
    if "metalab.imagefolder" not in registry.datasets:  # until pyproject declares the entry point
        registry = make_plugin_manager(distributions={"metalab"}, plugins=[("metalab", imagefolder)],
                                       settings=load_settings(disable_plugins=""), strict=False)
    assert registry.dataset("metalab.imagefolder").factory is imagefolder.make_imagefolder


def test_folder_becomes_disjoint_splits_of_resized_images(tmp_path):
    make_folder(tmp_path / "shapes")
    ds = build(tmp_path, path=str(tmp_path / "shapes"), channels=1, train_fraction=0.34, val_fraction=0.33)
    names = {split: set(s.class_names) for split, s in ds.splits.items()}
    assert [len(names[s]) for s in ("train", "val", "test")] == [2, 2, 2]
    assert set().union(*names.values()) == set(SHAPES)
    assert names["train"].isdisjoint(names["val"]) and names["val"].isdisjoint(names["test"])
    train = ds.splits["train"]
    assert train.images.dtype == np.uint8 and train.images.shape == (10, 16, 16, 1)
    assert ds.input_shape == (16, 16, 1) and ds.scale == 255.0
    # Each stored image is the file decoded with the shared preprocessing.
    first_class = train.class_names[0]
    expected = decode_image(tmp_path / "shapes" / first_class / "0.png", size=16, channels=1)
    np.testing.assert_array_equal(train.images[train.labels == 0][0], expected)
    assert ds.info["invert"] is False and ds.info["fit"] == "stretch"
    assert ds.info["split_classes"]["train"] == train.class_names
    sampler = EpisodeSampler(ds, "train", ways=2, shots=2, queries=3, seed=0)
    assert sampler.sample().support_x.shape == (1, 4, 16, 16, 1)


def test_rgb_inverted_crop_and_seed_options(tmp_path):
    make_folder(tmp_path / "shapes")
    plain = build(tmp_path, path=str(tmp_path / "shapes"), channels=3, seed=0)
    inverted = build(tmp_path, path=str(tmp_path / "shapes"), channels=3, invert=True, seed=0)
    assert plain.input_shape == (16, 16, 3) and plain.splits["train"].images.shape[-1] == 3
    np.testing.assert_array_equal(inverted.splits["train"].images, 255 - plain.splits["train"].images)
    assert inverted.info["invert"] is True
    cropped = build(tmp_path, path=str(tmp_path / "shapes"), fit="crop")
    assert cropped.info["fit"] == "crop"
    assert not np.array_equal(cropped.splits["train"].images, plain.splits["train"].images)
    reseeded = build(tmp_path, path=str(tmp_path / "shapes"), seed=5)
    assert any(reseeded.splits[s].class_names != plain.splits[s].class_names for s in ("train", "val", "test"))


def test_unreadable_files_are_listed_and_other_files_ignored(tmp_path):
    root = make_folder(tmp_path / "shapes")
    (root / "circle" / "broken.png").write_bytes(b"not a png")
    (root / "circle" / "notes.txt").write_text("hello")
    (root / "README.md").write_text("top-level file")
    (root / "square" / ".DS_Store").write_bytes(b"\0\0")
    ds = build(tmp_path, path=str(root))
    assert ds.info["unreadable"] == [
        {"file": "circle/broken.png", "error": "not a readable image (Pillow does not recognise its format)"}
    ]
    assert sorted(ds.info["ignored"]) == ["README.md", "circle/notes.txt"]
    assert sum(len(s.labels) for s in ds.splits.values()) == 30


def test_zip_with_a_wrapping_folder_equals_the_folder(tmp_path):
    root = make_folder(tmp_path / "shapes")
    archive = tmp_path / "shapes.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        for file in sorted(root.rglob("*")):
            if file.is_file():
                zf.write(file, "my_shapes/" + file.relative_to(root).as_posix())
        zf.writestr("__MACOSX/my_shapes/circle/._0.png", b"resource fork")
    from_folder = build(tmp_path, path=str(root))
    from_zip = build(tmp_path, path=str(archive))
    for split in ("train", "val", "test"):
        assert from_zip.splits[split].class_names == from_folder.splits[split].class_names
        np.testing.assert_array_equal(from_zip.splits[split].images, from_folder.splits[split].images)
    assert from_zip.info["unreadable"] == []


def test_zip_slip_archive_is_refused(tmp_path):
    archive = tmp_path / "evil.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        zf.writestr("a/1.png", b"x")
        zf.writestr("../../escape.png", b"x")
    with pytest.raises(ValueError, match="outside the target folder"):
        build(tmp_path, path=str(archive))


def test_small_classes_are_named_or_dropped(tmp_path):
    root = make_folder(tmp_path / "shapes", per_class=4)
    for f in sorted((root / "hline").iterdir())[:3]:
        f.unlink()  # 1 image left
    for f in sorted((root / "vline").iterdir())[:2]:
        f.unlink()  # 2 images left, and one unreadable file
    (root / "vline" / "bad.png").write_bytes(b"junk")
    with pytest.raises(ValueError) as info:
        build(tmp_path, path=str(root), min_images_per_class=3)
    message = str(info.value)
    assert "hline (1)" in message and "vline (2)" in message and "circle" not in message
    assert "vline/bad.png" in message and "Received: min_images_per_class=3" in message
    ds = build(tmp_path, path=str(root), min_images_per_class=3, small_classes="drop", train_fraction=0.5,
               val_fraction=0.25)
    assert sorted(ds.info["dropped_classes"]) == ["hline", "vline"]
    assert sum(s.num_classes for s in ds.splits.values()) == 4


def test_too_few_classes_and_missing_sources_are_clear_errors(tmp_path):
    make_folder(tmp_path / "two", shapes=("circle", "square"))
    with pytest.raises(ValueError, match="at least 3 classes"):
        build(tmp_path, path=str(tmp_path / "two"))
    with pytest.raises(FileNotFoundError) as info:
        build(tmp_path, path="no_such_folder")
    assert "no_such_folder" in str(info.value) and "one sub-folder per class" in str(info.value)
    with pytest.raises(FileNotFoundError) as info:
        build(tmp_path)  # empty path: the default folder, absent here
    assert str(tmp_path / "data" / "imagefolder") in str(info.value)
    (tmp_path / "data" / "imagefolder").mkdir(parents=True)
    with pytest.raises(ValueError, match="no class folders"):
        build(tmp_path)


def test_default_folder_and_relative_paths_under_the_data_dir(tmp_path):
    make_folder(tmp_path / "data" / "imagefolder" / "set1")
    ds = build(tmp_path, path="set1")
    assert ds.info["source"] == str(tmp_path / "data" / "imagefolder" / "set1")


def test_decoded_arrays_are_cached_and_refreshed_when_files_change(tmp_path, monkeypatch):
    from metalab.plugins.imagefolder import loader

    root = make_folder(tmp_path / "shapes")
    first = build(tmp_path, path=str(root))
    assert list((tmp_path / "cache" / "imagefolder").glob("*.npz"))

    def refuse(*args, **kwargs):
        raise AssertionError("decoded again although cached")

    monkeypatch.setattr(loader, "decode_folder", refuse)
    second = build(tmp_path, path=str(root))
    np.testing.assert_array_equal(second.splits["train"].images, first.splits["train"].images)
    draw("circle", np.random.default_rng(9)).save(root / "circle" / "new.png")
    with pytest.raises(AssertionError, match="decoded again"):
        build(tmp_path, path=str(root))
