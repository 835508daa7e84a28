"""Tests for metalab.mini_imagenet and metalab.tiered_imagenet on tiny files in the community formats."""

from __future__ import annotations

import csv
import hashlib
import io
import pickle
import zipfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import metalab.plugins.imagenet_pickles as pickles
from metalab.core.contract.specs import DataContext
from metalab.core.contract.manager import make_plugin_manager
from metalab.core.settings import load_settings

CLASSES = {"train": ["n01", "n02", "n03", "n04"], "val": ["n05", "n06"], "test": ["n07", "n08", "n09"]}
PER_CLASS = 3
SIDE = 10  # the real files are 84x84; tiny images keep the tests fast


def ctx(tmp_path: Path, allow_download: bool = False) -> DataContext:
    return DataContext(data_dir=str(tmp_path / "data"), cache_dir=str(tmp_path / "cache"), allow_download=allow_download)


def class_image(name: str, i: int) -> np.ndarray:
    """An image whose grey level encodes its class and index: class n0K, image i -> value 20*K + i."""
    return np.full((SIDE, SIDE, 3), 20 * int(name[1:]) + i, dtype=np.uint8)


def write_mini_pickles(folder: Path) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for split, names in CLASSES.items():
        images, class_dict = [], {name: [] for name in names}
        # Classes interleaved, so that class_dict's indices matter.
        rows = [(name, i) for i in range(PER_CLASS) for name in names]
        for row, (name, i) in enumerate(rows):
            images.append(class_image(name, i))
            class_dict[name].append(row)
        data = {"image_data": np.stack(images), "class_dict": class_dict}
        (folder / f"mini-imagenet-cache-{split}.pkl").write_bytes(pickle.dumps(data, protocol=2))


def write_mini_csv(folder: Path) -> None:
    (folder / "images").mkdir(parents=True)
    for split, names in CLASSES.items():
        with open(folder / f"{split}.csv", "w", newline="") as f:
            writer = csv.writer(f)
            writer.writerow(["filename", "label"])
            for name in names:
                for i in range(PER_CLASS):
                    filename = f"{name}{i:08d}.jpg"
                    Image.fromarray(class_image(name, i)).save(folder / "images" / filename, quality=100)
                    writer.writerow([filename, name])


def check_mini(ds, size: int) -> None:
    for split, names in CLASSES.items():
        s = ds.splits[split]
        assert s.class_names == names
        assert len(s.labels) == PER_CLASS * len(names)
        for label, name in enumerate(names):
            levels = sorted(int(round(v)) for v in s.images[s.labels == label].mean(axis=(1, 2, 3)))
            assert levels == pytest.approx([20 * int(name[1:]) + i for i in range(PER_CLASS)], abs=2)
    assert ds.input_shape == (size, size, 3)


def test_specs_are_valid_and_registered():
    specs = pickles.metalab_register_datasets()
    assert [s.id for s in specs] == ["metalab.mini_imagenet", "metalab.tiered_imagenet"]
    for s in specs:
        s.validate()
    registry = make_plugin_manager(distributions={"metalab"}, settings=load_settings(disable_plugins=""), strict=False)
    if "metalab.mini_imagenet" not in registry.datasets:
        registry = make_plugin_manager(distributions={"metalab"}, plugins=[("metalab", pickles)],
                                       settings=load_settings(disable_plugins=""), strict=False)
    assert {"metalab.mini_imagenet", "metalab.tiered_imagenet"} <= set(registry.datasets)


def test_mini_imagenet_from_pickles_in_a_sub_folder(tmp_path):
    write_mini_pickles(tmp_path / "data" / "mini_imagenet" / "miniImageNet")
    ds = pickles.make_mini_imagenet({"image_size": 12}, ctx(tmp_path))
    check_mini(ds, 12)
    assert ds.info["format"] == "pickle" and ds.info["standard_split"] is False


def test_mini_imagenet_from_images_and_split_csvs(tmp_path):
    write_mini_csv(tmp_path / "mini")
    ds = pickles.make_mini_imagenet({"path": str(tmp_path / "mini"), "image_size": SIDE}, ctx(tmp_path))
    check_mini(ds, SIDE)
    assert ds.info["format"] == "csv"


def test_mini_imagenet_csv_naming_a_missing_image_is_an_error(tmp_path):
    write_mini_csv(tmp_path / "mini")
    next((tmp_path / "mini" / "images").glob("n05*")).unlink()
    with pytest.raises(FileNotFoundError, match="missing"):
        pickles.make_mini_imagenet({"path": str(tmp_path / "mini")}, ctx(tmp_path))


def test_mini_imagenet_missing_files_are_named(tmp_path):
    with pytest.raises(FileNotFoundError) as info:
        pickles.make_mini_imagenet({}, ctx(tmp_path))
    message = str(info.value)
    for name in ("mini-imagenet-cache-train.pkl", "mini-imagenet-cache-test.pkl", "train.csv", "images/"):
        assert name in message
    assert str(tmp_path / "data" / "mini_imagenet") in message


def test_mini_imagenet_is_cached(tmp_path, monkeypatch):
    from metalab.plugins.imagenet_pickles import loader

    write_mini_pickles(tmp_path / "data" / "mini_imagenet")
    pickles.make_mini_imagenet({"image_size": 12}, ctx(tmp_path))
    monkeypatch.setattr(loader, "_decode_mini", lambda *a: (_ for _ in ()).throw(AssertionError("decoded again")))
    check_mini(pickles.make_mini_imagenet({"image_size": 12}, ctx(tmp_path)), 12)


def files_under(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*") if p.is_file()) if folder.exists() else []


def mini_zip(tmp_path: Path) -> bytes:
    staging = tmp_path / "staging"
    write_mini_pickles(staging)
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as zf:
        for f in sorted(staging.iterdir()):
            zf.write(f, "mini/" + f.name)
    return buffer.getvalue()


def test_mini_imagenet_downloads_a_zip_given_url_and_sha256(tmp_path, http_server):
    body = mini_zip(tmp_path)
    url = http_server.serve("/share/mini.zip", body)
    params = {"url": url, "sha256": hashlib.sha256(body).hexdigest(), "image_size": SIDE}
    with pytest.raises(FileNotFoundError, match="downloads are off"):
        pickles.make_mini_imagenet(params, ctx(tmp_path, allow_download=False))
    assert http_server.requests == []
    ds = pickles.make_mini_imagenet(params, ctx(tmp_path, allow_download=True))
    check_mini(ds, SIDE)
    downloads = tmp_path / "cache" / "downloads" / "mini_imagenet"
    assert (downloads / "mini.zip").is_file()
    assert ds.info["sources"]["train"] == str(downloads / "mini_unpacked" / "mini" / "mini-imagenet-cache-train.pkl")
    assert files_under(tmp_path / "data") == []  # nothing is written in the data folder
    # The next load, offline and even without the url, finds the download.
    again = pickles.make_mini_imagenet({"image_size": SIDE}, ctx(tmp_path, allow_download=False))
    assert again.info["sources"] == ds.info["sources"] and http_server.requests == ["/share/mini.zip"]


def test_a_download_never_lands_in_the_path_given(tmp_path, http_server):
    body = mini_zip(tmp_path)
    mine = tmp_path / "mine"
    mine.mkdir()
    params = {"path": str(mine), "url": http_server.serve("/mini.zip", body),
              "sha256": hashlib.sha256(body).hexdigest(), "image_size": SIDE}
    check_mini(pickles.make_mini_imagenet(params, ctx(tmp_path, allow_download=True)), SIDE)
    assert list(mine.iterdir()) == []
    assert (tmp_path / "cache" / "downloads" / "mini_imagenet" / "mini.zip").is_file()


def test_a_mismatching_download_names_no_digest_and_leaves_nothing(tmp_path, http_server):
    body = mini_zip(tmp_path)
    params = {"url": http_server.serve("/mini.zip", body), "sha256": "1" * 64}
    with pytest.raises(ValueError, match="does not match the pinned sha256") as info:
        pickles.make_mini_imagenet(params, ctx(tmp_path, allow_download=True))
    assert hashlib.sha256(body).hexdigest() not in str(info.value) and "1" * 64 not in str(info.value)
    assert files_under(tmp_path / "cache") == [] and files_under(tmp_path / "data") == []


@pytest.mark.parametrize("url", ["file:///etc/passwd", "ftp://127.0.0.1/mini.zip"])
def test_only_http_urls_are_downloaded(tmp_path, url):
    with pytest.raises(ValueError, match="Only https:// and http:// URLs") as info:
        pickles.make_tiered_imagenet({"url": url, "sha256": "a" * 64}, ctx(tmp_path, allow_download=True))
    assert "/etc/passwd" not in str(info.value)
    assert files_under(tmp_path) == []


def test_a_pickle_asking_for_code_is_refused(tmp_path):
    folder = tmp_path / "evil"
    write_mini_pickles(folder)

    class Evil:
        def __reduce__(self):
            import os

            return (os.system, ("echo pwned",))

    (folder / "mini-imagenet-cache-val.pkl").write_bytes(pickle.dumps({"image_data": Evil(), "class_dict": {}}))
    with pytest.raises(pickle.UnpicklingError, match="system"):
        pickles.make_mini_imagenet({"path": str(folder)}, ctx(tmp_path))


def write_tiered(folder: Path, fmt: str) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    categories = {"train": ["animal", "tool"], "val": ["plant"], "test": ["food", "vehicle"]}
    for split, names in CLASSES.items():
        rows = [(c, i) for i in range(PER_CLASS) for c in range(len(names))]
        images = [class_image(names[c], i) for c, i in rows]
        labels = {
            "label_specific": np.array([c for c, _ in rows]),
            "label_specific_str": names,
            "label_general": np.array([c % len(categories[split]) for c, _ in rows]),
            "label_general_str": categories[split],
        }
        (folder / f"{split}_labels.pkl").write_bytes(pickle.dumps(labels, protocol=2))
        if fmt == "png":
            encoded = []
            for image in images:
                buf = io.BytesIO()
                Image.fromarray(image).save(buf, format="PNG")
                encoded.append(np.frombuffer(buf.getvalue(), dtype=np.uint8))
            (folder / f"{split}_images_png.pkl").write_bytes(pickle.dumps(encoded, protocol=2))
        else:
            np.savez(folder / f"{split}_images.npz", images=np.stack(images))


@pytest.mark.parametrize("fmt", ["png", "npz"])
def test_tiered_imagenet_from_its_pickles(tmp_path, fmt):
    write_tiered(tmp_path / "data" / "tiered_imagenet" / "tiered-imagenet", fmt)
    ds = pickles.make_tiered_imagenet({"image_size": SIDE}, ctx(tmp_path))
    check_mini(ds, SIDE)
    assert ds.info["categories"] == {"train": 2, "val": 1, "test": 2}


def test_tiered_imagenet_missing_files_are_named(tmp_path):
    write_tiered(tmp_path / "t", "png")
    (tmp_path / "t" / "val_labels.pkl").unlink()
    with pytest.raises(FileNotFoundError) as info:
        pickles.make_tiered_imagenet({"path": str(tmp_path / "t")}, ctx(tmp_path))
    message = str(info.value)
    assert "val_images_png.pkl" in message and "val_labels.pkl" in message and str(tmp_path / "t") in message
