"""Few-shot prediction end to end: train tiny runs on an image folder made here, then classify new images."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageDraw
from typer.testing import CliRunner

import metalab.plugins.imagefolder as imagefolder
from metalab.core.engine.config import resolve_config
from metalab.core.contract.specs import ClassificationDataset, ClassSplit
from metalab.core.contract.manager import make_plugin_manager
from metalab.core.engine.predict import PredictionError, list_query_images, list_support_set, predict, prepare_images
from metalab.core.services import Services
from metalab.core.settings import load_settings

SHAPES = ("circle", "square", "cross", "hline", "vline", "triangle")


def draw(shape: str, rng: np.random.Generator) -> Image.Image:
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


def make_folder(root: Path, shapes, per_class: int, seed: int) -> Path:
    rng = np.random.default_rng(seed)
    for shape in shapes:
        (root / shape).mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            draw(shape, rng).save(root / shape / f"{i}.png")
    return root


DATASET = {"image_size": 16, "channels": 1, "invert": True, "train_fraction": 0.34, "val_fraction": 0.33}
RUN = {"dataset": "metalab.imagefolder", "steps": 3, "val_every": 3, "val_episodes": 2, "test_episodes": 2,
       "log_every": 3, "ways": 2, "shots": 1, "queries": 2}


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """Settings, a registry with the image-folder plugin, the image folder, and one trained run per algorithm."""
    root = tmp_path_factory.mktemp("predict")
    settings = load_settings(home=root / "home", data_dir=root / "data", cache_dir=root / "cache", offline=True,
                             disable_plugins="")
    registry = make_plugin_manager(distributions={"metalab"}, settings=settings, strict=False)
    if "metalab.imagefolder" not in registry.datasets:  # until pyproject declares the entry point
        registry = make_plugin_manager(distributions={"metalab"}, plugins=[("metalab", imagefolder)],
                                       settings=settings, strict=False)
    folder = make_folder(root / "shapes", SHAPES, per_class=6, seed=0)
    services = Services(settings=settings, registry=registry)
    runs = {}
    for algorithm, algorithm_params, backbone, backbone_params in [
        ("metalab.protonet", {}, "metalab.conv4", {"filters": 4, "blocks": 2}),
        ("metalab.maml", {"meta_batch_size": 2, "eval_inner_steps": 1}, "metalab.mlp", {"hidden": [16]}),
    ]:
        config = resolve_config(registry, {**RUN, "algorithm": algorithm, "backbone": backbone,
                                           "dataset_params": {**DATASET, "path": str(folder)},
                                           "algorithm_params": algorithm_params, "backbone_params": backbone_params})
        run_id = services.create_run(config)
        status = services.train(run_id)
        assert status == "completed", services.run(run_id).traceback
        runs[algorithm] = run_id
    return {"root": root, "settings": settings, "registry": registry, "services": services, "runs": runs,
            "folder": folder}


def support_and_queries(root: Path, shapes, shots: int = 1) -> tuple[Path, Path, dict[str, str]]:
    """A support set of new drawings and query files that copy some support images (their answer is known)."""
    support = make_folder(root / "support", shapes, per_class=shots, seed=42)
    queries = root / "queries"
    queries.mkdir()
    answers = {}
    for shape in shapes:
        shutil.copy(support / shape / "0.png", queries / f"copy_of_{shape}.png")
        answers[f"copy_of_{shape}.png"] = shape
    draw(shapes[0], np.random.default_rng(7)).save(queries / "fresh.png")
    (queries / "notes.txt").write_text("not an image; skipped")
    return support, queries, answers


def test_protonet_predicts_any_number_of_classes(world, tmp_path):
    support, queries, answers = support_and_queries(tmp_path, ("circle", "square", "cross"))
    w = world
    results = predict(w["services"].store, w["runs"]["metalab.protonet"], w["registry"], support, queries,
                      settings=w["settings"])
    assert [r["file"] for r in results] == ["copy_of_circle.png", "copy_of_cross.png", "copy_of_square.png",
                                            "fresh.png"]
    for r in results:
        assert list(r["probabilities"]) == ["circle", "cross", "square"]  # support folders, sorted
        assert sum(r["probabilities"].values()) == pytest.approx(1.0, abs=1e-6)
        assert r["predicted"] == max(r["probabilities"], key=r["probabilities"].get)
        assert Path(r["path"]).is_absolute()
    # A query identical to a 1-shot support image sits on its prototype: distance 0, the nearest class.
    for r in results:
        if r["file"] in answers:
            assert r["predicted"] == answers[r["file"]]
    again = predict(w["services"].store, w["runs"]["metalab.protonet"], w["registry"], support, queries,
                    settings=w["settings"])
    assert again == results


def test_maml_refuses_another_number_of_classes_and_predicts_its_own(world, tmp_path):
    w = world
    run = w["runs"]["metalab.maml"]
    support, queries, _ = support_and_queries(tmp_path, ("circle", "square", "cross"))
    with pytest.raises(PredictionError) as info:
        predict(w["services"].store, run, w["registry"], support, queries, settings=w["settings"])
    message = str(info.value)
    assert "2-way" in message and "support set has 3" in message and "metric-based" in message
    shutil.rmtree(support / "cross")
    results = predict(w["services"].store, run, w["registry"], support, queries, settings=w["settings"])
    assert len(results) == 4
    assert all(set(r["probabilities"]) == {"circle", "square"} for r in results)
    assert all(sum(r["probabilities"].values()) == pytest.approx(1.0, abs=1e-6) for r in results)


def test_images_are_preprocessed_like_the_runs_dataset(world):
    w = world
    dataset = imagefolder.make_imagefolder({**DATASET, "path": str(w["folder"])}, w["settings"].data_context())
    train = dataset.splits["train"]
    name = train.class_names[0]
    stored = dataset.to_float(train.images[train.labels == 0][:1])
    x, used = prepare_images([w["folder"] / name / "0.png"], dataset)
    np.testing.assert_array_equal(x, stored)  # same size, grey, inversion and scaling as training
    assert x.shape == (1, 16, 16, 1) and used == [w["folder"] / name / "0.png"]
    not_inverted, _ = prepare_images([w["folder"] / name / "0.png"], dataset, invert=False)
    np.testing.assert_allclose(not_inverted, 1.0 - x, atol=1e-6)


def test_prepare_images_follows_the_dataset_scale_and_refuses_vectors(tmp_path):
    Image.new("L", (4, 4), 255).save(tmp_path / "white.png")
    split = ClassSplit(images=np.zeros((1, 4, 4, 1), np.uint8), labels=np.zeros(1, np.int64), class_names=["a"])
    digits_like = ClassificationDataset(splits={"train": split}, input_shape=(4, 4, 1), scale=16.0)
    x, _ = prepare_images([tmp_path / "white.png"], digits_like)
    assert x.max() == pytest.approx(1.0)  # 255 -> 16 stored levels -> 1.0, as the dataset's own white
    vectors = ClassificationDataset(splits={"train": split}, input_shape=(16,), scale=255.0)
    with pytest.raises(PredictionError, match="height, width"):
        prepare_images([tmp_path / "white.png"], vectors)
    (tmp_path / "broken.png").write_bytes(b"nope")
    with pytest.raises(PredictionError, match="broken.png"):
        prepare_images([tmp_path / "white.png", tmp_path / "broken.png"], digits_like)


def test_support_and_query_folders_are_checked(tmp_path):
    with pytest.raises(FileNotFoundError, match="one sub-folder per class"):
        list_support_set(tmp_path / "nope")
    (tmp_path / "s" / "only").mkdir(parents=True)
    Image.new("L", (4, 4)).save(tmp_path / "s" / "only" / "1.png")
    with pytest.raises(PredictionError, match="at least 2 class folders"):
        list_support_set(tmp_path / "s")
    (tmp_path / "s" / "empty").mkdir()
    with pytest.raises(PredictionError, match="empty"):
        list_support_set(tmp_path / "s")
    (tmp_path / "q").mkdir()
    with pytest.raises(PredictionError, match="no images"):
        list_query_images(tmp_path / "q")
    assert list_query_images(tmp_path / "s" / "only" / "1.png") == [tmp_path / "s" / "only" / "1.png"]


def test_cli_predict_prints_json_and_a_table(world, tmp_path, monkeypatch):
    from metalab.core import cli

    w = world
    monkeypatch.setattr(cli, "_services", lambda: w["services"])
    support, queries, answers = support_and_queries(tmp_path, ("circle", "square"))
    runner = CliRunner()
    run = w["runs"]["metalab.protonet"]
    result = runner.invoke(cli.app, ["predict", run, "--support", str(support), "--query", str(queries), "--json"],
                           catch_exceptions=False)
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert data["run"] == run and len(data["predictions"]) == 3
    by_file = {p["file"]: p["predicted"] for p in data["predictions"]}
    assert all(by_file[f] == shape for f, shape in answers.items())
    table = runner.invoke(cli.app, ["predict", run, "--support", str(support), "--query", str(queries)])
    assert table.exit_code == 0, table.output
    assert "copy_of_circle.png" in table.stdout and "p(square)" in table.stdout
    missing = runner.invoke(cli.app, ["predict", run, "--support", str(tmp_path / "none"), "--query", str(queries)])
    assert missing.exit_code == 2 and "one sub-folder per class" in missing.output
