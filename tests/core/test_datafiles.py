"""Tests for metalab.core.datafiles: checked downloads (over file:// URLs, no network) and the array cache."""

from __future__ import annotations

import hashlib
import time

import numpy as np
import pytest

from metalab.core.datafiles import cache_file, cached_arrays, download, fingerprint, sha256_file


@pytest.fixture
def source(tmp_path):
    path = tmp_path / "src" / "payload.bin"
    path.parent.mkdir()
    path.write_bytes(b"omniglot" * 1000)
    return path


def test_sha256_file(source):
    assert sha256_file(source) == hashlib.sha256(source.read_bytes()).hexdigest()


def test_download_verifies_and_renames(source, tmp_path):
    dest = tmp_path / "data" / "omniglot" / "payload.bin"
    got = download(source.as_uri(), dest, sha256_file(source), allow_download=True)
    assert got == dest and dest.read_bytes() == source.read_bytes()
    # Present and right: no second download even when downloads are off.
    assert download(source.as_uri(), dest, sha256_file(source), allow_download=False) == dest


def test_download_checksum_mismatch_leaves_nothing(source, tmp_path):
    dest = tmp_path / "out" / "payload.bin"
    with pytest.raises(ValueError, match="sha256"):
        download(source.as_uri(), dest, "0" * 64, allow_download=True)
    assert not dest.exists()
    assert list(dest.parent.iterdir()) == []  # the temporary file is gone too


def test_download_refused_offline_names_file_folder_and_url(tmp_path):
    dest = tmp_path / "omniglot" / "images_background.zip"
    url = "https://example.invalid/images_background.zip"
    with pytest.raises(FileNotFoundError) as info:
        download(url, dest, "a" * 64, allow_download=False)
    message = str(info.value)
    assert "images_background.zip" in message and str(dest.parent) in message and url in message


def test_download_unreachable_is_file_not_found(tmp_path):
    missing = tmp_path / "nowhere.bin"
    with pytest.raises(FileNotFoundError, match="download failed"):
        download(missing.as_uri(), tmp_path / "d" / "x.bin", "a" * 64, allow_download=True)


def test_download_existing_wrong_file_is_reported(source, tmp_path):
    dest = tmp_path / "x.bin"
    dest.write_bytes(b"something else")
    with pytest.raises(ValueError, match="exists but its sha256"):
        download(source.as_uri(), dest, sha256_file(source), allow_download=True)


def test_download_requires_a_checksum(source, tmp_path):
    with pytest.raises(ValueError, match="Received: sha256=None"):
        download(source.as_uri(), tmp_path / "x.bin", None, allow_download=True)


def test_cached_arrays_builds_once_and_reloads(tmp_path):
    calls = []

    def build():
        calls.append(1)
        return {"images": np.arange(24, dtype=np.uint8).reshape(2, 3, 4), "names": np.array(["a/b", "c/d"])}

    path = tmp_path / "cache" / "x.npz"
    first = cached_arrays(path, build)
    start = time.perf_counter()
    second = cached_arrays(path, build)
    assert time.perf_counter() - start < 1.0
    assert len(calls) == 1
    np.testing.assert_array_equal(first["images"], second["images"])
    assert second["images"].dtype == np.uint8 and second["names"].tolist() == ["a/b", "c/d"]


def test_cached_arrays_rebuilds_a_damaged_cache(tmp_path):
    path = tmp_path / "x.npz"
    path.write_bytes(b"not an npz")
    out = cached_arrays(path, lambda: {"a": np.ones(3)})
    np.testing.assert_array_equal(out["a"], np.ones(3))
    np.testing.assert_array_equal(cached_arrays(path, lambda: {"a": np.zeros(3)})["a"], np.ones(3))


def test_fingerprint_changes_with_content(tmp_path):
    folder = tmp_path / "f"
    folder.mkdir()
    (folder / "a.txt").write_text("1")
    before = fingerprint(folder)
    (folder / "b.txt").write_text("2")
    assert fingerprint(folder) != before
    assert len(fingerprint(folder / "a.txt")) == 16


def test_cache_file_prefers_the_given_folder(tmp_path):
    assert cache_file(tmp_path / "cache", "omniglot/x.npz") == tmp_path / "cache" / "omniglot" / "x.npz"


def test_cache_file_falls_back_when_folder_cannot_be_made(tmp_path, monkeypatch):
    # A path below a regular file can never be created (this holds even for root, unlike permissions).
    blocker = tmp_path / "blocker"
    blocker.write_text("")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    got = cache_file(blocker / "cache", "omniglot/x.npz")
    assert got == tmp_path / "xdg" / "metalab" / "arrays" / "omniglot" / "x.npz"
