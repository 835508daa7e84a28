"""Every built-in parameter that touches the machine (a server path, a download URL, a checksum, another run) is
declared with its plugin API 1.3 type, so core can check it where it enters."""

from __future__ import annotations

import importlib

import pytest

from metalab.core.contract.specs import MACHINE_KEY, machine_params

PATH_URL_SHA = {"path": "data_path", "url": "download_url", "sha256": "checksum"}

#: The machine-touching parameters of each built-in spec; every spec not listed has none.
EXPECTED = {
    "metalab.cifar_fs": PATH_URL_SHA,
    "metalab.fc100": PATH_URL_SHA,
    "metalab.mini_imagenet": PATH_URL_SHA,
    "metalab.tiered_imagenet": PATH_URL_SHA,
    "metalab.imagefolder": {"path": "data_path"},
    "metalab.mnist": {"path": "data_path"},
    "metalab.fashion_mnist": {"path": "data_path"},
    "metalab.emnist_letters": {"path": "data_path"},
    "metalab.tfds": {"data_dir": "data_path"},
    "metalab.cub_attributes": {"cub_path": "data_path"},
    "metalab.distill": {"teacher_run": "run_ref"},
}


def _specs(registry) -> dict:
    return {**registry.algorithms, **registry.datasets, **registry.backbones}


def test_every_built_in_loaded(builtin_registry):
    assert set(EXPECTED) <= set(_specs(builtin_registry))
    assert [r.name for r in builtin_registry.plugins if r.status != "loaded"] == []


@pytest.mark.parametrize("spec_id", sorted(EXPECTED))
def test_machine_params_are_declared_not_guessed(builtin_registry, spec_id):
    params = _specs(builtin_registry)[spec_id].params
    assert machine_params(params) == EXPECTED[spec_id]
    # Declared with DataPath / DownloadURL / Checksum / RunRef: the kind is in the JSON schema the dashboard and
    # core read, not only inferred from the field's name.
    properties = params.model_json_schema()["properties"]
    assert {name: properties[name].get(MACHINE_KEY) for name in EXPECTED[spec_id]} == EXPECTED[spec_id]


def test_no_other_built_in_parameter_touches_the_machine(builtin_registry):
    found = {spec_id: machine_params(spec.params) for spec_id, spec in _specs(builtin_registry).items()}
    assert {spec_id: kinds for spec_id, kinds in found.items() if kinds} == EXPECTED


def test_plugins_using_the_types_target_api_1_3(builtin_registry):
    specs = _specs(builtin_registry)
    for spec_id in EXPECTED:
        module = importlib.import_module(specs[spec_id].params.__module__)
        declared = tuple(int(part) for part in module.METALAB_PLUGIN_API.split("."))
        assert declared >= (1, 3), f"{spec_id}: {module.__name__} uses API 1.3 types"


def test_declared_downloads_are_the_official_files(builtin_registry):
    datasets = builtin_registry.datasets
    declared = {spec_id: spec.downloads for spec_id, spec in datasets.items() if spec.downloads}
    assert set(declared) == {"metalab.cifar_fs", "metalab.fc100", "metalab.omniglot"}
    assert list(declared["metalab.cifar_fs"]) == ["https://www.cs.toronto.edu/~kriz/cifar-100-python.tar.gz"]
    assert len(declared["metalab.omniglot"]) == 5
    for spec_id, downloads in declared.items():
        datasets[spec_id].validate()
        assert all(url.startswith("https://") for url in downloads), spec_id
