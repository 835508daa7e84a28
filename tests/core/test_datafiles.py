"""Tests for metalab.core.data.files: checked downloads (from a loopback HTTP server, no network) and the array cache."""

from __future__ import annotations

import hashlib
import io
import re
import time
import urllib.request

import numpy as np
import pytest

from metalab.core.data.files import (
    DownloadRefusedError,
    _SameHostRedirects,
    cache_file,
    cached_arrays,
    download,
    fingerprint,
    sha256_file,
)

PAYLOAD = b"omniglot" * 1000
PAYLOAD_SHA = hashlib.sha256(PAYLOAD).hexdigest()
HEX64 = re.compile(r"[0-9a-fA-F]{64}")


@pytest.fixture
def source(tmp_path):
    path = tmp_path / "src" / "payload.bin"
    path.parent.mkdir()
    path.write_bytes(PAYLOAD)
    return path


@pytest.fixture
def root(tmp_path):
    """The download folder, as ``DataContext.download_dir("omniglot")`` gives it."""
    return tmp_path / "cache" / "downloads" / "omniglot"


def files_under(folder):
    return sorted(p for p in folder.rglob("*") if p.is_file()) if folder.exists() else []


def test_sha256_file(source):
    assert sha256_file(source) == hashlib.sha256(source.read_bytes()).hexdigest()


def test_download_verifies_and_renames(http_server, root):
    url = http_server.serve("/payload.bin", PAYLOAD)
    dest = root / "payload.bin"
    got = download(url, dest, PAYLOAD_SHA, allow_download=True, root=root, timeout=10)
    assert got == dest and dest.read_bytes() == PAYLOAD
    assert http_server.requests == ["/payload.bin"]
    # Present and right: no second download even when downloads are off.
    assert download(url, dest, PAYLOAD_SHA, allow_download=False, root=root) == dest
    assert download(url, dest, PAYLOAD_SHA, allow_download=True, root=root) == dest
    assert http_server.requests == ["/payload.bin"]


def test_download_checksum_mismatch_leaves_nothing_and_prints_no_digest(http_server, root):
    url = http_server.serve("/payload.bin", PAYLOAD)
    dest = root / "payload.bin"
    with pytest.raises(ValueError, match="does not match the pinned sha256") as info:
        download(url, dest, "0" * 64, allow_download=True, root=root, timeout=10)
    assert http_server.requests == ["/payload.bin"]  # it was fetched, then thrown away
    assert not HEX64.search(str(info.value)) and PAYLOAD_SHA not in str(info.value)
    assert files_under(root) == []  # the temporary file is gone too


def test_existing_wrong_file_is_reported_without_its_digest(http_server, root):
    url = http_server.serve("/payload.bin", PAYLOAD)
    dest = root / "x.bin"
    root.mkdir(parents=True)
    dest.write_bytes(b"something else")
    with pytest.raises(ValueError, match="exists in .* but does not match the pinned sha256") as info:
        download(url, dest, PAYLOAD_SHA, allow_download=True, root=root)
    message = str(info.value)
    assert not HEX64.search(message)
    assert hashlib.sha256(b"something else").hexdigest() not in message
    assert http_server.requests == [] and dest.read_bytes() == b"something else"


def test_download_refused_offline_names_file_folder_and_url(root):
    dest = root / "images_background.zip"
    url = "https://example.invalid/images_background.zip"
    with pytest.raises(FileNotFoundError) as info:
        download(url, dest, "a" * 64, allow_download=False, root=root)
    message = str(info.value)
    assert "images_background.zip" in message and str(dest.parent) in message and url in message
    assert "downloads are off" in message


def test_download_http_error_is_file_not_found(http_server, root):
    with pytest.raises(FileNotFoundError, match="download failed .*404"):
        download(http_server.url("/missing.bin"), root / "x.bin", "a" * 64, allow_download=True, root=root, timeout=10)
    assert files_under(root) == []


def test_download_requires_a_checksum(http_server, root):
    url = http_server.serve("/payload.bin", PAYLOAD)
    with pytest.raises(ValueError, match="Received: sha256=None"):
        download(url, root / "x.bin", None, allow_download=True, root=root)
    assert http_server.requests == []


@pytest.mark.parametrize("scheme_url", ["file", "ftp://127.0.0.1/payload.bin", "data:,omniglot", "/etc/passwd"])
def test_only_https_and_http_urls_are_fetched(source, root, scheme_url):
    url = source.as_uri() if scheme_url == "file" else scheme_url
    scheme = url.split(":", 1)[0] if ":" in url else ""
    with pytest.raises(DownloadRefusedError, match=f"Received: scheme='{scheme}'") as info:
        download(url, root / "payload.bin", PAYLOAD_SHA, allow_download=True, root=root)
    message = str(info.value)
    assert isinstance(info.value, ValueError)
    assert str(source.parent) not in message and "/etc/passwd" not in message  # no server path is echoed
    assert not root.exists()  # nothing written, not even the folder


def test_a_file_url_is_refused_even_when_the_file_is_there(source, root):
    root.mkdir(parents=True)
    (root / "payload.bin").write_bytes(PAYLOAD)
    with pytest.raises(DownloadRefusedError, match="Only https:// and http://"):
        download(source.as_uri(), root / "payload.bin", PAYLOAD_SHA, allow_download=False, root=root)


def test_a_redirect_on_the_same_host_is_followed(http_server, root):
    target = http_server.serve("/files/payload.bin", PAYLOAD)
    url = http_server.redirect("/latest.bin", target)
    got = download(url, root / "payload.bin", PAYLOAD_SHA, allow_download=True, root=root, timeout=10)
    assert got.read_bytes() == PAYLOAD
    assert http_server.requests == ["/latest.bin", "/files/payload.bin"]


def test_a_redirect_to_another_host_is_refused_and_nothing_is_written(http_server, root):
    # "localhost" is another host name than "127.0.0.1", though both reach this server: the request must never
    # be made, which the server's log shows.
    elsewhere = http_server.serve("/internal/secret.bin", PAYLOAD)
    url = http_server.redirect("/payload.bin", elsewhere.replace("127.0.0.1", "localhost"))
    with pytest.raises(DownloadRefusedError) as info:
        download(url, root / "payload.bin", PAYLOAD_SHA, allow_download=True, root=root, timeout=10)
    message = str(info.value)
    assert f"127.0.0.1:{http_server.port}" in message and f"localhost:{http_server.port}" in message
    assert "another host" in message
    assert http_server.requests == ["/payload.bin"]
    assert files_under(root) == []


@pytest.mark.parametrize("status", [301, 302, 303, 307, 308])
def test_a_redirect_to_a_file_url_is_not_followed(http_server, source, root, status):
    url = http_server.redirect("/payload.bin", source.as_uri(), status=status)
    with pytest.raises(DownloadRefusedError, match="redirected to a file:// URL") as info:
        download(url, root / "payload.bin", PAYLOAD_SHA, allow_download=True, root=root, timeout=10)
    assert str(source.parent) not in str(info.value)
    assert files_under(root) == []


@pytest.mark.parametrize(
    ("old", "new", "allowed"),
    [
        ("https://example.org/a", "http://example.org/a", False),  # downgrade
        ("https://example.org/a", "https://example.org:8443/a", False),  # another port
        ("https://example.org/a", "https://mirror.example.org/a", False),
        ("https://Example.org/a", "https://example.org/b?x=1", True),
        ("http://example.org/a", "https://example.org/a", True),  # upgrade on the default ports
    ],
)
def test_redirect_rules(old, new, allowed):
    handler = _SameHostRedirects()
    request = urllib.request.Request(old)
    if allowed:
        assert handler.redirect_request(request, io.BytesIO(), 302, "Found", {}, new).full_url == new
    else:
        with pytest.raises(DownloadRefusedError, match="redirected"):
            handler.redirect_request(request, io.BytesIO(), 302, "Found", {}, new)


def test_dest_outside_root_is_refused(http_server, tmp_path, root):
    url = http_server.serve("/payload.bin", PAYLOAD)
    for dest in (tmp_path / "site-packages" / "evil.pth", root / ".." / "evil.pth", root):
        with pytest.raises(DownloadRefusedError, match="resolves outside it") as info:
            download(url, dest, PAYLOAD_SHA, allow_download=True, root=root)
        assert str(tmp_path / "site-packages") not in str(info.value)
    assert http_server.requests == []
    assert files_under(tmp_path) == []


def test_a_symlink_inside_root_cannot_lead_outside(http_server, tmp_path, root):
    url = http_server.serve("/payload.bin", PAYLOAD)
    outside = tmp_path / "outside"
    outside.mkdir()
    root.mkdir(parents=True)
    (root / "link").symlink_to(outside, target_is_directory=True)
    with pytest.raises(DownloadRefusedError, match="resolves outside it"):
        download(url, root / "link" / "evil.pth", PAYLOAD_SHA, allow_download=True, root=root)
    # An existing file reached through a link is not read either (its checksum would say what it holds).
    secret = outside / "secret.txt"
    secret.write_bytes(PAYLOAD)
    (root / "secret.txt").symlink_to(secret)
    with pytest.raises(DownloadRefusedError):
        download(url, root / "secret.txt", PAYLOAD_SHA, allow_download=False, root=root)
    assert list(outside.iterdir()) == [secret] and http_server.requests == []


def test_a_sub_folder_of_root_is_fine(http_server, root):
    url = http_server.serve("/payload.bin", PAYLOAD)
    got = download(url, root / "v1" / "payload.bin", PAYLOAD_SHA, allow_download=True, root=root, timeout=10)
    assert got.read_bytes() == PAYLOAD


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
