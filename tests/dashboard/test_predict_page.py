"""The Predict page and ``Services.predict``: a tiny ProtoNet run classifies new images in a worker process."""

from __future__ import annotations

import io
import shutil
import zipfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageDraw
from streamlit.testing.v1 import AppTest

from metalab.core.engine.predict import PredictionError
from metalab.core.services import Services

from .conftest import make_completed_run, plotly_specs

SHAPES = ("circle", "square", "cross")
#: Training shapes: two classes in each of train, val and test.
TRAIN_SHAPES = SHAPES + ("hline", "vline", "triangle")
RUN = {"dataset": "metalab.imagefolder", "algorithm": "metalab.protonet", "backbone": "metalab.conv4",
       "backbone_params": {"filters": 4, "blocks": 2}, "steps": 3, "val_every": 3, "val_episodes": 2,
       "test_episodes": 2, "log_every": 3, "ways": 2, "shots": 1, "queries": 2}
DATASET = {"image_size": 16, "channels": 1, "invert": True, "train_fraction": 0.34, "val_fraction": 0.33}


def _draw(shape: str, rng: np.random.Generator) -> Image.Image:
    image = Image.new("RGB", (32, 32), "white")
    pen = ImageDraw.Draw(image)
    x, y = (int(v) for v in rng.integers(3, 10, 2))
    r = int(rng.integers(12, 18))
    if shape == "circle":
        pen.ellipse([x, y, x + r, y + r], outline="black", width=3)
    elif shape == "square":
        pen.rectangle([x, y, x + r, y + r], outline="black", width=3)
    elif shape == "cross":
        pen.line([x, y, x + r, y + r], fill="black", width=3)
        pen.line([x + r, y, x, y + r], fill="black", width=3)
    elif shape == "hline":
        pen.line([x, y + r // 2, x + r, y + r // 2], fill="black", width=3)
    elif shape == "vline":
        pen.line([x + r // 2, y, x + r // 2, y + r], fill="black", width=3)
    else:
        pen.polygon([(x, y + r), (x + r, y + r), (x + r // 2, y)], outline="black", width=3)
    return image


def _folder(root: Path, per_class: int, seed: int, shapes=SHAPES) -> Path:
    rng = np.random.default_rng(seed)
    for shape in shapes:
        (root / shape).mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            _draw(shape, rng).save(root / shape / f"{i}.png")
    return root


def _png(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """Environment of a fresh metalab home, and one tiny ProtoNet run trained on drawn shapes (in this process)."""
    root = tmp_path_factory.mktemp("predict_page")
    with pytest.MonkeyPatch.context() as mp:
        for name, value in {"METALAB_HOME": root / "home", "METALAB_DATA_DIR": root / "data",
                            "METALAB_CACHE_DIR": root / "cache", "METALAB_OFFLINE": "1",
                            "METALAB_DISABLE_PLUGINS": "", "METALAB_STRICT_PLUGINS": "0"}.items():
            mp.setenv(name, str(value))
        services = Services()
        folder = _folder(root / "shapes", per_class=6, seed=0, shapes=TRAIN_SHAPES)
        config = services.resolve({**RUN, "dataset_params": {**DATASET, "path": str(folder)}})
        run_id = services.create_run(config, name="shapes")
        assert services.train(run_id) == "completed", services.run(run_id).traceback
        yield {"root": root, "services": services, "run": run_id}


@pytest.fixture
def env(world):
    """The world's environment for one test, with the dashboard's cached services rebuilt on it."""
    from metalab.dashboard.state import reset_services as services_reset

    services_reset()
    yield world
    services_reset()


def test_services_predict_classifies_staged_uploads(env, tmp_path):
    svc = env["services"]
    support = _folder(tmp_path / "support", per_class=1, seed=42)
    archive = io.BytesIO()
    with zipfile.ZipFile(archive, "w") as zf:
        for path in sorted(support.rglob("*.png")):
            zf.write(path, f"support/{path.relative_to(support).as_posix()}")
    queries = [(f"copy_of_{shape}.png", (support / shape / "0.png").read_bytes()) for shape in SHAPES]
    queries.append(("../sub/fresh.png", _png(_draw("circle", np.random.default_rng(7)))))
    staged = svc.stage_prediction(archive.getvalue(), queries)
    assert staged["support"].parent == staged["query"].parent
    assert staged["support"].parent.parent == Path(svc.settings.home) / "predictions"
    # A query's folders are dropped: nothing is written outside the staging folder.
    assert sorted(p.name for p in staged["query"].iterdir()) == [
        "copy_of_circle.png", "copy_of_cross.png", "copy_of_square.png", "fresh.png"]

    results = svc.predict(env["run"], staged["support"] / "support", staged["query"], timeout=240)
    assert [r["file"] for r in results] == ["copy_of_circle.png", "copy_of_cross.png", "copy_of_square.png",
                                            "fresh.png"]
    for r in results:
        assert list(r["probabilities"]) == sorted(SHAPES)
        assert sum(r["probabilities"].values()) == pytest.approx(1.0, abs=1e-6)
        assert r["predicted"] == max(r["probabilities"], key=r["probabilities"].get)
        # A query identical to a 1-shot support image sits on its prototype.
        if r["file"].startswith("copy_of_"):
            assert r["predicted"] == r["file"].removeprefix("copy_of_").removesuffix(".png")
        assert Path(r["path"]).is_file()


def test_services_predict_reports_the_workers_error(env, tmp_path):
    support = _folder(tmp_path / "support", per_class=1, seed=1)
    shutil.rmtree(support / "square")
    shutil.rmtree(support / "cross")
    with pytest.raises(PredictionError, match="needs at least 2 class folders") as caught:
        env["services"].predict(env["run"], support, support / "circle", timeout=240)
    assert "\n" not in str(caught.value)  # the worker's message on one line, not a traceback


def _predict_script() -> None:
    from metalab.dashboard.predict import predict

    predict()


def test_page_lists_finished_classification_runs_only(env, fake_runs_in_world):
    at = AppTest.from_function(_predict_script, default_timeout=60).run()
    assert not at.exception
    runs = at.selectbox(key="predict.run")
    assert runs.options[0].startswith(env["run"]) and len(runs.options) == 1  # the sinusoid run is left out
    assert runs.value == env["run"] and at.query_params["run"] == env["run"]
    assert at.button(key="predict.go").disabled  # nothing to predict on yet
    at.radio(key="predict.support_kind").set_value("A folder on this machine").run()
    assert any(w.key == "predict.support_dir" for w in at.text_input)


def test_page_draws_a_result_with_probability_charts(env, fake_runs_in_world, tmp_path):
    image = tmp_path / "q.png"
    _draw("circle", np.random.default_rng(0)).save(image)
    result = {"run": env["run"], "results": [
        {"file": "q.png", "path": str(image), "predicted": "circle",
         "probabilities": {"circle": 0.7, "cross": 0.1, "square": 0.2}},
        {"file": "gone.png", "path": str(tmp_path / "gone.png"), "predicted": "cross",
         "probabilities": {"circle": 0.2, "cross": 0.5, "square": 0.3}},
    ]}
    at = AppTest.from_function(_predict_script, default_timeout=60)
    at.session_state["predict.result"] = result
    at.run()
    assert not at.exception
    table = at.dataframe[0].value
    assert list(table["predicted"]) == ["circle", "cross"] and list(table["probability"]) == [0.7, 0.5]
    specs = plotly_specs(at)
    assert [s["layout"]["title"]["text"] for s in specs] == ["Predicted: circle", "Predicted: cross"]
    assert specs[0]["data"][0]["x"] == [0.7, 0.1, 0.2] and specs[0]["data"][0]["y"] == ["circle", "cross", "square"]
    assert len(at.image) == 1  # the missing file is named instead
    assert any("gone.png (file no longer on disk)" in c.value for c in at.caption)


@pytest.fixture
def fake_runs_in_world(env):
    """A completed sinusoid (regression) run beside the trained one: the Predict page must not offer it."""
    if not env.get("sinusoid"):
        env["sinusoid"] = make_completed_run(env["services"].store)
    return env


def test_no_finished_run_points_to_training(home):
    at = AppTest.from_function(_predict_script, default_timeout=60).run()
    assert not at.exception
    assert "No finished classification run yet" in at.info[0].value
    assert at.get("page_link")

