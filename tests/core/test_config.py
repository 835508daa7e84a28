"""Run configs are validated once, at the edge, with messages that name the field and the value."""

import pytest

from metalab.core.engine.config import ConfigError, parse_assignments, resolve_config


def test_defaults_come_from_the_dataset_and_plugins(builtin_registry):
    config = resolve_config(builtin_registry, {"dataset": "metalab.omniglot", "algorithm": "metalab.maml"})
    assert config.backbone == "metalab.conv4"
    assert (config.ways, config.shots, config.queries) == (5, 1, 15)
    assert config.algorithm_params["inner_lr"] == 0.4
    assert config.algorithm_params["first_order"] is False


def test_unqualified_and_qualified_assignments(builtin_registry):
    config = resolve_config(
        builtin_registry,
        {"dataset": "metalab.omniglot", "algorithm": "metalab.maml"},
        parse_assignments(["inner_lr=0.1", "ways=20", "dataset.rotations=false", "first_order=true"]),
    )
    assert config.algorithm_params["inner_lr"] == 0.1
    assert config.ways == 20
    assert config.dataset_params["rotations"] is False
    assert config.algorithm_params["first_order"] is True


def test_a_name_the_run_and_the_dataset_both_have_must_be_qualified(builtin_registry):
    raw = {"dataset": "metalab.digits", "algorithm": "metalab.protonet"}
    with pytest.raises(ConfigError) as info:
        resolve_config(builtin_registry, raw, parse_assignments(["seed=3"]))
    assert str(info.value) == (
        "Parameter 'seed' is ambiguous: the run and dataset metalab.digits both have it; write run.seed or "
        "dataset.seed. Received: seed=3"
    )
    run = resolve_config(builtin_registry, raw, parse_assignments(["run.seed=3"]))
    data = resolve_config(builtin_registry, raw, parse_assignments(["dataset.seed=4"]))
    assert (run.seed, run.dataset_params["seed"]) == (3, 0)
    assert (data.seed, data.dataset_params["seed"]) == (0, 4)
    # A run field no plugin shares still goes to the run unqualified.
    assert resolve_config(builtin_registry, raw, parse_assignments(["steps=7"])).steps == 7


def test_run_qualifier_takes_only_run_fields(builtin_registry):
    with pytest.raises(ConfigError, match=r"Unknown parameter 'run.inner_lr'.*Received: run.inner_lr=0.1"):
        resolve_config(builtin_registry, {"dataset": "metalab.sinusoid", "algorithm": "metalab.maml"},
                       parse_assignments(["run.inner_lr=0.1"]))


@pytest.mark.parametrize("algorithm, params, expected", [
    ("metalab.protonet", {"distance": "euclidean", "outer_lr": 0.001, "lr_decay_every": 2000},
     "lower the learning rates of metalab.protonet (outer_lr=0.001; --set outer_lr=...)"),
    ("metalab.reptile", {"inner_lr": 0.02, "outer_stepsize": 1.0, "inner_steps": 5},
     "lower the learning rates of metalab.reptile (inner_lr=0.02, outer_stepsize=1; --set inner_lr=...)"),
    ("metalab_foo.foo", {"temperature": 4.0}, "lower the learning rates of metalab_foo.foo"),
])
def test_the_divergence_hint_names_the_runs_own_learning_rates(algorithm, params, expected):
    from metalab.core.engine.config import divergence_hint

    assert divergence_hint({"algorithm": algorithm, "algorithm_params": params}) == expected


def test_the_divergence_hint_of_a_resolved_run_never_names_mamls_rates(builtin_registry):
    from metalab.core.engine.config import divergence_hint

    config = resolve_config(builtin_registry, {"dataset": "metalab.digits", "algorithm": "metalab.baseline"})
    hint = divergence_hint(config)
    assert "metalab.baseline" in hint and "lr=" in hint and "finetune_lr=" in hint
    assert "inner_lr" not in hint and "outer_lr" not in hint


def test_out_of_range_value_names_field_range_and_value(builtin_registry):
    with pytest.raises(ConfigError) as info:
        resolve_config(builtin_registry, {"dataset": "metalab.sinusoid", "algorithm": "metalab.maml"},
                       {"inner_lr": -1})
    message = str(info.value)
    assert "algorithm.inner_lr" in message and "-1" in message and "allowed" in message


def test_unknown_parameter_lists_known_ones(builtin_registry):
    with pytest.raises(ConfigError, match="Unknown parameter 'inner_rl'"):
        resolve_config(builtin_registry, {"dataset": "metalab.sinusoid", "algorithm": "metalab.maml"}, {"inner_rl": 1})


def test_unknown_plugin_id(builtin_registry):
    with pytest.raises(ConfigError, match="metalab.mamlx"):
        resolve_config(builtin_registry, {"dataset": "metalab.sinusoid", "algorithm": "metalab.mamlx"})


def test_algorithm_must_support_the_dataset_kind(builtin_registry):
    with pytest.raises(ConfigError, match="supports classification"):
        resolve_config(builtin_registry, {"dataset": "metalab.sinusoid", "algorithm": "metalab.protonet"})


def test_run_field_errors_name_the_field(builtin_registry):
    with pytest.raises(ConfigError, match=r"steps.*Received: steps=0"):
        resolve_config(builtin_registry, {"dataset": "metalab.sinusoid", "algorithm": "metalab.maml", "steps": 0})


def test_set_needs_name_equals_value():
    with pytest.raises(ConfigError, match="name=value"):
        parse_assignments(["inner_lr"])
    assert parse_assignments(["a=1", "b=x", "c=[1,2]"]) == {"a": 1, "b": "x", "c": [1, 2]}


# ---------------------------------------------------------------------------------------------------------
# --set of the plugin ids: applied before the plugins are looked up, and validated like the rest.

OMNIGLOT_MAML = {"dataset": "metalab.omniglot", "algorithm": "metalab.maml"}


@pytest.mark.parametrize("field, kind, value", [
    ("dataset", "dataset", "metalab.nope"),
    ("algorithm", "algorithm", "metalab.nope"),
    ("backbone", "backbone", "metalab.nope"),
    ("test_dataset", "dataset", "metalab.nope"),
    ("dataset", "dataset", 5),
])
def test_set_of_an_unknown_plugin_id_names_field_value_and_known_ids(builtin_registry, field, kind, value):
    with pytest.raises(ConfigError) as info:
        resolve_config(builtin_registry, OMNIGLOT_MAML, {field: value})
    message = str(info.value)
    assert message.startswith(f"{field}: Unknown {kind} {value!r}. Known: ")
    assert message.endswith(f"Received: {field}={value!r}")
    known = {"dataset": "metalab.digits", "algorithm": "metalab.protonet", "backbone": "metalab.conv4"}[kind]
    assert known in message


def test_set_dataset_chooses_the_plugin_whose_parameters_follow(builtin_registry):
    config = resolve_config(builtin_registry, OMNIGLOT_MAML,
                            parse_assignments(["dataset=metalab.digits", "train_classes=3", "dataset.seed=2"]))
    assert config.dataset == "metalab.digits" and config.backbone == "metalab.mlp"  # digits' default backbone
    assert config.dataset_params["train_classes"] == 3 and config.dataset_params["seed"] == 2
    assert (config.ways, config.shots, config.queries) == (3, 5, 10)  # digits' episode defaults
    assert "rotations" not in config.dataset_params


def test_set_backbone_and_algorithm_choose_the_plugins(builtin_registry):
    config = resolve_config(builtin_registry, OMNIGLOT_MAML,
                            parse_assignments(["backbone=metalab.mlp", "algorithm=metalab.protonet"]))
    assert (config.backbone, config.algorithm) == ("metalab.mlp", "metalab.protonet")
    assert set(config.backbone_params) == set(builtin_registry.backbone("metalab.mlp").params.model_fields)
    assert "inner_lr" not in config.algorithm_params


def test_set_test_dataset_is_checked_against_the_run(builtin_registry):
    config = resolve_config(builtin_registry, OMNIGLOT_MAML,
                            parse_assignments(["test_dataset=metalab.digits", "ways=3", "shots=1", "queries=5"]))
    assert config.test_dataset == "metalab.digits"
    with pytest.raises(ConfigError, match="test_dataset: a classification run"):
        resolve_config(builtin_registry, OMNIGLOT_MAML, {"test_dataset": "metalab.sinusoid"})


# ---------------------------------------------------------------------------------------------------------
# Episode shapes against the split sizes, before a run exists and without loading data.


def test_ways_above_a_splits_classes_is_refused_per_split(builtin_registry):
    with pytest.raises(ConfigError) as info:
        resolve_config(builtin_registry, {"dataset": "metalab.digits", "algorithm": "metalab.protonet"}, {"ways": 4})
    lines = str(info.value).splitlines()
    # Default 4 / 3 / 3 classes: val and test cannot serve 4-way episodes; train can.
    assert lines == [
        f"ways: metalab.digits's {split} split has 3 classes, fewer than the 4 an episode needs; lower ways or "
        f"change the dataset's parameters. Received: ways=4" for split in ("val", "test")
    ]


def test_shots_and_queries_above_the_smallest_class_are_refused(builtin_registry):
    with pytest.raises(ConfigError) as info:
        resolve_config(builtin_registry, {"dataset": "metalab.digits", "algorithm": "metalab.protonet"},
                       {"shots": 100, "queries": 78})
    # With seed 0 the smallest digits of train, val and test have 177, 180 and 174 images.
    assert str(info.value).splitlines() == [
        f"shots + queries: metalab.digits's {split} split has a class with only {n} images, fewer than the 178 an "
        "episode takes from each class; lower shots or queries. Received: shots=100, queries=78"
        for split, n in (("train", 177), ("test", 174))
    ]
    config = resolve_config(builtin_registry, {"dataset": "metalab.digits", "algorithm": "metalab.protonet"},
                            {"shots": 100, "queries": 74})
    assert config.shots + config.queries == 174


def test_omniglot_split_sizes_refuse_what_the_split_cannot_serve(builtin_registry, monkeypatch, tmp_path):
    monkeypatch.setenv("METALAB_DATA_DIR", str(tmp_path / "nothing"))  # nothing may be read or fetched
    monkeypatch.setenv("METALAB_OFFLINE", "1")
    with pytest.raises(ConfigError, match=r"^ways: metalab.omniglot's val split has 40 classes, fewer than the 50"):
        resolve_config(builtin_registry, OMNIGLOT_MAML,
                       {"dataset.val_characters": 10, "ways": 50})
    with pytest.raises(ConfigError, match="shots \\+ queries: metalab.omniglot's train split has a class with only "
                                          "20 images, fewer than the 21"):
        resolve_config(builtin_registry, OMNIGLOT_MAML, {"shots": 1, "queries": 20})
    with pytest.raises(ConfigError, match=r"^dataset: val_alphabets must be smaller than the 8 alphabets"):
        resolve_config(builtin_registry, OMNIGLOT_MAML, {"dataset.split": "minimal", "dataset.val_alphabets": 8})
    config = resolve_config(builtin_registry, OMNIGLOT_MAML, {"ways": 20, "shots": 5, "queries": 15})
    assert config.ways == 20


def test_test_dataset_is_checked_on_its_test_split_only(builtin_registry):
    with pytest.raises(ConfigError, match=r"^ways: test_dataset metalab.digits's test split has 2 classes"):
        resolve_config(builtin_registry, OMNIGLOT_MAML,
                       {"test_dataset": "metalab.digits", "test_dataset.train_classes": 4,
                        "test_dataset.val_classes": 4, "ways": 3, "shots": 1, "queries": 5})


def _registry_with(spec):
    from metalab.core.contract.specs import PLUGIN_API_VERSION, hookimpl
    from metalab.core.contract.manager import make_plugin_manager
    from metalab.core.settings import load_settings

    class Plugin:
        METALAB_PLUGIN_API = PLUGIN_API_VERSION

        @hookimpl
        def metalab_register_datasets(self):
            return [spec]

    return make_plugin_manager(distributions={"metalab"}, plugins=[("extra", Plugin())],
                               settings=load_settings(disable_plugins=""), strict=True)


def _extra_dataset(split_sizes=None):
    from metalab.core.contract.specs import DatasetSpec, Params

    class NoParams(Params):
        pass

    def factory(params, context):
        raise AssertionError("resolve_config must not load the dataset")

    return DatasetSpec(id="extra.d", title="Extra", description="D", params=NoParams, factory=factory,
                       default_backbone="metalab.mlp", split_sizes=split_sizes)


def test_without_split_sizes_nothing_is_loaded_and_the_check_waits_for_training():
    registry = _registry_with(_extra_dataset())
    config = resolve_config(registry, {"dataset": "extra.d", "algorithm": "metalab.protonet"}, {"ways": 500})
    assert config.ways == 500


def test_a_failing_split_sizes_only_postpones_the_check(caplog):
    def broken(params):
        raise RuntimeError("a bug in the plugin")

    registry = _registry_with(_extra_dataset(broken))
    config = resolve_config(registry, {"dataset": "extra.d", "algorithm": "metalab.protonet"}, {"ways": 500})
    assert config.ways == 500
    assert "split_sizes of dataset 'extra.d' failed" in caplog.text


def test_split_sizes_must_be_callable():
    with pytest.raises(ValueError, match="split_sizes must be None or a function"):
        _extra_dataset(split_sizes={"train": {"classes": 1, "min_per_class": 1}}).validate()


# ---------------------------------------------------------------------------------------------------------
# The built-ins' split_sizes agree with what their loaders build.


@pytest.mark.parametrize("params", [
    {}, {"seed": 3}, {"train_classes": 6, "val_classes": 2, "seed": 7}, {"mode": "supervised"},
    {"mode": "supervised", "test_fraction": 0.5, "val_fraction": 0.9, "seed": 2},
])
def test_digits_split_sizes_match_the_loaded_splits(params):
    import numpy as np

    from metalab.plugins.digits import DigitsParams, digits_split_sizes, make_digits

    dataset = make_digits(DigitsParams(**params))
    loaded = {name: {"classes": split.num_classes, "min_per_class": int(np.bincount(split.labels).min())}
              for name, split in dataset.splits.items()}
    assert digits_split_sizes(DigitsParams(**params)) == loaded


def test_omniglot_alphabet_table_matches_the_official_counts():
    from metalab.plugins.omniglot.loader import BACKGROUND_ALPHABETS, MINIMAL_ALPHABETS, SOURCES

    assert len(BACKGROUND_ALPHABETS) == SOURCES["background"].alphabets
    assert sum(BACKGROUND_ALPHABETS.values()) == SOURCES["background"].characters
    assert sum(BACKGROUND_ALPHABETS[a] for a in MINIMAL_ALPHABETS) == 242
    from metalab.plugins.omniglot.loader import SMALL_ALPHABETS

    for source, alphabets in SMALL_ALPHABETS.items():
        assert sum(BACKGROUND_ALPHABETS[a] for a in alphabets) == SOURCES[source].characters
    assert set(MINIMAL_ALPHABETS) == {a for names in SMALL_ALPHABETS.values() for a in names}


@pytest.mark.parametrize("params, expected", [
    ({}, {"train": 4400, "val": 400, "test": 1692}),
    ({"rotations": False, "train_characters": 1200, "val_characters": 23}, {"train": 1200, "val": 23, "test": 400}),
])
def test_omniglot_vinyals_split_sizes(params, expected):
    from metalab.plugins.omniglot import OmniglotParams
    from metalab.plugins.omniglot.loader import split_sizes

    sizes = split_sizes(OmniglotParams(**params))
    assert sizes == {name: {"classes": n, "min_per_class": 20} for name, n in expected.items()}


@pytest.mark.parametrize("split, sources", [
    ("background_evaluation", ("images_background",)),
    ("minimal", ("images_background_small1", "images_background_small2")),
    ("minimal1", ("images_background_small1",)),
    ("minimal2", ("images_background_small2",)),
])
@pytest.mark.parametrize("seed, val_alphabets", [(0, 2), (5, 3), (11, 1)])
def test_omniglot_held_out_alphabets_match_the_files(shared_data_dir, split, sources, seed, val_alphabets):
    """The counts from the split definitions equal those of the files' own listing, split by the loader's code."""
    import numpy as np

    from metalab.plugins.omniglot import OmniglotParams
    from metalab.plugins.omniglot.loader import SOURCES, _group_characters, _hold_out_alphabets, _Pool, _Reader
    from metalab.plugins.omniglot.loader import split_sizes

    folder = shared_data_dir / "omniglot"
    characters: dict[str, str] = {}
    for stem in sources:
        info = next(i for i in SOURCES.values() if i.stem == stem)
        path = next(iter(sorted(folder.glob(f"{stem}*.zip"))), None)
        if path is None or not info.matches(path.name):
            pytest.skip(f"{stem}*.zip not in {folder}")
        with _Reader(path) as reader:
            for alphabet, character in _group_characters(reader, info):
                characters[f"{alphabet}/{character}"] = alphabet
    pool = _Pool(np.zeros((len(characters), 1, 1, 1), np.uint8), list(characters.values()), list(characters))
    train, val, _ = _hold_out_alphabets(pool, val_alphabets, seed, split)
    params = OmniglotParams(split=split, seed=seed, val_alphabets=val_alphabets, rotations=False)
    sizes = split_sizes(params)
    assert (sizes["train"]["classes"], sizes["val"]["classes"]) == (len(train.characters), len(val.characters))
    assert sizes["test"]["classes"] == SOURCES["evaluation"].characters
