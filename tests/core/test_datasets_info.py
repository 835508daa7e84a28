"""Tests for metalab.core.data's images, archives, splits and summaries: image decoding, safe archives and pickles,
class splits, summaries."""

from __future__ import annotations

import io
import json
import pickle
import stat
import tarfile
import zipfile

import numpy as np
import pytest
from PIL import Image

from metalab.core.contract.specs import ClassificationDataset, ClassSplit
from metalab.core.data.archives import UnsafeArchiveError, ZipLimits, safe_extract_zip, safe_unpack, safe_unpickle
from metalab.core.data.files import keras_cache_dirs
from metalab.core.data.images import UnreadableImageError, decode_image, is_hidden, resize_array
from metalab.core.data.splits import assign_classes, make_class_splits, split_class_counts
from metalab.core.data.summaries import episode_problems, summarize_dataset


def png_bytes(image: Image.Image, fmt: str = "PNG", **kwargs) -> bytes:
    buf = io.BytesIO()
    image.save(buf, format=fmt, **kwargs)
    return buf.getvalue()


# -- images ------------------------------------------------------------------------------------------------


def test_decode_image_converts_resizes_and_inverts():
    image = Image.new("RGB", (40, 20), (255, 0, 0))
    rgb = decode_image(png_bytes(image), size=8, channels=3)
    assert rgb.dtype == np.uint8 and rgb.shape == (8, 8, 3)
    assert tuple(rgb[4, 4]) == (255, 0, 0)
    grey = decode_image(png_bytes(image), size=(6, 10), channels=1)
    assert grey.shape == (6, 10, 1)
    assert int(grey[3, 5, 0]) == 76  # Pillow's luma of pure red: 299/1000 * 255
    inverted = decode_image(png_bytes(image), size=(6, 10), channels=1, invert=True)
    np.testing.assert_array_equal(inverted, 255 - grey)


def test_decode_image_keeps_size_when_none_and_applies_exif_orientation():
    image = Image.new("L", (20, 10), 0)
    image.paste(255, (0, 0, 10, 10))  # left half white
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 clockwise to display"
    out = decode_image(png_bytes(image, "JPEG", exif=exif, quality=95), channels=1)
    assert out.shape == (20, 10, 1)  # turned upright: taller than wide
    assert out[:10].mean() > 200 and out[10:].mean() < 60  # the white half is now on top


def test_crop_keeps_proportions_and_stretch_does_not():
    image = Image.new("L", (30, 10), 0)
    image.paste(255, (10, 0, 20, 10))  # white centre square
    cropped = decode_image(png_bytes(image), size=10, channels=1, fit="crop")
    stretched = decode_image(png_bytes(image), size=10, channels=1, fit="stretch")
    assert cropped.min() > 240  # only the centre square is left
    assert stretched[:, 0].max() < 20 and stretched[:, 5].min() > 200


def test_transparency_reads_as_white_paper_and_16_bit_grey_is_scaled():
    rgba = Image.new("RGBA", (4, 4), (0, 0, 0, 0))
    rgba.putpixel((0, 0), (0, 0, 0, 255))
    out = decode_image(png_bytes(rgba), channels=1)
    assert out[0, 0, 0] == 0 and out[1, 1, 0] == 255
    deep = Image.fromarray(np.full((3, 3), 65535, dtype=np.uint16))
    assert decode_image(png_bytes(deep), channels=1).min() == 255


def test_unreadable_and_oversized_images_raise_a_clear_error(tmp_path):
    with pytest.raises(UnreadableImageError, match="not a readable image"):
        decode_image(b"definitely not an image")
    big = png_bytes(Image.new("L", (200, 200)))
    with pytest.raises(UnreadableImageError, match="more than the 1000 allowed"):
        decode_image(big, max_pixels=1000)
    path = tmp_path / "x.png"
    path.write_bytes(b"\x89PNG broken")
    with pytest.raises(UnreadableImageError, match="x.png"):
        decode_image(path)
    with pytest.raises(ValueError, match="channels"):
        decode_image(big, channels=2)


def test_resize_array_matches_decode_image():
    rng = np.random.default_rng(0)
    stack = rng.integers(0, 256, (2, 12, 12, 3), dtype=np.uint8)
    out = resize_array(stack, 6, channels=1)
    assert out.shape == (2, 6, 6, 1)
    expected = decode_image(png_bytes(Image.fromarray(stack[1])), size=6, channels=1)
    np.testing.assert_array_equal(out[1], expected)
    assert resize_array(stack, 12) is stack


def test_is_hidden():
    assert is_hidden("__MACOSX/cats/._1.png") and is_hidden("cats/.DS_Store") and is_hidden("a/Thumbs.db")
    assert not is_hidden("cats/1.png")


# -- zip archives -----------------------------------------------------------------------------------------


def make_zip(path, members: dict[str, bytes], compression=zipfile.ZIP_DEFLATED):
    with zipfile.ZipFile(path, "w", compression) as zf:
        for name, data in members.items():
            zf.writestr(name, data)
    return path


def test_safe_extract_zip_extracts_and_skips_hidden(tmp_path):
    archive = make_zip(tmp_path / "a.zip", {"cats/1.png": b"1", "dogs/2.png": b"22", "__MACOSX/cats/._1.png": b"x"})
    files = safe_extract_zip(archive, tmp_path / "out")
    assert sorted(p.relative_to(tmp_path / "out").as_posix() for p in files) == ["cats/1.png", "dogs/2.png"]
    assert (tmp_path / "out" / "dogs" / "2.png").read_bytes() == b"22"
    assert not (tmp_path / "out" / "__MACOSX").exists()
    # A file object (an upload) works as well.
    with open(archive, "rb") as f:
        assert len(safe_extract_zip(f, tmp_path / "out2")) == 2


@pytest.mark.parametrize("name", ["../evil.txt", "cats/../../evil.txt", "/etc/evil.txt", "C:/evil.txt", "..\\evil.txt"])
def test_zip_slip_is_refused_and_nothing_is_written(tmp_path, name):
    archive = make_zip(tmp_path / "slip.zip", {"ok/1.png": b"1", name: b"boom"})
    with pytest.raises(UnsafeArchiveError, match="Refusing"):
        safe_extract_zip(archive, tmp_path / "out" / "dest")
    assert not (tmp_path / "evil.txt").exists() and not (tmp_path / "out" / "evil.txt").exists()
    assert not (tmp_path / "out" / "dest").exists()
    assert list((tmp_path / "out").iterdir()) == []  # the temporary folder is gone too


def test_symlink_members_are_refused(tmp_path):
    archive = tmp_path / "link.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        info = zipfile.ZipInfo("cats/link.png")
        info.external_attr = (stat.S_IFLNK | 0o777) << 16
        zf.writestr(info, "/etc/passwd")
    with pytest.raises(UnsafeArchiveError, match="symbolic link"):
        safe_extract_zip(archive, tmp_path / "out")


def test_zip_bombs_and_caps_are_refused(tmp_path):
    bomb = make_zip(tmp_path / "bomb.zip", {"cats/zeros.png": b"\0" * (8 << 20)})
    with pytest.raises(UnsafeArchiveError, match="zip bomb"):
        safe_extract_zip(bomb, tmp_path / "out")
    small = make_zip(tmp_path / "small.zip", {f"c/{i}.png": b"x" * 100 for i in range(5)}, zipfile.ZIP_STORED)
    with pytest.raises(UnsafeArchiveError, match="more than 300 bytes"):
        safe_extract_zip(small, tmp_path / "o1", ZipLimits(max_total_bytes=300))
    with pytest.raises(UnsafeArchiveError, match="5 members"):
        safe_extract_zip(small, tmp_path / "o2", ZipLimits(max_files=4))
    with pytest.raises(UnsafeArchiveError, match="per file"):
        safe_extract_zip(small, tmp_path / "o3", ZipLimits(max_file_bytes=99))
    with pytest.raises(UnsafeArchiveError, match="bytes; at most 10"):
        safe_extract_zip(small, tmp_path / "o4", ZipLimits(max_archive_bytes=10))
    with pytest.raises(UnsafeArchiveError, match="Not a readable zip"):
        safe_extract_zip(io.BytesIO(b"not a zip"), tmp_path / "o5")
    assert not any((tmp_path / f"o{i}").exists() for i in range(1, 6))


def test_extracting_into_a_non_empty_folder_is_refused(tmp_path):
    archive = make_zip(tmp_path / "a.zip", {"c/1.png": b"1"})
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "keep.txt").write_text("mine")
    with pytest.raises(FileExistsError):
        safe_extract_zip(archive, tmp_path / "full")
    assert (tmp_path / "full" / "keep.txt").read_text() == "mine"


def test_safe_unpack_handles_tars_and_refuses_escapes(tmp_path):
    good = tmp_path / "good.tar.gz"
    with tarfile.open(good, "w:gz") as tar:
        data = b"hello"
        info = tarfile.TarInfo("pkg/a.pkl")
        info.size = len(data)
        tar.addfile(info, io.BytesIO(data))
    assert (safe_unpack(good, tmp_path / "g") / "pkg" / "a.pkl").read_bytes() == b"hello"
    bad = tmp_path / "bad.tar"
    with tarfile.open(bad, "w") as tar:
        info = tarfile.TarInfo("../escape.txt")
        info.size = 1
        tar.addfile(info, io.BytesIO(b"x"))
    with pytest.raises(UnsafeArchiveError, match="Refusing"):
        safe_unpack(bad, tmp_path / "b")
    assert not (tmp_path / "escape.txt").exists() and not (tmp_path / "b").exists()
    zipped = make_zip(tmp_path / "z.zip", {"x/y.pkl": b"1"})
    assert (safe_unpack(zipped, tmp_path / "z") / "x" / "y.pkl").exists()


# -- pickles ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("protocol", [2, pickle.HIGHEST_PROTOCOL])
def test_safe_unpickle_reads_dataset_pickles(tmp_path, protocol):
    data = {b"data": np.arange(12, dtype=np.uint8).reshape(3, 4), "names": ["a", b"b"], "n": 3.5, "t": (1, 2)}
    path = tmp_path / "d.pkl"
    path.write_bytes(pickle.dumps(data, protocol=protocol))
    loaded = safe_unpickle(path, encoding="bytes")
    np.testing.assert_array_equal(loaded[b"data"], data[b"data"])
    assert loaded["names"] == ["a", b"b"] and loaded["t"] == (1, 2)


class _Evil:
    def __reduce__(self):
        import os

        return (os.system, ("echo pwned",))


def test_safe_unpickle_refuses_code(tmp_path):
    with pytest.raises(pickle.UnpicklingError, match="system"):
        safe_unpickle(io.BytesIO(pickle.dumps(_Evil())))


# -- splits and summaries -----------------------------------------------------------------------------------


def test_split_class_counts_and_assignment():
    assert split_class_counts(10, 0.6, 0.2) == {"train": 6, "val": 2, "test": 2}
    assert split_class_counts(3, 0.6, 0.2) == {"train": 1, "val": 1, "test": 1}
    with pytest.raises(ValueError, match="at least 3 classes"):
        split_class_counts(2, 0.6, 0.2)
    with pytest.raises(ValueError, match="leave a share for test"):
        split_class_counts(10, 0.7, 0.3)
    groups = assign_classes(10, {"train": 6, "val": 2, "test": 2}, seed=1)
    assert sorted(np.concatenate(list(groups.values())).tolist()) == list(range(10))
    again = assign_classes(10, {"train": 6, "val": 2, "test": 2}, seed=1)
    assert all((groups[s] == again[s]).all() for s in groups)
    assert any((groups[s] != assign_classes(10, {"train": 6, "val": 2, "test": 2}, seed=2)[s]).any()
               for s in groups)


def test_make_class_splits_relabels_and_keeps_images():
    images = np.arange(12, dtype=np.uint8).reshape(12, 1)
    labels = np.array([0, 1, 2, 3] * 3)
    splits = make_class_splits(images, labels, ["a", "b", "c", "d"], {"train": [3, 1], "val": [0], "test": [2]})
    train = splits["train"]
    assert train.class_names == ["d", "b"]
    assert train.labels.tolist() == [0, 0, 0, 1, 1, 1]
    assert train.images[:, 0].tolist() == [3, 7, 11, 1, 5, 9]
    assert splits["val"].images[:, 0].tolist() == [0, 4, 8]


def tiny_dataset(scale: float = 255.0) -> ClassificationDataset:
    def split(names, per_class):
        labels = np.repeat(np.arange(len(names)), per_class)
        images = np.full((len(labels), 4, 4, 1), int(scale), dtype=np.uint8)
        return ClassSplit(images=images, labels=labels, class_names=names)

    return ClassificationDataset(
        splits={"train": split(["a", "b", "c"], 4), "val": split(["d", "e"], 2), "test": split(["f", "g"], 3)},
        input_shape=(4, 4, 1), scale=scale, info={"source": "tiny"},
    )


def test_summarize_dataset_counts_and_samples():
    summary = summarize_dataset(tiny_dataset(scale=16.0), sample_classes=2, samples_per_class=3)
    assert summary["total_classes"] == 7 and summary["total_images"] == 12 + 4 + 6
    assert summary["splits"]["train"] == {"classes": 3, "images": 12, "min_per_class": 4, "max_per_class": 4}
    assert summary["splits"]["val"]["images"] == 4
    train_samples = summary["samples"]["train"]
    assert len(train_samples) == 2 and all(len(s["images"]) == 3 for s in train_samples)
    image = train_samples[0]["images"][0]
    assert image.dtype == np.uint8 and image.shape == (4, 4, 1) and image.max() == 255  # 16/16 shown as white
    assert len(summary["samples"]["val"][0]["images"]) == 2  # a class shows what it has
    json.dumps({k: v for k, v in summary.items() if k != "samples"})


def test_summarize_regression_family_has_no_samples():
    from metalab.plugins.sinusoid import metalab_register_datasets

    (spec,) = metalab_register_datasets()
    summary = summarize_dataset(spec.factory(spec.params(), None))
    assert summary["kind"] == "regression" and summary["samples"] == {}


def test_episode_problems_names_every_small_class_and_split():
    problems = episode_problems(tiny_dataset(), ways=3, shots=2, queries=2)
    text = "\n".join(problems)
    assert "split 'val' has 2 classes but episodes need ways=3" in text
    assert "d (2)" in text and "e (2)" in text and "f (3)" in text and "g (3)" in text
    assert "split 'train'" not in text
    assert episode_problems(tiny_dataset(), ways=2, shots=1, queries=1) == []


def test_keras_cache_dirs_follow_keras_home(monkeypatch, tmp_path):
    monkeypatch.setenv("KERAS_HOME", str(tmp_path))
    assert keras_cache_dirs() == [tmp_path / "datasets"]
    monkeypatch.delenv("KERAS_HOME")
    assert keras_cache_dirs()[0].as_posix().endswith(".keras/datasets")
