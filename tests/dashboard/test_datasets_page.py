"""The Datasets page: summaries and sample grids, missing files explained, uploads of zipped image folders."""

from __future__ import annotations

import io
import zipfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from streamlit.testing.v1 import AppTest

from metalab.core.data.archives import UnsafeArchiveError
from metalab.core.services import Services

CLASSES = ("circle", "cross", "square", "stripes", "dots")


def _datasets_script() -> None:
    # Runs inside AppTest: only what is imported here exists there.
    from metalab.dashboard.datasets import datasets

    datasets()


@pytest.fixture
def data_dir(home: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Empty data, Keras and cache folders, downloads off, and the page's summary cache cleared."""
    from metalab.dashboard.datasets import _summary

    path = tmp_path / "data"
    path.mkdir()
    monkeypatch.setenv("METALAB_DATA_DIR", str(path))
    monkeypatch.setenv("METALAB_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setenv("KERAS_HOME", str(tmp_path / "keras"))
    monkeypatch.setenv("METALAB_OFFLINE", "1")
    _summary.clear()
    yield path
    _summary.clear()


def _page(query: dict[str, str] | None = None) -> AppTest:
    at = AppTest.from_function(_datasets_script, default_timeout=60)
    for key, value in (query or {}).items():
        at.query_params[key] = value
    return at


def _zip_of_classes(classes=CLASSES, per_class: int = 4, extra: dict[str, bytes] | None = None,
                    wrapper: str = "") -> bytes:
    rng = np.random.default_rng(0)
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as zf:
        for name in classes:
            for i in range(per_class):
                pixels = rng.integers(0, 256, (12, 12, 3), dtype=np.uint8)
                png = io.BytesIO()
                Image.fromarray(pixels).save(png, format="PNG")
                zf.writestr(f"{wrapper}{name}/{i}.png", png.getvalue())
        for member, data in (extra or {}).items():
            zf.writestr(member, data)
    return buffer.getvalue()


def test_digits_summary_shows_counts_and_a_sample_grid(data_dir):
    at = _page({"dataset": "metalab.digits"}).run()
    assert not at.exception
    assert at.selectbox(key="datasets.dataset").value == "metalab.digits"
    assert not at.image  # nothing is loaded before the button is pressed
    at.button(key="datasets.load").click().run()
    assert not at.exception
    metrics = {m.label: m.value for m in at.metric}
    assert metrics["Classes"] == "10" and metrics["Images"] == "1,797" and metrics["Input shape"] == "8 × 8 × 1"
    table = at.dataframe[0].value
    assert list(table["split"]) == ["train", "val", "test"]
    assert list(table["classes"]) == [4, 3, 3] and int(table["images"].sum()) == 1797
    assert "Files present" in at.success[0].value and "sklearn.datasets.load_digits" in at.success[0].value
    # One image element per sampled class: every class of each split (4 + 3 + 3), three images each.
    images = at.image
    assert len(images) == 10
    assert all(len(element.value) == 3 for element in images)
    assert at.query_params["dataset"] == "metalab.digits"


def test_changed_parameters_are_not_summarised_until_loaded_again(data_dir):
    at = _page({"dataset": "metalab.digits"}).run()
    at.button(key="datasets.load").click().run()
    assert at.image
    seed = next(w for w in at.number_input if w.key.endswith(".seed"))
    seed.set_value(5).run()
    assert not at.exception
    assert not at.image
    assert at.query_params["dataset.seed"] == "5"


def test_a_link_reopens_the_summary_it_was_shared_with(data_dir):
    at = _page({"dataset": "metalab.digits"}).run()
    at.button(key="datasets.load").click().run()
    assert at.query_params["shown"] == "1"
    shared = {k: (v[0] if isinstance(v, list) else v) for k, v in at.query_params.items()}
    again = _page(shared).run()
    assert not again.exception
    assert len(again.image) == 10  # opened with its summary, no button pressed
    assert again.query_params["shown"] == "1"


def test_bad_link_values_stay_shown_with_every_error_at_once(data_dir):
    at = _page({"dataset": "metalab.digits", "shown": "1", "dataset.train_classes": "0",
                "dataset.val_classes": "12", "dataset.mode": "bogus"}).run()
    assert not at.exception
    train = next(w for w in at.number_input if w.key.endswith(".train_classes"))
    val = next(w for w in at.number_input if w.key.endswith(".val_classes"))
    assert (train.value, val.value) == (0, 12)  # the link's values, not the defaults
    errors = [e.value for e in at.error]
    assert any(e.startswith("dataset.train_classes:") and "train_classes=0" in e for e in errors), errors
    assert any(e.startswith("dataset.val_classes:") and "val_classes=12" in e for e in errors), errors
    assert any("mode: expected one of" in w.value and "'bogus'" in w.value for w in at.warning)
    assert at.button(key="datasets.load").disabled and not at.image
    assert any(c.value.startswith("Load and summarise is disabled: fix the 2 problems") for c in at.caption)
    train.set_value(4).run()
    next(w for w in at.number_input if w.key.endswith(".val_classes")).set_value(3).run()
    assert [e.value for e in at.error] == [] and not at.button(key="datasets.load").disabled


def test_an_unknown_dataset_in_a_link_is_named(data_dir):
    at = _page({"dataset": "nobody.nothing"}).run()
    assert not at.exception
    assert any("dataset='nobody.nothing' is not loaded" in w.value for w in at.warning)


def test_missing_files_are_named_with_where_to_put_them(data_dir):
    at = _page({"dataset": "metalab.mnist"}).run()
    at.button(key="datasets.load").click().run()
    assert not at.exception
    errors = " ".join(e.value for e in at.error)
    assert "The files of metalab.mnist are missing" in errors
    assert "mnist.npz" in errors and str(data_dir / "mnist") in errors
    assert str(data_dir) in " ".join(i.value for i in at.info)
    assert not at.image and not at.success


def test_upload_extracts_a_zip_of_class_folders(home, data_dir):
    svc = Services()
    info = svc.upload_dataset(_zip_of_classes(extra={"README.txt": b"notes", "__MACOSX/._x.png": b"junk"}),
                              "My shapes (1).zip")
    assert info["name"] == "My-shapes-1"
    assert Path(info["path"]) == data_dir / "uploads" / "My-shapes-1"
    assert info["classes"] == {name: 4 for name in sorted(CLASSES)} and info["images"] == 20
    assert info["other_files"] == ["README.txt"]  # hidden __MACOSX members are not extracted at all
    assert not (Path(info["path"]) / "__MACOSX").exists()
    # The same name again gets a new folder; a wrapping folder is looked through as the dataset does.
    again = svc.upload_dataset(io.BytesIO(_zip_of_classes(wrapper="photos/")), "My shapes (1).zip")
    assert again["name"] == "My-shapes-1-2"
    assert Path(again["root"]) == Path(again["path"]) / "photos" and again["images"] == 20
    assert [u["name"] for u in svc.uploads()] == ["My-shapes-1-2", "My-shapes-1"]
    summary = svc.dataset_summary("metalab.imagefolder", {"path": again["root"]}, episode=(3, 1, 3))
    assert summary["total_classes"] == 5 and summary["total_images"] == 20
    assert summary["problems"] and "ways=3" in summary["problems"][0]


def test_zip_slip_member_is_refused_and_nothing_is_written(home, data_dir):
    svc = Services()
    with pytest.raises(UnsafeArchiveError, match=r"member '\.\./evil\.png' would be written outside"):
        svc.upload_dataset(_zip_of_classes(extra={"../evil.png": b"x"}), "evil.zip")
    assert svc.uploads() == []
    assert not (data_dir / "evil.png").exists()
    assert [p.name for p in (data_dir / "uploads").iterdir()] == []


def test_zip_bomb_and_oversized_uploads_are_refused(home, data_dir):
    svc = Services()
    bomb = io.BytesIO()
    with zipfile.ZipFile(bomb, "w", zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("a/zeros.png", bytes(8 << 20))
    with pytest.raises(UnsafeArchiveError, match="zip bomb"):
        svc.upload_dataset(bomb.getvalue(), "bomb.zip")
    with pytest.raises(UnsafeArchiveError, match="at most 1000 are allowed"):
        svc.upload_dataset(_zip_of_classes(), "big.zip", max_bytes=1000)
    with pytest.raises(UnsafeArchiveError, match="Not a readable zip"):
        svc.upload_dataset(b"not a zip", "junk.zip")
    assert svc.uploads() == []
    with pytest.raises(ValueError, match="folder name alone"):
        svc.upload_info("../uploads")


def test_page_shows_an_uploaded_folder_and_offers_training_on_it(home, data_dir):
    from metalab.dashboard.datasets import train_setup, upload_params
    from metalab.dashboard.train import config_query_params

    info = Services().upload_dataset(_zip_of_classes(), "shapes.zip")
    at = _page({"view": "upload", "upload": "shapes"}).run()
    assert not at.exception
    assert at.radio(key="datasets.view").value == "Your images"
    assert at.selectbox(key="datasets.upload").value == "shapes"
    assert at.subheader[0].value == "shapes: 5 classes, 20 images"
    counts = at.dataframe[0].value
    assert list(counts["class"]) == sorted(CLASSES) and list(counts["images"]) == [4] * 5
    assert {m.label: m.value for m in at.metric}["Images"] == "20"
    assert len(at.image) == 5  # the 3/1/1 classes of the default 60/20/20 split, all sampled
    warnings = [w.value for w in at.warning]
    assert warnings == ["split 'val' has 1 classes but episodes need ways=2",
                        "split 'test' has 1 classes but episodes need ways=2"]
    assert _has_button(at, "datasets.train")
    assert upload_params(info) == {"path": info["root"]}
    summary = Services().dataset_summary("metalab.imagefolder", {"path": info["root"]})
    config = train_setup(summary, upload_params(info))
    # Episodes are 2-way at least; with 5 classes, val and test have one each (the warnings above say so).
    assert config["ways"] == 2 and config["queries"] == 3
    query = config_query_params(config)
    assert query["dataset"] == "metalab.imagefolder" and query["algorithm"] == "metalab.protonet"
    # A link never carries a server path: the Train page gets it from this session's state instead.
    assert "dataset.path" not in query and info["root"] not in " ".join(query.values())


def _datasets_and_train() -> None:
    import streamlit as st

    from metalab.dashboard import routes

    # The Datasets page first, so that it is the default page of this navigation.
    st.navigation([routes.datasets_page(), routes.train_page(), routes.report_page()]).run()


def test_train_button_opens_the_train_page_set_up_for_the_upload(home, data_dir):
    info = Services().upload_dataset(_zip_of_classes(classes="abcdef"), "six.zip")
    at = AppTest.from_function(_datasets_and_train, default_timeout=60)
    at.query_params["view"] = "upload"
    at.run()
    assert not at.exception
    # Six classes: the fractions are set so that val and test get two each, and no warning is left.
    assert "2/2/2 classes" in " ".join(c.value for c in at.caption)
    assert not at.warning
    at.button(key="datasets.train").click().run()
    assert not at.exception
    assert at.title[0].value == "Train"
    assert at.selectbox(key="train.dataset").value == "metalab.imagefolder"
    assert at.selectbox(key="train.algorithm").value == "metalab.protonet"
    # The path is handed over in the session, shown in the form, and never written into the link.
    assert at.text_input(key="train.dataset.metalab.imagefolder.metalab.imagefolder.path").value == info["root"]
    assert "dataset.path" not in at.query_params
    assert at.query_params["ways"] == "2" and at.query_params["queries"] == "3"
    assert float(at.query_params["dataset.val_fraction"]) == pytest.approx(1 / 3)


def test_page_explains_an_upload_that_cannot_make_a_dataset(home, data_dir):
    Services().upload_dataset(_zip_of_classes(classes=("a", "b")), "two.zip")
    at = _page({"view": "upload", "upload": "two"}).run()
    assert not at.exception
    assert "2 classes" in at.subheader[0].value
    errors = " ".join(e.value for e in at.error)
    assert "metalab.imagefolder cannot be loaded" in errors and "at least 3 classes" in errors
    assert not _has_button(at, "datasets.train")


def _has_button(at: AppTest, key: str) -> bool:
    return any(b.key == key for b in at.button)


def test_uploading_on_the_page_extracts_and_summarises(home, data_dir):
    at = _page({"view": "upload"}).run()
    assert not at.exception
    assert "No uploaded image folders yet." in [i.value for i in at.info]
    at.file_uploader(key="datasets.zip").set_value(("shapes.zip", _zip_of_classes(), "application/zip")).run()
    at.button(key="datasets.extract").click().run()
    assert not at.exception
    assert at.success[0].value == "Extracted as `uploads/shapes`."
    assert at.subheader[0].value == "shapes: 5 classes, 20 images"
    assert len(at.image) == 5
    assert at.query_params["upload"] == "shapes"


def test_uploading_a_zip_slip_archive_on_the_page_is_refused(home, data_dir):
    at = _page({"view": "upload"}).run()
    evil = _zip_of_classes(extra={"../evil.png": b"x"})
    at.file_uploader(key="datasets.zip").set_value(("evil.zip", evil, "application/zip")).run()
    at.button(key="datasets.extract").click().run()
    assert not at.exception
    errors = " ".join(e.value for e in at.error)
    assert "The zip was refused and nothing was extracted" in errors and "'../evil.png'" in errors
    assert "No uploaded image folders yet." in [i.value for i in at.info]
    assert not (data_dir / "evil.png").exists()


def test_a_text_dataset_counts_examples_and_shows_sample_sentences(data_dir):
    at = _page({"dataset": "metalab.text_intents"}).run()
    at.button(key="datasets.load").click().run()
    assert not at.exception
    metrics = {m.label: m.value for m in at.metric}
    assert metrics["Classes"] == "144" and metrics["Examples"] == "5,760" and "Images" not in metrics
    tables = [t.value for t in at.dataframe]
    assert "examples per class" in tables[0].columns
    samples = next(t for t in tables if "examples" in t.columns and "class" in t.columns)
    assert set(samples["split"]) == {"train", "val", "test"} and all(samples["examples"].str.len() > 10)
