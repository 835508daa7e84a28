"""Cross-domain transfer: a run meta-trains on one dataset and is also meta-tested on another."""

import numpy as np
import pytest

from metalab.core.engine.config import ConfigError, resolve_config
from metalab.core.contract.specs import ClassificationDataset, ClassSplit, DatasetSpec, Params, hookimpl
from metalab.core.contract.manager import make_plugin_manager
from metalab.core.engine.evaluation import evaluate_run
from metalab.core.engine.runner import train_run
from metalab.core.settings import load_settings
from metalab.core.store import RunStore
from metalab.core.engine.transforms import resize_images
from metalab.plugins.digits import make_digits


def _patterns(shape: tuple[int, ...], classes: int = 6, per_class: int = 20) -> ClassificationDataset:
    """Each class is a fixed random pattern plus noise: easy to tell apart, and unlike digits."""
    rng = np.random.default_rng(7)
    splits = {}
    for offset, name in enumerate(("train", "val", "test")):
        prototypes = rng.integers(0, 256, size=(classes, *shape))
        noise = rng.normal(0, 20, size=(classes, per_class, *shape))
        images = np.clip(prototypes[:, None] + noise, 0, 255).astype(np.uint8).reshape(-1, *shape)
        labels = np.repeat(np.arange(classes), per_class)
        splits[name] = ClassSplit(images=images, labels=labels, class_names=[f"{name}{c}" for c in range(classes)])
    return ClassificationDataset(splits=splits, input_shape=shape)


class _PatternDatasets:
    METALAB_PLUGIN_API = "1.0"

    class P(Params):
        pass

    @hookimpl
    def metalab_register_datasets(self):
        def spec(name, shape, classes=6):
            return DatasetSpec(id=f"xdomain.{name}", title=name, description="Test patterns.", params=self.P,
                               factory=lambda params, context: _patterns(shape, classes), default_backbone="metalab.mlp")
        return [spec("gray16", (16, 16, 1)), spec("rgb8", (8, 8, 3)), spec("two", (8, 8, 1), classes=2)]


@pytest.fixture
def registry():
    return make_plugin_manager(distributions={"metalab"}, plugins=[("xdomain", _PatternDatasets())],
                               settings=load_settings(disable_plugins=""), strict=False)


RUN = {"dataset": "metalab.digits", "algorithm": "metalab.protonet", "steps": 6, "val_every": 6, "val_episodes": 4,
       "test_episodes": 12, "checkpoint_every": 100, "log_every": 3, "backbone_params": {"hidden": [16]}}


def _train(registry, tmp_path, **fields):
    store = RunStore(tmp_path / "runs.sqlite")
    config = resolve_config(registry, {**RUN, **fields})
    run_id = store.create_run(config.model_dump())
    return store, run_id, train_run(store, run_id, registry)


def test_a_run_records_in_domain_and_cross_domain_scores(registry, tmp_path):
    store, run_id, status = _train(registry, tmp_path, test_dataset="xdomain.gray16")
    assert status == "completed", store.get_run(run_id).traceback
    evaluations = store.evaluations(run_id)
    assert [e["split"] for e in evaluations] == ["test", "cross:xdomain.gray16"]  # newest first
    cross = evaluations[1]
    assert cross["episodes"] == 12 and 0.0 <= cross["accuracy"] <= 1.0
    # Noisy copies of fixed patterns are far easier than unseen digits: the scores differ, so both were computed.
    assert cross["accuracy"] != evaluations[0]["accuracy"]
    assert "cross/accuracy" in store.metrics(run_id)
    again = evaluate_run(store, run_id, registry, split="cross:xdomain.gray16", record=False)
    assert again["accuracy"] == pytest.approx(cross["accuracy"], abs=1e-6)
    with pytest.raises(ValueError, match="cross:<that id>"):
        evaluate_run(store, run_id, registry, split="cross:metalab.omniglot", record=False)


def test_inputs_of_another_kind_fail_the_run_at_once_naming_both_shapes(registry, tmp_path):
    store, run_id, status = _train(registry, tmp_path, test_dataset="xdomain.rgb8")
    run = store.get_run(run_id)
    assert status == "failed" and run.step == 0
    assert run.error.startswith("ConfigError") and "(8, 8, 3)" in run.error and "(8, 8, 1)" in run.error


def test_a_test_dataset_too_small_for_the_episodes_is_a_clear_error(registry, tmp_path):
    store, run_id, status = _train(registry, tmp_path, test_dataset="xdomain.two")
    run = store.get_run(run_id)
    assert status == "failed" and "test_dataset 'xdomain.two'" in run.error and "ways" in run.error


def test_resolve_config_validates_the_test_dataset(registry):
    config = resolve_config(registry, {**RUN, "test_dataset": "metalab.digits"}, {"test_dataset.train_classes": 2})
    assert config.test_dataset == "metalab.digits"
    assert config.test_dataset_params["train_classes"] == 2 and config.test_dataset_params["val_classes"] == 3
    assert config.dataset_params["train_classes"] == 4  # the training dataset keeps its own
    with pytest.raises(ConfigError, match="test_dataset: .*nope"):
        resolve_config(registry, {**RUN, "test_dataset": "xdomain.nope"})
    with pytest.raises(ConfigError, match="only be meta-tested on a classification dataset"):
        resolve_config(registry, {**RUN, "test_dataset": "metalab.sinusoid"})
    with pytest.raises(ConfigError, match="test_dataset.train_classes"):
        resolve_config(registry, {**RUN, "test_dataset": "metalab.digits", "test_dataset_params": {"train_classes": 99}})
    with pytest.raises(ConfigError, match="without a test_dataset"):
        resolve_config(registry, {**RUN, "test_dataset_params": {"train_classes": 2}})
    assert resolve_config(registry, RUN).test_dataset is None


def test_resize_images_keeps_labels_and_brings_any_scale_to_8_bits():
    digits = make_digits()
    resized = resize_images(digits, (28, 20), splits=("test",))
    assert set(resized.splits) == {"test"} and resized.input_shape == (28, 20, 1) and resized.scale == 255.0
    split, original = resized.splits["test"], digits.splits["test"]
    assert split.images.shape == (len(original.images), 28, 20, 1) and split.images.dtype == np.uint8
    np.testing.assert_array_equal(split.labels, original.labels)
    # Mean brightness survives resizing (digits are stored in 0..16, scale 16).
    np.testing.assert_allclose(resized.to_float(split.images).mean(), digits.to_float(original.images).mean(), atol=0.02)
    flat = ClassificationDataset(splits={"test": ClassSplit(np.zeros((2, 4)), np.array([0, 1]), ["a", "b"])},
                                 input_shape=(4,))
    with pytest.raises(ValueError, match="height, width, channels"):
        resize_images(flat, (2, 2))


@pytest.mark.slow
def test_omniglot_to_digits(shared_data_dir, monkeypatch, tmp_path):
    monkeypatch.setenv("METALAB_DATA_DIR", str(shared_data_dir))
    registry = make_plugin_manager(distributions={"metalab"}, settings=load_settings(disable_plugins=""), strict=False)
    store = RunStore(tmp_path / "runs.sqlite")
    config = resolve_config(registry, {
        "dataset": "metalab.omniglot", "algorithm": "metalab.protonet", "ways": 3, "shots": 5, "queries": 5,
        "steps": 20, "val_every": 20, "val_episodes": 4, "test_episodes": 20, "log_every": 10,
        "test_dataset": "metalab.digits", "backbone_params": {"filters": 16},
    })
    run_id = store.create_run(config.model_dump())
    assert train_run(store, run_id, registry) == "completed", store.get_run(run_id).traceback
    splits = {e["split"]: e for e in store.evaluations(run_id)}
    assert set(splits) == {"test", "cross:metalab.digits"}
    assert splits["cross:metalab.digits"]["accuracy"] > 1 / 3
