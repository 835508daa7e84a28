"""Tests for the metalab.omniglot dataset plugin on the real files in ../shared/data/omniglot (skipped if absent)."""

from __future__ import annotations

import zipfile
from pathlib import Path

import numpy as np
import pytest

import metalab.plugins.omniglot as omniglot_plugin
from metalab.core.data.files import sha256_file
from metalab.core.contract.specs import DataContext
from metalab.core.engine.sampling import EpisodeSampler
from metalab.plugins.omniglot import loader

SHARED_DATA = Path(__file__).resolve().parents[2].parent / "shared" / "data"
OMNIGLOT = SHARED_DATA / "omniglot"

needs_data = pytest.mark.skipif(
    not (OMNIGLOT / "images_background_small1.zip").is_file(),
    reason=f"Omniglot files not found in {OMNIGLOT} (the shared data folder beside the repository)",
)
needs_full = pytest.mark.skipif(
    not (any(OMNIGLOT.glob("images_background*.zip")) and any(OMNIGLOT.glob("images_evaluation*.zip"))),
    reason=f"Omniglot background/evaluation zips not found in {OMNIGLOT}",
)


def context(data_dir: Path, cache_dir: Path) -> DataContext:
    return DataContext(data_dir=str(data_dir), cache_dir=str(cache_dir), allow_download=False)


@pytest.fixture(scope="module")
def shared_ctx(omniglot_cache) -> DataContext:
    """The shared data with the test process's Omniglot cache: the first load decodes, later ones reload."""
    return context(SHARED_DATA, omniglot_cache)


@pytest.fixture(scope="module")
def vinyals(shared_ctx):
    return omniglot_plugin.make_omniglot({}, shared_ctx)


def test_spec():
    (spec,) = omniglot_plugin.metalab_register_datasets()
    spec.validate()
    assert spec.id == "metalab.omniglot" and spec.kind == "classification"
    assert spec.default_backbone == "metalab.conv4"
    assert spec.episode_defaults == {"ways": 5, "shots": 1, "queries": 15}
    assert "Lake" in spec.paper and "Vinyals" in spec.paper
    assert spec.params().split == "vinyals" and spec.params().rotations is True


def test_params_validation():
    with pytest.raises(ValueError, match="Received: train_characters=1500, val_characters=200"):
        omniglot_plugin.OmniglotParams(train_characters=1500, val_characters=200)
    with pytest.raises(ValueError):
        omniglot_plugin.OmniglotParams(split="random")


@needs_data
def test_small1_decodes_with_official_counts(tmp_path):
    chars = loader.load_characters(context(SHARED_DATA, tmp_path), "background_small1", image_size=28)
    assert chars.images.shape == (136, 20, 28, 28) and chars.images.dtype == np.uint8
    assert sorted(set(chars.alphabets)) == ["Balinese", "Early_Aramaic", "Greek", "Korean", "Latin"]
    assert chars.characters[0] == "Balinese/character01"
    # Strokes are bright on a dark background: most pixels are 0, the strokes reach 255.
    assert chars.images.max() == 255 and np.median(chars.images) == 0
    assert 0.03 < (chars.images > 127).mean() < 0.25
    small = loader.load_characters(context(SHARED_DATA, tmp_path), "background_small1", image_size=14)
    assert small.images.shape == (136, 20, 14, 14)


@needs_full
def test_vinyals_counts_and_format(vinyals):
    assert vinyals.info["characters"] == {"train": 1100, "val": 100, "test": 423}
    assert vinyals.info["classes"] == {"train": 4400, "val": 400, "test": 1692}
    for split in vinyals.splits.values():
        assert split.images.dtype == np.uint8 and split.images.shape[1:] == (28, 28, 1)
        assert len(split.images) == 20 * split.num_classes
        assert np.array_equal(np.bincount(split.labels), np.full(split.num_classes, 20))
    assert vinyals.input_shape == (28, 28, 1) and vinyals.scale == 255.0


@needs_full
def test_vinyals_splits_are_disjoint_characters(vinyals):
    chars = {name: {c.rsplit("/", 1)[0] for c in s.class_names} for name, s in vinyals.splits.items()}
    assert chars["train"].isdisjoint(chars["val"]) and chars["train"].isdisjoint(chars["test"])
    assert chars["val"].isdisjoint(chars["test"])
    assert sum(len(c) for c in chars.values()) == 1623


@needs_full
def test_rotated_classes_are_rotations(vinyals):
    split = vinyals.splits["train"]
    assert split.class_names[:4] == [split.class_names[0].rsplit("/", 1)[0] + f"/rot{d}" for d in (0, 90, 180, 270)]
    base = split.images[split.labels == 0][..., 0]
    turned = split.images[split.labels == 1][..., 0]
    np.testing.assert_array_equal(turned, np.rot90(base, 1, axes=(1, 2)))


@needs_full
def test_second_load_uses_the_cache(shared_ctx, vinyals, monkeypatch):
    # Behaviour, not time: with image decoding made impossible, a second load still gives the same arrays, so it
    # came from the array cache the first load wrote.
    from metalab.plugins.omniglot import loader

    def no_decoding(*args, **kwargs):
        raise AssertionError("the second load decoded an image instead of reading the cache")

    monkeypatch.setattr(loader, "_decode", no_decoding)
    again = omniglot_plugin.make_omniglot({}, shared_ctx)
    np.testing.assert_array_equal(again.splits["test"].images, vinyals.splits["test"].images)
    assert len(list((Path(shared_ctx.cache_dir) / "omniglot").glob("*.npz"))) >= 2


@needs_full
def test_background_evaluation_split(shared_ctx):
    ds = omniglot_plugin.make_omniglot({"split": "background_evaluation", "rotations": False}, shared_ctx)
    chars = ds.info["characters"]
    assert chars["train"] + chars["val"] == 964 and chars["test"] == 659
    assert len(ds.info["val_alphabets"]) == 2
    alphabets = {name: {c.split("/")[0] for c in s.class_names} for name, s in ds.splits.items()}
    assert alphabets["val"] == set(ds.info["val_alphabets"])
    assert len(alphabets["train"]) == 28 and len(alphabets["test"]) == 20
    assert alphabets["train"].isdisjoint(alphabets["val"]) and alphabets["train"].isdisjoint(alphabets["test"])
    rotated = omniglot_plugin.make_omniglot({"split": "background_evaluation"}, shared_ctx)
    assert rotated.info["classes"] == {k: 4 * v for k, v in chars.items()}


@needs_full
def test_minimal_split(shared_ctx):
    ds = omniglot_plugin.make_omniglot({"split": "minimal", "rotations": False, "val_alphabets": 1}, shared_ctx)
    chars = ds.info["characters"]
    # small1 (136) and small2 (156) share 50 characters (Greek, Latin): 242 distinct.
    assert chars["train"] + chars["val"] == 242 and chars["test"] == 659
    names = ds.splits["train"].class_names + ds.splits["val"].class_names
    assert len(set(names)) == 242


@needs_full
def test_default_episodes_sample(vinyals):
    batch = EpisodeSampler(vinyals, "test", ways=5, shots=1, queries=15, seed=0).sample_batch(4)
    assert batch.support_x.shape == (4, 5, 28, 28, 1) and batch.query_x.shape == (4, 75, 28, 28, 1)
    assert batch.support_x.dtype == np.float32 and 0.0 <= batch.support_x.min() and batch.support_x.max() <= 1.0


def test_missing_files_offline_name_files_and_folder(tmp_path):
    ctx = context(tmp_path / "data", tmp_path / "cache")
    with pytest.raises(FileNotFoundError) as info:
        omniglot_plugin.make_omniglot({}, ctx)
    message = str(info.value)
    assert "images_background.zip" in message and "images_evaluation.zip" in message
    assert str(tmp_path / "data" / "omniglot") in message and "METALAB_DATA_DIR/omniglot/" in message
    assert "https://raw.githubusercontent.com/brendenlake/omniglot/master/python/images_background.zip" in message


@needs_data
def test_one_missing_zip_is_named(tmp_path):
    folder = tmp_path / "data" / "omniglot"
    folder.mkdir(parents=True)
    for name in ("images_background_small1.zip", "images_background_small2.zip"):
        (folder / name).symlink_to(OMNIGLOT / name)
    with pytest.raises(FileNotFoundError) as info:
        omniglot_plugin.make_omniglot({"split": "minimal"}, context(tmp_path / "data", tmp_path / "cache"))
    message = str(info.value)
    assert "images_evaluation.zip" in message and "small1" not in message


def test_wrong_layout_zip_is_a_clear_error(tmp_path):
    folder = tmp_path / "data" / "omniglot"
    folder.mkdir(parents=True)
    with zipfile.ZipFile(folder / "images_background_small1.zip", "w") as zf:
        zf.writestr("images_background_small1/Greek/character01/0001_01.png", b"")
        zf.writestr("images_background_small1/Greek/character02/0002_01.png", b"")
        zf.writestr("readme.txt", "hello")
    ctx = context(tmp_path / "data", tmp_path / "cache")
    with pytest.raises(ValueError) as info:
        loader.load_characters(ctx, "background_small1")
    message = str(info.value)
    assert isinstance(info.value, loader.OmniglotLayoutError)
    assert "expected 5 alphabets, 136 characters and 2720 PNG images" in message
    assert "found 1 alphabets, 2 characters and 2 images" in message
    assert "Greek/character01: 1" in message


def test_not_a_zip_is_a_clear_error(tmp_path):
    folder = tmp_path / "data" / "omniglot"
    folder.mkdir(parents=True)
    (folder / "images_evaluation.zip").write_bytes(b"truncated download")
    with pytest.raises(loader.OmniglotLayoutError, match="not a readable zip"):
        loader.load_characters(context(tmp_path / "data", tmp_path / "cache"), "evaluation")


@needs_data
def test_extracted_folder_is_accepted(tmp_path):
    folder = tmp_path / "data" / "omniglot"
    folder.mkdir(parents=True)
    with zipfile.ZipFile(OMNIGLOT / "images_background_small1.zip") as zf:
        zf.extractall(folder)
    assert (folder / "images_background_small1" / "Greek").is_dir()
    chars = loader.load_characters(context(tmp_path / "data", tmp_path / "cache"), "background_small1")
    from_zip = loader.load_characters(context(SHARED_DATA, tmp_path / "cache2"), "background_small1")
    np.testing.assert_array_equal(chars.images, from_zip.images)


def files_under(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*") if p.is_file()) if folder.exists() else []


@needs_data
def test_download_is_checksum_verified_and_lands_in_the_cache(tmp_path, monkeypatch, http_server):
    # A loopback HTTP server stands in for GitHub: the same download, checksum and load path, without network.
    official = loader.SOURCES["background_small1"]
    body = (OMNIGLOT / official.official_file).read_bytes()
    assert sha256_file(OMNIGLOT / official.official_file) == official.sha256
    url = http_server.serve("/brendenlake/omniglot/master/python/" + official.official_file, body)
    monkeypatch.setitem(loader.SOURCES, "background_small1", loader.SourceInfo(
        official.name, official.official_file, url, official.sha256, official.alphabets, official.characters))
    ctx = DataContext(str(tmp_path / "data"), str(tmp_path / "cache"), allow_download=True)
    chars = loader.load_characters(ctx, "background_small1")
    target = tmp_path / "cache" / "downloads" / "omniglot" / official.official_file
    assert chars.path == str(target) and target.is_file()
    assert chars.images.shape[0] == 136
    assert not (tmp_path / "data").exists()  # nothing is written in the data folder
    # Found again on the next load, offline, without asking the server.
    offline = DataContext(str(tmp_path / "data"), str(tmp_path / "cache"), allow_download=False)
    assert loader.load_characters(offline, "background_small1").path == str(target)
    assert len(http_server.requests) == 1

    bad = loader.SourceInfo(official.name, official.official_file, url, "f" * 64, 5, 136)
    monkeypatch.setitem(loader.SOURCES, "background_small1", bad)
    ctx2 = DataContext(str(tmp_path / "data2"), str(tmp_path / "cache2"), allow_download=True)
    with pytest.raises(ValueError, match="sha256") as info:
        loader.load_characters(ctx2, "background_small1")
    assert official.sha256 not in str(info.value)
    assert files_under(tmp_path / "cache2") == [] and not (tmp_path / "data2").exists()


def test_official_files_are_declared_and_fetched_without_redirects():
    (spec,) = omniglot_plugin.metalab_register_datasets()
    assert spec.downloads == {info.url: info.sha256 for info in (*loader.SOURCES.values(), loader.RUNS_SOURCE)}
    assert len(spec.downloads) == 5
    # github.com/<repo>/raw/... redirects to another host, which downloads refuse; the files' own host is named.
    assert all(url.startswith("https://raw.githubusercontent.com/brendenlake/omniglot/") for url in spec.downloads)


@pytest.mark.skipif(not (OMNIGLOT / "all_runs.zip").is_file(), reason=f"all_runs.zip not found in {OMNIGLOT}")
def test_oneshot_runs(tmp_path):
    runs = omniglot_plugin.load_oneshot_runs(context(SHARED_DATA, tmp_path))
    assert len(runs) == 20 and [r["run"] for r in runs] == [f"run{i:02d}" for i in range(1, 21)]
    for run in runs:
        assert run["train_images"].shape == (20, 28, 28, 1) and run["train_images"].dtype == np.uint8
        assert run["test_images"].shape == (20, 28, 28, 1)
        # Every test item matches a different training class: the answers are a permutation.
        assert sorted(run["answers"].tolist()) == list(range(20))
    # class_labels.txt of run01 begins "run01/test/item01.png run01/training/class08.png".
    assert runs[0]["answers"][0] == 7


@needs_full
@pytest.mark.skipif(not (OMNIGLOT / "all_runs.zip").is_file(), reason=f"all_runs.zip not found in {OMNIGLOT}")
def test_oneshot_runs_are_preprocessed_like_the_dataset(shared_ctx, vinyals):
    evaluation = loader.load_characters(shared_ctx, "evaluation")
    known = {img.tobytes() for img in evaluation.images.reshape(-1, 28, 28)}
    runs = omniglot_plugin.load_oneshot_runs(shared_ctx)
    images = np.concatenate([np.concatenate([r["train_images"], r["test_images"]]) for r in runs])[..., 0]
    assert sum(img.tobytes() in known for img in images) == len(images) == 800


@needs_full
@pytest.mark.parametrize("split, source, alphabets", [("minimal1", "background_small1", 5),
                                                      ("minimal2", "background_small2", 5)])
def test_each_small_set_alone_is_lakes_minimal_condition(shared_ctx, split, source, alphabets):
    ds = omniglot_plugin.make_omniglot({"split": split, "rotations": False, "val_alphabets": 1}, shared_ctx)
    chars = ds.info["characters"]
    assert chars["train"] + chars["val"] == loader.SOURCES[source].characters and chars["test"] == 659
    seen = {c.split("/")[0] for name in ("train", "val") for c in ds.splits[name].class_names}
    assert seen == set(loader.SMALL_ALPHABETS[source]) and len(seen) == alphabets
    assert ds.info["val_alphabets"] == sorted({c.split("/")[0] for c in ds.splits["val"].class_names})


@needs_full
@pytest.mark.skipif(not (OMNIGLOT / "all_runs.zip").is_file(), reason=f"all_runs.zip not found in {OMNIGLOT}")
def test_lake20_declares_its_200_characters_and_they_are_training_classes_of_the_default_split(shared_ctx, vinyals):
    from metalab.api import Benchmark
    from metalab.core.engine.evaluation import benchmark_overlap

    bench = vinyals.benchmarks["lake20"]
    assert isinstance(bench, Benchmark) and "split=background_evaluation" in bench.advice
    classes = bench.classes()
    evaluation = set(loader.load_characters(shared_ctx, "evaluation").characters)
    assert len(classes) == 200 and set(classes) <= evaluation
    # The default (Vinyals) split pools the evaluation characters into training: the reviewer's 136 (and 8 in val).
    overlap = benchmark_overlap(vinyals, classes)
    assert (len(overlap["train"]), len(overlap["val"])) == (136, 8)
    # Lake's background split keeps every evaluation alphabet out of train and val.
    lake = omniglot_plugin.make_omniglot({"split": "background_evaluation"}, shared_ctx)
    assert benchmark_overlap(lake, classes) == {"train": [], "val": []}
