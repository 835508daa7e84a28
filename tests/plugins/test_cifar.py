"""Tests for metalab.cifar_fs and metalab.fc100 on a fake CIFAR-100 archive with the real class structure."""

from __future__ import annotations

import hashlib
import io
import pickle
import shutil
import tarfile
from pathlib import Path

import numpy as np
import pytest

import metalab.plugins.cifar as cifar
from metalab.core.contract.specs import DataContext
from metalab.core.contract.manager import make_plugin_manager
from metalab.core.settings import load_settings
from metalab.plugins.cifar.splits import CIFAR_FS, FC100

PAIRS = [pair for pairs in CIFAR_FS.values() for pair in pairs]
FINE = sorted(fine for _, fine in PAIRS)  # CIFAR-100's meta lists names alphabetically
COARSE = sorted({coarse for coarse, _ in PAIRS})
PARENT = {fine: COARSE.index(coarse) for coarse, fine in PAIRS}


def fake_parts(per_class_train: int = 2, per_class_test: int = 1) -> dict[str, bytes]:
    """The three pickles, with pixel 0 (red) = fine label and pixel 1 (red) = row number within the part."""
    rng = np.random.default_rng(0)
    out = {}
    for part, per_class in (("train", per_class_train), ("test", per_class_test)):
        fine = np.repeat(np.arange(100), per_class)
        data = rng.integers(0, 256, (len(fine), 3072), dtype=np.uint8)
        data[:, 0] = fine
        data[:, 1] = np.arange(len(fine)) % 256
        coarse = [PARENT[FINE[f]] for f in fine]
        # Keys as bytes, as Python 3 reads the official Python 2 pickles with encoding="bytes".
        out[part] = pickle.dumps({b"data": data, b"fine_labels": fine.tolist(), b"coarse_labels": coarse,
                                  b"filenames": [b"x.png"] * len(fine)}, protocol=2)
    out["meta"] = pickle.dumps({"fine_label_names": FINE, "coarse_label_names": COARSE}, protocol=2)
    return out


def write_archive(path: Path, parts: dict[str, bytes] | None = None) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with tarfile.open(path, "w:gz") as tar:
        for name, data in (parts or fake_parts()).items():
            info = tarfile.TarInfo(f"cifar-100-python/{name}")
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return path


def ctx(tmp_path: Path, allow_download: bool = False) -> DataContext:
    return DataContext(data_dir=str(tmp_path / "data"), cache_dir=str(tmp_path / "cache"), allow_download=allow_download)


@pytest.fixture(autouse=True)
def no_keras_cache(monkeypatch, tmp_path):
    # A real ~/.keras cache on the machine must not satisfy the tests' lookups.
    monkeypatch.setenv("KERAS_HOME", str(tmp_path / "keras_home"))


@pytest.fixture
def archive(tmp_path) -> Path:
    return write_archive(tmp_path / "data" / "cifar100" / "cifar-100-python.tar.gz")


def test_specs_are_valid_and_registered():
    ids = [s.id for s in cifar.metalab_register_datasets()]
    assert ids == ["metalab.cifar_fs", "metalab.fc100"]
    for s in cifar.metalab_register_datasets():
        s.validate()
    registry = make_plugin_manager(distributions={"metalab"}, settings=load_settings(disable_plugins=""), strict=False)
    if "metalab.cifar_fs" not in registry.datasets:
        registry = make_plugin_manager(distributions={"metalab"}, plugins=[("metalab", cifar)],
                                       settings=load_settings(disable_plugins=""), strict=False)
    assert {"metalab.cifar_fs", "metalab.fc100"} <= set(registry.datasets)


def test_published_split_lists_cover_cifar100_once():
    assert [len(CIFAR_FS[s]) for s in ("train", "val", "test")] == [64, 16, 20]
    assert len(set(FINE)) == 100 and len(COARSE) == 20
    assert [len(FC100[s]) for s in ("train", "val", "test")] == [12, 4, 4]
    assert sorted(c for names in FC100.values() for c in names) == COARSE
    # Oreshkin et al.'s superclass indices.
    assert [COARSE.index(c) for c in FC100["val"]] == [8, 11, 13, 16]
    assert [COARSE.index(c) for c in FC100["test"]] == [0, 7, 12, 14]


def test_cifar_fs_uses_the_published_classes(tmp_path, archive):
    ds = cifar.make_cifar_fs({}, ctx(tmp_path))
    for split in ("train", "val", "test"):
        s = ds.splits[split]
        assert s.class_names == [fine for _, fine in CIFAR_FS[split]]
        assert len(s.labels) == 3 * s.num_classes  # 2 train + 1 test image per class, pooled
        # Pixel (0, 0) red holds the fine label: every image sits under its own class name.
        fine_of_image = s.images[:, 0, 0, 0]
        assert all(FINE[f] == s.class_names[label] for f, label in zip(fine_of_image, s.labels))
    assert ds.input_shape == (32, 32, 3) and ds.splits["train"].images.dtype == np.uint8
    assert ds.info["classes"] == {"train": 64, "val": 16, "test": 20} and ds.info["split"] == "bertinetto"


def test_pixels_are_laid_out_as_rgb_planes(tmp_path, archive):
    parts = fake_parts()
    train = pickle.loads(parts["train"], encoding="bytes")[b"data"]
    ds = cifar.make_cifar_fs({}, ctx(tmp_path))
    s = ds.splits["train"]
    image = s.images[0]
    row = int(image[0, 1, 0])  # pixel (0, 1) red = row number
    expected = train[row].reshape(3, 32, 32).transpose(1, 2, 0)
    np.testing.assert_array_equal(image, expected)


def test_fc100_splits_by_superclass(tmp_path, archive):
    ds = cifar.make_fc100({}, ctx(tmp_path))
    assert {s: ds.splits[s].num_classes for s in ("train", "val", "test")} == {"train": 60, "val": 20, "test": 20}
    for split, supers in FC100.items():
        parents = {COARSE[PARENT[name]] for name in ds.splits[split].class_names}
        assert parents == set(supers)
    assert ds.info["superclasses"]["test"] == list(FC100["test"])


def test_extracted_folder_keras_cache_and_resizing(tmp_path, monkeypatch):
    folder = tmp_path / "keras_home" / "datasets" / "cifar-100-python-target" / "cifar-100-python"
    folder.mkdir(parents=True)
    for name, data in fake_parts().items():
        (folder / name).write_bytes(data)
    ds = cifar.make_cifar_fs({"image_size": 16}, ctx(tmp_path))
    assert ds.info["source"] == str(folder)
    assert ds.input_shape == (16, 16, 3) and ds.splits["val"].images.shape[1:] == (16, 16, 3)
    # A path parameter pointing at the extracted folder's parent works too.
    ds2 = cifar.make_fc100({"path": str(folder.parent)}, ctx(tmp_path))
    assert ds2.info["source"] == str(folder)


def test_missing_archive_names_file_and_folder_without_network(tmp_path):
    with pytest.raises(FileNotFoundError) as info:
        cifar.make_cifar_fs({}, ctx(tmp_path))
    message = str(info.value)
    assert "cifar-100-python.tar.gz" in message and str(tmp_path / "data" / "cifar100") in message
    assert "downloads are off" in message and cifar.OFFICIAL_SHA256 in message
    with pytest.raises(FileNotFoundError, match="does not hold it"):
        cifar.make_cifar_fs({"path": str(tmp_path / "nowhere")}, ctx(tmp_path, allow_download=True))


def files_under(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*") if p.is_file()) if folder.exists() else []


def test_download_from_a_user_url_checks_sha256_and_lands_in_the_cache(tmp_path, http_server):
    body = write_archive(tmp_path / "mirror" / "c100.tar.gz").read_bytes()
    digest = hashlib.sha256(body).hexdigest()
    url = http_server.serve("/files/c100.tar.gz", body)
    with pytest.raises(ValueError, match="sha256"):
        cifar.make_cifar_fs({"url": url}, ctx(tmp_path, allow_download=True))
    with pytest.raises(ValueError, match="does not match the pinned sha256") as info:
        cifar.make_cifar_fs({"url": url, "sha256": "0" * 64}, ctx(tmp_path, allow_download=True))
    assert digest not in str(info.value)
    ds = cifar.make_cifar_fs({"url": url, "sha256": digest}, ctx(tmp_path, allow_download=True))
    assert files_under(tmp_path / "cache" / "downloads") == [tmp_path / "cache" / "downloads" / "cifar100" / "c100.tar.gz"]
    assert files_under(tmp_path / "data") == []  # nothing is written in the data folder
    assert ds.splits["test"].num_classes == 20
    # The next load finds the downloaded file, offline, without asking the server again.
    asked = len(http_server.requests)
    again = cifar.make_fc100({"url": url, "sha256": digest}, ctx(tmp_path, allow_download=False))
    assert again.info["source"] == str(tmp_path / "cache" / "downloads" / "cifar100" / "c100.tar.gz")
    assert len(http_server.requests) == asked


def test_the_official_download_lands_in_the_download_folder(tmp_path, http_server, monkeypatch):
    from metalab.plugins.cifar import loader

    body = write_archive(tmp_path / "mirror" / "official.tar.gz").read_bytes()
    monkeypatch.setattr(loader, "OFFICIAL_URL", http_server.serve("/~kriz/cifar-100-python.tar.gz", body))
    monkeypatch.setattr(loader, "OFFICIAL_SHA256", hashlib.sha256(body).hexdigest())
    ds = cifar.make_cifar_fs({}, ctx(tmp_path, allow_download=True))
    target = tmp_path / "cache" / "downloads" / "cifar100" / cifar.ARCHIVE
    assert ds.info["source"] == str(target) and target.is_file()
    assert not (tmp_path / "data").exists()
    assert cifar.make_fc100({}, ctx(tmp_path)).info["source"] == str(target)  # found again offline
    assert http_server.requests == ["/~kriz/cifar-100-python.tar.gz"]


def test_the_official_url_given_as_url_keeps_its_pinned_checksum(tmp_path, http_server, monkeypatch):
    # Outside private mode no checksum of one's own is taken, so naming the declared URL must be enough.
    from metalab.plugins.cifar import loader

    body = write_archive(tmp_path / "mirror" / "official.tar.gz").read_bytes()
    official = http_server.serve("/~kriz/cifar-100-python.tar.gz", body)
    monkeypatch.setattr(loader, "OFFICIAL_URL", official)
    monkeypatch.setattr(loader, "OFFICIAL_SHA256", hashlib.sha256(body).hexdigest())
    ds = cifar.make_cifar_fs({"url": official}, ctx(tmp_path, allow_download=True))
    assert ds.info["source"] == str(tmp_path / "cache" / "downloads" / "cifar100" / cifar.ARCHIVE)
    monkeypatch.setattr(loader, "OFFICIAL_SHA256", "2" * 64)  # the pin is what the download is checked against
    with pytest.raises(ValueError, match="does not match the pinned sha256"):
        cifar.make_cifar_fs({"url": official}, ctx(tmp_path / "again", allow_download=True))


def test_a_file_url_is_refused(tmp_path):
    source = write_archive(tmp_path / "mirror" / "c100.tar.gz")
    digest = hashlib.sha256(source.read_bytes()).hexdigest()
    with pytest.raises(ValueError, match="Received: scheme='file'") as info:
        cifar.make_cifar_fs({"url": source.as_uri(), "sha256": digest}, ctx(tmp_path, allow_download=True))
    assert str(source.parent) not in str(info.value)
    assert files_under(tmp_path / "cache") == [] and files_under(tmp_path / "data") == []


def test_official_download_is_declared():
    for spec in cifar.metalab_register_datasets():
        assert spec.downloads == {cifar.OFFICIAL_URL: cifar.OFFICIAL_SHA256}


def test_second_load_reads_the_cache(tmp_path, archive, monkeypatch):
    from metalab.plugins.cifar import loader

    first = cifar.make_cifar_fs({}, ctx(tmp_path))
    assert list((tmp_path / "cache" / "cifar100").glob("*.npz"))
    monkeypatch.setattr(loader, "read_cifar100", lambda *a: (_ for _ in ()).throw(AssertionError("decoded again")))
    second = cifar.make_fc100({}, ctx(tmp_path))  # FC100 shares CIFAR-FS's decoded arrays
    assert sum(len(s.labels) for s in second.splits.values()) == sum(len(s.labels) for s in first.splits.values())


def test_wrong_files_are_clear_errors(tmp_path):
    parts = fake_parts()
    del parts["meta"]
    write_archive(tmp_path / "bad" / "cifar-100-python.tar.gz", parts)
    with pytest.raises(ValueError, match="lacks meta"):
        cifar.make_cifar_fs({"path": str(tmp_path / "bad" / "cifar-100-python.tar.gz")}, ctx(tmp_path))
    parts = fake_parts()
    parts["meta"] = pickle.dumps({"fine_label_names": [f"c{i}" for i in range(100)], "coarse_label_names": COARSE})
    shutil.rmtree(tmp_path / "bad")
    write_archive(tmp_path / "bad" / "cifar-100-python.tar.gz", parts)
    with pytest.raises(ValueError, match="fine classes"):
        cifar.make_cifar_fs({"path": str(tmp_path / "bad" / "cifar-100-python.tar.gz")}, ctx(tmp_path))
