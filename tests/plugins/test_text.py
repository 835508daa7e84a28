"""The text plugin: the hashing tokenizer, the embedded intents, the text backbones, and training on them."""

from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pydantic
import pytest

from metalab.api import ClassificationDataset
from metalab.core.authoring import testing
from metalab.core.engine.sampling import EpisodeSampler
from metalab.plugins import text as text_plugin
from metalab.plugins.text.intents import all_intents
from metalab.plugins.text.tokenizer import HashingTokenizer

#: A small CNN and vocabulary: the learning checks run in seconds on two cores.
SMALL_CNN = {"vocab_size": 2048, "embedding_dim": 32, "filters": 32}
SMALL_INTENTS = {"vocab_size": 2048, "max_tokens": 16, "examples_per_class": 20}


def _specs() -> dict:
    return {s.id: s for s in text_plugin.metalab_register_datasets() + text_plugin.metalab_register_backbones()}


# Tokenizer ------------------------------------------------------------------------------------------------------

def test_tokenizer_lower_cases_pads_with_zero_and_cuts_at_length():
    tok = HashingTokenizer(vocab_size=1000, length=5)
    ids = tok.encode(["Book a FLIGHT!", "book a flight", "one two three four five six seven", ""])
    assert ids.dtype == np.int32 and ids.shape == (4, 5)
    np.testing.assert_array_equal(ids[0], ids[1])  # case and punctuation do not matter
    assert list(ids[0, 3:]) == [0, 0] and (ids[0, :3] > 0).all()  # three words, then padding
    assert (ids[2] > 0).all() and len(set(ids[2])) == 5  # cut after five distinct words
    assert (ids[3] == 0).all()
    assert ids.max() < 1000


def test_tokenizer_is_deterministic_across_processes():
    # crc32, not Python's per-process salted str hash: a fresh interpreter gives the same ids.
    code = ("from metalab.plugins.text.tokenizer import HashingTokenizer as T; "
            "print(T(vocab_size=97, length=4).encode(['cancel my subscription']).tolist())")
    out = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True).stdout
    assert out.strip() == str(HashingTokenizer(vocab_size=97, length=4).encode(["cancel my subscription"]).tolist())


def test_tokenizer_units_and_tags():
    words = HashingTokenizer(unit="words")
    assert words.tokens("Don't [E1] Paris [/E1] go!") == ["don't", "[e1]", "paris", "[/e1]", "go"]
    trigrams = HashingTokenizer(unit="char3")
    assert trigrams.tokens("Cat [e2]") == ["<ca", "cat", "at>", "[e2]"]
    assert trigrams.tokens("a") == ["<a>"]


@pytest.mark.parametrize("kwargs", [{"vocab_size": 1}, {"vocab_size": 2**25}, {"length": 0}, {"unit": "bytes"}])
def test_tokenizer_refuses_bad_settings(kwargs):
    with pytest.raises(ValueError, match="Received"):
        HashingTokenizer(**kwargs)


def test_tokenizer_refuses_a_bare_string():
    with pytest.raises(TypeError, match="list of strings"):
        HashingTokenizer().encode("book a flight")


# The embedded intents --------------------------------------------------------------------------------------------

def test_specs_are_valid_and_registration_imports_no_framework():
    for spec in _specs().values():
        spec.validate()
        assert spec.paper
    code = ("import sys, metalab.plugins.text as t; t.metalab_register_datasets(); t.metalab_register_backbones(); "
            "bad = [m for m in ('tensorflow', 'keras', 'jax') if m in sys.modules]; assert not bad, bad")
    subprocess.run([sys.executable, "-c", code], check=True)


def test_intents_have_disjoint_class_splits_of_token_rows():
    ds = text_plugin.DATASETS[0].factory(text_plugin.TextIntentsParams(), None)
    assert isinstance(ds, ClassificationDataset) and ds.input_shape == (32,) and ds.scale == 1.0
    names = {split: set(s.class_names) for split, s in ds.splits.items()}
    assert [len(names[s]) for s in ("train", "val", "test")] == [96, 24, 24]
    assert names["train"].isdisjoint(names["val"]) and names["train"].isdisjoint(names["test"])
    assert names["val"].isdisjoint(names["test"]) and set().union(*names.values()) == set(all_intents())
    for split in ds.splits.values():
        assert split.images.dtype == np.int32 and split.images.shape[1] == 32
        assert np.bincount(split.labels).tolist() == [40] * split.num_classes
    # The raw sentences stay available (JSON-serialisable) for pages and reports.
    some = ds.splits["test"].class_names[0]
    samples = ds.info["sample_texts"]["test"][some]
    assert len(samples) == 3 and all(isinstance(s, str) and s for s in samples)
    action, obj = some.split("/")
    tok = HashingTokenizer(**{k: ds.info["tokenizer"][k] for k in ("vocab_size", "length", "unit")})
    first = ds.splits["test"].images[ds.splits["test"].labels == 0][0]
    np.testing.assert_array_equal(tok.encode([samples[0]])[0], first)
    assert ds.info["modality"] == "text"


def test_intents_are_deterministic_and_seeded():
    a = text_plugin.DATASETS[0].factory({"seed": 0, "examples_per_class": 5}, None)
    b = text_plugin.DATASETS[0].factory({"seed": 0, "examples_per_class": 5}, None)
    c = text_plugin.DATASETS[0].factory({"seed": 1, "examples_per_class": 5}, None)
    np.testing.assert_array_equal(a.splits["train"].images, b.splits["train"].images)
    assert a.splits["test"].class_names == b.splits["test"].class_names
    assert a.splits["test"].class_names != c.splits["test"].class_names


def test_intents_split_sizes_match_the_data_and_refuse_too_many_classes():
    spec = _specs()["metalab.text_intents"]
    params = {"train_classes": 100, "val_classes": 30, "examples_per_class": 7}
    ds = spec.factory(params, None)
    assert spec.split_sizes(params) == {
        name: {"classes": s.num_classes, "min_per_class": int(np.bincount(s.labels).min())}
        for name, s in ds.splits.items()}
    with pytest.raises(pydantic.ValidationError, match="leave at least one"):
        text_plugin.TextIntentsParams(train_classes=120, val_classes=24)


@pytest.mark.parametrize("split", ["train", "val", "test"])
def test_default_episodes_fit_every_split(split):
    spec = _specs()["metalab.text_intents"]
    ds = spec.factory({}, None)
    e = spec.episode_defaults
    batch = EpisodeSampler(ds, split, e["ways"], e["shots"], e["queries"], seed=0).sample_batch(2)
    assert batch.support_x.shape == (2, 5, 32) and batch.support_x.dtype == np.float32
    assert np.array_equal(batch.support_x, np.round(batch.support_x))  # ids survive to_float exactly


# Backbones -------------------------------------------------------------------------------------------------------

def test_text_cnn_gives_pooled_features_and_refuses_images():
    spec = _specs()["metalab.text_cnn"]
    model = spec.factory(spec.params(), (32,))
    assert model.output_shape == (None, 192)
    ids = HashingTokenizer().encode(["cancel my subscription", "track the parcel tonight"]).astype(np.float32)
    assert tuple(model(ids).shape) == (2, 192)
    with pytest.raises(ValueError, match=r"input_shape \(length,\)"):
        spec.factory(spec.params(), (28, 28, 1))
    with pytest.raises(ValueError, match="widest kernel"):
        spec.factory(spec.params(), (4,))


def test_text_transformer_ignores_padding_and_folds_large_ids():
    spec = _specs()["metalab.text_transformer"]
    model = spec.factory(text_plugin.TextTransformerParams(vocab_size=100), (12,))
    assert model.output_shape == (None, 64)
    ids = HashingTokenizer(vocab_size=100, length=12).encode(["book a flight to paris"]).astype(np.float32)
    # The mean over real tokens, attention masked: the padding row of the embedding never reaches the output.
    out = np.asarray(model(ids))
    embedding = model.get_layer("embedding")
    table = np.asarray(embedding.embeddings).copy()
    table[0] += 5.0
    embedding.embeddings.assign(table)
    np.testing.assert_allclose(np.asarray(model(ids)), out, atol=1e-5)
    # Ids past the vocabulary fold onto its rows (1 + (150 - 1) % 99 = 51) instead of failing.
    longer = ids.copy()
    longer[0, 5] = 150.0
    assert not np.allclose(np.asarray(model(longer)), out)
    same_row = ids.copy()
    same_row[0, 5] = 51.0
    np.testing.assert_allclose(np.asarray(model(same_row)), np.asarray(model(longer)), atol=1e-6)


@pytest.mark.parametrize("kwargs", [{"width": 30, "heads": 4}, {"layers": 0}])
def test_text_transformer_params_are_checked(kwargs):
    with pytest.raises(pydantic.ValidationError):
        text_plugin.TextTransformerParams(**kwargs)


def test_exact_layer_norm_has_the_true_second_derivative(float64):
    """Keras's LayerNormalization stops the mean's gradient inside the variance on TensorFlow (wrong second
    derivatives); ExactLayerNorm's Hessian-vector product matches finite differences of its gradient."""
    import keras
    from keras import ops

    from metalab.api import functional
    from metalab.plugins.text.models import ExactLayerNorm

    layer = ExactLayerNorm()
    layer.build((3, 5))
    rng = np.random.default_rng(0)
    x0 = rng.normal(size=(3, 5))
    w = rng.normal(size=(3, 5))
    v = rng.normal(size=(3, 5))

    def grad(x):
        # A cubic, not sin: Keras's JAX backend computes sin of float64 in float32.
        return functional.value_and_grad(lambda t: ops.sum(layer(t) * layer(t) * layer(t) * w),
                                         ops.convert_to_tensor(x))[1]

    hvp = functional.value_and_grad(lambda t: ops.sum(grad(t) * v), ops.convert_to_tensor(x0))[1]
    eps = 1e-6
    fd = (np.asarray(grad(x0 + eps * v)) - np.asarray(grad(x0 - eps * v))) / (2 * eps)
    hv_dot = float(np.sum(np.asarray(hvp) * v))
    assert keras.config.floatx() == "float64"
    assert abs(hv_dot - float(np.sum(fd * v))) < 1e-6 * max(1.0, abs(hv_dot))


@pytest.mark.parametrize("backbone", [
    "metalab.text_cnn",
    pytest.param("metalab.text_transformer", marks=pytest.mark.skipif(
        os.environ.get("KERAS_BACKEND") == "jax",
        reason="on Keras's JAX backend (x64) a float64 forward pass of the transformer is not float64 throughout "
               "(finite differences off by 1.5%; some Keras op computes in float32 there, as its sin and tanh do)")),
])
def test_maml_meta_gradient_through_text_backbones_is_exact(float64, backbone):
    """Second-order MAML's meta-gradient (one inner step) through each text backbone matches finite differences
    in float64: the embedding's gather, the convolutions, attention and the written-out layer norm all have
    exact second derivatives."""
    from keras import ops

    from metalab.api import functional

    import keras

    keras.utils.set_random_seed(0)  # a fixed network: finite differences are checked where no ReLU kink is near
    spec = _specs()[backbone]
    small = ({"vocab_size": 50, "embedding_dim": 4, "filters": 3, "kernel_sizes": [2, 3]}
             if backbone.endswith("cnn") else {"vocab_size": 50, "width": 4, "heads": 2, "layers": 1, "ff_width": 6})
    model = spec.factory(spec.params(**small), (6,))
    fmodel = functional.FunctionalModel(model)
    rng = np.random.default_rng(1)
    tok = HashingTokenizer(vocab_size=50, length=6)
    sx = ops.convert_to_tensor(tok.encode(["book a flight", "cancel my card", "track the parcel now"]), "float64")
    qx = ops.convert_to_tensor(tok.encode(["reserve a flight", "stop my card", "trace parcel"]), "float64")
    y = ops.convert_to_tensor([0, 1, 2], "int32")
    features = int(model.output_shape[-1])
    head = ops.convert_to_tensor(rng.normal(size=(features, 3)), "float64")

    def loss(weights, x):
        logits = ops.matmul(fmodel(weights, x, training=True), head)
        return functional.mean(ops.sparse_categorical_crossentropy(y, logits, from_logits=True))

    def meta_loss(weights):
        grads = functional.value_and_grad(lambda w: loss(w, sx), weights)[1]
        # As MAML writes its step: a tensor learning rate (on TensorFlow the embedding's gradient is IndexedSlices,
        # which a tensor product densifies and a bare Python float does not).
        fast = [w - ops.convert_to_tensor(0.5, dtype=w.dtype) * g for w, g in zip(weights, grads)]
        return loss(fast, qx)

    theta = [np.asarray(w, dtype=np.float64) for w in fmodel.params()]
    direction = [rng.normal(size=w.shape) for w in theta]
    _, meta_grads = functional.value_and_grad(meta_loss, [ops.convert_to_tensor(w) for w in theta])
    analytic = sum(float(np.sum(np.asarray(ops.convert_to_tensor(g)) * d)) for g, d in zip(meta_grads, direction))
    # Attention and one inner step make the meta-loss strongly curved: eps=1e-6 left truncation errors near 1e-5
    # of the value on some networks (they shrink as eps**2: the analytic value is the limit); 1e-7 is below them.
    eps = 1e-7
    shifted = [float(meta_loss([ops.convert_to_tensor(w + sign * eps * d) for w, d in zip(theta, direction)]))
               for sign in (1.0, -1.0)]
    numeric = (shifted[0] - shifted[1]) / (2 * eps)
    assert abs(analytic - numeric) < 1e-5 * max(1.0, abs(numeric)), (analytic, numeric)


# Training through metalab's runner (the conformance kit's building blocks) ----------------------------------------

def _task(backbone: str, backbone_params: dict) -> dict:
    return {"dataset": "metalab.text_intents", "dataset_params": SMALL_INTENTS, "backbone": backbone,
            "backbone_params": backbone_params, "ways": 5, "shots": 1, "queries": 5}


def test_protonet_with_text_cnn_learns_intents_5way_1shot(builtin_registry, tmp_path):
    result = testing.check_learns("metalab.protonet", tmp_path, registry=builtin_registry, steps=40, margin=0.2,
                                  task=_task("metalab.text_cnn", SMALL_CNN))
    # Meta-training, not the random embedding, earns the score: the untrained network scores well below it.
    assert result.after["accuracy"] > result.before["accuracy"] + 0.1, (result.before, result.after)


@pytest.mark.parametrize("algorithm_id, backbone, params, algorithm_params", [
    ("metalab.protonet", "metalab.text_transformer",
     {"vocab_size": 2048, "width": 32, "heads": 2, "layers": 1, "ff_width": 64}, {}),
    ("metalab.baseline", "metalab.text_cnn", SMALL_CNN, {"finetune_steps": 10}),
    ("metalab.maml", "metalab.text_cnn", SMALL_CNN, {}),  # second order through the embedding's gather
])
def test_algorithms_train_on_text_backbones(builtin_registry, tmp_path, algorithm_id, backbone, params,
                                            algorithm_params):
    config = testing.tiny_config(builtin_registry, algorithm_id, "classification", steps=6,
                                 algorithm_params=algorithm_params, task=_task(backbone, params))
    result = testing.run_tiny(builtin_registry, config, tmp_path, evaluate_before=False)
    assert np.isfinite(result.last_loss) and 0.0 <= result.after["accuracy"] <= 1.0
    if algorithm_id == "metalab.protonet":
        _check_the_text_gallery(tmp_path, result.run_id)


def _check_the_text_gallery(home, run_id: str) -> None:
    """The report's gallery shows the episode's sentences (ClassificationDataset.describe), every query it scores."""
    import json

    from metalab.core.reports import figures as reports
    from metalab.core.store import RunStore

    store = RunStore(home / "runs.sqlite")
    data = json.loads((store.run_dir(run_id) / "report_data.json").read_text())
    episode = data["episode"]
    assert "support_images" not in episode and len(episode["support_texts"]) == 5  # 5-way 1-shot
    assert all(isinstance(t, str) and " " in t and not t.replace(" ", "").isdigit() for t in episode["support_texts"])
    fig = reports.episode_gallery_figure(episode, 0)
    table = fig.data[0]
    assert table.type == "table"
    roles, texts = list(table.cells.values[1]), list(table.cells.values[2])
    queries = [r for r in roles if r.startswith("query")]
    assert len(queries) == len(episode["query_labels"]) == fig.layout.meta["queries"]
    assert sum(r == "query ✓" for r in roles) == fig.layout.meta["correct"]
    assert set(episode["support_texts"]) <= set(texts)
    right = fig.layout.meta["correct"]
    assert f"{right}/{len(queries)} queries right" in fig.layout.title.text
